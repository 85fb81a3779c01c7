"""A large load runs with the GIL released: another Python thread makes progress."""

import threading
import time

import numpy as np

import deeplock
import deeplock.numpy


def test_other_threads_run_during_a_large_load(tmp_path, key):
    path = tmp_path / "big.safetensors"
    deeplock.numpy.save_file({"w": np.ones(48 << 20, dtype=np.float32)}, path, key)
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0)

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.05)
    before = ticks
    start = time.perf_counter()
    loaded = deeplock.numpy.load_file(path, key)
    took = time.perf_counter() - start
    during = ticks - before
    done.set()
    t.join()
    assert loaded["w"].shape == (48 << 20,) and loaded["w"][-1] == 1.0
    # Holding the GIL for the whole load would leave the counter a handful of ticks
    # (at most one per switch interval of 5 ms); released, it runs freely.
    assert during > 20 * (took / 0.005 + 1), (during, took)
