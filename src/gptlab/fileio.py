"""Small file helpers shared by the stages: atomic writes, hashes, JSON, and where lasting state lives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_beside(path: Path, *, directory: bool) -> Path:
    """A new, uniquely named temp file or directory beside ``path``, with the mode a plain ``open()`` or
    ``mkdir()`` gives under the current umask (``mkstemp``'s 0600 and ``mkdtemp``'s 0700 would survive the
    rename: another user of a shared box could not read the outputs beside files they can read)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            if directory:
                os.mkdir(tmp, 0o777)  # the kernel applies the umask to both modes
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temp name beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync and rename it into place, else delete it.

    A reader never sees a half-written file: it sees the old one or the complete new one. The file gets the
    mode a plain ``open()`` would give it under the current umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_beside(path, directory=False)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``path``; on success it replaces ``path`` whole (mode as ``mkdir``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_beside(path, directory=True)
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move the finished directory ``src`` to ``dst`` (same filesystem), replacing any old ``dst`` whole."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    _fsync_dir(dst.parent)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, indented: diffs and `dvc metrics` read it well)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def state_root(root: str | Path) -> Path:
    """The project whose state outlives an experiment: the tracking store, its outbox, resumable checkpoints.

    A queued ``dvc exp run`` (``dvc queue start``) runs each experiment in a temporary copy of the repository
    under ``.dvc/tmp/exps/``, deleted when the experiment ends, and names the real repository in ``DVC_ROOT``.
    State kept in the copy would be lost with it (a run's MLflow records, a killed run's checkpoints), so it
    lives in the repository DVC_ROOT names. Everywhere else it is ``root`` itself.
    """
    root = Path(root)
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and root.resolve().is_relative_to((Path(dvc_root) / ".dvc" / "tmp").resolve()):
        return Path(dvc_root)
    return root
