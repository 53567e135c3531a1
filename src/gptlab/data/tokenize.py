"""The tokenize stage: ``data/raw/`` → GPT-2 token shards in ``data/tokens/`` + ``meta.json``.

Documents are split into train/val exactly as nanoGPT's ``prepare.py`` does with ``datasets``
(``train_test_split(test_size=val_fraction, seed=split_seed, shuffle=True)``), encoded with
``encode_ordinary`` and followed by ``<|endoftext|>`` (50256). Run with ``gptlab tokenize``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.config import TokenizeConfig
from gptlab.data.download import iter_raw
from gptlab.data.shards import ShardWriter
from gptlab.data.tokenizer import EOT, get_encoding
from gptlab.fileio import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

SHARD_TOKENS = 100_000_000  # 200 MB per train shard: few files, each quick to hash, pull and memory-map


def split_permutation(n_docs: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(val ids, train ids), each in shuffled order, as ``datasets.Dataset.train_test_split`` picks them.

    datasets draws ``np.random.default_rng(seed).permutation(n)`` and takes the first
    ``ceil(test_size * n)`` rows as the test split (tests/test_tokenize.py checks the equivalence).
    """
    n_val = math.ceil(val_fraction * n_docs)
    if n_val < 1 or n_val >= n_docs:
        raise ValueError(
            f"tokenize.val_fraction={val_fraction} of {n_docs} documents leaves {n_val} for validation and "
            f"{n_docs - n_val} for training; both need at least one: change tokenize.val_fraction or add documents"
        )
    permutation = np.random.default_rng(seed).permutation(n_docs)
    return permutation[:n_val], permutation[n_val:]


@dataclass(frozen=True)
class TokenizeResult:
    train_tokens: int
    val_tokens: int
    train_docs: int
    val_docs: int


def _encode(enc, docs: list[str]) -> list[np.ndarray]:
    out = []
    for doc in enc.encode_ordinary_batch(docs):
        arr = np.empty(len(doc) + 1, dtype=np.uint16)
        arr[:-1] = doc
        arr[-1] = EOT
        out.append(arr)
    return out


def tokenize(cfg: TokenizeConfig, raw_dir: str | Path = "data/raw", out_dir: str | Path = "data/tokens") -> TokenizeResult:
    """Encode every document of ``raw_dir`` and write train/val shards under ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    enc = get_encoding(cfg.tokenizer)
    manifest = read_json(raw_dir / "manifest.json")
    n_docs = int(manifest["documents"])
    val_ids, _ = split_permutation(n_docs, cfg.val_fraction, cfg.split_seed)
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[val_ids] = True
    val_docs: dict[int, np.ndarray] = {}
    counts = np.zeros(enc.n_vocab, dtype=np.int64)
    shards: list[dict] = []

    with atomic_dir(out_dir) as tmp:
        writer: ShardWriter | None = None
        doc_index = train_docs = 0

        def close(w: ShardWriter | None) -> None:
            if w is not None:
                w.__exit__(None, None, None)
                shards.append({"name": w.path.name, "split": "train", "tokens": w.count, "sha256": w.sha256})

        try:
            for batch in iter_raw(raw_dir):
                train_part: list[np.ndarray] = []
                for tokens in _encode(enc, batch):
                    if is_val[doc_index]:
                        val_docs[doc_index] = tokens
                    else:
                        train_part.append(tokens)
                    doc_index += 1
                if train_part:
                    if writer is None or writer.count >= SHARD_TOKENS:
                        close(writer)
                        writer = ShardWriter(tmp / f"train-{len(shards):05d}.bin")
                    chunk = np.concatenate(train_part)
                    writer.write(chunk)
                    counts += np.bincount(chunk, minlength=enc.n_vocab)
                    train_docs += len(train_part)
                log.info("tokenize: %d / %d documents", doc_index, n_docs)
        except BaseException:
            if writer is not None:
                writer.__exit__(RuntimeError, None, None)
            raise
        close(writer)
        if doc_index != n_docs:
            raise ValueError(f"{raw_dir} holds {doc_index} documents but its manifest says {n_docs}: re-run download")

        # Validation documents in the split's shuffled order, as nanoGPT writes val.bin.
        with ShardWriter(tmp / "val-00000.bin") as val_writer:
            for i in val_ids:
                val_writer.write(val_docs[int(i)])
        shards.append({"name": "val-00000.bin", "split": "val", "tokens": val_writer.count, "sha256": val_writer.sha256})
        np.save(tmp / "unigram_counts.npy", counts)

        train_tokens = sum(s["tokens"] for s in shards if s["split"] == "train")
        write_json(
            tmp / "meta.json",
            {
                "tokenizer": cfg.tokenizer,
                "vocab_size": enc.n_vocab,
                "eot_token": EOT,
                "source": manifest["source"],
                "source_revision": manifest.get("revision"),
                "source_text_sha256": manifest["text_sha256"],
                "split": {"val_fraction": cfg.val_fraction, "seed": cfg.split_seed},
                "documents": {"train": train_docs, "val": len(val_ids)},
                "tokens": {"train": train_tokens, "val": val_writer.count},
                "val_doc_ids_sha256": hashlib.sha256(np.asarray(val_ids, dtype="<i8").tobytes()).hexdigest(),
                "val_sha256": val_writer.sha256,
                "shards": shards,
            },
        )
    log.info("tokenize: %d train tokens, %d val tokens → %s", train_tokens, val_writer.count, out_dir)
    return TokenizeResult(train_tokens, val_writer.count, train_docs, len(val_ids))
