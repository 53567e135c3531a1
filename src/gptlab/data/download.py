"""The download stage: a source → ``data/raw/`` (parquet files of documents) + ``manifest.json``.

Run it with ``gptlab download`` (or ``dvc repro download``). Each kept document is stored with its row
number in the source, so the train/val split can be drawn over source rows exactly as nanoGPT draws it,
whatever was skipped. Skipped records (empty, not UTF-8, longer than ``data.max_doc_chars``) are counted
in the manifest, with the first few locations.

The output is built in ``data/.raw.partial/`` and moved into place only when complete, so ``data/raw``
is either the finished download or absent. Hub files themselves live in the Hugging Face cache: a run
that is interrupted and started again fetches only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gptlab.data import sources
from gptlab.data.sources import Bad, Source, SourceError
from gptlab.errors import MissingInputError
from gptlab.fileio import read_json, replace_dir, sha256_file, write_json
from gptlab.settings import DataConfig

log = logging.getLogger(__name__)

FORMAT = 2  # manifest layout: 2 added per-document source rows
DOCS_PER_FILE = 250_000  # ~1.2 GB of OpenWebText text per parquet file; keeps files easy to move and hash
ROW_GROUP = 1024  # documents per parquet row group (~5 MB of text): readers hold one group at a time
SCHEMA = pa.schema([("row", pa.int64()), ("text", pa.large_string())])
EXAMPLES = 20  # skipped records listed by location in the manifest
FIX = "run `gptlab download` (or `dvc repro download`, or `dvc pull` to restore it)"


@dataclass(frozen=True)
class DownloadResult:
    documents: int
    rows: int
    skipped: dict[str, int]
    files: int

    @property
    def skipped_empty(self) -> int:
        return self.skipped.get("empty", 0)


@dataclass
class _RawWriter:
    """Kept documents → ``docs-NNNNN.parquet`` files of at most DOCS_PER_FILE rows each."""

    out: Path
    files: list[dict[str, Any]] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _in_file: int = 0

    def write(self, rows: list[int], texts: list[str]) -> None:
        while rows:
            if self._writer is None or self._in_file == DOCS_PER_FILE:
                self._close()
                name = f"docs-{len(self.files):05d}.parquet"
                self._writer = pq.ParquetWriter(self.out / name, SCHEMA, compression="zstd")
                self.files.append({"name": name, "documents": 0})
                self._in_file = 0
            take = DOCS_PER_FILE - self._in_file
            table = pa.table({"row": pa.array(rows[:take], pa.int64()), "text": pa.array(texts[:take], pa.large_string())},
                             schema=SCHEMA)
            self._writer.write_table(table, row_group_size=ROW_GROUP)
            self._in_file += table.num_rows
            self.files[-1]["documents"] += table.num_rows
            rows, texts = rows[take:], texts[take:]

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.files[-1]["sha256"] = sha256_file(self.out / self.files[-1]["name"])
            self._writer = None

    def close(self) -> None:
        self._close()


def _batches(source: Source, cfg: DataConfig) -> tuple[Iterator[sources.SourceBatch], list[str], int | None]:
    """(record batches, names of the files read, row count known up front or None)."""
    if source.kind == "demo":
        return sources.demo_batches(), [], None
    fetch_all = cfg.max_docs is None
    if source.kind == "local":
        files = sources.local_files(source.location)
        names = [str(f) for f in files]
        rows = sources.parquet_rows(files) if fetch_all else None
        return sources.read_files(files, cfg.text_field, max_chars=cfg.max_doc_chars), names, rows
    assert source.revision is not None  # config requires a pinned commit for hf sources
    names = sources.hub_parquet_names(source.location, source.revision)
    paths = sources.hub_files(source.location, source.revision, names, num_proc=cfg.num_proc, fetch_all=fetch_all)
    if fetch_all:
        paths = list(paths)  # every file is local before the count is checked and the first row is read
        rows = sources.parquet_rows(paths)
        log.info("download: %s has %s rows in %d parquet files", source, f"{rows:,}", len(paths))
        return sources.read_files(paths, cfg.text_field, max_chars=cfg.max_doc_chars), names, rows
    return sources.read_files(paths, cfg.text_field, max_chars=cfg.max_doc_chars), names, None


def _check_count(source: Source, cfg: DataConfig, rows: int) -> None:
    if cfg.max_docs is None and cfg.expected_docs is not None and rows != cfg.expected_docs:
        raise SourceError(
            f"{source} holds {rows:,} rows but data.expected_docs is {cfg.expected_docs:,}: this is not the "
            "corpus the experiment was set up for (a different revision or a changed dataset?). Pin the intended "
            "commit in data.source, or set data.expected_docs to the new count (null skips the check). "
            "Nothing was written."
        )


def download(cfg: DataConfig, out_dir: str | Path = "data/raw") -> DownloadResult:
    """Fetch every document of ``cfg.source`` (up to ``cfg.max_docs``) into parquet files under ``out_dir``."""
    from tqdm.auto import tqdm

    source = Source.parse(cfg.source)
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier run's leftovers: never half a download
    staging.mkdir(parents=True)
    try:
        batches, names, known_rows = _batches(source, cfg)
        if known_rows is not None:
            _check_count(source, cfg, known_rows)  # before reading a single row
        writer = _RawWriter(staging)
        skipped: Counter[str] = Counter()
        examples: list[dict[str, str]] = []
        text_hash = hashlib.sha256()
        documents = rows = 0
        total = cfg.max_docs if cfg.max_docs is not None else known_rows
        with tqdm(total=total, unit=" docs", unit_scale=True, desc="download", mininterval=1.0, disable=None) as bar:
            for batch in batches:
                keep_rows: list[int] = []
                keep_texts: list[str] = []
                consumed = 0
                for i, record in enumerate(batch.records):
                    consumed = i + 1
                    if isinstance(record, str) and record and not record.isspace():
                        keep_rows.append(rows + i)
                        keep_texts.append(record)
                        if cfg.max_docs is not None and documents + len(keep_rows) == cfg.max_docs:
                            break
                        continue
                    reason = record.value if isinstance(record, Bad) else "empty"
                    skipped[reason] += 1
                    if len(examples) < EXAMPLES:
                        examples.append({"where": batch.where(i), "reason": reason})
                    if reason != "empty":
                        log.warning("download: skipped %s (%s)", batch.where(i), reason)
                rows += consumed
                for text in keep_texts:
                    text_hash.update(text.encode("utf-8"))
                    text_hash.update(b"\0")
                writer.write(keep_rows, keep_texts)
                documents += len(keep_rows)
                bar.update(len(keep_rows) if cfg.max_docs is not None else consumed)
                if cfg.max_docs is not None and documents >= cfg.max_docs:
                    break
        writer.close()
        if known_rows is None:
            _check_count(source, cfg, rows)
        if documents == 0:
            raise SourceError(f"data.source {cfg.source!r} yielded no usable documents "
                              f"({rows} rows, skipped: {dict(skipped) or 'none'}); check the source")
        counts = {reason: skipped[reason] for reason in ("empty", *(bad.value for bad in Bad))}
        write_json(
            staging / "manifest.json",
            {
                "format": FORMAT,
                "source": cfg.source,
                "kind": source.kind,
                "revision": source.revision,
                "text_field": cfg.text_field,
                "max_docs": cfg.max_docs,
                "max_doc_chars": cfg.max_doc_chars,
                "source_files": names if source.kind == "hf" else len(names),
                "rows": rows,
                "documents": documents,
                "skipped": counts,
                "skipped_examples": examples,
                "text_sha256": text_hash.hexdigest(),
                "files": writer.files,
            },
        )
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("download: %d documents from %d rows in %d file(s) → %s (skipped: %s)",
             documents, rows, len(writer.files), out_dir, dict(skipped) or "none")
    return DownloadResult(documents=documents, rows=rows, skipped=counts, files=len(writer.files))


# ------------------------------------------------------------------------------------------ reading


def read_manifest(raw_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete download, checked against the files beside it."""
    raw_dir = Path(raw_dir)
    if not (raw_dir / "manifest.json").is_file():
        raise MissingInputError(f"{raw_dir} holds no complete download: {FIX}")
    manifest = read_json(raw_dir / "manifest.json")
    if manifest.get("format") != FORMAT:
        raise SourceError(f"{raw_dir} was written by an older gptlab (manifest format "
                          f"{manifest.get('format', 1)}, expected {FORMAT}): {FIX}")
    missing = [f["name"] for f in manifest["files"] if not (raw_dir / f["name"]).is_file()]
    if missing:
        raise MissingInputError(f"{raw_dir}/{missing[0]} is missing ({len(missing)} of {len(manifest['files'])} "
                                f"files): {FIX}")
    return manifest


def iter_raw_batches(raw_dir: str | Path, *, start: int = 0, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, list[str]]]:
    """``(source rows, texts)`` of a download's documents in order, beginning with document ``start``.

    Whole files and row groups before ``start`` are skipped without decoding their text; batches are
    streamed from each file, so memory holds one batch, not a file or a row group.
    """
    raw_dir = Path(raw_dir)
    manifest = read_manifest(raw_dir)
    skip = start
    for entry in manifest["files"]:
        if skip >= entry["documents"]:
            skip -= entry["documents"]
            continue
        parquet = pq.ParquetFile(raw_dir / entry["name"], pre_buffer=False)  # pre-buffering reads whole files
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if skip >= size:
                skip -= size
                continue
            for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=["row", "text"]):
                if skip:
                    batch, skip = batch.slice(min(skip, batch.num_rows)), max(0, skip - batch.num_rows)
                    if not batch.num_rows:
                        continue
                # A copy of the row numbers: a view would keep the batch's Arrow buffers alive downstream.
                yield np.array(batch.column(0), dtype=np.int64), batch.column(1).to_pylist()


def iter_raw(raw_dir: str | Path, batch_size: int = 10_000) -> Iterator[list[str]]:
    """Batches of document strings from a download's parquet files, in order."""
    for _, texts in iter_raw_batches(raw_dir, batch_size=batch_size):
        yield texts
