from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptlab.data import download as download_module
from gptlab.data.download import download
from gptlab.data.loader import TokenSet, val_tokens
from gptlab.data.shards import HEADER_BYTES, read_shard
from gptlab.data.sources import demo_documents
from gptlab.data.tokenize import cut_points, encode_documents, split_permutation, tokenize
from gptlab.data.tokenizer import EOT, get_encoding, seed_cache
from gptlab.settings import Config, DataConfig, TokenizeConfig

from ..conftest import REPO
from ..dvcrepo import BIN, run_command, stages_ran


def _tok(**changes) -> TokenizeConfig:
    values = {"tokenizer": "gpt2", "val_fraction": 0.1, "split_seed": 2357, "shard_tokens": 100_000_000,
              "num_workers": 2} | changes
    return TokenizeConfig(**values)


def _corpus(tmp_path: Path, texts: list[str | None], name: str = "corpus") -> Path:
    """A local parquet corpus, downloaded into ``tmp_path/raw`` (the tokenize stage's input)."""
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp_path / f"{name}.parquet")
    cfg = DataConfig(source=f"local:{tmp_path / name}.parquet", text_field="text", max_docs=None, expected_docs=None,
                     max_doc_chars=10_000_000, num_proc=1)
    download(cfg, tmp_path / "raw")
    return tmp_path / "raw"


def _split_stream(tokens_dir: Path, split: str) -> np.ndarray:
    return np.concatenate([read_shard(p) for p in TokenSet.open(tokens_dir).paths(split)])


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
    import datasets

    ds = datasets.Dataset.from_dict({"i": list(range(n_docs))})
    reference = ds.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    val_ids, train_ids = split_permutation(n_docs, fraction, seed)
    assert val_ids.tolist() == reference["test"]["i"]
    assert train_ids.tolist() == reference["train"]["i"]


def test_nanogpt_openwebtext_split_sizes():
    # nanoGPT's OpenWebText split: 8,013,769 documents, test_size=0.0005 → ceil(4006.88) = 4,007 val documents.
    val_ids, train_ids = split_permutation(8_013_769, 0.0005, 2357)
    assert (len(val_ids), len(train_ids)) == (4_007, 8_009_762)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Text that exercises the pre-tokenizer: words, numbers, punctuation, runs of spaces and newlines,
    contractions, non-Latin scripts, and the literal text of the special token."""
    rng = np.random.default_rng(0)
    pieces = ["the", "The", " cat", "isn't", "we'll", "3.14", "2024", "!!", "?", ",", "—", "日本語", "naïve",
              "<|endoftext|>", "\t", "  ", "\n", "\n\n", "   \n", " \u00a0", "'s", "https://x.org/a_b"]
    seps = ["", "", " ", " ", "\n", "  "]
    return ["".join(p + rng.choice(seps) for p in rng.choice(pieces, size=int(rng.integers(1, 300))))
            for _ in range(300)]


def _safe(text: str, i: int) -> bool:
    return text[i] in " \n" and not text[i - 1].isspace()


def test_a_space_or_newline_after_a_non_space_never_changes_the_tokens(bpe_cache, texts):
    enc = get_encoding("gpt2")
    checked = 0
    for text in texts[:60]:
        whole = enc.encode_ordinary(text)
        for i in range(1, len(text)):
            if _safe(text, i):
                assert enc.encode_ordinary(text[:i]) + enc.encode_ordinary(text[i:]) == whole, (text[:i], text[i:])
                checked += 1
    assert checked > 1000


def test_long_documents_are_cut_only_at_safe_places_when_there_is_one(texts):
    for text in texts:
        cuts = cut_points(text, size=40)
        bounds = [0, *cuts, len(text)]
        assert all(0 < b - a <= 40 for a, b in zip(bounds, bounds[1:], strict=False))
        for a, b in zip(bounds, cuts, strict=False):
            assert _safe(text, b) or not any(_safe(text, i) for i in range(a + 20, a + 40))


def test_encode_documents_is_encode_ordinary_plus_eot(bpe_cache, texts, monkeypatch):
    from gptlab.data import tokenize as tokenize_module

    enc = get_encoding("gpt2")
    expected = [t for text in texts for t in [*enc.encode_ordinary(text), EOT]]
    monkeypatch.setattr(tokenize_module, "PIECE_CHARS", 64)  # long documents go through the piecewise path too
    tokens, lengths = encode_documents(enc, texts)
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert lengths.tolist() == [len(enc.encode_ordinary(t)) + 1 for t in texts]


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
    assert np.load(tokens_dir / "val_doc_ids.npy").tolist() == val_ids.tolist()


def test_fixed_size_shards_hold_the_brute_force_token_streams(tmp_path, bpe_cache, texts):
    raw = _corpus(tmp_path, texts)
    result = tokenize(_tok(shard_tokens=1000), raw, tmp_path / "tokens")
    enc = get_encoding("gpt2")
    encoded = [[*enc.encode_ordinary(t), EOT] for t in texts]
    val_ids, train_ids = split_permutation(len(texts), 0.1, 2357)
    val_set = set(val_ids.tolist())
    train_stream = [t for i, doc in enumerate(encoded) if i not in val_set for t in doc]  # source order
    val_stream = [t for i in val_ids for t in encoded[i]]  # the split's shuffled order
    assert _split_stream(tmp_path / "tokens", "train").tolist() == train_stream
    assert _split_stream(tmp_path / "tokens", "val").tolist() == val_stream
    meta = TokenSet.open(tmp_path / "tokens", verify=True).meta
    sizes = {split: [s["tokens"] for s in meta["shards"] if s["split"] == split] for split in ("train", "val")}
    for split, stream in (("train", train_stream), ("val", val_stream)):
        full, rest = divmod(len(stream), 1000)
        assert sizes[split] == [1000] * full + ([rest] if rest else [])
    assert (result.train_docs, result.val_docs) == (len(train_ids), len(val_ids))
    assert result.train_tokens == len(train_stream) and meta["tokens"]["val"] == len(val_stream)
    counts = np.bincount(train_stream, minlength=enc.n_vocab)
    assert np.array_equal(np.load(tmp_path / "tokens" / "unigram_counts.npy"), counts)
    assert not (tmp_path / ".tokens.partial").exists()


def test_the_split_is_drawn_over_source_rows_whatever_the_download_skipped(tmp_path, bpe_cache):
    texts = [f"document number {i}." if i % 7 else "" for i in range(200)]  # every 7th row is empty → skipped
    raw = _corpus(tmp_path, texts)
    tokenize(_tok(val_fraction=0.2), raw, tmp_path / "tokens")
    val_ids, _ = split_permutation(200, 0.2, 2357)  # the split of all 200 source rows, as datasets draws it
    expected = [i for i in val_ids.tolist() if i % 7]  # the skipped rows are simply absent
    enc = get_encoding("gpt2")
    got = enc.decode(_split_stream(tmp_path / "tokens", "val").tolist()).split("<|endoftext|>")[:-1]
    assert got == [f"document number {i}." for i in expected]


def test_output_does_not_depend_on_the_number_of_threads(tmp_path, bpe_cache, texts):
    raw = _corpus(tmp_path, texts)
    tokenize(_tok(shard_tokens=777, num_workers=1), raw, tmp_path / "one")
    tokenize(_tok(shard_tokens=777, num_workers=3), raw, tmp_path / "three")
    assert TokenSet.open(tmp_path / "one").meta == TokenSet.open(tmp_path / "three").meta


def test_tokenize_is_deterministic(tiny_cfg: Config, tokens_dir: Path, tmp_path: Path):
    tokenize(tiny_cfg.tokenize, tokens_dir.parent / "raw", tmp_path / "again")
    first = json.loads((tokens_dir / "meta.json").read_text())
    second = json.loads((tmp_path / "again" / "meta.json").read_text())
    assert first["shards"] == second["shards"]


# -------------------------------------------------------------------------------------------- resume


def _many_texts(n: int) -> list[str]:
    docs = demo_documents()
    return [docs[i % len(docs)] + f"\n(copy {i})" for i in range(n)]


def _shard_files(tokens_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(tokens_dir.glob("train-*.bin"))}


def test_an_error_midway_keeps_finished_shards_and_a_rerun_continues(tmp_path, bpe_cache, monkeypatch, caplog):
    monkeypatch.setattr(download_module, "DOCS_PER_FILE", 20)
    raw = _corpus(tmp_path, _many_texts(200))
    reference = tokenize(_tok(shard_tokens=20_000), raw, tmp_path / "reference")
    ref_meta = TokenSet.open(tmp_path / "reference").meta

    # A late raw file becomes unreadable: the run fails after the shards of the files before it are written.
    broken = raw / "docs-00008.parquet"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's own error for a truncated file
        tokenize(_tok(shard_tokens=20_000), raw, tmp_path / "tokens")
    work = tmp_path / ".tokens.partial"
    kept = _shard_files(work / "out")
    assert len(kept) >= 2 and not (tmp_path / "tokens").exists()
    assert not list((work / "out").glob(".*.tmp"))  # the shard being written was removed

    # One kept shard is corrupted on disk meanwhile: it and everything after it is redone.
    victim = sorted(kept)[-1]
    with open(work / "out" / victim, "r+b") as f:
        f.seek(HEADER_BYTES + 10)
        f.write(b"\xff\xff")
    broken.write_bytes(good)
    with caplog.at_level("INFO", logger="gptlab.data.tokenize"):
        result = tokenize(_tok(shard_tokens=20_000), raw, tmp_path / "tokens")
    assert f"resuming after {len(kept) - 1} complete shard(s)" in caplog.text
    assert "corrupt" in caplog.text
    assert result == reference and TokenSet.open(tmp_path / "tokens", verify=True).meta == ref_meta
    after = _shard_files(tmp_path / "tokens")
    assert all(after[name] == kept[name] for name in sorted(kept)[:-1])  # kept shards were not rewritten
    assert after[victim] != kept[victim] and not work.exists()


def test_a_work_dir_from_other_settings_is_discarded(tmp_path, bpe_cache, monkeypatch):
    raw = _corpus(tmp_path, _many_texts(30))
    work = tmp_path / ".tokens.partial"
    (work / "out").mkdir(parents=True)
    (work / "plan.json").write_text(json.dumps({"format": 2, "shard_tokens": 5}))
    (work / "out" / "train-00000.bin").write_bytes(b"from another plan")
    tokenize(_tok(shard_tokens=10_000), raw, tmp_path / "tokens")
    assert TokenSet.open(tmp_path / "tokens", verify=True).meta["shard_tokens"] == 10_000


TOKENIZE_SCRIPT = """
import logging, sys
from gptlab.settings import TokenizeConfig
from gptlab.data.tokenize import tokenize
logging.basicConfig(level=logging.INFO)
cfg = TokenizeConfig(tokenizer="gpt2", val_fraction=0.05, split_seed=2357, shard_tokens=int(sys.argv[3]), num_workers=2)
tokenize(cfg, sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow
def test_resume_after_kill_matches_uninterruptedrun(tmp_path, bpe_cache):
    raw = _corpus(tmp_path, _many_texts(800))  # ~1.4M tokens
    shard_tokens = "10000"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-c", TOKENIZE_SCRIPT, str(raw), str(tmp_path / "tokens"), shard_tokens]
    subprocess.run([*cmd[:3], str(raw), str(tmp_path / "reference"), shard_tokens], env=env, check=True,
                   capture_output=True)
    reference = TokenSet.open(tmp_path / "reference").meta

    done = tmp_path / ".tokens.partial" / "done"
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(done.glob("*.json"))) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # no cleanup of any kind runs
    process.wait()
    assert process.returncode == -signal.SIGKILL, "tokenize finished before it could be killed"
    assert not (tmp_path / "tokens").exists()
    kept = _shard_files(tmp_path / ".tokens.partial" / "out")
    assert 5 <= len(kept) < len([s for s in reference["shards"] if s["split"] == "train"])

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after" in rerun.stderr
    assert TokenSet.open(tmp_path / "tokens", verify=True).meta == reference
    after = _shard_files(tmp_path / "tokens")
    resumed_from = len([n for n in kept if kept[n] == after.get(n)])
    assert resumed_from >= len(kept) - 1  # every complete shard was kept (the last may have been mid-rename)
    assert not (tmp_path / ".tokens.partial").exists()


@pytest.mark.slow
def test_a_team_tokenizes_once_and_other_machines_pull_the_shards(repo: Path, tmp_path: Path):
    """The README's recipe: `dvc push` the data stages' outputs; a clone pulls the shards instead of re-running."""
    dvc = str(BIN / "dvc")
    run_command([dvc, "remote", "add", "-d", "storage", str(tmp_path / "remote")], repo)
    assert stages_ran(run_command([dvc, "repro", "tokenize"], repo)) == ["download", "tokenize"]
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-qm", "tokenized"], repo)
    run_command([dvc, "push", "download", "tokenize"], repo)

    clone = tmp_path / "gpu-box"
    run_command(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run_command([dvc, "pull", "tokenize"], clone)
    assert stages_ran(run_command([dvc, "repro", "--allow-missing", "tokenize"], clone)) == []  # nothing runs again
    assert stages_ran(run_command([dvc, "repro", "--allow-missing", "--dry", "train"], clone)) == ["train"]
    assert not (clone / "data" / "raw").exists()  # the raw corpus is not even needed
    assert TokenSet.open(clone / "data" / "tokens", verify=True).meta == TokenSet.open(repo / "data" / "tokens").meta
