from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gptlab.config import Config
from gptlab.data.loader import TokenSet, val_tokens
from gptlab.data.shards import read_shard
from gptlab.data.sources import demo_documents
from gptlab.data.tokenize import split_permutation
from gptlab.data.tokenizer import EOT, get_encoding, seed_cache


def test_real_gpt2_bpe_offline(bpe_cache):
    enc = get_encoding("gpt2")
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.eot_token == EOT == 50256
    assert enc.n_vocab == 50257
    assert enc.decode(enc.encode_ordinary(" naïve café — 日本")) == " naïve café — 日本"


def test_seed_refuses_a_file_that_is_not_gpt2_bpe(tmp_path, bpe_cache):
    fake = tmp_path / "gpt2.tiktoken"
    fake.write_bytes(b"SGVsbG8= 0\n")
    with pytest.raises(ValueError, match="is not GPT-2's BPE"):
        seed_cache(fake)


@pytest.mark.parametrize("n_docs, fraction, seed", [(1000, 0.0005, 2357), (79, 0.1, 2357), (500, 0.2, 7)])
def test_split_selects_the_same_rows_as_datasets_train_test_split(n_docs, fraction, seed):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"i": list(range(n_docs))})
    reference = ds.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    val_ids, train_ids = split_permutation(n_docs, fraction, seed)
    assert val_ids.tolist() == reference["test"]["i"]
    assert train_ids.tolist() == reference["train"]["i"]


def test_tokenize_writes_every_document_once_with_eot(tiny_cfg: Config, tokens_dir: Path):
    meta = json.loads((tokens_dir / "meta.json").read_text())
    docs = demo_documents()
    enc = get_encoding("gpt2")
    expected = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == expected
    assert meta["documents"] == {"train": len(docs) - 8, "val": 8}  # ceil(0.1 * 79)
    tokens = TokenSet.open(tokens_dir, verify=True)
    train = np.concatenate([read_shard(p) for p in tokens.paths("train")])
    val = val_tokens(tokens)
    assert int((train == EOT).sum()) == meta["documents"]["train"] and train[-1] == EOT
    assert int((val == EOT).sum()) == meta["documents"]["val"] and val[-1] == EOT
    # Validation documents come in the split's shuffled order, as nanoGPT writes val.bin.
    val_ids, _ = split_permutation(len(docs), tiny_cfg.tokenize.val_fraction, tiny_cfg.tokenize.split_seed)
    first = enc.encode_ordinary(docs[int(val_ids[0])])
    assert val[: len(first)].tolist() == first
    counts = tokens.unigram_counts()
    assert counts.sum() == len(train) and counts[EOT] == meta["documents"]["train"]


def test_tokenize_is_deterministic(tiny_cfg: Config, tokens_dir: Path, tmp_path: Path):
    from gptlab.data.tokenize import tokenize

    tokenize(tiny_cfg.tokenize, tokens_dir.parent / "raw", tmp_path / "again")
    first = json.loads((tokens_dir / "meta.json").read_text())
    second = json.loads((tmp_path / "again" / "meta.json").read_text())
    assert first["shards"] == second["shards"]
