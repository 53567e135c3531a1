"""The download stage: a source → ``data/raw/`` (parquet files of documents) + ``manifest.json``.

Run it with ``gptlab download`` (or ``dvc repro download``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gptlab.config import DataConfig
from gptlab.data.sources import Source, iter_batches
from gptlab.fileio import atomic_dir, sha256_file, write_json

log = logging.getLogger(__name__)

DOCS_PER_FILE = 250_000  # ~1.2 GB of OpenWebText text per parquet file; keeps files easy to move and hash
SCHEMA = pa.schema([("text", pa.large_string())])


@dataclass(frozen=True)
class DownloadResult:
    documents: int
    skipped_empty: int
    files: int


def _writer(out: Path, index: int) -> pq.ParquetWriter:
    return pq.ParquetWriter(out / f"docs-{index:05d}.parquet", SCHEMA, compression="zstd")


def download(cfg: DataConfig, out_dir: str | Path = "data/raw") -> DownloadResult:
    """Fetch every document of ``cfg.source`` (up to ``cfg.max_docs``) into parquet files under ``out_dir``.

    Empty documents are skipped and counted. The directory appears only when complete.
    """
    source = Source.parse(cfg.source)
    out_dir = Path(out_dir)
    documents = skipped = 0
    text_hash = hashlib.sha256()
    with atomic_dir(out_dir) as tmp:
        files: list[Path] = []
        writer: pq.ParquetWriter | None = None
        in_file = 0
        for batch in iter_batches(source, cfg.text_field):
            keep = [doc for doc in batch if doc.strip()]
            skipped += len(batch) - len(keep)
            if cfg.max_docs is not None:
                keep = keep[: cfg.max_docs - documents]
            while keep:
                if writer is None or in_file == DOCS_PER_FILE:
                    if writer is not None:
                        writer.close()
                    writer = _writer(tmp, len(files))
                    files.append(tmp / f"docs-{len(files):05d}.parquet")
                    in_file = 0
                take, keep = keep[: DOCS_PER_FILE - in_file], keep[DOCS_PER_FILE - in_file :]
                writer.write_table(pa.table({"text": pa.array(take, pa.large_string())}, schema=SCHEMA))
                for doc in take:
                    text_hash.update(doc.encode("utf-8"))
                    text_hash.update(b"\0")
                in_file += len(take)
                documents += len(take)
            if cfg.max_docs is not None and documents >= cfg.max_docs:
                break
            log.info("download: %d documents", documents)
        if writer is not None:
            writer.close()
        if documents == 0:
            raise ValueError(f"data.source {cfg.source!r} yielded no non-empty documents; check the source")
        write_json(
            tmp / "manifest.json",
            {
                "source": cfg.source,
                "kind": source.kind,
                "revision": source.revision,
                "text_field": cfg.text_field,
                "max_docs": cfg.max_docs,
                "documents": documents,
                "skipped": {"empty": skipped},
                "text_sha256": text_hash.hexdigest(),
                "files": [{"name": f.name, "sha256": sha256_file(f)} for f in files],
            },
        )
    log.info("download: %d documents in %d file(s) → %s (%d empty skipped)", documents, len(files), out_dir, skipped)
    return DownloadResult(documents=documents, skipped_empty=skipped, files=len(files))


def iter_raw(raw_dir: str | Path, batch_size: int = 10_000):
    """Batches of document strings from a download's parquet files, in order."""
    raw_dir = Path(raw_dir)
    files = sorted(raw_dir.glob("docs-*.parquet"))
    if not (raw_dir / "manifest.json").is_file() or not files:
        raise FileNotFoundError(f"{raw_dir} holds no complete download; run `gptlab download` (or `dvc repro download`)")
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["text"]):
            yield batch.column(0).to_pylist()
