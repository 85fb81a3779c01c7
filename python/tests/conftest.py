"""Shared fixtures: a fresh key and its key file per test, and the seed every random
test prints so that a failure can be replayed (DEEPLOCK_TEST_SEED)."""

import os
import random

import pytest

import deeplock


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("DEEPLOCK_TEST_SEED", random.randrange(2**32)))
    print(f"DEEPLOCK_TEST_SEED={value}")
    return value


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "model.key"
    deeplock.Key.generate().save(path)
    return path


@pytest.fixture
def key(key_file) -> deeplock.Key:
    return deeplock.Key.from_file(key_file)
