"""Where documents come from: the Hugging Face hub, local files, or the built-in demo corpus.

Every source is read in a fixed order (files sorted by path, rows in file order), so a download is
reproducible and row ``i`` of the source is the same document on every machine. Records that cannot be
documents are passed on as :class:`Bad` markers (the download stage skips and counts them); a source whose
*structure* is wrong (no text column, a line that is not JSON) raises :class:`SourceError` naming the file
and the row.

Hub datasets are read from their parquet files at a pinned commit, fetched through ``huggingface_hub``:
an interrupted download resumes from the hub cache, a finished one is never fetched again. (We do not go
through ``datasets.load_dataset``: it would convert OpenWebText's 16 GB of parquet into ~40 GB of Arrow
files before the first document could be read.)
"""

from __future__ import annotations

import enum
import glob
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gptlab.errors import DataError, MissingInputError

log = logging.getLogger(__name__)

BATCH = 10_000  # records per batch: large enough to amortise Python overhead, small in memory
SUFFIXES = (".txt", ".jsonl", ".parquet")
# The train split's files, named the way the hub (and `datasets`) names them: `plain_text/train-00000-of-00080.parquet`.
_TRAIN_FILE = re.compile(r"(^|[/_.-])train([/_.-]|$)")


class SourceError(DataError):
    """A source that cannot be read, with the file (and row) at fault and the fix."""


class Bad(enum.Enum):
    """Why a record cannot be a document; the download stage skips it and counts it under this name."""

    INVALID_UTF8 = "invalid_utf8"
    TOO_LARGE = "too_large"


Record = str | None | Bad  # None: a null value (counted as empty)


@dataclass(frozen=True)
class SourceBatch:
    """Consecutive records of a source; ``where(i)`` says where record ``i`` came from (for messages)."""

    records: list[Record]
    where: Callable[[int], str]


@dataclass(frozen=True)
class Source:
    kind: Literal["hf", "local", "demo"]
    location: str = ""
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> Source:
        """``hf:REPO@REVISION`` | ``local:PATH_OR_GLOB`` | ``demo`` (validated already by config)."""
        if text == "demo":
            return cls("demo")
        kind, _, rest = text.partition(":")
        if kind == "hf":
            repo, _, revision = rest.partition("@")
            return cls("hf", repo, revision or None)
        if kind == "local":
            return cls("local", rest)
        raise SourceError(f"data.source {text!r}: expected demo, hf:REPO@REVISION or local:PATH_OR_GLOB")

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.location}@{self.revision}"
        return "demo" if self.kind == "demo" else f"local:{self.location}"


def demo_documents() -> list[str]:
    """CPython's reference documentation (`pydoc_data.topics`): ~465 KB of English, one document per topic."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


# ------------------------------------------------------------------------------------------- files


def local_files(pattern: str) -> list[Path]:
    """The files ``local:PATTERN`` names: one file, every txt/jsonl/parquet file under a folder, or a glob."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise SourceError(f"local:{pattern} matches no .txt, .jsonl or .parquet file; check the path or glob")
    bad = [f for f in files if f.suffix not in SUFFIXES]
    if bad:
        raise SourceError(f"local:{pattern} matches {bad[0]}, which is not .txt, .jsonl or .parquet")
    return files


def hub_parquet_names(repo: str, revision: str) -> list[str]:
    """The train split's parquet files of a hub dataset at ``revision``, in path order (the rows' order)."""
    from huggingface_hub import HfApi, constants, snapshot_download

    try:
        if constants.HF_HUB_OFFLINE:
            folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True))
            names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        else:
            names = HfApi().list_repo_files(repo, repo_type="dataset", revision=revision)
    except Exception as e:  # huggingface_hub raises a family of HTTP / cache errors
        raise SourceError(_hub_problem(repo, revision, e)) from e
    parquet = sorted(n for n in names if n.endswith(".parquet"))
    train = [n for n in parquet if _TRAIN_FILE.search(n)]
    if not parquet:
        shown = ", ".join(sorted(names)[:8]) or "none"
        raise SourceError(
            f"hf:{repo}@{revision} holds no parquet files (files: {shown}): gptlab reads hub datasets stored as "
            "parquet; pick a commit that has them (the hub's `refs/convert/parquet` branch has a parquet copy of "
            "most datasets) or download the data yourself and use local:PATH"
        )
    return train or parquet


def hub_files(repo: str, revision: str, names: list[str], *, num_proc: int, fetch_all: bool) -> Iterator[Path]:
    """Local paths of ``names`` in the hub cache, downloading what is missing (resuming partial downloads).

    ``fetch_all`` downloads every file first, ``num_proc`` at a time; otherwise one file is fetched when the
    reader reaches it (a ``max_docs`` subset then downloads only the files it reads).
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if fetch_all:
            folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=names,
                                            max_workers=num_proc))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise MissingInputError(f"{len(missing)} file(s) missing from the snapshot, first {missing[0]}")
            yield from (folder / n for n in names)
        else:
            for name in names:
                yield Path(hf_hub_download(repo, name, repo_type="dataset", revision=revision))
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(_hub_problem(repo, revision, e)) from e


def _hub_problem(repo: str, revision: str, error: Exception) -> str:
    from huggingface_hub import constants

    name = type(error).__name__
    if constants.HF_HUB_OFFLINE:
        return (f"hf:{repo}@{revision} is not (completely) in the hub cache {constants.HF_HUB_CACHE} and "
                f"HF_HUB_OFFLINE is set ({name}: {error}); go online once, or copy that cache from a machine "
                "that downloaded it")
    if "RevisionNotFound" in name:
        return f"hf:{repo} has no commit {revision}: check the revision in data.source ({error})"
    if "RepositoryNotFound" in name or "GatedRepo" in name:
        return (f"hf:{repo} is not a dataset you can read ({name}); check data.source, or log in with "
                "`huggingface-cli login` if the dataset is gated")
    return f"hf:{repo}@{revision}: download failed ({name}: {error}); re-run to resume where it stopped"


def parquet_rows(files: Iterable[Path]) -> int | None:
    """Total rows from the files' footers (no data read), or None when some file is not parquet."""
    import pyarrow.parquet as pq

    files = list(files)
    if not files or any(f.suffix != ".parquet" for f in files):
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


# ----------------------------------------------------------------------------------------- reading


def _read_line(f, limit: int) -> tuple[bytes, bool]:
    """One line of at most ``limit`` bytes; (rest of a longer line is consumed, True) when it is longer."""
    line = f.readline(limit)
    if len(line) < limit or line.endswith(b"\n"):
        return line, False
    while chunk := f.readline(1 << 20):
        if chunk.endswith(b"\n"):
            break
    return b"", True


def _jsonl_records(path: Path, text_field: str, max_chars: int) -> Iterator[tuple[int, Record]]:
    limit = 6 * max_chars + 1024  # a JSON string escapes a character in at most 6 bytes (\uXXXX)
    with path.open("rb") as f:
        line_no = 0
        while True:
            line, too_long = _read_line(f, limit)
            if not line and not too_long:
                return
            line_no += 1
            if too_long:
                yield line_no, Bad.TOO_LARGE
                continue
            if not line.strip():
                continue  # blank lines separate nothing in jsonl; they are not records
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield line_no, Bad.INVALID_UTF8
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}, line {line_no}: not JSON ({e.msg} at column {e.colno}); "
                                  "fix or delete the line") from e
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise SourceError(f"{path}, line {line_no}: no {text_field!r} key (found: {keys}); "
                                  "set data.text_field to the key holding the text")
            value = record[text_field]
            if value is not None and not isinstance(value, str):
                raise SourceError(f"{path}, line {line_no}: {text_field!r} holds a {type(value).__name__}, not "
                                  "text; set data.text_field to the key holding the text")
            if value and ("\\ud" in text or "\\uD" in text) and _has_surrogates(value):
                yield line_no, Bad.INVALID_UTF8  # a lone \ud800-style escape: not encodable as UTF-8
            elif value is not None and len(value) > max_chars:
                yield line_no, Bad.TOO_LARGE
            else:
                yield line_no, value


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet_batches(path: Path, text_field: str, max_chars: int) -> Iterator[SourceBatch]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering would read a whole hub file into memory
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise SourceError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
                          "set data.text_field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SourceError(f"{path}: column {text_field!r} is {kind}, not text; set data.text_field")
    first = 0
    for batch in parquet.iter_batches(batch_size=BATCH, columns=[text_field]):
        column = batch.column(0)
        try:
            records: list[Record] = column.to_pylist()
        except UnicodeDecodeError:  # parquet does not validate UTF-8 on write; decode row by row
            records = []
            for value in column.cast(pa.large_binary()).to_pylist():
                try:
                    records.append(None if value is None else value.decode("utf-8"))
                except UnicodeDecodeError:
                    records.append(Bad.INVALID_UTF8)
        # Byte length bounds character length from above: most batches need no per-row check.
        if len(column) and (pc.max(pc.binary_length(column)).as_py() or 0) > max_chars:
            records = [Bad.TOO_LARGE if isinstance(r, str) and len(r) > max_chars else r for r in records]
        yield SourceBatch(records, lambda i, first=first: f"{path}, row {first + i}")
        first += len(records)


def _txt_record(path: Path, max_chars: int) -> Record:
    if path.stat().st_size > 4 * max_chars:  # UTF-8 needs at most 4 bytes per character
        return Bad.TOO_LARGE
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return Bad.INVALID_UTF8
    return Bad.TOO_LARGE if len(text) > max_chars else text


def read_files(files: Iterable[Path], text_field: str, *, max_chars: int) -> Iterator[SourceBatch]:
    """Records of txt (one document per file), jsonl (one per line) and parquet (one per row) files."""
    pending: list[tuple[Record, str]] = []  # consecutive records of small files, batched together

    def flush() -> SourceBatch:
        records, where = [r for r, _ in pending], [w for _, w in pending]
        pending.clear()
        return SourceBatch(records, lambda i: where[i])

    for path in files:
        if path.suffix == ".txt":
            pending.append((_txt_record(path, max_chars), str(path)))
        elif path.suffix == ".jsonl":
            for line_no, record in _jsonl_records(path, text_field, max_chars):
                pending.append((record, f"{path}, line {line_no}"))
                if len(pending) == BATCH:
                    yield flush()
        else:
            if pending:
                yield flush()
            yield from _parquet_batches(path, text_field, max_chars)
        if len(pending) >= BATCH:
            yield flush()
    if pending:
        yield flush()


def demo_batches() -> Iterator[SourceBatch]:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    yield SourceBatch(demo_documents(), lambda i: f"pydoc_data.topics[{keys[i]!r}]")
