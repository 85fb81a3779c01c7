"""Locked safetensors files to and from torch tensors, in memory (the shape of
`safetensors.torch`)."""

from __future__ import annotations

import os

import torch

from . import _native
from ._convert import torch_dtypes
from ._native import FormatError, Key
from ._open import load


def load_file(path: str | os.PathLike, key: Key, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the locked file at `path`, checked then unlocked, on `device`."""
    return load(path, key, "pt", device)


def save_file(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    key: Key,
    metadata: dict[str, str] | None = None,
    force: bool = False,
) -> None:
    """Writes `tensors` to `path` as a locked safetensors file (scheme v2), straight from
    memory; `deeplock unlock` gives the file `safetensors.torch.save_file` would write."""
    names = {v: k for k, v in torch_dtypes().items()}
    items = []
    for name, t in tensors.items():
        dtype = names.get(t.dtype)
        if dtype is None:
            raise FormatError(f"tensor {name!r} has dtype {t.dtype}, which safetensors lacks")
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        items.append((name, dtype, list(t.shape), data))
    _native.save_file(items, os.fspath(path), key, list((metadata or {}).items()), force)
