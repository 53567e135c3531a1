"""What rebuilds a run: git commit and dirty flag (and the diff), DVC's hashes of data and code, the resolved
params, the token files' hashes, package versions. ``gptlab reproduce`` reads these records back.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

# The files a training run keeps under its ``provenance/`` artifact folder.
CONFIG_FILE = "config.yaml"  # the resolved configuration, in params.yaml's shape
TOKENS_META_FILE = "tokens_meta.json"  # data/tokens/meta.json: every token shard's sha256
DIFF_FILE = "git.diff"  # uncommitted changes to tracked files (only when the checkout was dirty)
ENVIRONMENT_FILE = "environment.txt"  # every installed distribution, name==version
DVC_LOCK_FILE = "dvc.lock"

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


# The tags that link an MLflow run and its registered version to the DVC experiment that made them.
EXP_NAME_TAG = "dvc.exp_name"  # `dvc exp show` / `dvc exp apply NAME`
EXP_BASELINE_TAG = "dvc.exp_baseline"  # the commit the experiment was run on top of


def dvc_experiment() -> dict[str, str]:
    """The DVC experiment this stage runs in, as tags: its name and baseline commit; empty outside one.

    `dvc exp run` (and `dvc queue start`) hands every stage command ``DVC_EXP_NAME`` and
    ``DVC_EXP_BASELINE_REV`` (dvc/repo/experiments/queue/base.py); a plain `dvc repro` or `gptlab <stage>` sets
    neither. Both experiments of one baseline share a git commit, so the name is what tells them apart.
    """
    tags = {EXP_NAME_TAG: os.environ.get("DVC_EXP_NAME", ""),
            EXP_BASELINE_TAG: os.environ.get("DVC_EXP_BASELINE_REV", "")}
    return {key: value for key, value in tags.items() if value}


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


def installed_distributions() -> list[str]:
    """``name==version`` of every installed distribution, sorted (a pip-freeze without a subprocess)."""
    seen = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(name.lower(), f"{name}=={dist.version}")
    return [seen[k] for k in sorted(seen)]


def code_fingerprint(package_dir: str | Path | None = None) -> str:
    """sha256 over the gptlab package's Python sources (path and content of each), to tell code apart
    when git cannot (no checkout, or uncommitted changes)."""
    if package_dir is None:
        import gptlab

        package_dir = Path(gptlab.__file__).parent
    package_dir = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def git_diff(root: str | Path = ".") -> str | None:
    """Uncommitted changes to tracked files as a patch ``git apply`` takes; None when clean or not a checkout."""
    diff = _git("diff", "HEAD", "--binary", cwd=Path(root))
    return diff + "\n" if diff else None


def write_provenance(out_dir: Path, *, config: dict[str, Any], root: str | Path = ".",
                     tokens_dir: Path | None = None) -> list[Path]:
    """Write the files that rebuild a run into ``out_dir``; returns them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    plain = json.loads(json.dumps(config))  # tuples → lists, so safe_dump writes plain YAML
    (out_dir / CONFIG_FILE).write_text(
        "# The resolved configuration of this run (params.yaml + profile + -S overrides).\n"
        + yaml.safe_dump(plain, sort_keys=False)
    )
    written.append(out_dir / CONFIG_FILE)
    if tokens_dir is not None and (tokens_dir / "meta.json").is_file():
        shutil.copy(tokens_dir / "meta.json", out_dir / TOKENS_META_FILE)
        written.append(out_dir / TOKENS_META_FILE)
    diff = git_diff(root)
    if diff:
        (out_dir / DIFF_FILE).write_text(diff)
        written.append(out_dir / DIFF_FILE)
    lock = Path(root) / "dvc.lock"
    if lock.is_file():
        shutil.copy(lock, out_dir / DVC_LOCK_FILE)
        written.append(out_dir / DVC_LOCK_FILE)
    versions = package_versions()
    (out_dir / ENVIRONMENT_FILE).write_text(
        f"# python {versions['python']} on {platform.platform()}\n" + "\n".join(installed_distributions()) + "\n"
    )
    written.append(out_dir / ENVIRONMENT_FILE)
    return written
