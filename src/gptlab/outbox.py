"""A run's tracking records on local disk until the tracking server has accepted them.

The training loop's tracker writes every record (a batch of metrics, tags, an artifact file, the run's end)
here first, then sends it. A record counts as delivered when the server has accepted it; the count of
delivered records is written after each delivery. If the server is down, or the process dies, nothing
that was logged is lost: ``gptlab sync`` sends what is left once the server is back.

Layout, one folder per run under ``.gptlab/outbox/`` at the project root::

    <run_id>/run.json        the tracking URI the run lives on
    <run_id>/records.jsonl   one JSON record per line, in the order they were logged
    <run_id>/delivered       how many leading records the server has accepted
    <run_id>/files/          copies of artifact files (the originals may change before delivery)

This module only handles files; ``gptlab.tracking`` does the sending.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.fileio import atomic_path, read_json, write_json

OUTBOX_DIR = Path(".gptlab") / "outbox"


def outbox_root(root: str | Path = ".") -> Path:
    return Path(root) / OUTBOX_DIR


@dataclass
class Outbox:
    """The records of one run; safe to append to from one thread while another delivers."""

    path: Path
    run_id: str
    tracking_uri: str

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def create(cls, root: str | Path, run_id: str, tracking_uri: str) -> Outbox:
        path = cls.path_for(root, run_id)
        (path / "files").mkdir(parents=True, exist_ok=True)
        if not (path / "run.json").is_file():
            write_json(path / "run.json", {"run_id": run_id, "tracking_uri": tracking_uri})
        return cls(path, run_id, tracking_uri)

    @staticmethod
    def path_for(root: str | Path, run_id: str) -> Path:
        return outbox_root(root) / run_id

    @classmethod
    def open(cls, path: str | Path) -> Outbox:
        path = Path(path)
        info = read_json(path / "run.json")
        return cls(path, info["run_id"], info["tracking_uri"])

    @property
    def _records_file(self) -> Path:
        return self.path / "records.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        """Add a record at the end; it is on disk (flushed to the OS) when this returns."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock, open(self._records_file, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def keep_file(self, file: str | Path, artifact_path: str | None) -> dict[str, Any]:
        """Copy ``file`` into the outbox and return the artifact record that uploads the copy."""
        file = Path(file)
        with self._lock:
            slot = self.path / "files" / str(sum(1 for _ in (self.path / "files").iterdir()))
            slot.mkdir()
        shutil.copy2(file, slot / file.name)
        return {"type": "artifact", "file": str((slot / file.name).relative_to(self.path)), "artifact_path": artifact_path}

    def records(self) -> list[dict[str, Any]]:
        if not self._records_file.is_file():
            return []
        with self._lock:
            lines = self._records_file.read_text(encoding="utf-8").splitlines()
        # A process killed mid-write can leave a partial last line: it was never acknowledged, so drop it.
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def delivered(self) -> int:
        file = self.path / "delivered"
        return int(file.read_text()) if file.is_file() else 0

    def mark_delivered(self, count: int) -> None:
        with atomic_path(self.path / "delivered") as tmp:
            tmp.write_text(str(count))

    def pending(self) -> list[dict[str, Any]]:
        return self.records()[self.delivered() :]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def find_outboxes(root: str | Path = ".") -> list[Outbox]:
    """Every run under ``root`` whose records have not all been delivered."""
    base = outbox_root(root)
    if not base.is_dir():
        return []
    return [Outbox.open(p) for p in sorted(base.iterdir()) if (p / "run.json").is_file()]
