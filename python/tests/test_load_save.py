"""NumPy and torch loaders and writers, against the real safetensors library and the
CLI: every dtype, empty and scalar tensors, drop-in headers, both directions."""

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import deeplock
import deeplock.numpy
import deeplock.torch
from cli import run

TORCH_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.uint16,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.uint32,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def random_tensors(rng: np.random.Generator) -> dict:
    tensors = {}
    for i, dtype in enumerate(TORCH_DTYPES):
        shape = [int(d) for d in rng.integers(0, 5, size=int(rng.integers(0, 4)))]
        n = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        raw = torch.from_numpy(rng.integers(0, 256, size=n, dtype=np.uint8))
        if n == 0:
            t = torch.empty(shape, dtype=dtype)
        elif dtype == torch.bool:
            t = (raw % 2).bool()
        else:
            t = raw.view(dtype)
        tensors[f"t{i}.{str(dtype).split('.')[-1]}"] = t.reshape(shape)
    tensors["scalar"] = torch.tensor(1.5, dtype=torch.float32)
    tensors["empty"] = torch.zeros((0, 7), dtype=torch.float16)
    return tensors


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal, NaNs and all."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    flat = [t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
    return flat[0].equal(flat[1])


def test_torch_round_trip_every_dtype(tmp_path, key, seed):
    rng = np.random.default_rng(seed)
    tensors = random_tensors(rng)
    path = tmp_path / "m.safetensors"
    deeplock.torch.save_file(tensors, path, key, metadata={"format": "pt"})
    loaded = deeplock.torch.load_file(path, key)
    assert sorted(loaded) == sorted(tensors)
    for name, t in tensors.items():
        assert same(loaded[name], t), name
    with deeplock.safe_open(path, framework="pt", key=key) as f:
        assert f.metadata() == {"format": "pt"}
        assert f.keys() == sorted(tensors)
        assert same(f.get_tensor("t9.float32"), tensors["t9.float32"])


def test_locked_file_is_drop_in_for_safetensors(tmp_path, key, seed):
    tensors = random_tensors(np.random.default_rng(seed))
    plain, locked = tmp_path / "p.safetensors", tmp_path / "l.safetensors"
    safetensors.torch.save_file(tensors, plain)
    deeplock.torch.save_file(tensors, locked, key)
    with safetensors.safe_open(plain, "pt") as p, safetensors.safe_open(locked, "pt") as q:
        assert sorted(p.keys()) == sorted(q.keys())
        for name in p.keys():
            a, b = p.get_tensor(name), q.get_tensor(name)
            assert (a.dtype, a.shape) == (b.dtype, b.shape)
    # The locked bytes are not the weights.
    big = safetensors.torch.load_file(locked)["t9.float32"]
    assert big.numel() == 0 or not same(big, tensors["t9.float32"])


def test_cli_locked_loads_in_python_and_python_saved_unlocks_with_cli(
    tmp_path, key, key_file, seed
):
    tensors = random_tensors(np.random.default_rng(seed))
    plain = tmp_path / "p.safetensors"
    safetensors.torch.save_file(tensors, plain)
    run("lock", plain, "-o", tmp_path / "cli.safetensors", "--key-file", key_file)
    loaded = deeplock.torch.load_file(tmp_path / "cli.safetensors", key)
    for name, t in tensors.items():
        assert same(loaded[name], t), name

    deeplock.torch.save_file(tensors, tmp_path / "py.safetensors", key)
    run("verify", tmp_path / "py.safetensors", "--key-file", key_file)
    unlocked_path = tmp_path / "u.safetensors"
    run("unlock", tmp_path / "py.safetensors", "-o", unlocked_path, "--key-file", key_file)
    unlocked = safetensors.torch.load_file(unlocked_path)
    for name, t in tensors.items():
        assert same(unlocked[name], t), name


def test_numpy_round_trip_and_refusals(tmp_path, key, seed):
    rng = np.random.default_rng(seed)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": rng.integers(-(2**40), 2**40, size=(2, 2)),
        "u8": rng.integers(0, 256, size=(0,), dtype=np.uint8),
        "mask": rng.integers(0, 2, size=4).astype(bool),
        "scalar": np.array(2.0),
    }
    path = tmp_path / "m.safetensors"
    deeplock.numpy.save_file(arrays, path, key)
    loaded = deeplock.numpy.load_file(path, key)
    for name, a in arrays.items():
        assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape
        np.testing.assert_array_equal(loaded[name], a)
    # NumPy cannot hold BF16: refused with a clear message, as safetensors.numpy does.
    deeplock.torch.save_file({"w": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "b", key)
    with pytest.raises(deeplock.FormatError, match="BF16.*deeplock.torch"):
        deeplock.numpy.load_file(tmp_path / "b", key)
    # A file unlocked by the CLI reads as safetensors.numpy wrote it.
    b = deeplock.unlock_to_bytes(path, key)
    for name, a in safetensors.numpy.load(b).items():
        np.testing.assert_array_equal(a, arrays[name])


def test_existing_output_needs_force(tmp_path, key):
    path = tmp_path / "m.safetensors"
    deeplock.numpy.save_file({"a": np.ones(3)}, path, key)
    before = path.read_bytes()
    with pytest.raises(deeplock.OutputExistsError, match="force=True"):
        deeplock.numpy.save_file({"a": np.zeros(3)}, path, key)
    assert path.read_bytes() == before
    deeplock.numpy.save_file({"a": np.zeros(3)}, path, key, force=True)
    np.testing.assert_array_equal(deeplock.numpy.load_file(path, key)["a"], np.zeros(3))
    with pytest.raises(deeplock.DeeplockError, match="deeplock"):
        own = {"deeplock.salt": "0"}
        deeplock.numpy.save_file({"a": np.ones(1)}, tmp_path / "x", key, metadata=own)


def test_file_operations(tmp_path, key, key_file):
    plain = tmp_path / "p.safetensors"
    safetensors.numpy.save_file({"w": np.arange(6, dtype=np.float32), "b": np.ones(2)}, plain)
    report = deeplock.lock_file(plain, tmp_path / "l.safetensors", key, only=["w"])
    assert report["transformed"] == 1
    info = deeplock.inspect(tmp_path / "l.safetensors")[0]
    assert info["locked"] and info["authenticated"]
    assert {t["name"]: t["locked"] for t in info["tensors"]} == {"w": True, "b": False}
    assert deeplock.verify(tmp_path / "l.safetensors", key)["tensors"] == 2
    deeplock.unlock_file(tmp_path / "l.safetensors", tmp_path / "u.safetensors", key)
    assert (tmp_path / "u.safetensors").read_bytes() == plain.read_bytes()
    with pytest.raises(deeplock.AlreadyLockedError):
        deeplock.lock_file(tmp_path / "l.safetensors", tmp_path / "ll", key)
    with pytest.raises(deeplock.NotLockedError):
        deeplock.unlock_file(plain, tmp_path / "x", key)
    with pytest.raises(deeplock.NotLockedError):
        deeplock.numpy.load_file(plain, key)
    with pytest.raises(deeplock.OutputExistsError, match="force=True"):
        deeplock.unlock_file(tmp_path / "l.safetensors", tmp_path / "u.safetensors", key)
    # A directory holding weights deeplock cannot lock: the Python argument is named.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(plain.read_bytes())
    (ckpt / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(deeplock.DeeplockError, match=r"exclude=\[GLOB\]"):
        deeplock.lock_file(ckpt, tmp_path / "ckpt-l", key)
    deeplock.lock_file(ckpt, tmp_path / "ckpt-l", key, exclude=["*.bin"])
    assert deeplock.verify(tmp_path / "ckpt-l", key)["checkpoint"]
    run("verify", tmp_path / "ckpt-l", "--key-file", key_file)
