"""Locked transformers checkpoints loaded in memory: the model `from_pretrained` gives on
the unlocked copy, from a locked file or sharded directory, with no plaintext on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._native import Key, checked_shards
from ._open import load


def load_state_dict(path: str | os.PathLike, key: Key, device: str = "cpu") -> dict[str, Any]:
    """Every tensor of a locked checkpoint (one safetensors file, or a directory whose
    shards are checked against its `deeplock.checkpoint` record first) as torch tensors."""
    path = Path(path)
    files = [path] if path.is_file() else checked_shards(os.fspath(path), key)
    state: dict[str, Any] = {}
    for f in files:
        state.update(load(f, key, "pt", device))
    return state


def from_pretrained(model_class: Any, path: str | os.PathLike, key: Key, **kwargs: Any) -> Any:
    """`model_class.from_pretrained(path, **kwargs)` for a locked checkpoint: the config
    (kept in the clear beside the shards) is read from `path`, the weights are checked
    and unlocked in memory. `model_class` may be a concrete class or an Auto class."""
    from transformers import AutoConfig

    path = Path(path)
    config_dir = path if path.is_dir() else path.parent
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(config_dir)
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is not None:
        # An Auto class resolves its concrete class from the config; its own
        # from_pretrained needs a path to weights, which a locked model must not give.
        model_class = mapping[type(config)]
    state = load_state_dict(path, key)
    return model_class.from_pretrained(None, config=config, state_dict=state, **kwargs)
