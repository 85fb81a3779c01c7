"""Wrong keys, tampered, truncated, v1 and unlocked files: the right exception, no
plaintext handed out, nothing left behind."""

import json
import os
import pathlib

import numpy as np
import pytest

import deeplock
import deeplock.numpy
import deeplock.torch

V1 = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/v1/v1.safetensors"
V1_KEY = "000102030405060708090a0b0c0d0e0f"


@pytest.fixture
def locked(tmp_path, key):
    path = tmp_path / "m.safetensors"
    rng = np.random.default_rng(1)
    deeplock.numpy.save_file(
        {"a": rng.standard_normal(1000).astype(np.float32), "b": np.arange(9)}, path, key
    )
    return path


def tensor_start(path: pathlib.Path, name: str) -> int:
    """Where tensor `name`'s bytes start in the safetensors file at `path`."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return 8 + n + json.loads(data[8 : 8 + n])[name]["data_offsets"][0]


def test_wrong_key(locked):
    with pytest.raises(deeplock.WrongKeyError):
        deeplock.numpy.load_file(locked, deeplock.Key.generate())
    with pytest.raises(deeplock.WrongKeyError):
        deeplock.unlock_to_bytes(locked, deeplock.Key.generate())


def test_tampered_tensor_is_refused_and_nothing_written(tmp_path, locked, key):
    data = bytearray(locked.read_bytes())
    data[tensor_start(locked, "a") + 17] ^= 0x01
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    for load in (deeplock.numpy.load_file, deeplock.torch.load_file, deeplock.unlock_to_bytes):
        with pytest.raises(deeplock.AuthenticationError, match="modified after locking"):
            load(bad, key)
    with deeplock.safe_open(bad, key=key) as f:
        with pytest.raises(deeplock.AuthenticationError):
            f.get_tensor("a")
        # The untouched tensor still reads: each tensor is checked alone.
        np.testing.assert_array_equal(f.get_tensor("b"), np.arange(9))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(deeplock.AuthenticationError):
        deeplock.unlock_file(bad, tmp_path / "out.safetensors", key)
    assert sorted(os.listdir(tmp_path)) == before


def test_edited_header_and_truncation(tmp_path, locked, key):
    data = locked.read_bytes()
    edited = data.replace(b'"F32"', b'"I32"', 1)
    assert edited != data
    (tmp_path / "e").write_bytes(edited)
    with pytest.raises(deeplock.AuthenticationError, match="the header"):
        deeplock.numpy.load_file(tmp_path / "e", key)
    (tmp_path / "t").write_bytes(data[:-5])
    with pytest.raises(deeplock.FormatError, match="truncated"):
        deeplock.numpy.load_file(tmp_path / "t", key)
    (tmp_path / "z").write_bytes(b"not a model")
    with pytest.raises(deeplock.FormatError):
        deeplock.numpy.load_file(tmp_path / "z", key)


def test_v1_file_is_refused_with_what_to_do():
    with pytest.raises(deeplock.AuthenticationError, match="deeplock upgrade"):
        deeplock.numpy.load_file(V1, deeplock.Key.from_hex(V1_KEY))


def test_key_never_shown(tmp_path, key_file, locked, key, caplog, capfd):
    text = key_file.read_text().strip()
    caplog.set_level("DEBUG")
    k = deeplock.Key.from_file(key_file)
    assert k == key and k.kcv in repr(k)
    shown = [repr(k), str(k), f"{k}", f"{k!r}"]
    for wrong in ("00" * 15, text + "00", "zz" * 16):
        with pytest.raises(deeplock.DeeplockError) as e:
            deeplock.Key.from_hex(wrong)
        shown.append(str(e.value))
    with pytest.raises(deeplock.WrongKeyError) as e:
        deeplock.numpy.load_file(locked, deeplock.Key.from_hex(text[::-1]))
    shown.append(str(e.value))
    out, err = capfd.readouterr()
    shown += [out, err, caplog.text]
    for s in shown:
        assert text.lower() not in s.lower()
        assert text[::-1].lower() not in s.lower()
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(k)


def test_key_constructors(tmp_path, monkeypatch, key_file, key):
    raw = bytes(range(16))
    assert deeplock.Key.from_bytes(raw) == deeplock.Key.from_hex(raw.hex())
    with pytest.raises(deeplock.DeeplockError, match="15 bytes"):
        deeplock.Key.from_bytes(raw[:15])
    monkeypatch.setenv("DEEPLOCK_KEY_FILE", str(key_file))
    assert deeplock.Key.from_env() == key
    monkeypatch.delenv("DEEPLOCK_KEY_FILE")
    with pytest.raises(deeplock.DeeplockError, match="DEEPLOCK_KEY_FILE"):
        deeplock.Key.from_env()
    path = tmp_path / "new.key"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert deeplock.Key.from_file(path) == key
    with pytest.raises(deeplock.DeeplockError, match="already exists"):
        deeplock.Key.generate().save(path)
    assert deeplock.Key.from_file(path) == key
    with pytest.raises(deeplock.DeeplockError, match="does not exist"):
        deeplock.Key.from_file(tmp_path / "missing.key")
