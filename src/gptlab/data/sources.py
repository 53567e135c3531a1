"""Where documents come from: the Hugging Face hub, local files, or the built-in demo corpus.

Each source yields batches of document strings in a fixed order, so a download is reproducible.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BATCH = 10_000  # documents per yielded batch: large enough to amortise Python overhead, small in memory


class SourceError(ValueError):
    """A source that cannot be read, with the file (and row) at fault and the fix."""


@dataclass(frozen=True)
class Source:
    kind: Literal["hf", "local", "demo"]
    location: str = ""
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> Source:
        """``hf:REPO[@REVISION]`` | ``local:PATH_OR_GLOB`` | ``demo`` (validated already by config)."""
        if text == "demo":
            return cls("demo")
        kind, _, rest = text.partition(":")
        if kind == "hf":
            repo, _, revision = rest.partition("@")
            return cls("hf", repo, revision or None)
        if kind == "local":
            return cls("local", rest)
        raise SourceError(f"data.source {text!r}: expected demo, hf:REPO[@REVISION] or local:PATH_OR_GLOB")


def demo_documents() -> list[str]:
    """CPython's reference documentation (`pydoc_data.topics`): ~465 KB of English, one document per topic."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _local_files(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".jsonl", ".parquet"})
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise SourceError(f"local:{pattern} matches no .txt, .jsonl or .parquet file; check the path or glob")
    bad = [f for f in files if f.suffix not in {".txt", ".jsonl", ".parquet"}]
    if bad:
        raise SourceError(f"local:{pattern} matches {bad[0]}, which is not .txt, .jsonl or .parquet")
    return files


def _read_local(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: not UTF-8 at byte {e.start}; re-encode the file as UTF-8") from e
        return
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for row, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise SourceError(f"{path}, line {row}: not a UTF-8 JSON object ({e})") from e
                if not isinstance(record, dict) or text_field not in record:
                    raise SourceError(
                        f"{path}, line {row}: no {text_field!r} key; set data.text_field to the key holding the text"
                    )
                yield str(record[text_field])
        return
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise SourceError(
            f"{path}: no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
            "set data.text_field"
        )
    for batch in parquet.iter_batches(batch_size=BATCH, columns=[text_field]):
        yield from (t if t is not None else "" for t in batch.column(0).to_pylist())


def _hf_batches(repo: str, revision: str | None, text_field: str) -> Iterator[list[str]]:
    import datasets

    ds = datasets.load_dataset(repo, revision=revision, split="train")
    if text_field not in ds.column_names:
        raise SourceError(f"hf:{repo}: no column {text_field!r} (columns: {ds.column_names}); set data.text_field")
    for batch in ds.select_columns([text_field]).iter(batch_size=BATCH):
        yield batch[text_field]


def iter_batches(source: Source, text_field: str) -> Iterator[list[str]]:
    """Batches of raw document strings, in the source's order."""
    if source.kind == "demo":
        docs = demo_documents()
        for i in range(0, len(docs), BATCH):
            yield docs[i : i + BATCH]
    elif source.kind == "local":
        batch: list[str] = []
        for path in _local_files(source.location):
            for doc in _read_local(path, text_field):
                batch.append(doc)
                if len(batch) == BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch
    else:
        yield from _hf_batches(source.location, source.revision, text_field)
