"""Keras 3 model weights saved locked and loaded in memory, any backend."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from . import numpy as dl_numpy
from ._native import FormatError, Key, NativeReader

# Metadata key listing the weights' paths in the model's order.
_ORDER = "keras.weights"


def save_weights(model: Any, path: str | os.PathLike, key: Key, force: bool = False) -> None:
    """Writes `model`'s weights to `path` as a locked safetensors file, by their paths."""
    weights = model.weights
    tensors = {v.path: np.asarray(v.numpy()) for v in weights}
    if len(tensors) != len(weights):
        raise FormatError("the model has two weights with the same path; name its layers")
    order = json.dumps([v.path for v in weights])
    dl_numpy.save_file(tensors, path, key, metadata={_ORDER: order}, force=force)


def load_weights(model: Any, path: str | os.PathLike, key: Key) -> None:
    """Sets `model`'s weights from the locked file at `path` (every tag checked before
    any weight is set), matched by path; a model rebuilt in the same process, whose
    layers got new names, is matched by position when shapes agree."""
    order = json.loads(dict(NativeReader(os.fspath(path), key).metadata()).get(_ORDER, "[]"))
    tensors = dl_numpy.load_file(path, key)
    weights = model.weights
    paths = [v.path for v in weights]
    if set(paths) != set(tensors):
        if len(order) != len(weights):
            raise FormatError(
                f"{os.fspath(path)} holds {len(tensors)} weights, the model has {len(weights)}"
            )
        paths = order
    for v, p in zip(weights, paths):
        value = tensors[p]
        if tuple(value.shape) != tuple(v.shape):
            raise FormatError(
                f"weight {p!r} has shape {tuple(value.shape)} in the file, "
                f"{tuple(v.shape)} in the model"
            )
    for v, p in zip(weights, paths):
        v.assign(tensors[p])
