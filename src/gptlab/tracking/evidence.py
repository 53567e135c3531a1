"""What the promotion gate weighs, kept in MLflow: each evaluated version's per-window val losses, and which
versions are seed runs of one configuration.

The evaluate stage (and ``gptlab rescore``) logs ``metrics/val_windows.npz`` in the version's run under
``val_windows/<val sha256>/``: one file per val split the version was scored on, so re-scoring a champion on
new data never overwrites the evidence of an earlier split. Seed runs of one configuration share the
``gptlab.config_sha256`` tag (:func:`configuration_sha256`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow.exceptions import MlflowException

from gptlab.tracking.store import Store

WINDOWS_DIR = "val_windows"
CONFIG_TAG = "gptlab.config_sha256"  # the configuration without train.seed: seed runs share it
SEED_TAG = "gptlab.seed"

# What a training's configuration is, for "runs that differ only in the seed": everything that shapes the trained
# weights (data, split, model, optimisation), without the seed and the settings that only say how often to log,
# evaluate or checkpoint, or whether to resume.
CONFIGURATION_SECTIONS = ("data", "tokenize", "model", "train")
NOT_CONFIGURATION = {"train.seed", "train.resume", "train.checkpoint_interval", "train.log_interval",
                     "train.eval_interval", "train.eval_iters", "train.peak_flops"}


def configuration_sha256(config: dict[str, Any]) -> str:
    """The sha256 of a resolved config (``Config.to_dict()``) without ``train.seed`` and logging cadence: seed
    runs of one configuration share it (the ``gptlab.config_sha256`` tag)."""
    flat = {}
    for section in CONFIGURATION_SECTIONS:
        for key, value in (config.get(section) or {}).items():
            if f"{section}.{key}" not in NOT_CONFIGURATION:
                flat[f"{section}.{key}"] = value
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def windows_artifact_path(val_sha256: str) -> str:
    """The run's artifact folder that holds the per-window val losses of one val split."""
    return f"{WINDOWS_DIR}/{val_sha256[:16]}"


def run_of(store: Store, name: str, version: str) -> str | None:
    client = store.client()
    with store.reachable(f"read {name} version {version}"):
        return client.get_model_version(name, version).run_id or None


def download_windows(store: Store, name: str, version: str, val_sha256: str, dst: str | Path) -> Path | None:
    """The per-window val losses ``version`` was scored with on val split ``val_sha256``, downloaded under
    ``dst``; None when its run holds none (evaluated before they were kept: ``gptlab rescore`` adds them)."""
    run_id = run_of(store, name, version)
    if run_id is None:
        return None
    folder = windows_artifact_path(val_sha256)
    client = store.client()
    with store.reachable(f"download the per-window val losses of {name} version {version}"):
        try:
            listed = client.list_artifacts(run_id, folder)
        except MlflowException:
            return None
        if not any(Path(f.path).name.endswith(".npz") for f in listed):
            return None
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=folder,
                                                         dst_path=str(Path(dst) / f"v{version}"),
                                                         tracking_uri=store.uri))
    files = sorted(local.glob("*.npz"))
    return files[0] if files else None


def seed_versions(store: Store, name: str, config_sha256: str, val_sha256: str) -> list[tuple[str, dict[str, str]]]:
    """Every version of ``name`` trained with the configuration ``config_sha256`` (any seed) and evaluated on
    val split ``val_sha256``: ``[(version, tags), ...]``, oldest first."""
    client = store.client()
    with store.reachable(f"list the versions of {name}"):
        versions = client.search_model_versions(f"name='{name}'")
    found = [(str(v.version), dict(v.tags or {})) for v in versions]
    return sorted(((v, t) for v, t in found if t.get(CONFIG_TAG) == config_sha256 and t.get("val_sha256") == val_sha256),
                  key=lambda item: int(item[0]))
