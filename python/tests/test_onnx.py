"""ONNX models locked by the CLI: still valid ONNX (the checker passes, ONNX Runtime runs
them, with garbage outputs), verified, unlocked in memory into ONNX Runtime with outputs
identical to the original's, unlocked to files byte for byte, and tampers refused with
nothing written. Models are built here with onnx.helper, random weights, no downloads."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import deeplock
from cli import run


def init(name, array, typed=False):
    """An initializer: raw_data, or float_data / int64_data typed fields with `typed`."""
    if not typed:
        return numpy_helper.from_array(array, name)
    dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor(name, dtype, array.shape, array.flatten().tolist())


def mlp(rng, typed=False):
    """Gemm/Relu/Gemm, with an int64 initializer (a Reshape's shape: varints, reported)."""
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    b1 = rng.standard_normal(32).astype(np.float32)
    w2 = rng.standard_normal((32, 4)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    shape = np.array([-1, 4], dtype=np.int64)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y0"], name="fc2"),
        helper.make_node("Reshape", ["y0", "shape"], ["y"]),
    ]
    inits = [
        init("w1", w1, typed),
        init("b1", b1),
        init("w2", w2),
        init("b2", b2, typed),
        init("shape", shape, typed=True),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": rng.standard_normal((3, 16)).astype(np.float32)}


def cnn(rng):
    """Conv/Relu/MaxPool/Flatten/Gemm."""
    conv_w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(4).astype(np.float32)
    fc_w = rng.standard_normal((4 * 3 * 3, 5)).astype(np.float32)
    fc_b = rng.standard_normal(5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc"),
    ]
    inits = [
        init(n, a)
        for n, a in [("conv_w", conv_w), ("conv_b", conv_b), ("fc_w", fc_w), ("fc_b", fc_b)]
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": rng.standard_normal((2, 1, 8, 8)).astype(np.float32)}


MODELS = {
    "mlp": lambda rng: mlp(rng),
    "mlp_typed": lambda rng: mlp(rng, typed=True),
    "cnn": cnn,
}


def outputs(model_bytes, feeds):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture(params=sorted(MODELS))
def saved(request, tmp_path, seed):
    rng = np.random.default_rng(seed)
    model, feeds = MODELS[request.param](rng)
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path)
    return request.param, path, feeds


def lock(path, key_file, out=None, *extra):
    out = out or path.with_name("locked.onnx")
    proc = run("lock", path, "-o", out, "--key-file", key_file, *extra)
    return out, proc


def test_locked_model_is_valid_onnx_and_unlocks_exactly(saved, key_file, key):
    name, path, feeds = saved
    original = path.read_bytes()
    expect = outputs(original, feeds)
    locked, proc = lock(path, key_file)
    # The int64 initializer is reported, not locked.
    notice = 'tensor "shape" left in the clear' in proc.stderr
    assert notice == (name != "cnn"), proc.stderr
    model = onnx.load(locked)
    onnx.checker.check_model(model)
    got = outputs(locked.read_bytes(), feeds)
    # Garbage weights: outputs far from the original's (NaN or large).
    assert not any(np.allclose(g, e) for g, e in zip(got, expect))
    run("verify", locked, "--key-file", key_file)
    # In memory: bytes for ONNX Runtime, identical outputs.
    data = deeplock.unlock_to_bytes(locked, key)
    assert data == original
    for g, e in zip(outputs(data, feeds), expect):
        assert np.array_equal(g, e)
    # To a file: byte for byte.
    back = path.with_name("back.onnx")
    run("unlock", locked, "-o", back, "--key-file", key_file)
    assert back.read_bytes() == original


def test_tampered_locked_model_is_refused_in_memory(tmp_path, key_file, key, seed):
    model, _ = mlp(np.random.default_rng(seed))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path)
    locked, _ = lock(path, key_file)
    data = bytearray(locked.read_bytes())
    # A bit of w1's locked bytes.
    at = data.index(b"\x42\x02w1") + 4
    data[at + 8] ^= 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(deeplock.AuthenticationError):
        deeplock.unlock_to_bytes(bad, key)
    with pytest.raises(deeplock.WrongKeyError):
        deeplock.unlock_to_bytes(locked, deeplock.Key.generate())


@pytest.mark.parametrize("one_file", [True, False], ids=["one-data-file", "file-per-tensor"])
def test_external_data_is_locked_in_place_and_loads_from_memory(
    tmp_path, key_file, key, seed, one_file
):
    model, feeds = cnn(np.random.default_rng(seed))
    src = tmp_path / "m"
    src.mkdir()
    path = src / "model.onnx"
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=one_file,
        location="model.onnx.data" if one_file else None,
        size_threshold=0,
    )
    original = {p.name: p.read_bytes() for p in src.iterdir()}
    assert len(original) == (2 if one_file else 5), sorted(original)
    expect = ort.InferenceSession(str(path)).run(None, feeds)
    assert "left in the clear" not in run("inspect", path).stdout
    out = tmp_path / "l"
    out.mkdir()
    run("lock", path, "-o", out / "model.onnx", "--key-file", key_file)
    locked = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(locked) == sorted(original)
    for name, data in original.items():
        if name != "model.onnx":
            assert len(locked[name]) == len(data) and locked[name] != data, name
    # Still a valid model with its data files, which ONNX Runtime runs: garbage.
    onnx.checker.check_model(str(out / "model.onnx"))
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, feeds)
    assert not any(np.allclose(g, e) for g, e in zip(got, expect))
    run("verify", out / "model.onnx", "--key-file", key_file)
    # In memory: the model's bytes, and its data files for ONNX Runtime's in-memory
    # external data; no plaintext file.
    model_bytes, data = deeplock.unlock_with_data(out / "model.onnx", key)
    assert model_bytes == original["model.onnx"]
    assert data == {n: b for n, b in original.items() if n != "model.onnx"}
    options = ort.SessionOptions()
    names = list(data)
    options.add_external_initializers_from_files_in_memory(
        names, [data[n] for n in names], [len(data[n]) for n in names]
    )
    session = ort.InferenceSession(model_bytes, options)
    for g, e in zip(session.run(None, feeds), expect):
        assert np.array_equal(g, e)
    with pytest.raises(deeplock.FormatError, match="unlock_with_data"):
        deeplock.unlock_to_bytes(out / "model.onnx", key)
    # To files: every one byte for byte.
    back = tmp_path / "u"
    back.mkdir()
    run("unlock", out / "model.onnx", "-o", back / "model.onnx", "--key-file", key_file)
    assert {p.name: p.read_bytes() for p in back.iterdir()} == original
    # A data file's bit flipped, or the file cut short: refused, nothing written.
    name = sorted(n for n in original if n != "model.onnx")[0]
    for bad in (
        locked[name][:5] + bytes([locked[name][5] ^ 1]) + locked[name][6:],
        locked[name][:-1],
    ):
        (out / name).write_bytes(bad)
        with pytest.raises((deeplock.AuthenticationError, deeplock.FormatError)):
            deeplock.unlock_with_data(out / "model.onnx", key)
        proc = run(
            "unlock",
            out / "model.onnx",
            "-o",
            tmp_path / "x.onnx",
            "--key-file",
            key_file,
            check=False,
        )
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.onnx").exists()
    (out / name).write_bytes(locked[name])
