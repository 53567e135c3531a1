"""The MLflow model registry: registering a checkpoint as a generation pyfunc, versions, aliases, their tags.

A trained checkpoint becomes a registered version through its run's outbox (:meth:`Tracker.log_model`), so a
tracking outage delays the registration instead of failing the stage. The promotion gate's rules live in
:mod:`gptlab.pipeline.promotion`; this module reads and moves aliases for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gptlab.settings import Config
from gptlab.tracking.delivery import PYFUNC_ENTRY, RECORD_TAG
from gptlab.tracking.evidence import CONFIG_TAG, SEED_TAG, configuration_sha256
from gptlab.tracking.provenance import EXP_BASELINE_TAG, EXP_NAME_TAG, dvc_experiment, package_versions
from gptlab.tracking.store import Store, TrackingError, short

if TYPE_CHECKING:
    from gptlab.tracking.tracker import Tracker

CANDIDATE, CHAMPION = "candidate", "champion"
CHECKPOINT_FILES = ("model.safetensors", "meta.json")  # serving needs no optimizer state (twice the weights' size)


def _requirements() -> list[str]:
    """Exact versions of what the pyfunc imports (explicit: MLflow's inference is slow and guesses)."""
    versions = package_versions()
    names = ("torch", "numpy", "tiktoken", "safetensors", "pandas", "mlflow")
    return [f"{name}=={versions[name].split('+')[0]}" for name in names]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def register_checkpoint(tracker: Tracker, cfg: Config, *, checkpoint_dir: str | Path,
                        tokenizer_file: str | Path) -> dict[str, Any]:
    """Log ``checkpoint_dir`` in the tracker's run as a generation pyfunc and register it as a new version of
    ``tracking.registered_model`` with alias ``candidate``. Returns the version, or ``pending`` when the server
    is unreachable (the outbox registers it later)."""
    import gptlab

    package = Path(gptlab.__file__).parent
    g = cfg.generate
    with tempfile.TemporaryDirectory(prefix="gptlab-model-") as tmp:
        folder = Path(tmp) / "model"
        (folder / "checkpoint").mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            _link(Path(checkpoint_dir) / name, folder / "checkpoint" / name)
        _link(Path(tokenizer_file), folder / Path(tokenizer_file).name)
        shutil.copy2(package / "tracking" / PYFUNC_ENTRY, folder / PYFUNC_ENTRY)
        # The code travels with the model: it loads where gptlab is not installed, or where a later one is.
        shutil.copytree(package, folder / "gptlab", ignore=shutil.ignore_patterns("__pycache__"))
        record_id = tracker.log_model(
            folder,
            registered_model=cfg.tracking.registered_model,
            alias=CANDIDATE,
            tokenizer=Path(tokenizer_file).name,
            version_tags={"gptlab.profile": cfg.profile, CONFIG_TAG: configuration_sha256(cfg.to_dict()),
                          SEED_TAG: str(cfg.train.seed), **dvc_experiment()},
            input_example={"prompts": [g.prompts[0]],
                           "params": {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature,
                                      "top_k": g.top_k, "top_p": g.top_p, "seed": g.seed}},
            requirements=_requirements(),
        )
    name = cfg.tracking.registered_model
    pending = {"name": name, "version": "pending", "run": tracker.ref}
    if not tracker.flush(timeout=tracker.flush_timeout) or tracker.run_id is None:
        return pending
    client = tracker.store.client()
    ours = [int(v.version) for v in client.search_model_versions(f"name='{name}' and run_id='{tracker.run_id}'")
            if (v.tags or {}).get(RECORD_TAG) == record_id]
    if not ours:
        return pending
    return {"name": name, "version": str(max(ours)), "run_id": tracker.run_id,
            "model_uri": f"models:/{name}/{max(ours)}"}


# ------------------------------------------------------------------------------------------ versions


def aliases(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """version → its aliases (search_model_versions does not fill them in)."""
    out: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        out.setdefault(str(version), []).append(alias)
    return {version: sorted(names) for version, names in out.items()}


def versions_summary(client: MlflowClient, name: str) -> str:
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        found = aliases(client, name) if versions else {}
    except MlflowException:
        versions, found = [], {}
    have = [f"{v} ({', '.join(found.get(str(v), [])) or 'no alias'})" for v in versions]
    return ", ".join(have) or "none (run the pipeline first)"


def resolve_alias(store: Store, name: str, alias: str) -> ModelVersion:
    """The version ``models:/name@alias`` names, with its files checked; a clear error if either is gone."""
    client = store.client()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        raise TrackingError(
            f"models:/{name}@{alias} does not resolve in {store.uri}: {short(e)} (the version it named "
            f"was deleted, or the alias was never set). Versions: {versions_summary(client, name)}. Fix: "
            f"`gptlab promote --alias {alias} --version N` (add --force to skip the gate), then retry"
        ) from e
    try:
        files = mlflow.artifacts.list_artifacts(artifact_uri=f"models:/{name}/{version.version}")
    except Exception as e:  # noqa: BLE001 - any failure to list means the files cannot be served
        files, error = [], short(e)
    else:
        error = "no files"
    if not any(Path(f.path).name == "MLmodel" for f in files):
        raise TrackingError(
            f"models:/{name}@{alias} is version {version.version}, but its files at {version.source} are gone "
            f"({error}): the run's artifacts were deleted. Fix: promote another version (`gptlab promote --alias "
            f"{alias} --version N`), or re-train. Versions: {versions_summary(client, name)}"
        )
    return version


def version_tags(store: Store, name: str, *, alias: str | None = None,
                 version: str | None = None) -> tuple[str, dict[str, str]] | None:
    """``(version, tags)`` of ``version``, or of the one ``alias`` names; None if the alias is not set."""
    client = store.client()
    with store.reachable(f"read {name} from the registry"):
        try:
            v = (client.get_model_version_by_alias(name, alias) if version is None
                 else client.get_model_version(name, version))
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in e.message:
                raise
            return None
    return str(v.version), dict(v.tags or {})


def set_version_tags(store: Store, name: str, version: str, tags: dict[str, Any]) -> None:
    client = store.client()
    with store.reachable(f"tag {name} version {version}"):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value)[:5000])


def set_alias(store: Store, name: str, alias: str, version: str) -> None:
    with store.reachable(f"point {name}@{alias} at version {version}"):
        store.client().set_registered_model_alias(name, alias, version)


def list_models(store: Store, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with aliases, metrics and the last promotion decisions."""
    client = store.client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
        found = aliases(client, name) if versions else {}
    except MlflowException as e:
        raise TrackingError(f"cannot list {name} in {store.uri}: {short(e)}") from e
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        rows.append({
            "version": str(v.version),
            "aliases": ",".join(found.get(str(v.version), [])),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)),
            "run_id": v.run_id,
            "profile": tags.get("gptlab.profile", ""),
            "dvc_exp": tags.get(EXP_NAME_TAG, ""),  # empty: trained outside `dvc exp run`
            "baseline": tags.get(EXP_BASELINE_TAG, ""),
            "val_ppl": float(tags["val_ppl"]) if tags.get("val_ppl") else None,
            "val_loss": float(tags["val_loss"]) if tags.get("val_loss") else None,
            "val_sha256": tags.get("val_sha256", ""),
            "promotion": "; ".join(
                f"{key.split('.')[1]}: {value}" for key, value in sorted(tags.items())
                if key.startswith("promotion.") and key.endswith(".outcome")
            ),
        })
    return rows


def download_checkpoint(store: Store, model_uri: str, dst: str | Path) -> Path:
    """The gptlab checkpoint inside a logged model (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/…``),
    downloaded under ``dst``: fine-tuning (``train.init``) and the gate's re-scoring read models this way."""
    import yaml

    store.client()
    with store.reachable(f"download {model_uri} (`gptlab models` lists the versions)"):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    spec = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise TrackingError(f"{model_uri} is not a gptlab model: its MLmodel lists no `checkpoint` artifact")
    return local / artifacts["checkpoint"]["path"]


def load_pyfunc(store: Store, uri: str) -> mlflow.pyfunc.PyFuncModel:
    store.client()
    return mlflow.pyfunc.load_model(uri)


def ui_command(store: Store, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command over the project's store, bound to loopback unless told otherwise."""
    cmd = ["mlflow", "ui", "--backend-store-uri", store.uri, "--host", host, "--port", str(port)]
    if store.embedded:
        cmd += ["--default-artifact-root", store.artifact_root.as_uri()]
    return cmd


def serve_command(store: Store, name: str, alias: str = CHAMPION, *, host: str = "127.0.0.1",
                  port: int = 5001) -> list[str]:
    """``mlflow models serve`` for ``models:/name@alias`` (checked first), bound to loopback unless told otherwise.

    ``--env-manager local``: the model runs in this environment, which already has torch and gptlab.
    """
    resolve_alias(store, name, alias)
    return ["mlflow", "models", "serve", "-m", f"models:/{name}@{alias}", "--env-manager", "local",
            "--host", host, "--port", str(port)]
