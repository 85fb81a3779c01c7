"""Keras 3 weights saved locked and loaded through the helpers predict identically."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import deeplock  # noqa: E402
import deeplock.keras  # noqa: E402


def build() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def test_save_and_load_predict_identically(tmp_path, key):
    keras.utils.set_random_seed(0)
    model = build()
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 1)).astype(np.float32)
    expect = model.predict(x, verbose=0)
    path = tmp_path / "w.safetensors"
    deeplock.keras.save_weights(model, path, key)
    # Rebuilt in the same process: new layer names, matched by position.
    other = build()
    assert not np.array_equal(other.predict(x, verbose=0), expect)
    deeplock.keras.load_weights(other, path, key)
    np.testing.assert_array_equal(other.predict(x, verbose=0), expect)
    # The weights on disk are locked.
    with pytest.raises(deeplock.WrongKeyError):
        deeplock.keras.load_weights(build(), path, deeplock.Key.generate())


def test_tampered_weights_leave_the_model_untouched(tmp_path, key):
    model = build()
    path = tmp_path / "w.safetensors"
    deeplock.keras.save_weights(model, path, key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    target = build()
    before = [np.array(v.numpy()) for v in target.weights]
    with pytest.raises(deeplock.AuthenticationError):
        deeplock.keras.load_weights(target, path, key)
    for v, b in zip(target.weights, before):
        np.testing.assert_array_equal(v.numpy(), b)
