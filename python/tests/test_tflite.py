"""TensorFlow Lite models locked by the CLI run in LiteRT (ai-edge-litert) with garbage
weights, and unlocked in memory or to a file they are the original, byte for byte and
output for output. The models are written here with the `flatbuffers` package, table
by table per schema.fbs: a float MLP (FULLY_CONNECTED, RELU, FULLY_CONNECTED), an
int8-quantized layer (int8 weights, int32 bias, quantization parameters) and one whose
buffers lie after the flatbuffer by offset and size."""

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import deeplock
from cli import run

FULLY_CONNECTED, RELU = 9, 19
FLOAT32, INT32, INT8 = 0, 2, 9


def _vector_i32(b, values):
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependInt32(v)
    return b.EndVector()


def _vector_f32(b, values):
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return b.EndVector()


def _vector_i64(b, values):
    b.StartVector(8, len(values), 8)
    for v in reversed(values):
        b.PrependInt64(v)
    return b.EndVector()


def _vector_offsets(b, offsets):
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _bytes(b, data: bytes):
    b.StartVector(1, len(data), 16)
    for x in reversed(data):
        b.PrependUint8(x)
    return b.EndVector()


def build_model(tensors, ops, inputs, outputs, buffers, external=False) -> bytes:
    """A .tflite file: `tensors` as (name, type, shape, buffer, quant or None), `ops` as
    (builtin code, inputs, outputs), `buffers` the bytes of buffers 1.. (0 is the empty
    one); with `external`, those are stored after the flatbuffer by offset and size."""
    b = flatbuffers.Builder(1024)
    codes = sorted({op[0] for op in ops})
    code_offsets = []
    for c in codes:
        b.StartObject(4)
        b.PrependInt8Slot(0, c, 0)
        b.PrependInt32Slot(2, 1, 1)
        b.PrependInt32Slot(3, c, 0)
        code_offsets.append(b.EndObject())
    tensor_offsets = []
    for name, ty, shape, buf, quant in tensors:
        n = b.CreateString(name)
        s = _vector_i32(b, shape)
        q = None
        if quant is not None:
            scale, zero = _vector_f32(b, quant[0]), _vector_i64(b, quant[1])
            b.StartObject(7)
            b.PrependUOffsetTRelativeSlot(2, scale, 0)
            b.PrependUOffsetTRelativeSlot(3, zero, 0)
            q = b.EndObject()
        b.StartObject(10)
        b.PrependUOffsetTRelativeSlot(0, s, 0)
        b.PrependInt8Slot(1, ty, 0)
        b.PrependUint32Slot(2, buf, 0)
        b.PrependUOffsetTRelativeSlot(3, n, 0)
        if q is not None:
            b.PrependUOffsetTRelativeSlot(4, q, 0)
        tensor_offsets.append(b.EndObject())
    op_offsets = []
    for code, ins, outs in ops:
        i, o = _vector_i32(b, ins), _vector_i32(b, outs)
        b.StartObject(13)
        b.PrependUint32Slot(0, codes.index(code), 0)
        b.PrependUOffsetTRelativeSlot(1, i, 0)
        b.PrependUOffsetTRelativeSlot(2, o, 0)
        op_offsets.append(b.EndObject())
    tv, iv, ov = _vector_offsets(b, tensor_offsets), _vector_i32(b, inputs), _vector_i32(b, outputs)
    opv, sg_name = _vector_offsets(b, op_offsets), b.CreateString("main")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tv, 0)
    b.PrependUOffsetTRelativeSlot(1, iv, 0)
    b.PrependUOffsetTRelativeSlot(2, ov, 0)
    b.PrependUOffsetTRelativeSlot(3, opv, 0)
    b.PrependUOffsetTRelativeSlot(4, sg_name, 0)
    sg = b.EndObject()
    # External buffers get their offsets once the flatbuffer's length is known: a
    # placeholder of the same width first, patched below.
    placeholder = 0x7A6B5C4D3E2F1A0B
    buffer_offsets = []
    b.StartObject(3)
    buffer_offsets.append(b.EndObject())
    for i, data in enumerate(buffers):
        if external:
            b.StartObject(3)
            b.PrependUint64Slot(1, placeholder + i, 0)
            b.PrependUint64Slot(2, len(data), 0)
        else:
            d = _bytes(b, data)
            b.StartObject(3)
            b.PrependUOffsetTRelativeSlot(0, d, 0)
        buffer_offsets.append(b.EndObject())
    bv = _vector_offsets(b, buffer_offsets)
    cv = _vector_offsets(b, code_offsets)
    sv = _vector_offsets(b, [sg])
    desc = b.CreateString("deeplock test model")
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, cv, 0)
    b.PrependUOffsetTRelativeSlot(2, sv, 0)
    b.PrependUOffsetTRelativeSlot(3, desc, 0)
    b.PrependUOffsetTRelativeSlot(4, bv, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    out = bytearray(b.Output())
    if external:
        for i, data in enumerate(buffers):
            out.extend(b"\0" * (-len(out) % 64))
            at = out.index((placeholder + i).to_bytes(8, "little"))
            out[at : at + 8] = len(out).to_bytes(8, "little")
            out.extend(data)
    return bytes(out)


def float_mlp(rng, external=False) -> bytes:
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((4, 16)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    tensors = [
        ("input", FLOAT32, [1, 8], 0, None),
        ("dense/kernel", FLOAT32, [16, 8], 1, None),
        ("dense/bias", FLOAT32, [16], 2, None),
        ("dense/out", FLOAT32, [1, 16], 0, None),
        ("relu", FLOAT32, [1, 16], 0, None),
        ("dense_1/kernel", FLOAT32, [4, 16], 3, None),
        ("dense_1/bias", FLOAT32, [4], 4, None),
        ("output", FLOAT32, [1, 4], 0, None),
    ]
    ops = [(FULLY_CONNECTED, [0, 1, 2], [3]), (RELU, [3], [4]), (FULLY_CONNECTED, [4, 5, 6], [7])]
    buffers = [a.tobytes() for a in (w1, b1, w2, b2)]
    return build_model(tensors, ops, [0], [7], buffers, external)


def int8_layer(rng) -> bytes:
    # Scales that keep the original's outputs mostly inside int8's range, not saturated.
    w = rng.integers(-127, 128, (16, 8), dtype=np.int8)
    bias = rng.integers(-2000, 2000, 16, dtype=np.int32)
    s_in, s_w, s_out = 0.05, 0.02, 0.5
    tensors = [
        ("input", INT8, [1, 8], 0, ([s_in], [0])),
        ("q/kernel", INT8, [16, 8], 1, ([s_w], [0])),
        ("q/bias", INT32, [16], 2, ([s_in * s_w], [0])),
        ("output", INT8, [1, 16], 0, ([s_out], [3])),
    ]
    ops = [(FULLY_CONNECTED, [0, 1, 2], [3])]
    return build_model(tensors, ops, [0], [3], [w.tobytes(), bias.tobytes()])


def infer(x, **model):
    it = Interpreter(**model)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


MODELS = {
    "float": (float_mlp, np.float32),
    "int8": (int8_layer, np.int8),
    "external": (lambda rng: float_mlp(rng, external=True), np.float32),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_locked_runs_with_garbage_and_unlocks_exactly(tmp_path, key_file, key, seed, kind):
    build, dtype = MODELS[kind]
    rng = np.random.default_rng(seed)
    original = build(rng)
    m, locked, unlocked = tmp_path / "m.tflite", tmp_path / "l.tflite", tmp_path / "u.tflite"
    m.write_bytes(original)
    if dtype == np.int8:
        x = rng.integers(-128, 128, (1, 8), dtype=np.int8)
    else:
        x = rng.standard_normal((1, 8)).astype(np.float32)
    expect = infer(x, model_path=str(m))
    run("lock", m, "-o", locked, "--key-file", key_file)
    # LiteRT loads the locked file, from a path and from bytes, and runs it: garbage.
    for model in ({"model_path": str(locked)}, {"model_content": locked.read_bytes()}):
        got = infer(x, **model)
        assert got.shape == expect.shape
        if dtype == np.int8:
            assert np.mean(got != expect) >= 0.5, (got, expect)
        else:
            with np.errstate(invalid="ignore"):
                far = ~np.isfinite(got) | (np.abs(got - expect) > 1e-2 * (1 + np.abs(expect)))
            assert far.mean() >= 0.5, (got, expect)
    run("verify", locked, "--key-file", key_file)
    data = deeplock.unlock_to_bytes(locked, key)
    assert data == original
    np.testing.assert_array_equal(infer(x, model_content=data), expect)
    run("unlock", locked, "-o", unlocked, "--key-file", key_file)
    assert unlocked.read_bytes() == original
    np.testing.assert_array_equal(infer(x, model_path=str(unlocked)), expect)


def test_tampered_or_wrong_key_is_refused_in_memory_and_by_the_cli(tmp_path, key_file, key, seed):
    rng = np.random.default_rng(seed)
    original = float_mlp(rng)
    m, locked = tmp_path / "m.tflite", tmp_path / "l.tflite"
    m.write_bytes(original)
    run("lock", m, "-o", locked, "--key-file", key_file)
    good = locked.read_bytes()
    shift = len(good) - len(original)
    # A locked weight byte: one that differs from the original at its shifted place.
    at = next(i for i in range(8, len(original)) if good[i + shift] != original[i]) + shift
    bad = bytearray(good)
    bad[at] ^= 1
    t = tmp_path / "t.tflite"
    t.write_bytes(bytes(bad))
    with pytest.raises(deeplock.AuthenticationError):
        deeplock.unlock_to_bytes(t, key)
    proc = run("verify", t, "--key-file", key_file, check=False)
    assert proc.returncode != 0 and "modified after locking" in proc.stderr
    proc = run("unlock", t, "-o", tmp_path / "out.tflite", "--key-file", key_file, check=False)
    assert proc.returncode != 0 and not (tmp_path / "out.tflite").exists()
    with pytest.raises(deeplock.WrongKeyError):
        deeplock.unlock_to_bytes(locked, deeplock.Key.generate())
    t.write_bytes(good[: len(good) - 7])
    with pytest.raises(deeplock.DeeplockError):
        deeplock.unlock_to_bytes(t, key)
