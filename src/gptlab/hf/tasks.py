"""The downstream evaluations' data: one pinned file of a Hugging Face dataset repo, or a local copy of it.

``eval.lambada`` and ``eval.wikitext`` name a source:

- ``hf:OWNER/NAME@REVISION/FILE``: ``FILE`` of the dataset repo at commit ``REVISION``, through the hub's cache.
  The seed pins lm-evaluation-harness's datasets by commit; their sha256 (from the hub's Git LFS pointers) is
  checked after download, so a changed or corrupt file cannot pass for the pinned one.
- ``local:PATH``: the same file on disk (``.jsonl`` or ``.parquet``), for machines without the hub.
- ``none``: not evaluated.

A hub file that cannot be had (offline, hub unreachable) raises :class:`TaskDataUnavailable`, which the report
shows as "not measured: <why>"; a local path that does not exist is a configuration error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gptlab.errors import DataError, GptlabError, MissingInputError
from gptlab.fileio import sha256_file

# sha256 of the pinned files, from the Git LFS pointers of those commits on the hub.
KNOWN_SHA256 = {
    # OpenAI's LAMBADA test split as EleutherAI host it (5,153 passages; 1,819,752 bytes).
    ("EleutherAI/lambada_openai", "879e19a2c9bb7ef03f9cf962089cf7d008f91e27", "data/lambada_test.jsonl"):
        "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",
    # WikiText-103 test, one row per Wikipedia article (the same articles as WikiText-2's test split).
    ("EleutherAI/wikitext_document_level", "99bd23220810ae0c869b593eae750554f102264c",
     "wikitext-103-raw-v1/wikitext-103-raw-v1-test.parquet"):
        "e7fc7d4c385d027e0360f7eb320866df61adb68f385986e5c7f4f3911d62f4eb",
}


class TaskDataUnavailable(GptlabError, RuntimeError):
    """The task's data cannot be had here and now (offline, hub unreachable, or ``none``): not measured."""


@dataclass(frozen=True)
class TaskSource:
    kind: Literal["hf", "local", "none"]
    repo: str = ""
    revision: str = ""
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> TaskSource:
        """``hf:OWNER/NAME@REVISION/FILE`` | ``local:PATH`` | ``none`` (the syntax config.py validates)."""
        if text == "none":
            return cls("none")
        kind, _, rest = text.partition(":")
        if kind == "local":
            return cls("local", path=rest)
        if kind == "hf" and "@" in rest:
            repo, _, tail = rest.partition("@")
            revision, _, path = tail.partition("/")
            if repo.count("/") == 1 and revision and path:
                return cls("hf", repo, revision, path)
        raise DataError(f"{text!r} is not hf:OWNER/NAME@REVISION/FILE, local:PATH or none")

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.repo}@{self.revision}/{self.path}"
        return f"local:{self.path}" if self.kind == "local" else "none"


def fetch(source: TaskSource, *, setting: str) -> Path:
    """The local path of ``source``'s file (downloaded into the hub cache if needed and possible).

    ``setting`` names the config key (``eval.lambada``) for messages.
    """
    if source.kind == "none":
        raise TaskDataUnavailable(f"`{setting}` is none")
    if source.kind == "local":
        path = Path(source.path).expanduser()
        if not path.is_file():
            raise MissingInputError(f"`{setting}` is local:{source.path}, which is not a file: fix the path")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from gptlab.hf.hub import offline_reason

    offline = offline_reason()
    try:
        path = Path(hf_hub_download(source.repo, source.path, repo_type="dataset", revision=source.revision,
                                    local_files_only=offline is not None))
    except LocalEntryNotFoundError as e:
        why = offline or "the hub did not serve it"
        raise TaskDataUnavailable(
            f"{source.repo}@{source.revision[:7]} is not in the Hugging Face cache and cannot be downloaded "
            f"({why}): set `{setting}: local:PATH` to a copy"
        ) from e
    except HfHubHTTPError as e:
        raise TaskDataUnavailable(f"the hub refused {source}: {str(e).splitlines()[0]}") from e
    expected = KNOWN_SHA256.get((source.repo, source.revision, source.path))
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise DataError(
                f"{path} (`{setting}`) has sha256 {actual[:12]}…, the pinned file has {expected[:12]}…: "
                f"delete it from the Hugging Face cache and run again"
            )
    return path


def read_field(path: Path, field: str, *, setting: str) -> list[str]:
    """The ``field`` of every row of a ``.jsonl`` or ``.parquet`` file, in file order."""
    if path.suffix == ".jsonl":
        rows: list[str] = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {number} (`{setting}`): not JSON ({e})") from e
                if not isinstance(record, dict) or not isinstance(record.get(field), str):
                    raise DataError(f"{path}, line {number} (`{setting}`): no string {field!r} key")
                rows.append(record[field])
        return rows
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if field not in table.column_names:
            raise DataError(f"{path} (`{setting}`): no column {field!r} (columns: {', '.join(table.column_names)})")
        return [v if v is not None else "" for v in table.column(field).to_pylist()]
    raise DataError(f"{path} (`{setting}`): expected a .jsonl or .parquet file")


def load_texts(text: str, field: str, *, setting: str) -> tuple[list[str], dict[str, str]]:
    """Rows of ``field`` from the source ``text``, and provenance (source, file sha256) for the results."""
    source = TaskSource.parse(text)
    path = fetch(source, setting=setting)
    rows = read_field(path, field, setting=setting)
    if not rows:
        raise DataError(f"{path} (`{setting}`) has no rows")
    return rows, {"source": str(source), "sha256": sha256_file(path)}
