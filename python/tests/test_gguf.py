"""GGUF models locked by the CLI: still GGUF that the `gguf` package's reader opens (the
same key-values, tensor names, types and shapes, every tensor's bytes changed, the
record as deeplock.* string fields), verified, unlocked in memory to the original bytes,
which the reader then parses to the original tensors, unlocked to a file byte for byte,
and tampers refused. Files are written here with gguf.GGUFWriter: F32, F16, Q8_0 and
Q4_0 tensors of random values, no downloads."""

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import quantize

import deeplock
from cli import run


def write_model(path, rng):
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(2)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((4, 7)).astype(np.float16))
    for name, kind, shape in [
        ("blk.0.ffn_up.weight", T.Q8_0, (2, 64)),
        ("output.weight", T.Q4_0, (3, 96)),
    ]:
        q = quantize(rng.standard_normal(shape).astype(np.float32), kind)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensors(path):
    r = gguf.GGUFReader(path)
    return {
        t.name: (t.tensor_type, tuple(int(d) for d in t.shape), t.data.tobytes()) for t in r.tensors
    }, r


@pytest.fixture
def model(tmp_path, seed):
    path = tmp_path / "model.gguf"
    write_model(path, np.random.default_rng(seed))
    return path


def test_locked_model_is_gguf_and_unlocks_exactly(model, key_file, key, tmp_path):
    original = model.read_bytes()
    before, _ = tensors(model)
    locked = tmp_path / "locked.gguf"
    run("lock", model, "-o", locked, "--key-file", key_file)
    after, reader = tensors(locked)
    assert set(after) == set(before)
    types = {T.F32, T.F16, T.Q8_0, T.Q4_0}
    assert {t for t, _, _ in before.values()} == types
    for name, (kind, shape, data) in before.items():
        assert after[name][:2] == (kind, shape), name
        assert after[name][2] != data, f"{name} left in the clear"
    fields = reader.fields
    assert bytes(fields["general.name"].parts[-1]).decode() == "tiny"
    assert "deeplock.salt" in fields and "deeplock.mac" in fields
    # Block types are named as GGUF names them, with their shapes in elements.
    (found,) = deeplock.inspect(locked)
    shown = {t["name"]: (t["dtype"], t["stored_type"], t["stored_shape"]) for t in found["tensors"]}
    assert shown["blk.0.ffn_up.weight"] == ("U8", "Q8_0", [2, 64])
    assert shown["output.weight"] == ("U8", "Q4_0", [3, 96])
    assert shown["token_embd.weight"] == ("F32", None, None)
    run("verify", locked, "--key-file", key_file)
    # In memory, verified first: the original bytes, which parse to the same tensors.
    data = deeplock.unlock_to_bytes(locked, key)
    assert data == original
    back = tmp_path / "back.gguf"
    run("unlock", locked, "-o", back, "--key-file", key_file)
    assert back.read_bytes() == original
    again, _ = tensors(back)
    assert again == before


def test_tampered_or_wrong_key_is_refused(model, key_file, key, tmp_path):
    locked = tmp_path / "locked.gguf"
    run("lock", model, "-o", locked, "--key-file", key_file)
    _, reader = tensors(locked)
    data = bytearray(locked.read_bytes())
    at = int(reader.tensors[-1].data_offset) + 3
    data[at] ^= 0x10
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(deeplock.AuthenticationError):
        deeplock.unlock_to_bytes(bad, key)
    proc = run("unlock", bad, "-o", tmp_path / "out.gguf", "--key-file", key_file, check=False)
    assert proc.returncode != 0 and "modified after locking" in proc.stderr
    assert not (tmp_path / "out.gguf").exists()
    with pytest.raises(deeplock.WrongKeyError):
        deeplock.unlock_to_bytes(locked, deeplock.Key.generate())
    # A key-value edited ("tiny" -> "tinY").
    data = bytearray(locked.read_bytes())
    data[data.index(b"tiny") + 3] = ord("Y")
    bad.write_bytes(bytes(data))
    with pytest.raises(deeplock.DeeplockError):
        deeplock.unlock_to_bytes(bad, key)
