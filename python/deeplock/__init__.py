"""deeplock: Deep-Lock-locked models loaded into NumPy, PyTorch, transformers and Keras
in memory, every tensor checked against its tag before it is returned.

    import deeplock, deeplock.numpy
    key = deeplock.Key.from_file("model.key")
    tensors = deeplock.numpy.load_file("model.locked.safetensors", key)

The work runs in Rust (the deeplock crate) with the GIL released; no plaintext is
written to disk by any loader.
"""

from ._native import (
    AlreadyLockedError,
    AuthenticationError,
    DeeplockError,
    FormatError,
    Key,
    NotLockedError,
    OutputExistsError,
    WrongKeyError,
    checked_shards,
    inspect,
    join,
    lock_file,
    unlock_file,
    unlock_to_bytes,
    unlock_with_data,
    verify,
)
from ._open import safe_open

__all__ = [
    "AlreadyLockedError",
    "AuthenticationError",
    "DeeplockError",
    "FormatError",
    "Key",
    "NotLockedError",
    "OutputExistsError",
    "WrongKeyError",
    "checked_shards",
    "inspect",
    "join",
    "lock_file",
    "safe_open",
    "unlock_file",
    "unlock_to_bytes",
    "unlock_with_data",
    "verify",
]
