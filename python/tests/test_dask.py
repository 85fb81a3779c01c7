"""deeplock.dask on a real Dask cluster (a LocalCluster of worker processes): a sharded
checkpoint locked shard by shard on the workers and joined on the client verifies and
unlocks with the CLI as the one-machine lock does; a worker with another key, a corrupt
shard or an existing output fails the whole call with nothing left behind; the key is
never in what the client and scheduler send."""

import json
import os
import pathlib
import pickle
import stat
import traceback

import cloudpickle
import dask
import distributed.comm.tcp
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream
from safetensors.numpy import save_file

import deeplock
import deeplock.dask
from cli import keygen, run

SHARDS = 5


def cluster_client(**kwargs):
    cluster = LocalCluster(processes=True, threads_per_worker=1, dashboard_address=":0", **kwargs)
    return cluster, Client(cluster)


@pytest.fixture(scope="module")
def client():
    # Frames as they are written, uncompressed, for the test that looks into them.
    with dask.config.set({"distributed.comm.compression": None}):
        cluster, client = cluster_client(n_workers=3)
        with cluster, client:
            yield client


@pytest.fixture(scope="module")
def worker_key(tmp_path_factory):
    """The key file that the workers of `env_client` find through DEEPLOCK_KEY_FILE."""
    return keygen(tmp_path_factory.mktemp("worker-key") / "worker.key")


@pytest.fixture(scope="module")
def env_client(worker_key):
    """A cluster whose workers' DEEPLOCK_KEY_FILE names `worker_key`."""
    cluster, client = cluster_client(n_workers=2, env={"DEEPLOCK_KEY_FILE": str(worker_key)})
    with cluster, client:
        yield client


@pytest.fixture
def checkpoint(tmp_path, seed):
    """A transformers-style checkpoint: SHARDS random shards (one of several MiB, so
    that its lock outlasts a failing one), their index, a config, a file in a
    subdirectory and a .git directory."""
    rng = np.random.default_rng(seed)
    src = tmp_path / "ckpt"
    src.mkdir()
    weight_map, total = {}, 0
    for i in range(SHARDS):
        name = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        n = 6 << 20 if i == SHARDS - 1 else int(rng.integers(100, 5000))
        tensors = {
            f"layers.{i}.weight": rng.standard_normal(n).astype(np.float32),
            f"layers.{i}.bias": rng.integers(-9, 9, size=(3, 7)).astype(np.int64),
            f"layers.{i}.half": rng.standard_normal(17).astype(np.float16),
        }
        save_file(tensors, str(src / name), metadata={"format": "pt"})
        for t, a in tensors.items():
            weight_map[t] = name
            total += a.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text(json.dumps({"model_type": "toy", "layers": SHARDS}))
    (src / "extra").mkdir()
    (src / "extra" / "notes.txt").write_text("tokenizer notes\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    # Permissions a locked output takes from its input, which no umask gives.
    (src / "config.json").chmod(0o640)
    (src / f"model-00002-of-{SHARDS:05d}.safetensors").chmod(0o604)
    (src / "extra").chmod(0o750)
    src.chmod(0o751)
    return src


def files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def modes(root: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def leftovers(dst: pathlib.Path) -> list[str]:
    """Temporaries of `dst` beside it (`.NAME.deeplock-tmp-...`)."""
    return [p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]


def executing(client) -> int:
    """Tasks running on the workers now."""
    return sum(client.run(lambda dask_worker: dask_worker.state.executing_count).values())


def test_locked_on_workers_verifies_and_unlocks_like_one_machine_lock(
    tmp_path, client, checkpoint, key_file
):
    dst = tmp_path / "locked"
    with get_task_stream(client) as tasks:
        report = deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file=key_file)
    # The shards were locked by several workers, one task each.
    locks = [t for t in tasks.data if t["key"].startswith("_lock_shard")]
    assert len(locks) == SHARDS
    assert len({t["worker"] for t in locks}) > 1
    assert report["files"] == SHARDS
    assert report["copied"] == 3  # the index, the config, extra/notes.txt
    assert report["tensors"] == 3 * SHARDS
    assert [str(p) for p, _ in report["skipped"]] == [".git"]
    assert report["plaintext"] == []

    out = run("verify", dst, "--key-file", key_file).stdout
    assert f"all {SHARDS} locked file(s)" in out and "the checkpoint record authenticated" in out
    unlocked = tmp_path / "unlocked"
    run("unlock", dst, "-o", unlocked, "--key-file", key_file)
    assert files(unlocked) == files(checkpoint)

    # The one-machine lock of the same directory: the same files with the same
    # permissions (the shards' bytes differ only by their random salts), verified and
    # unlocked alike.
    one = tmp_path / "one"
    run("lock", checkpoint, "-o", one, "--key-file", key_file)
    assert modes(dst) == modes(one)
    assert files(dst).keys() == files(one).keys()
    for name in ("model.safetensors.index.json", "config.json", "extra/notes.txt"):
        assert (dst / name).read_bytes() == (one / name).read_bytes()
    for shard in sorted(checkpoint.glob("*.safetensors")):
        assert (dst / shard.name).stat().st_size == (one / shard.name).stat().st_size
        assert (dst / shard.name).read_bytes() != shard.read_bytes()
    assert deeplock.verify(dst, deeplock.Key.from_file(key_file)) == deeplock.verify(
        one, deeplock.Key.from_file(key_file)
    )
    one_unlocked = tmp_path / "one-unlocked"
    run("unlock", one, "-o", one_unlocked, "--key-file", key_file)
    assert files(unlocked) == files(one_unlocked)
    assert leftovers(dst) == []

    # The record binds the shards: a shard of another lock swapped in is refused.
    other = tmp_path / "other"
    deeplock.dask.lock_checkpoint(client, checkpoint, other, key_file=key_file)
    name = "model-00002-of-00005.safetensors"
    (dst / name).chmod(0o644)
    (dst / name).write_bytes((other / name).read_bytes())
    assert run("verify", dst, "--key-file", key_file, check=False).returncode != 0


def test_key_from_each_processs_environment(
    tmp_path, env_client, checkpoint, worker_key, monkeypatch
):
    # The client's DEEPLOCK_KEY_FILE names the workers' key file too (on real machines,
    # each names its own copy): only the variable's name travels.
    monkeypatch.setenv("DEEPLOCK_KEY_FILE", str(worker_key))
    dst = tmp_path / "locked"
    deeplock.dask.lock_checkpoint(env_client, checkpoint, dst)
    run("verify", dst, "--key-file", worker_key)
    run("unlock", dst, "-o", tmp_path / "unlocked", "--key-file", worker_key)
    assert files(tmp_path / "unlocked") == files(checkpoint)


def test_a_worker_with_another_key_fails_the_call(
    tmp_path, env_client, checkpoint, key_file, monkeypatch
):
    # The client's DEEPLOCK_KEY_FILE names `key_file`; the workers' names another key.
    monkeypatch.setenv("DEEPLOCK_KEY_FILE", str(key_file))
    dst = tmp_path / "locked"
    with pytest.raises(deeplock.WrongKeyError, match="was locked on a worker whose key"):
        deeplock.dask.lock_checkpoint(env_client, checkpoint, dst, key_env="DEEPLOCK_KEY_FILE")
    assert executing(env_client) == 0
    assert not dst.exists()
    assert leftovers(dst) == []


@pytest.fixture
def elsewhere(tmp_path, client, monkeypatch):
    """Two working directories, `mine` for this process (the client) and `theirs` for
    the workers, each with its own model.key: one path, a different file in each
    process, as on separate machines."""
    mine, theirs = tmp_path / "client-cwd", tmp_path / "worker-cwd"
    for d in (mine, theirs):
        d.mkdir()
        keygen(d / "model.key")
    monkeypatch.chdir(mine)
    before = client.run(os.getcwd)
    client.run(os.chdir, str(theirs))
    yield mine, theirs
    for worker, cwd in before.items():
        client.run(os.chdir, cwd, workers=[worker])


def test_a_key_file_path_that_workers_read_as_another_key_fails_the_call(
    tmp_path, client, checkpoint, elsewhere
):
    mine, _ = elsewhere
    dst = tmp_path / "locked"
    with pytest.raises(deeplock.WrongKeyError, match="was locked on a worker whose key"):
        deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file="/proc/self/cwd/model.key")
    assert executing(client) == 0
    assert not dst.exists()
    assert leftovers(dst) == []
    # A relative path is the client's: sent to the workers as it resolves here.
    deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file="model.key")
    run("verify", dst, "--key-file", mine / "model.key")


def test_a_file_the_workers_cannot_read_fails_the_call(tmp_path, client, checkpoint, elsewhere):
    # A link that resolves for the client alone: src_dir is not seen alike everywhere.
    mine, _ = elsewhere
    (mine / "vocab.txt").write_text("the client's\n")
    (checkpoint / "vocab.txt").symlink_to("/proc/self/cwd/vocab.txt")
    dst = tmp_path / "locked"
    with pytest.raises(FileNotFoundError, match="vocab.txt") as raised:
        deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file=mine / "model.key")
    assert "_copy_file" in "".join(traceback.format_tb(raised.value.__traceback__))
    assert executing(client) == 0
    assert not dst.exists()
    assert leftovers(dst) == []


def test_corrupt_shard_fails_on_its_worker_and_leaves_nothing(
    tmp_path, client, checkpoint, key_file
):
    shard = checkpoint / "model-00001-of-00005.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    dst = tmp_path / "locked"
    with pytest.raises(deeplock.DeeplockError) as raised:
        deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file=key_file)
    # Raised on the worker that took the shard, and pickled back as deeplock's own type.
    assert type(raised.value).__module__ == "deeplock"
    assert "_lock_shard" in "".join(traceback.format_tb(raised.value.__traceback__))
    assert shard.name in str(raised.value)
    # Every other task ended before the call raised, and nothing is left.
    assert executing(client) == 0
    assert not dst.exists()
    assert leftovers(dst) == []


def test_existing_output_needs_force(tmp_path, client, checkpoint, key_file):
    dst = tmp_path / "locked"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(deeplock.OutputExistsError, match="force=True"):
        deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file=key_file)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert leftovers(dst) == []
    deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file=key_file, force=True)
    assert not (dst / "keep.txt").exists()
    run("verify", dst, "--key-file", key_file)
    assert leftovers(dst) == []


def test_refused_as_lock_file_refuses(tmp_path, client, checkpoint, key_file):
    (checkpoint / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + bytes(60))
    dst = tmp_path / "locked"
    with pytest.raises(deeplock.DeeplockError, match="allow_plaintext"):
        deeplock.dask.lock_checkpoint(client, checkpoint, dst, key_file=key_file)
    assert not dst.exists()
    report = deeplock.dask.lock_checkpoint(
        client, checkpoint, dst, key_file=key_file, exclude=["*.bin"]
    )
    assert ("pytorch_model.bin", "excluded") in [(str(p), w) for p, w in report["skipped"]]
    assert not (dst / "pytorch_model.bin").exists()
    run("verify", dst, "--key-file", key_file)
    with pytest.raises(TypeError, match="not both"):
        deeplock.dask.lock_checkpoint(
            client, checkpoint, tmp_path / "x", key_file=key_file, key_env="DEEPLOCK_KEY_FILE"
        )


def test_key_never_travels(tmp_path, client, checkpoint, key_file, monkeypatch):
    key = deeplock.Key.from_file(key_file)
    hex_key = key_file.read_text().strip()
    secrets = [hex_key.lower().encode(), hex_key.upper().encode(), bytes.fromhex(hex_key)]

    # Every frame this process writes to the scheduler (the client's graph) and to the
    # workers (the scheduler's tasks, run in this process by LocalCluster).
    sent: list[bytes] = []
    to_frames = distributed.comm.tcp.to_frames

    async def recording(msg, **kwargs):
        frames = await to_frames(msg, **kwargs)
        sent.extend(bytes(f) for f in frames)
        return frames

    monkeypatch.setattr(distributed.comm.tcp, "to_frames", recording)
    deeplock.dask.lock_checkpoint(client, checkpoint, tmp_path / "locked", key_file=key_file)
    monkeypatch.undo()
    payload = b"".join(sent)
    # What does travel: the key file's path, and the shards' paths (the capture works).
    assert os.fspath(key_file).encode() in payload
    assert b"model-00003-of-00005.safetensors" in payload
    for s in secrets:
        assert s not in payload
    logs = json.dumps([client.get_scheduler_logs(), client.get_worker_logs()]).encode()
    for s in secrets:
        assert s not in logs

    # A Key cannot be sent by mistake: it refuses pickling, cloudpickle's included.
    for dumps in (pickle.dumps, cloudpickle.dumps):
        with pytest.raises(TypeError, match="cannot be pickled"):
            dumps(key)
    with pytest.raises(Exception, match="Could not serialize") as raised:
        client.submit(lambda k: k.kcv, key, pure=False).result()
    chain, e = [], raised.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("a deeplock.Key cannot be pickled" in m for m in chain)


@pytest.mark.parametrize(
    "cls",
    [
        deeplock.DeeplockError,
        deeplock.WrongKeyError,
        deeplock.AuthenticationError,
        deeplock.NotLockedError,
        deeplock.AlreadyLockedError,
        deeplock.FormatError,
        deeplock.OutputExistsError,
    ],
)
def test_errors_pickle_as_deeplocks_own(cls, client):
    # What a worker's exception goes through on its way to the client.
    e = pickle.loads(pickle.dumps(cls("m.safetensors: message")))
    assert type(e) is cls
    assert cls.__module__ == "deeplock" and getattr(deeplock, cls.__name__) is cls
    assert str(e) == "m.safetensors: message"

    def raise_it(name):
        import deeplock

        raise getattr(deeplock, name)("raised on a worker")

    with pytest.raises(cls, match="raised on a worker") as raised:
        client.submit(raise_it, cls.__name__, pure=False).result()
    assert type(raised.value) is cls
