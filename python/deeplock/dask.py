"""A checkpoint locked shard by shard on a Dask cluster, where its shards lie, then
joined on the client by the cheap final step of authenticated locking.

    from distributed import Client
    import deeplock.dask

    client = Client("tcp://scheduler:8786")
    deeplock.dask.lock_checkpoint(
        client, "/shared/ckpt", "/shared/ckpt-locked", key_file="/secrets/model.key"
    )

Needs `distributed` (`pip install ./python[dask]`) and deeplock installed on every
worker. `src_dir` and `dst_dir` must be paths that the client and every worker see alike
(one shared or network filesystem): each worker reads the shards it is given from
`src_dir` and writes them locked into a new directory beside `dst_dir`, which the client
then joins (writes its `deeplock.checkpoint` record, every shard's key and header tag
checked) and moves into place.

The key never travels: the client and each worker load it themselves from the key file
at `key_file`, or from the key file named by the environment variable `key_env` in
their own environment (`DEEPLOCK_KEY_FILE` when neither is given). Only that path or
variable name is in the task arguments; a `deeplock.Key` refuses to be pickled. Each
worker's key is checked against the client's (by its key check value, then by the
join): a worker holding another key fails the whole call with `WrongKeyError`.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from typing import Any

try:
    from distributed import wait
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("deeplock.dask needs Dask's distributed: pip install 'deeplock[dask]'") from e

from . import _native
from ._native import Key, WrongKeyError

__all__ = ["lock_checkpoint"]

DEFAULT_KEY_ENV = "DEEPLOCK_KEY_FILE"

_SUMMED = ("files", "tensors", "transformed", "data_bytes", "transformed_bytes", "clear_bool")


def _load_key(key_file: str | None, key_env: str | None) -> Key:
    """The key as this process (the client or a worker) finds it."""
    if key_file is not None:
        return Key.from_file(key_file)
    return Key.from_env(key_env)


def _lock_shard(
    src: str, dst: str, key_file: str | None, key_env: str | None
) -> tuple[str, dict[str, Any]]:
    """On a worker: locks the shard `src` into `dst` under the key this worker loads
    itself; returns that key's check value (public) and the lock's report."""
    key = _load_key(key_file, key_env)
    report = _native.lock_file(src, dst, key)
    return key.kcv, report


def _copy_file(src: str, dst: str) -> None:
    """On a worker: copies the file `src` (not a shard) to `dst` as it is, with its
    permissions."""
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def lock_checkpoint(
    client: Any,
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    *,
    key_file: str | os.PathLike | None = None,
    key_env: str | None = None,
    force: bool = False,
    exclude: list[str] | None = None,
    allow_plaintext: list[str] | None = None,
) -> dict[str, Any]:
    """Locks the checkpoint directory `src_dir` into `dst_dir` on the Dask cluster of
    `client` (a synchronous `distributed.Client`): one task per shard, each locked by a
    worker with deeplock's file lock, the other files copied by workers as they are,
    then the shards joined on the client by the checkpoint record. The result is what
    `deeplock lock src_dir -o dst_dir` writes on one machine: `deeplock verify` accepts
    it and `deeplock unlock` restores the checkpoint.

    `src_dir` and `dst_dir` must name the same directories on the client and on every
    worker (a shared filesystem); deeplock must be installed on every worker.

    The key: the client and each worker load it from the key file `key_file`, or from
    the key file named by their own environment variable `key_env` (by default
    `DEEPLOCK_KEY_FILE`); pass one or neither. Only the path or the variable's name is
    sent to the workers. A worker whose key differs raises `WrongKeyError`.

    Listed and refused as `lock_file` lists and refuses a directory (`.git` and key
    files left out, `exclude` globs left out, weights deeplock cannot lock refused
    unless `allow_plaintext` allows them). An existing `dst_dir` is replaced only with
    `force`. Nothing is written to `dst_dir` unless every shard locked and joined: on
    any failure (the first task's error is raised, once every task has ended) the new
    directory, built beside `dst_dir`, is deleted with everything in it.

    Returns a report: `files` (shards), `copied`, `tensors`, `transformed`,
    `data_bytes`, `transformed_bytes`, `clear_bool`, `skipped` (`(path, why)` each),
    `plaintext` (weights copied in the clear, as allowed) and `seconds`.
    """
    started = time.monotonic()
    if key_file is not None and key_env is not None:
        raise TypeError("pass key_file or key_env, not both")
    if key_file is not None:
        # Workers may run elsewhere: an absolute path, as the client resolves it.
        key_file = os.path.abspath(os.fspath(key_file))
    elif key_env is None:
        key_env = DEFAULT_KEY_ENV
    key = _load_key(key_file, key_env)
    # The key file in use is protected (never copied, never overwritten) as lock_file
    # protects it; under key_env, as the client's environment names it.
    protected = key_file if key_file is not None else os.environ[key_env]
    src = os.path.abspath(os.fspath(src_dir))
    dst = os.path.abspath(os.fspath(dst_dir))
    listing = _native.lock_listing(src, exclude, allow_plaintext, protected)

    def fill(tmp: os.PathLike[str]) -> dict[str, Any]:
        for rel in listing["dirs"]:
            os.mkdir(os.path.join(tmp, rel), 0o700)
        shards, copies = [], []
        for rel, kind in listing["files"]:
            args = (os.path.join(src, rel), os.path.join(tmp, rel))
            if kind == "shard":
                task = client.submit(_lock_shard, *args, key_file, key_env, pure=False)
                shards.append((rel, task))
            else:
                copies.append(client.submit(_copy_file, *args, pure=False))
        futures = [f for _, f in shards] + copies
        try:
            # Every task ended, failed or not, before anything is raised: no worker is
            # still writing into `tmp` when it is deleted.
            wait(futures)
            results = client.gather([f for _, f in shards])
            client.gather(copies)
        finally:
            client.cancel(futures)
        report: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
        for (rel, _), (kcv, r) in zip(shards, results):
            if kcv != key.kcv:
                raise WrongKeyError(
                    f"{os.path.join(src, rel)} was locked on a worker whose key (kcv {kcv}) "
                    f"is not the client's (kcv {key.kcv}); give every worker the same "
                    "key file; nothing was written"
                )
            for name in _SUMMED:
                report[name] += r[name]
        _native.join(tmp, key)
        # The record, like each file, as readable as its input (the directory's read and
        # write bits, not its search bits); parents last, since a directory made
        # read-only would refuse its own entries.
        os.chmod(os.path.join(tmp, _native.CHECKPOINT_RECORD), _mode(src) & 0o666)
        for rel in reversed(listing["dirs"]):
            os.chmod(os.path.join(tmp, rel), _mode(os.path.join(src, rel)))
        report["copied"] = len(copies)
        return report

    report = _native.write_dir(src, dst, fill, force, protected)
    report["skipped"] = listing["skipped"]
    report["plaintext"] = listing["plaintext"]
    report["seconds"] = time.monotonic() - started
    return report
