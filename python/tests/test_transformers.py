"""A transformers model built from a config (random init, no download), saved in several
shards, locked by the CLI, loaded by the helper: the same outputs as the original."""

import json
import shutil

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

import deeplock
import deeplock.transformers
from cli import run


@pytest.fixture
def bert(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    model = BertModel(config).eval()
    src = tmp_path / "bert"
    model.save_pretrained(src, max_shard_size="40KB")
    assert len(list(src.glob("*.safetensors"))) > 2, "the test needs several shards"
    return model, src


def outputs(model) -> torch.Tensor:
    ids = torch.arange(30).reshape(2, 15) % 120
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def test_sharded_checkpoint_locked_by_cli_loads_identically(tmp_path, bert, key, key_file):
    model, src = bert
    locked = tmp_path / "locked"
    run("lock", src, "-o", locked, "--key-file", key_file)
    assert (locked / "model.safetensors.index.json").exists()
    expect = outputs(model)
    for cls in (BertModel, AutoModel):
        loaded = deeplock.transformers.from_pretrained(cls, locked, key).eval()
        assert type(loaded) is BertModel
        assert torch.equal(outputs(loaded), expect)
    # The locked shards as they are make another model: the lock is real.
    plain = BertModel.from_pretrained(locked).eval()
    assert not torch.equal(outputs(plain), expect)


def test_swapped_or_tampered_shard_is_refused(tmp_path, bert, key, key_file):
    _, src = bert
    locked = tmp_path / "locked"
    run("lock", src, "-o", locked, "--key-file", key_file)
    index = json.loads((locked / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    (locked / shards[0]).unlink()
    with pytest.raises(deeplock.AuthenticationError, match="checkpoint"):
        deeplock.transformers.from_pretrained(BertModel, locked, key)
    shutil.rmtree(locked)
    run("lock", src, "-o", locked, "--key-file", key_file)
    data = bytearray((locked / shards[1]).read_bytes())
    data[-3] ^= 0x80
    (locked / shards[1]).write_bytes(bytes(data))
    with pytest.raises(deeplock.AuthenticationError, match="modified after locking"):
        deeplock.transformers.from_pretrained(BertModel, locked, key)
    with pytest.raises(deeplock.WrongKeyError):
        deeplock.transformers.from_pretrained(BertModel, locked, deeplock.Key.generate())
