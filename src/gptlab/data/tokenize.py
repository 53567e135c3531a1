"""The tokenize stage: ``data/raw/`` → GPT-2 token shards in ``data/tokens/`` + ``meta.json``.

Run with ``gptlab tokenize`` (or ``dvc repro tokenize``). What it does, and why:

- **The split is nanoGPT's.** ``split_permutation`` draws the rows ``datasets``'
  ``train_test_split(test_size=val_fraction, seed=split_seed, shuffle=True)`` draws, over the source's rows
  (tests/test_tokenize.py checks the equivalence). Validation documents are written in that shuffled order,
  as nanoGPT writes ``val.bin``; training documents in source order.
- **Streaming, bounded memory.** Documents flow from the raw parquet files through a pool of
  ``tokenize.num_workers`` threads (tiktoken releases the GIL and returns numpy buffers) straight into
  fixed-size shards of ``tokenize.shard_tokens`` tokens. Nothing grows with the corpus except two small
  per-row arrays (the split) and the validation index.
- **Every document** is encoded as ``encode_ordinary`` would (special-token text is ordinary text) and
  followed by ``<|endoftext|>`` (50256). A document longer than ``PIECE_CHARS`` is encoded in pieces cut
  where GPT-2's pre-tokenizer starts a new piece anyway, so the tokens are the same.
- **Resumable.** Work happens in ``data/.tokens.partial/`` (beside the output, not inside it: DVC deletes a
  stage's outputs before running it). Each finished shard is renamed into place and followed by a
  checkpoint record; after a kill, a re-run with the same inputs and settings keeps every verified shard
  and continues from the last checkpoint. The output directory appears only when everything is written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.download import iter_raw_batches, read_manifest
from gptlab.data.shards import DTYPE, ShardError, ShardWriter, read_shard, verify_shard
from gptlab.data.tokenizer import EOT, get_encoding
from gptlab.errors import DataError
from gptlab.fileio import read_json, replace_dir, write_json
from gptlab.settings import TokenizeConfig

log = logging.getLogger(__name__)

FORMAT = 2  # meta.json layout: 2 = fixed-size train/val shards, split over source rows
# Work sizes. Small enough that the transient buffers are a few MB (larger ones let glibc's heap fragment
# and peak RSS creep up over a long run: measured with benchmarks/bench_tokenize.py), large enough that the
# per-task overhead stays below 1 %.
PIECE_CHARS = 1 << 20  # longer documents are encoded in pieces: bounded memory, and they spread over threads
TASK_CHARS = 1 << 18  # text per encoding task
READ_DOCS = 256  # documents decoded from parquet into Python strings at a time


def split_permutation(n_docs: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(val ids, train ids), each in shuffled order, as ``datasets.Dataset.train_test_split`` picks them.

    datasets draws ``np.random.default_rng(seed).permutation(n)`` and takes the first
    ``ceil(test_size * n)`` rows as the test split (tests/test_tokenize.py checks the equivalence).
    """
    n_val = math.ceil(val_fraction * n_docs)
    if n_val < 1 or n_val >= n_docs:
        raise DataError(
            f"tokenize.val_fraction={val_fraction} of {n_docs} documents leaves {n_val} for validation and "
            f"{n_docs - n_val} for training; both need at least one: change tokenize.val_fraction or add documents"
        )
    permutation = np.random.default_rng(seed).permutation(n_docs)
    return permutation[:n_val], permutation[n_val:]


# --------------------------------------------------------------------------------------------- encoding


def cut_points(text: str, size: int = PIECE_CHARS) -> list[int]:
    """Offsets that cut ``text`` into pieces of at most ``size`` characters without changing its tokens.

    GPT-2's pre-tokenizer (``'s|'t|…| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``) never puts
    whitespace after the first character of a piece that starts with a non-space, so a space or newline that
    follows a non-space always starts a new piece: encoding the two sides separately gives the same tokens.
    Only a stretch of ``size // 2`` characters with no such place is cut blindly (then a token may differ).
    """
    assert size >= 2
    cuts: list[int] = []
    start = 0
    while len(text) - start > size:
        lo, cut = start + size // 2, start + size
        while (cut := max(text.rfind(" ", lo, cut), text.rfind("\n", lo, cut))) >= lo and text[cut - 1].isspace():
            pass
        cuts.append(cut if cut >= lo else start + size)
        start = cuts[-1]
    return cuts


def encode_documents(enc: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every text's tokens followed by ``<|endoftext|>``, concatenated (uint16), and each document's length."""
    parts: list[np.ndarray] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    eot = np.array([EOT], dtype=np.uint32)
    for i, text in enumerate(texts):
        bounds = [0, *cut_points(text), len(text)] if len(text) > PIECE_CHARS else [0, len(text)]
        n = 0
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            # encode_to_numpy with nothing allowed or disallowed is encode_ordinary without the Python list.
            ids = enc.encode_to_numpy(text[lo:hi] if hi - lo < len(text) else text, disallowed_special=())
            parts.append(ids)
            n += len(ids)
        parts.append(eot)
        lengths[i] = n + 1
    tokens = np.concatenate(parts, dtype=DTYPE, casting="unsafe") if parts else np.empty(0, DTYPE)
    return tokens, lengths


def _tasks(texts: list[str]) -> list[tuple[int, int]]:
    """Contiguous slices of ``texts`` holding about TASK_CHARS characters each."""
    slices, lo, chars = [], 0, 0
    for i, text in enumerate(texts):
        chars += len(text)
        if chars >= TASK_CHARS:
            slices.append((lo, i + 1))
            lo, chars = i + 1, 0
    if lo < len(texts):
        slices.append((lo, len(texts)))
    return slices


# ----------------------------------------------------------------------------------------- work state


@dataclass(frozen=True)
class Cursor:
    """How far the training stream is durably written: ``token`` tokens into document ``doc``."""

    doc: int = 0
    token: int = 0
    train_docs: int = 0  # training documents before ``doc``
    val_docs: int = 0  # validation documents before ``doc`` (in the val stream)
    val_tokens: int = 0


class _Shards:
    """Fixed-size shards of one split: ``{split}-00000.bin``, … each exactly ``size`` tokens but the last."""

    def __init__(self, out: Path, split: str, size: int, first: int = 0):
        self.out, self.split, self.size, self.index = out, split, size, first
        self.writer: ShardWriter | None = None
        self.done: list[dict[str, Any]] = []

    def write(self, tokens: np.ndarray, on_full: Callable[[dict[str, Any], int], None] | None = None) -> None:
        """Append ``tokens``; ``on_full(shard, position)`` runs after each shard completes at ``position``."""
        pos = 0
        while pos < len(tokens):
            if self.writer is None:
                self.writer = ShardWriter(self.out / f"{self.split}-{self.index:05d}.bin")
            take = min(self.size - self.writer.count, len(tokens) - pos)
            self.writer.write(tokens[pos : pos + take])
            pos += take
            if self.writer.count == self.size:
                shard = self._finish()
                if on_full is not None:
                    on_full(shard, pos)

    def close(self) -> dict[str, Any] | None:
        """Finish the last, partly filled shard (if any tokens are in it)."""
        return self._finish() if self.writer is not None and self.writer.count else None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def _finish(self) -> dict[str, Any]:
        assert self.writer is not None
        self.writer.finish()
        shard = {"name": self.writer.path.name, "split": self.split, "tokens": self.writer.count,
                 "sha256": self.writer.sha256}
        self.done.append(shard)
        self.writer = None
        self.index += 1
        return shard


class _ValStream:
    """Validation documents in source order (``val.tokens``) and their (row, length) index (``val.index``)."""

    def __init__(self, work: Path, cursor: Cursor):
        self.tokens_path, self.index_path = work / "val.tokens", work / "val.index"
        # Back to the checkpoint: whatever a killed run appended after it is discarded.
        for path, size in ((self.tokens_path, cursor.val_tokens * DTYPE.itemsize), (self.index_path, cursor.val_docs * 16)):
            with open(path, "ab") as f:
                f.truncate(size)
        self._tokens = open(self.tokens_path, "ab")  # noqa: SIM115 - closed in close()
        self._index = open(self.index_path, "ab")  # noqa: SIM115

    def append(self, row: int, tokens: np.ndarray) -> None:
        self._tokens.write(memoryview(np.ascontiguousarray(tokens, dtype=DTYPE)).cast("B"))
        self._index.write(np.array([row, len(tokens)], dtype="<i8").tobytes())

    def sync(self) -> None:
        for f in (self._tokens, self._index):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self._tokens.close()
        self._index.close()


class _SplitWriter:
    """Routes encoded documents to the train shards or the val stream, with a checkpoint after each train shard.

    A checkpoint says how far the training stream got (document, token within it) and how much of the val
    stream belongs before that point, so a resumed run can truncate the val stream and carry on exactly there.
    """

    def __init__(self, work: Path, shard_tokens: int, is_val: np.ndarray, cursor: Cursor,
                 kept: list[dict[str, Any]], counts: np.ndarray):
        self.work, self.is_val, self.counts = work, is_val, counts
        self.train = _Shards(work / "out", "train", shard_tokens, first=len(kept))
        self.train.done = list(kept)
        self.val = _ValStream(work, cursor)
        self.state = {"train_docs": cursor.train_docs, "val_docs": cursor.val_docs, "val_tokens": cursor.val_tokens}
        self.resume_doc, self.skip = cursor.doc, cursor.token  # tokens of that document already in kept shards

    def add(self, first: int, rows: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Documents ``first, first+1, …`` (source ``rows``): their tokens, concatenated, and lengths."""
        ids = first + np.arange(len(lengths))
        val = self.is_val[rows]
        before = dict(self.state)
        ends = np.cumsum(lengths)
        for j in np.flatnonzero(val):
            self.val.append(int(rows[j]), tokens[ends[j] - lengths[j] : ends[j]])
            self.state["val_docs"] += 1
            self.state["val_tokens"] += int(lengths[j])
        train_tokens = tokens[np.repeat(~val, lengths)] if val.any() else tokens
        train_ids, train_lengths = ids[~val], lengths[~val]
        head = 0
        if self.skip:
            assert len(train_ids) and train_ids[0] == self.resume_doc, "a resumed document is a training document"
            train_tokens, head, self.skip = train_tokens[self.skip :], self.skip, 0
        train_ends = np.cumsum(train_lengths) - head  # where each training document ends in train_tokens

        def checkpoint(shard: dict[str, Any], pos: int) -> None:
            j = int(np.searchsorted(train_ends, pos, side="right"))  # the document holding token `pos`
            if j < len(train_ids):
                doc, token = int(train_ids[j]), int(pos - (train_ends[j] - train_lengths[j]))
            else:
                doc, token = first + len(lengths), 0
            earlier_val = val & (ids < doc)
            self._checkpoint(shard, Cursor(doc=doc, token=token, train_docs=before["train_docs"] + j,
                                           val_docs=before["val_docs"] + int(earlier_val.sum()),
                                           val_tokens=before["val_tokens"] + int(lengths[earlier_val].sum())))

        self.counts += np.bincount(train_tokens, minlength=len(self.counts))
        self.train.write(train_tokens, checkpoint)
        self.state["train_docs"] += len(train_ids)

    def _checkpoint(self, shard: dict[str, Any], cursor: Cursor) -> None:
        self.val.sync()  # the val documents the checkpoint counts are on disk before it is
        write_json(self.work / "done" / f"{Path(shard['name']).stem}.json", {"shard": shard, "cursor": asdict(cursor)})

    def close(self, n_docs: int) -> None:
        """Finish the last train shard (a checkpoint at the end of the corpus) and the val stream."""
        last = self.train.close()
        if last is not None:
            self._checkpoint(last, Cursor(doc=n_docs, **self.state))
        self.val.close()

    def abort(self) -> None:
        self.train.abort()
        self.val.close()


def _plan(cfg: TokenizeConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything the shards depend on; a work directory made under another plan is discarded."""
    return {"format": FORMAT, "source_text_sha256": manifest["text_sha256"], "rows": manifest["rows"],
            "documents": manifest["documents"], "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction,
            "split_seed": cfg.split_seed, "shard_tokens": cfg.shard_tokens}


def _resume(work: Path, plan: dict[str, Any], n_vocab: int) -> tuple[Cursor, list[dict[str, Any]], np.ndarray]:
    """(cursor, complete train shards, their unigram counts) to continue from; a fresh start if nothing fits."""
    counts = np.zeros(n_vocab, dtype=np.int64)
    if not (work / "plan.json").is_file() or read_json(work / "plan.json") != plan:
        shutil.rmtree(work, ignore_errors=True)
        (work / "out").mkdir(parents=True)
        (work / "done").mkdir()
        write_json(work / "plan.json", plan)
        return Cursor(), [], counts
    for stray in (work / "out").glob(".*.tmp"):
        stray.unlink()  # the shard a killed run was writing
    records = sorted((work / "done").glob("train-*.json"))
    kept: list[dict[str, Any]] = []
    cursor = Cursor()
    for k, path in enumerate(records):
        record = read_json(path)
        shard = record["shard"]
        if shard["name"] != f"train-{k:05d}.bin":
            break
        try:
            verify_shard(work / "out" / shard["name"], shard["sha256"])
        except ShardError as e:
            log.warning("tokenize: %s; redoing it and what follows", e)
            break
        counts += np.bincount(read_shard(work / "out" / shard["name"]), minlength=n_vocab)
        kept.append(shard)
        cursor = Cursor(**record["cursor"])
    for path in records[len(kept) :]:
        (work / "out" / f"{path.stem}.bin").unlink(missing_ok=True)
        path.unlink()
    for stale in (work / "out").glob("val-*.bin"):
        stale.unlink()
    if kept:
        log.info("tokenize: resuming after %d complete shard(s) (%s tokens), at document %d",
                 len(kept), f"{sum(s['tokens'] for s in kept):,}", cursor.doc)
    return cursor, kept, counts


# ------------------------------------------------------------------------------------------------ stage


@dataclass(frozen=True)
class TokenizeResult:
    train_tokens: int
    val_tokens: int
    train_docs: int
    val_docs: int


def default_workers() -> int:
    """The cores this process may run on (respects taskset / cgroup CPU sets, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def tokenize(cfg: TokenizeConfig, raw_dir: str | Path = "data/raw", out_dir: str | Path = "data/tokens") -> TokenizeResult:
    """Encode every document of ``raw_dir`` into train/val shards under ``out_dir`` (resuming a killed run)."""
    from tqdm.auto import tqdm

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    manifest = read_manifest(raw_dir)
    enc = get_encoding(cfg.tokenizer)
    if enc.n_vocab > 1 << 16:
        raise DataError(f"tokenizer {cfg.tokenizer!r} has {enc.n_vocab} ids; token files hold uint16 (< 65536)")
    n_rows, n_docs = int(manifest["rows"]), int(manifest["documents"])
    val_ids, _ = split_permutation(n_rows, cfg.val_fraction, cfg.split_seed)
    is_val = np.zeros(n_rows, dtype=bool)
    is_val[val_ids] = True

    work = out_dir.with_name(f".{out_dir.name}.partial")
    cursor, kept, counts = _resume(work, _plan(cfg, manifest), enc.n_vocab)
    writer = _SplitWriter(work, cfg.shard_tokens, is_val, cursor, kept, counts)
    workers = cfg.num_workers or default_workers()
    doc = cursor.doc
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="tokenize") as pool, \
                tqdm(total=n_docs, initial=doc, unit=" docs", unit_scale=True, desc="tokenize", mininterval=1.0,
                     disable=None) as bar:
            pending: deque[tuple[int, np.ndarray, Future]] = deque()

            def consume_one() -> None:
                first, rows, future = pending.popleft()
                writer.add(first, rows, *future.result())
                bar.update(len(rows))

            for rows, texts in iter_raw_batches(raw_dir, start=cursor.doc, batch_size=READ_DOCS):
                for lo, hi in _tasks(texts):
                    pending.append((doc + lo, rows[lo:hi], pool.submit(encode_documents, enc, texts[lo:hi])))
                    while len(pending) > 2 * workers:  # bounded read-ahead: memory stays flat
                        consume_one()
                doc += len(texts)
            while pending:
                consume_one()
        if doc != n_docs:
            raise DataError(f"{raw_dir} holds {doc} documents but its manifest says {n_docs}: re-run `gptlab download`")
        writer.close(n_docs)
    except BaseException:
        writer.abort()
        raise
    state = writer.state
    out = work / "out"
    val_shards, val_docs, val_sha256 = _write_val(work, out, val_ids, cfg.shard_tokens)
    if state["train_docs"] == 0 or val_docs == 0:
        raise DataError(f"{raw_dir}: {state['train_docs']} training and {val_docs} validation documents; both "
                         "splits need at least one: change tokenize.val_fraction or add documents")
    np.save(out / "unigram_counts.npy", counts)
    np.save(out / "val_doc_ids.npy", val_ids.astype("<i8"))
    shards = writer.train.done + val_shards
    train_tokens = sum(s["tokens"] for s in writer.train.done)
    val_tokens = sum(s["tokens"] for s in val_shards)
    write_json(
        out / "meta.json",
        {
            "format": FORMAT,
            "tokenizer": cfg.tokenizer,
            "vocab_size": enc.n_vocab,
            "eot_token": EOT,
            "dtype": "uint16",
            "source": manifest["source"],
            "source_revision": manifest.get("revision"),
            "source_text_sha256": manifest["text_sha256"],
            "source_rows": n_rows,
            "split": {"val_fraction": cfg.val_fraction, "seed": cfg.split_seed,
                      "rule": "datasets train_test_split(test_size=val_fraction, seed=seed, shuffle=True) over "
                              "source rows; val in that shuffled order, train in source order"},
            "documents": {"train": state["train_docs"], "val": val_docs},
            "tokens": {"train": train_tokens, "val": val_tokens},
            "val_doc_ids_sha256": hashlib.sha256(val_ids.astype("<i8").tobytes()).hexdigest(),
            "val_sha256": val_sha256,
            "shard_tokens": cfg.shard_tokens,
            "shards": shards,
        },
    )
    replace_dir(out, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    log.info("tokenize: %s train tokens in %d shard(s), %s val tokens (%d documents) → %s",
             f"{train_tokens:,}", len(writer.train.done), f"{val_tokens:,}", val_docs, out_dir)
    return TokenizeResult(train_tokens, val_tokens, state["train_docs"], val_docs)


def _write_val(work: Path, out: Path, val_ids: np.ndarray, shard_tokens: int) -> tuple[list[dict[str, Any]], int, str]:
    """Validation shards in the split's shuffled order, from the source-ordered val stream."""
    index = np.fromfile(work / "val.index", dtype="<i8").reshape(-1, 2)
    rows, lengths = index[:, 0], index[:, 1]
    assert np.all(np.diff(rows) > 0), "the val stream is in source order"
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    pos = np.searchsorted(rows, val_ids)
    present = pos < len(rows)
    present[present] = rows[pos[present]] == val_ids[present]  # rows the download skipped are absent
    stream = np.memmap(work / "val.tokens", dtype=DTYPE, mode="r") if offsets[-1] else np.empty(0, DTYPE)
    shards = _Shards(out, "val", shard_tokens)
    digest = hashlib.sha256()
    try:
        for p in pos[present]:
            tokens = np.asarray(stream[offsets[p] : offsets[p + 1]])
            shards.write(tokens)
            digest.update(tokens.tobytes())
        shards.close()
    except BaseException:
        shards.abort()
        raise
    finally:
        del stream
    return shards.done, int(present.sum()), digest.hexdigest()
