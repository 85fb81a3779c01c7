"""Tensor bytes to and from NumPy arrays and torch tensors, without copies where the
framework allows. The dtype names are safetensors'."""

from __future__ import annotations

from typing import Any, Callable

from ._native import FormatError

# safetensors dtypes NumPy represents, as safetensors.numpy maps them.
NUMPY = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "F16": "float16",
    "U32": "uint32",
    "I32": "int32",
    "F32": "float32",
    "U64": "uint64",
    "I64": "int64",
    "F64": "float64",
    "C64": "complex64",
}


def torch_dtypes() -> dict[str, Any]:
    """safetensors dtypes torch represents (those this torch build has)."""
    import torch

    names = {
        "BOOL": "bool",
        "U8": "uint8",
        "I8": "int8",
        "U16": "uint16",
        "I16": "int16",
        "F16": "float16",
        "BF16": "bfloat16",
        "U32": "uint32",
        "I32": "int32",
        "F32": "float32",
        "U64": "uint64",
        "I64": "int64",
        "F64": "float64",
        "C64": "complex64",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "F8_E8M0": "float8_e8m0fnu",
    }
    return {k: getattr(torch, v) for k, v in names.items() if hasattr(torch, v)}


def to_numpy(name: str, dtype: str, shape: list[int], data: bytearray) -> Any:
    import numpy as np

    if dtype not in NUMPY:
        raise FormatError(
            f"tensor {name!r} has dtype {dtype}, which NumPy cannot represent; "
            "load it with deeplock.torch"
        )
    return np.frombuffer(data, dtype=np.dtype(NUMPY[dtype]).newbyteorder("<")).reshape(shape)


def torch_converter(device: str) -> Callable[[str, str, list[int], bytearray], Any]:
    import torch

    dtypes = torch_dtypes()

    def convert(name: str, dtype: str, shape: list[int], data: bytearray) -> Any:
        if dtype not in dtypes:
            raise FormatError(f"tensor {name!r} has dtype {dtype}, which this torch lacks")
        if len(data) == 0:
            t = torch.empty(shape, dtype=dtypes[dtype])
        else:
            t = torch.frombuffer(data, dtype=torch.uint8).view(dtypes[dtype]).reshape(shape)
        return t if device == "cpu" else t.to(device)

    return convert


def converter(framework: str, device: str = "cpu") -> Callable[..., Any]:
    """The function turning a tensor's unlocked bytes into `framework`'s array."""
    if framework in ("np", "numpy"):
        return to_numpy
    if framework in ("pt", "torch"):
        return torch_converter(device)
    raise ValueError(f"framework {framework!r}: use 'np' or 'pt'")
