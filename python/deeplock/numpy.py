"""Locked safetensors files to and from NumPy arrays, in memory (the shape of
`safetensors.numpy`)."""

from __future__ import annotations

import os

import numpy as np

from . import _native
from ._convert import NUMPY
from ._native import FormatError, Key
from ._open import load

_TO_SAFETENSORS = {np.dtype(v).name: k for k, v in NUMPY.items()}


def load_file(path: str | os.PathLike, key: Key) -> dict[str, np.ndarray]:
    """Every tensor of the locked file at `path`, checked then unlocked, as arrays.
    Arrays share the buffers the file was read into (one copy of the model)."""
    return load(path, key, "np")


def save_file(
    tensors: dict[str, np.ndarray],
    path: str | os.PathLike,
    key: Key,
    metadata: dict[str, str] | None = None,
    force: bool = False,
) -> None:
    """Writes `tensors` to `path` as a locked safetensors file (scheme v2), straight from
    memory; `deeplock unlock` gives the file `safetensors.numpy.save_file` would write."""
    items = []
    for name, a in tensors.items():
        a = np.asarray(a)
        dtype = _TO_SAFETENSORS.get(a.dtype.name)
        if dtype is None:
            raise FormatError(f"tensor {name!r} has dtype {a.dtype}, which safetensors lacks")
        data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
        items.append((name, dtype, list(a.shape), data.tobytes()))
    _native.save_file(items, os.fspath(path), key, list((metadata or {}).items()), force)
