"""MLflow runs as the stages use them: the training run and its provenance, the runs later stages add to or
start, and reading a run back (``gptlab reproduce``).

Every stage records through a :class:`~gptlab.tracking.tracker.Tracker`, so each one finishes its work and
writes its DVC outputs whether the tracking server is up or not; :func:`recording` ends with one log line
that says whether the records reached MLflow or wait for ``gptlab sync``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from gptlab.settings import Config
from gptlab.tracking.evidence import CONFIG_TAG, configuration_sha256
from gptlab.tracking.provenance import (
    code_fingerprint,
    dvc_experiment,
    dvc_lock_hashes,
    git_state,
    package_versions,
    write_provenance,
)
from gptlab.tracking.store import Store, TrackingError, short
from gptlab.tracking.tracker import Tracker

log = logging.getLogger(__name__)

PROVENANCE = "provenance"  # the run's artifact folder of files that rebuild it
RESUMES_TAG = "gptlab.resumes"  # how many times a killed training run was resumed


def run_tags(cfg: Config, stage: str, root: str | Path = ".") -> dict[str, str]:
    git = git_state(root)
    tags = {
        "gptlab.stage": stage,
        "gptlab.profile": cfg.profile,
        "mlflow.source.git.commit": git["sha"] or "unknown",
        "gptlab.git_dirty": str(git["dirty"]).lower(),
        "gptlab.code_sha256": code_fingerprint(),
        **dvc_experiment(),
    }
    for key, digest in dvc_lock_hashes(root, stage="tokenize").items():
        tags[f"dvc.{key}"] = digest
    for name, version in package_versions().items():
        tags[f"gptlab.version.{name}"] = version
    return tags


class SkipLogged:
    """A resumed training's tracker: passes on only the (metric, step) pairs the run does not hold yet.

    A killed run resumes from its last checkpoint and replays the steps after it; the killed process had
    already logged some of them. The resumed loop re-sends its whole history and every replayed step, and
    this filter lets through exactly the missing ones, so each metric's history ends up with every step once:
    no gap, no duplicate. Everything else goes to the wrapped tracker.
    """

    def __init__(self, tracker: Tracker, last_steps: dict[str, int]):
        self.tracker = tracker
        self.last_steps = last_steps

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        fresh = {key: value for key, value in metrics.items() if step > self.last_steps.get(key, -1)}
        if fresh:
            self.tracker.log_metrics(fresh, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def _server_state(store: Store, run_id: str) -> tuple[dict[str, int], int]:
    """What the server holds of the run: the highest step of every metric, and its restarts so far."""
    client = store.client()
    try:
        run = client.get_run(run_id)
        steps = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
        return steps, int(run.data.tags.get(RESUMES_TAG, "0"))
    except MlflowException as e:
        log.warning("cannot read run %s from %s (%s): resuming without knowing which steps it holds",
                    run_id, store.uri, short(e))
        return {}, 0


def _resume(store: Store, ref: str, flush_timeout: float) -> SkipLogged:
    """Continue a killed training's run. Its outbox holds every record the killed process logged, delivered or
    not; the server is asked only when that outbox is gone (another machine, a deleted .gptlab/)."""
    tracker = Tracker.attach(store, ref, flush_timeout=flush_timeout)
    records = tracker.box.records()
    logged = tracker.logged_steps()
    resumes = max((int(r["tags"][RESUMES_TAG]) for r in records if r["type"] == "tags" and RESUMES_TAG in r["tags"]),
                  default=0)
    if not records and tracker.run_id is not None:
        logged, resumes = _server_state(store, tracker.run_id)
    tracker.set_status("RUNNING")
    tracker.set_tags({RESUMES_TAG: resumes + 1})
    return SkipLogged(tracker, logged)


def _log_provenance(tracker: Tracker, cfg: Config, root: Path, tokens_dir: Path | None) -> None:
    """Files that rebuild the run (``gptlab reproduce`` reads them): resolved config, data hashes, code, env."""
    with tempfile.TemporaryDirectory(prefix="gptlab-provenance-") as tmp:
        for file in write_provenance(Path(tmp), config=cfg.to_dict(), root=root, tokens_dir=tokens_dir):
            tracker.log_artifact(file, artifact_path=PROVENANCE)


@contextlib.contextmanager
def training_run(store: Store, cfg: Config, *, resume: str | None = None,
                 tokens_dir: str | Path | None = None) -> Iterator[Tracker | SkipLogged]:
    """The run a training writes to: every param under its params.yaml path, provenance tags and files
    (``provenance/``: resolved config, token-file hashes, git diff, installed packages).

    With ``resume`` (the run a checkpoint names), continue that run instead: its params stay and the tracker
    skips the metric steps the run already holds.
    """
    if resume is not None:
        tracker: Tracker | SkipLogged = _resume(store, resume, cfg.tracking.flush_timeout)
    else:
        tracker = Tracker.start(store, experiment=cfg.tracking.experiment, tags=run_tags(cfg, "train", store.root),
                                flush_timeout=cfg.tracking.flush_timeout)
        tracker.log_params({"profile": cfg.profile, **cfg.flat()})
        tracker.set_tags({CONFIG_TAG: configuration_sha256(cfg.to_dict())})  # seed runs share it
        _log_provenance(tracker, cfg, store.root, Path(tokens_dir) if tokens_dir else None)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        log.info(tracker.close(status).line)


@contextlib.contextmanager
def recording(store: Store, cfg: Config, stage: str, *, attach: str | None = None, name: str | None = None,
              tags: dict[str, str] | None = None, parent: Tracker | None = None) -> Iterator[Tracker]:
    """The tracker a stage records through: the run ``attach`` names (evaluate, generate and report add to the
    training run), else a new run (``name``, ``tags``; nested under ``parent``). Ends with one log line."""
    kw = {"flush_timeout": cfg.tracking.flush_timeout}
    if attach is not None:
        tracker = Tracker.attach(store, attach, **kw)
        tracker.set_tags({f"gptlab.stage.{stage}": "done"})
    else:
        tracker = Tracker.start(store, experiment=cfg.tracking.experiment, name=name, parent=parent,
                                tags={**run_tags(cfg, stage, store.root), **(tags or {})}, **kw)
    try:
        yield tracker
    finally:
        # A run this stage added to is not ended here: its training ended it.
        log.info(tracker.close(None if attach is not None else "FINISHED").line)


# ----------------------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class RunRecord:
    """What a training run recorded, as ``gptlab reproduce`` needs it."""

    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    final_val_loss: float | None
    final_step: int | None
    provenance: Path  # the run's provenance/ artifact folder, downloaded


def fetch_run(store: Store, run_id: str, dst: str | Path) -> RunRecord:
    """Read a run's params, tags and last ``val/loss``, and download its ``provenance/`` files into ``dst``."""
    client = store.client()
    with store.reachable(f"read run {run_id}"):
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise TrackingError(
                f"run {run_id!r} is not in {store.uri}: check the id (`gptlab models` lists the runs "
                "behind registered versions; the MLflow UI lists all), or set MLFLOW_TRACKING_URI to its server"
            ) from e
        history = client.get_metric_history(run_id, "val/loss")
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        if any(f.path == PROVENANCE for f in client.list_artifacts(run_id)):
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROVENANCE, dst_path=str(dst),
                                                tracking_uri=store.uri)
    last = max(history, key=lambda m: m.step) if history else None
    return RunRecord(run_id, dict(run.data.tags), dict(run.data.params), last.value if last else None,
                     last.step if last else None, dst / PROVENANCE)


def set_run_tags(store: Store, run_id: str, tags: dict[str, Any]) -> None:
    client = store.client()
    with store.reachable(f"tag run {run_id}"):
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
