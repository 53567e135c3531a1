"""The downstream evaluations' data: one pinned file of a Hugging Face dataset repo, or a local copy of it.

``eval.lambada``, ``eval.wikitext`` and ``eval.hellaswag`` name a source:

- ``hf:OWNER/NAME@REVISION/FILE``: ``FILE`` of the dataset repo at commit ``REVISION``, through the hub's cache.
  The seed pins lm-evaluation-harness's datasets by commit; their sha256 (from the hub's Git LFS pointers) is
  checked after download, so a changed or corrupt file cannot pass for the pinned one.
- ``local:PATH``: the same file on disk (``.jsonl`` or ``.parquet`` with the same fields), for machines without
  the hub.
- ``none``: not evaluated.

A hub file that cannot be had (offline, hub unreachable) raises :class:`TaskDataUnavailable`, which the report
shows as "not measured: <why>"; a local path that does not exist is a configuration error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptlab.core.downstream import MultipleChoice, hellaswag_item
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
    # HellaSwag's validation split as lm-eval's `hellaswag` task loads it (10,042 items; 6,315,951 bytes).
    ("Rowan/hellaswag", "218ec52e09a7e7462a5400043bb9a69a41d06b76", "data/validation-00000-of-00001.parquet"):
        "899813071e1e95efafec90f856e1987d2150fa4d020fc005df6962c259f660cd",
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


def read_rows(path: Path, *, setting: str) -> list[dict[str, Any]]:
    """Every row of a ``.jsonl`` (one JSON object per non-empty line) or ``.parquet`` file, in file order."""
    if path.suffix == ".jsonl":
        rows: list[dict[str, Any]] = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {number} (`{setting}`): not JSON ({e})") from e
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {number} (`{setting}`): not a JSON object")
                rows.append(record)
        return rows
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"{path} (`{setting}`): expected a .jsonl or .parquet file")


def read_field(path: Path, field: str, *, setting: str) -> list[str]:
    """The ``field`` of every row of a ``.jsonl`` or ``.parquet`` file, in file order."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if field not in table.column_names:
            raise DataError(f"{path} (`{setting}`): no column {field!r} (columns: {', '.join(table.column_names)})")
        return [v if v is not None else "" for v in table.column(field).to_pylist()]
    rows = read_rows(path, setting=setting)
    for number, record in enumerate(rows, start=1):
        if not isinstance(record.get(field), str):
            raise DataError(f"{path}, line {number} (`{setting}`): no string {field!r} key")
    return [record[field] for record in rows]


def load_texts(text: str, field: str, *, setting: str) -> tuple[list[str], dict[str, str]]:
    """Rows of ``field`` from the source ``text``, and provenance (source, file sha256) for the results."""
    source = TaskSource.parse(text)
    path = fetch(source, setting=setting)
    rows = read_field(path, field, setting=setting)
    if not rows:
        raise DataError(f"{path} (`{setting}`) has no rows")
    return rows, {"source": str(source), "sha256": sha256_file(path)}


def hellaswag_items(rows: list[dict[str, Any]], *, where: str) -> list[MultipleChoice]:
    """HellaSwag rows as lm-eval prompts them; a row without its fields is a :class:`DataError` naming it."""
    items = []
    for number, row in enumerate(rows, start=1):
        strings = [key for key in ("activity_label", "ctx_a", "ctx_b") if not isinstance(row.get(key), str)]
        endings, label = row.get("endings"), row.get("label")
        if strings or not isinstance(endings, list) or not endings or not all(isinstance(e, str) for e in endings):
            raise DataError(
                f"{where}, row {number}: a HellaSwag row needs strings activity_label, ctx_a, ctx_b and a list of "
                f"string endings; got keys {sorted(row)}"
            )
        index = label if isinstance(label, int) else int(label) if isinstance(label, str) and label.isdigit() else -1
        if not 0 <= index < len(endings):  # the hub file holds labels as strings ("0".."3"), as lm-eval reads them
            raise DataError(f"{where}, row {number}: label {label!r} is not an index of its {len(endings)} endings")
        items.append(hellaswag_item(row))
    return items


def load_hellaswag(text: str, *, setting: str) -> tuple[list[MultipleChoice], dict[str, str]]:
    """HellaSwag's items from the source ``text`` (lm-eval's preprocessing applied), and provenance."""
    source = TaskSource.parse(text)
    path = fetch(source, setting=setting)
    items = hellaswag_items(read_rows(path, setting=setting), where=f"{path} (`{setting}`)")
    if not items:
        raise DataError(f"{path} (`{setting}`) has no rows")
    return items, {"source": str(source), "sha256": sha256_file(path)}
