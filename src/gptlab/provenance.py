"""What rebuilds a run: git commit and dirty flag, DVC's hashes of data and code, package versions."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml

PACKAGES = ("torch", "numpy", "tiktoken", "safetensors", "datasets", "mlflow", "prefect", "dvc", "pandas")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(root: str | Path = ".") -> dict[str, Any]:
    """``{"sha": ..., "dirty": bool}``; sha is None outside a git checkout."""
    root = Path(root)
    sha = _git("rev-parse", "HEAD", cwd=root)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def dvc_lock_hashes(root: str | Path = ".", stage: str | None = None) -> dict[str, str]:
    """``{"tokenize:data/tokens": md5, ...}`` for every dep and out recorded in ``dvc.lock`` (or one stage)."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    hashes = {}
    for name, entry in stages.items():
        if stage is not None and name != stage:
            continue
        for kind in ("deps", "outs"):
            for item in entry.get(kind, []):
                digest = item.get("md5") or item.get("hash")
                if digest:
                    hashes[f"{name}:{item['path']}"] = digest
    return hashes


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
