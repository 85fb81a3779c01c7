"""`safe_open`: a locked file opened lazily, each tensor read, checked and unlocked on
demand, as `safetensors.safe_open` reads an unlocked one."""

from __future__ import annotations

import os
from typing import Any

from . import _convert
from ._native import Key, NativeReader


class safe_open:  # noqa: N801 - the name safetensors users know
    """Opens the locked file at `path` under `key` (its key and header tag are checked
    here); `get_tensor(name)` reads that tensor alone, checks its tag, and unlocks it.

        with deeplock.safe_open("m.safetensors", framework="pt", key=key) as f:
            w = f.get_tensor("fc1.weight")
    """

    def __init__(
        self, path: str | os.PathLike, framework: str = "np", *, key: Key, device: str = "cpu"
    ):
        self._convert = _convert.converter(framework, device)
        self._reader = NativeReader(os.fspath(path), key)
        self._entries = {name: (dtype, shape) for name, dtype, shape in self._reader.tensors()}

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader = None

    def _open_reader(self) -> NativeReader:
        if self._reader is None:
            raise ValueError("this deeplock.safe_open is closed")
        return self._reader

    def keys(self) -> list[str]:
        """The tensor names, sorted."""
        return sorted(self._entries)

    def metadata(self) -> dict[str, str]:
        """The user's metadata (deeplock's own record left out)."""
        return dict(self._open_reader().metadata())

    def get_tensor(self, name: str) -> Any:
        """Tensor `name`, checked against its tag, then unlocked."""
        reader = self._open_reader()
        if name not in self._entries:
            raise KeyError(f"no tensor named {name!r} in this file")
        dtype, shape = self._entries[name]
        return self._convert(name, dtype, shape, reader.read(name))


def load(path: str | os.PathLike, key: Key, framework: str, device: str = "cpu") -> dict:
    """Every tensor of the locked file at `path`, as `framework`'s arrays."""
    with safe_open(path, framework, key=key, device=device) as f:
        return {name: f.get_tensor(name) for name in f.keys()}
