"""A run's tracking records on local disk until the tracking server has accepted them.

Every MLflow write of every stage goes here first (:class:`gptlab.tracking.tracker.Tracker` appends, then
sends). A record counts as delivered when the server has accepted it; the count of delivered records is
written after each delivery. If the server is down, or the process dies, nothing that was logged is lost:
the next tracker of the same run, or ``gptlab sync``, sends what is left once the server is back.

Layout, one folder per run under ``.gptlab/outbox/`` at the project root::

    <key>/run.json        the run's key, its MLflow run id (null until the server has created it), the URI
    <key>/records.jsonl   one JSON record per line, in the order they were logged
    <key>/delivered       how many leading records the server has accepted
    <key>/files/          copies of artifact files and model folders (the originals may change first)

A run created while the server was unreachable has a key of its own (``pending-…``); once the server has
created it, ``.gptlab/runs/<key>.json`` maps the key to the run id for good (a checkpoint's meta may name
the key). This module only handles files; :mod:`gptlab.tracking.tracker` does the sending.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.fileio import atomic_path, read_json, write_json

PENDING = "pending-"


def new_key() -> str:
    """A key for a run the server has not created yet."""
    return f"{PENDING}{uuid.uuid4().hex}"


def _index_file(outbox_dir: Path, key: str) -> Path:
    return outbox_dir.parent / "runs" / f"{key}.json"


def resolve(outbox_dir: str | Path, ref: str) -> str | None:
    """The MLflow run id behind ``ref``: a run id is itself; a pending key once its run was created."""
    if not ref.startswith(PENDING):
        return ref
    file = _index_file(Path(outbox_dir), ref)
    return read_json(file)["run_id"] if file.is_file() else None


@dataclass
class Outbox:
    """The records of one run; safe to append to from one thread while another delivers."""

    path: Path
    key: str
    run_id: str | None
    tracking_uri: str
    created: float

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def create(cls, outbox_dir: str | Path, key: str, tracking_uri: str, run_id: str | None) -> Outbox:
        path = Path(outbox_dir) / key
        (path / "files").mkdir(parents=True, exist_ok=True)
        if (path / "run.json").is_file():
            return cls.open(path)
        box = cls(path, key, run_id, tracking_uri, time.time())
        box._write_info()
        return box

    @classmethod
    def open(cls, path: str | Path) -> Outbox:
        path = Path(path)
        info = read_json(path / "run.json")
        key = info.get("key", info["run_id"])  # gptlab ≤ 0.1 wrote run_id only
        return cls(path, key, info["run_id"], info["tracking_uri"], info.get("created", path.stat().st_mtime))

    @classmethod
    def find(cls, outbox_dir: str | Path, ref: str) -> Outbox | None:
        """The outbox of the run ``ref`` names (its key or its run id), if one is waiting."""
        for box in find_outboxes(outbox_dir):
            if ref in (box.key, box.run_id):
                return box
        return None

    def _write_info(self) -> None:
        write_json(self.path / "run.json", {"key": self.key, "run_id": self.run_id,
                                            "tracking_uri": self.tracking_uri, "created": self.created})

    def set_run_id(self, run_id: str) -> None:
        """The server created the run: remember its id here and, for good, in the run index."""
        self.run_id = run_id
        self._write_info()
        if self.key != run_id:
            write_json(_index_file(self.path.parent, self.key), {"key": self.key, "run_id": run_id,
                                                                 "tracking_uri": self.tracking_uri})

    @property
    def _records_file(self) -> Path:
        return self.path / "records.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        """Add a record at the end; it is on disk (flushed to the OS) when this returns."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock, open(self._records_file, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def _slot(self) -> Path:
        with self._lock:
            slot = self.path / "files" / str(sum(1 for _ in (self.path / "files").iterdir()))
            slot.mkdir()
        return slot

    def keep_file(self, file: str | Path) -> str:
        """Copy ``file`` into the outbox; returns the copy's path relative to the outbox."""
        file = Path(file)
        slot = self._slot()
        shutil.copy2(file, slot / file.name)
        return str((slot / file.name).relative_to(self.path))

    def keep_tree(self, folder: str | Path) -> str:
        """Keep ``folder`` whole (hard links where the filesystem allows: its files are never written to)."""
        folder = Path(folder)
        target = self._slot() / folder.name
        shutil.copytree(folder, target, copy_function=_link_or_copy)
        return str(target.relative_to(self.path))

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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def find_outboxes(outbox_dir: str | Path) -> list[Outbox]:
    """Every run under ``outbox_dir`` with records waiting, oldest first (a parent run before its children)."""
    base = Path(outbox_dir)
    if not base.is_dir():
        return []
    boxes = [Outbox.open(p) for p in base.iterdir() if (p / "run.json").is_file()]
    return sorted(boxes, key=lambda box: (box.created, box.key))
