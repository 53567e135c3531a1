"""MLflow: runs and their provenance, metrics kept through outages, the generation pyfunc, the registry, its
aliases and the promotion gate.

The only module that imports mlflow. The tracking store is ``MLFLOW_TRACKING_URI`` when set, else the
embedded default: ``sqlite:///mlflow.db`` with artifacts in ``mlartifacts/``, both at the project root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gptlab.config import Config
from gptlab.outbox import Outbox, find_outboxes, outbox_root
from gptlab.promotion import Evaluated, PromotionRefused, decide
from gptlab.provenance import code_fingerprint, dvc_lock_hashes, git_state, package_versions, write_provenance

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_NAME = "model"  # the logged model's name inside a run
PROVENANCE = "provenance"  # the run's artifact folder of files that rebuild it
BATCH_METRICS = 900  # metrics per delivery: MLflow's log_batch accepts at most 1000


class TrackingError(RuntimeError):
    """A registry or run lookup that failed in a way the user can fix."""


# --------------------------------------------------------------------------------------------- store


def default_uri(root: str | Path = ".") -> str:
    return f"sqlite:///{(Path(root) / DB_FILE).resolve()}"


def tracking_uri(root: str | Path = ".") -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)


def is_embedded(root: str | Path = ".") -> bool:
    """True when runs go to the project's own sqlite store (mlflow.set_tracking_uri also sets the env var)."""
    return tracking_uri(root) == default_uri(root)


def _client_defaults() -> None:
    """MLflow client settings gptlab needs; an explicit environment variable still wins."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars flood stage logs
    # MLflow retries a failed HTTP call 7 times with backoff 2 (about 4 minutes). gptlab keeps its own records
    # through an outage (MlflowTracker), so a call may fail fast: 4 retries at backoff 1 (about 15 s).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # gptlab's stdout is its JSON result


def configure(root: str | Path = ".") -> MlflowClient:
    """Point MLflow (tracking and registry) at the project's store; returns a client for it."""
    uri = tracking_uri(root)
    _client_defaults()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str, root: str | Path = ".") -> str:
    client = configure(root)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if is_embedded(root):
        # Keep artifacts beside the embedded database rather than in a folder relative to each process's cwd.
        location = (Path(root) / ARTIFACT_DIR).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


# ---------------------------------------------------------------------------------------------- runs


class MlflowTracker:
    """The training loop's tracker: logging never stalls a step, and a tracking outage loses nothing.

    Every record (metrics, tags, an artifact file, the run's end) is first appended to the run's outbox on
    local disk (:mod:`gptlab.outbox`); a background thread sends the records in batches. While the tracking
    server is unreachable, training goes on, records pile up in the outbox and are re-sent with backoff;
    they are delivered when the server is back. If it is still down when the run ends (after
    ``flush_timeout`` seconds of retrying), they stay on disk for ``gptlab sync``.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        root: str | Path,
        flush_seconds: float = 5.0,
        flush_timeout: float = 60.0,
        max_buffer: int = BATCH_METRICS,
        max_retry_seconds: float = 60.0,
    ):
        self.client = client
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.flush_timeout = flush_timeout
        self.max_buffer = max_buffer  # MLflow's log_batch accepts at most 1000 metrics per call
        self.max_retry_seconds = max_retry_seconds
        self.outbox = Outbox.create(root, run_id, client.tracking_uri)
        # Records not yet delivered (a reopened run starts with what an earlier process left behind).
        self._pending: list[dict[str, Any]] = self.outbox.pending()
        self._pending_metrics = sum(len(r.get("metrics", ())) for r in self._pending)
        self._delivered = self.outbox.delivered()
        self._lock = threading.Lock()  # guards _pending, _pending_metrics, _delivered
        self._send_lock = threading.Lock()  # one delivery at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offline_since: float | None = None

    # -- what the loop and the stages call

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now_ms = int(time.time() * 1000)
        self._add({"type": "metrics", "metrics": [[k, float(v), now_ms, int(step)] for k, v in metrics.items()]})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._add({"type": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file; the outbox keeps a copy, so the file may change or vanish before delivery."""
        self._add(self.outbox.keep_file(path, artifact_path))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending_steps(self) -> dict[str, int]:
        """The highest step of each metric among the records not delivered yet."""
        with self._lock:
            records = list(self._pending)
        steps: dict[str, int] = {}
        for record in records:
            for key, _, _, step in record.get("metrics", ()):
                steps[key] = max(step, steps.get(key, -1))
        return steps

    def flush(self) -> bool:
        """Send every pending record now; True when all were delivered (a failure keeps them for later)."""
        return self._deliver()

    def close(self, status: str = "FINISHED") -> int:
        """End the run: deliver everything (retrying up to ``flush_timeout`` s); returns the records left."""
        self._add({"type": "end", "status": status, "end_time": int(time.time() * 1000)}, wake=False)
        deadline = time.monotonic() + self.flush_timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        delay = 0.5
        while not self._deliver(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
        left = self.pending
        if left == 0:
            self.outbox.remove()
        else:
            log.warning(
                "MLflow at %s is unreachable: %d tracking record(s) of run %s are kept in %s. Nothing is lost: "
                "when the server is back, run `gptlab sync` to deliver them.",
                self.client.tracking_uri, left, self.run_id, self.outbox.path,
            )
        return left

    # -- internals

    def _add(self, record: dict[str, Any], *, wake: bool = True) -> None:
        self.outbox.append(record)  # on disk before anything else: a crash or an outage loses nothing
        with self._lock:
            self._pending.append(record)
            self._pending_metrics += len(record.get("metrics", ()))
            due = self._pending_metrics >= self.max_buffer
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._sender, name=f"mlflow-sender-{self.run_id[:8]}", daemon=True)
            self._thread.start()
        if wake and due and self._offline_since is None:
            self._wake.set()

    def _sender(self) -> None:
        backoff = 0.0  # while the server is down: 1 s, 2 s, 4 s, … up to max_retry_seconds
        while not self._stop.is_set():
            self._wake.wait(backoff or self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return  # close() takes over, with its own deadline
            backoff = 0.0 if self._deliver() else min(max(2 * backoff, 1.0), self.max_retry_seconds)

    def _deliver(self, timeout: float = -1) -> bool:
        if not self._send_lock.acquire(timeout=timeout):
            return False  # another delivery is stuck on the network; the records stay pending
        try:
            while True:
                with self._lock:
                    batch = _next_batch(self._pending, self.max_buffer)
                if not batch:
                    break
                try:
                    send_record_batch(self.client, self.run_id, batch, self.outbox.path)
                except Exception as e:  # noqa: BLE001 - any failure to deliver is an outage: keep and retry
                    if self._offline_since is None:
                        self._offline_since = time.monotonic()
                        log.warning(
                            "MLflow at %s is unreachable (%s): training continues; tracking records are kept in %s "
                            "and re-sent until it is back", self.client.tracking_uri, _short(e), self.outbox.path,
                        )
                    return False
                with self._lock:
                    del self._pending[: len(batch)]
                    self._pending_metrics -= sum(len(r.get("metrics", ())) for r in batch)
                    self._delivered += len(batch)
                    delivered = self._delivered
                self.outbox.mark_delivered(delivered)
            if self._offline_since is not None:
                log.warning("MLflow at %s is reachable again after %.0f s: the kept records were delivered",
                            self.client.tracking_uri, time.monotonic() - self._offline_since)
                self._offline_since = None
            return True
        finally:
            self._send_lock.release()


def _short(error: BaseException) -> str:
    """One line about a failure: MLflow's HTTP errors run to several hundred characters."""
    text = getattr(error, "message", None) or str(error)
    if "Connection refused" in text or "Failed to establish a new connection" in text:
        return "connection refused"
    return text.splitlines()[0][:300] if text else type(error).__name__


def _next_batch(records: list[dict[str, Any]], max_metrics: int) -> list[dict[str, Any]]:
    """The leading records to send in one call: consecutive metric records up to ``max_metrics``, or one other."""
    if not records:
        return []
    if records[0]["type"] != "metrics":
        return records[:1]
    batch, count = [], 0
    for record in records:
        if record["type"] != "metrics" or (batch and count + len(record["metrics"]) > max_metrics):
            break
        n = len(record["metrics"])
        batch.append(record)
        count += n
    return batch


def send_record_batch(client: MlflowClient, run_id: str, batch: list[dict[str, Any]], outbox_dir: Path) -> None:
    """Deliver outbox records to the run (idempotent: MLflow drops duplicate metrics, tags and files overwrite)."""
    kind = batch[0]["type"]
    if kind == "metrics":
        metrics = [Metric(k, v, ts, step) for r in batch for k, v, ts, step in r["metrics"]]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
        return
    [record] = batch
    if kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()], synchronous=True)
    elif kind == "artifact":
        client.log_artifact(run_id, str(outbox_dir / record["file"]), artifact_path=record["artifact_path"])
    elif kind == "end":
        client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"{outbox_dir}: unknown record type {kind!r}")  # written by a newer gptlab?


def sync(root: str | Path = ".") -> list[dict[str, Any]]:
    """Deliver what runs kept in ``.gptlab/outbox/`` while their tracking server was unreachable."""
    _client_defaults()
    results, failed = [], []
    for box in find_outboxes(root):
        client = MlflowClient(tracking_uri=box.tracking_uri, registry_uri=box.tracking_uri)
        records = box.records()
        start = done = box.delivered()
        while done < len(records):
            batch = _next_batch(records[done:], BATCH_METRICS)
            try:
                send_record_batch(client, box.run_id, batch, box.path)
            except Exception as e:  # noqa: BLE001 - report it and keep the rest for the next attempt
                failed.append(f"run {box.run_id} at {box.tracking_uri}: {_short(e)} ({len(records) - done} left)")
                break
            done += len(batch)
            box.mark_delivered(done)
        results.append({"run_id": box.run_id, "tracking_uri": box.tracking_uri, "delivered": done - start,
                        "left": len(records) - done})
        if done == len(records):
            box.remove()
    if failed:
        raise TrackingError(
            f"could not deliver every kept record: {'; '.join(failed)}. Start the tracking server "
            f"(or fix MLFLOW_TRACKING_URI) and run `gptlab sync` again; the records stay in {outbox_root(root)}"
        )
    return results


def run_tags(cfg: Config, stage: str, root: str | Path = ".") -> dict[str, str]:
    git = git_state(root)
    tags = {
        "gptlab.stage": stage,
        "gptlab.profile": cfg.profile,
        "mlflow.source.git.commit": git["sha"] or "unknown",
        "gptlab.git_dirty": str(git["dirty"]).lower(),
        "gptlab.code_sha256": code_fingerprint(),
    }
    for key, digest in dvc_lock_hashes(root, stage="tokenize").items():
        tags[f"dvc.{key}"] = digest
    for name, version in package_versions().items():
        tags[f"gptlab.version.{name}"] = version
    return tags


class SkipLogged:
    """A resumed training's tracker: passes on only the (metric, step) pairs the run does not hold yet.

    A killed run resumes from its last checkpoint and replays the steps after it; some of their metrics had
    reached MLflow before the kill, others were still in the buffer. The resumed loop re-sends its whole
    history and every replayed step, and this filter lets through exactly the missing ones, so each metric's
    history ends up with every step once: no gap, no duplicate. Everything else goes to the wrapped tracker.
    """

    def __init__(self, tracker: MlflowTracker, last_steps: dict[str, int]):
        self.tracker = tracker
        self.last_steps = last_steps

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        fresh = {key: value for key, value in metrics.items() if step > self.last_steps.get(key, -1)}
        if fresh:
            self.tracker.log_metrics(fresh, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def last_logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The highest step of every metric in the run (metrics are logged in step order, so all below it are in)."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def _existing_run(client: MlflowClient, run_id: str, root: str | Path) -> Run | None:
    try:
        return client.get_run(run_id)
    except MlflowException:
        log.warning("MLflow run %s (named by the checkpoint) is not in %s: the resumed training starts a new run "
                    "and re-logs the history the checkpoint holds", run_id, tracking_uri(root))
        return None


def _reopen(client: MlflowClient, run: Run, *, root: str | Path, flush_timeout: float) -> SkipLogged:
    """Continue a killed training's run: first deliver what its process kept in the outbox, then skip the steps
    the run holds (or that are still kept for delivery, if the server refused them just now)."""
    run_id = run.info.run_id
    resumes = int(run.data.tags.get("gptlab.resumes", "0")) + 1
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "gptlab.resumes", str(resumes))
    tracker = MlflowTracker(client, run_id, root=root, flush_timeout=flush_timeout)
    tracker.flush()
    logged = last_logged_steps(client, run_id)
    for key, step in tracker.pending_steps().items():
        logged[key] = max(step, logged.get(key, -1))
    return SkipLogged(tracker, logged)


def _log_provenance(tracker: MlflowTracker, cfg: Config, root: str | Path, tokens_dir: Path | None) -> None:
    """Files that rebuild the run (``gptlab reproduce`` reads them): resolved config, data hashes, code, env."""
    with tempfile.TemporaryDirectory(prefix="gptlab-provenance-") as tmp:
        files = write_provenance(Path(tmp), config=cfg.to_dict(), root=root, tokens_dir=tokens_dir)
        for file in files:
            tracker.log_artifact(file, artifact_path=PROVENANCE)


@contextlib.contextmanager
def training_run(
    cfg: Config,
    *,
    root: str | Path = ".",
    extra_tags: dict[str, str] | None = None,
    run_id: str | None = None,
    tokens_dir: str | Path | None = None,
) -> Iterator[MlflowTracker | SkipLogged]:
    """Start the run that a training writes to: every param under its params.yaml path, provenance tags and
    files (``provenance/``: resolved config, token-file hashes, git diff, installed packages).

    With ``run_id`` (a training resumed from a checkpoint), continue that run instead: its params stay, the
    tag ``gptlab.resumes`` counts the restarts, and the tracker skips metric steps the run already holds.
    """
    client = configure(root)
    uri = tracking_uri(root)
    tracker: MlflowTracker | SkipLogged
    try:
        previous = _existing_run(client, run_id, root) if run_id is not None else None
        if previous is not None:
            tracker = _reopen(client, previous, root=root, flush_timeout=cfg.tracking.flush_timeout)
        else:
            exp = experiment_id(cfg.tracking.experiment, root)
            run = client.create_run(exp, tags={**run_tags(cfg, "train", root), **(extra_tags or {})}, run_name=None)
            run_id = run.info.run_id
            params = {key: str(value) for key, value in {"profile": cfg.profile, **cfg.flat()}.items()}
            items = list(params.items())
            for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
                client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in items[i : i + 100]])
            tracker = MlflowTracker(client, run_id, root=root, flush_timeout=cfg.tracking.flush_timeout)
            _log_provenance(tracker, cfg, root, Path(tokens_dir) if tokens_dir else None)
    except MlflowException as e:
        raise TrackingError(
            f"cannot start an MLflow run at {uri}: {_short(e)}. Nothing was trained. Start the tracking server, "
            "or unset MLFLOW_TRACKING_URI to use the project's embedded store (mlflow.db)"
        ) from e
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.close(status)


def download_checkpoint(model_uri: str, dst: str | Path, root: str | Path = ".") -> Path:
    """The gptlab checkpoint inside a logged model (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/…``),
    downloaded under ``dst``: fine-tuning (``train.init``) and the gate's re-scoring read models this way."""
    import yaml

    configure(root)
    with _reachable(root, f"download {model_uri} (`gptlab models` lists the versions)"):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    spec = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise TrackingError(f"{model_uri} is not a gptlab model: its MLmodel lists no `checkpoint` artifact")
    return local / artifacts["checkpoint"]["path"]


@contextlib.contextmanager
def _reachable(root: str | Path, action: str) -> Iterator[None]:
    """Turn MLflow's failures (an unreachable server above all) into one message with the fix."""
    try:
        yield
    except MlflowException as e:
        hint = "" if is_embedded(root) else " Is the tracking server up? Start it, or unset MLFLOW_TRACKING_URI."
        raise TrackingError(f"cannot {action}: MLflow at {tracking_uri(root)} failed: {_short(e)}.{hint}") from e


@contextlib.contextmanager
def attach(run_id: str | None, cfg: Config, stage: str, *, root: str | Path = ".") -> Iterator[str]:
    """Reopen the training run (evaluate, generate and report add to it); a new run if it is gone."""
    client = configure(root)
    with _reachable(root, f"record the {stage} stage"):
        if run_id:
            try:
                client.get_run(run_id)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("MLflow run %s is not in %s; logging %s to a new run", run_id, tracking_uri(root), stage)
                run_id = None
        if run_id is None:
            exp = experiment_id(cfg.tracking.experiment, root)
            run_id = client.create_run(exp, tags=run_tags(cfg, stage, root)).info.run_id
    with _reachable(root, f"record the {stage} stage"), mlflow.start_run(run_id=run_id):
        mlflow.set_tag(f"gptlab.stage.{stage}", "done")
        yield run_id


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, *, name: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, root: str | Path = ".") -> Iterator[str]:
    """A run of its own for a stage's results (one per GPT-2 baseline), nested under ``parent_run_id`` if given."""
    client = configure(root)
    exp = experiment_id(cfg.tracking.experiment, root)
    all_tags = {**run_tags(cfg, stage, root), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(exp, tags=all_tags, run_name=name).info.run_id
    with mlflow.start_run(run_id=run_id, nested=parent_run_id is not None):
        yield run_id


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})


def set_tags(tags: dict[str, Any]) -> None:
    if tags:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifacts(*paths: str | Path, artifact_path: str | None = None) -> None:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


@dataclass(frozen=True)
class RunRecord:
    """What a training run recorded, as ``gptlab reproduce`` needs it."""

    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    final_val_loss: float | None
    final_step: int | None
    provenance: Path  # the run's provenance/ artifact folder, downloaded


def fetch_run(run_id: str, dst: str | Path, root: str | Path = ".") -> RunRecord:
    """Read a run's params, tags and last ``val/loss``, and download its ``provenance/`` files into ``dst``."""
    client = configure(root)
    with _reachable(root, f"read run {run_id}"):
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise TrackingError(
                f"run {run_id!r} is not in {tracking_uri(root)}: check the id (`gptlab models` lists the runs "
                "behind registered versions; the MLflow UI lists all), or set MLFLOW_TRACKING_URI to its server"
            ) from e
        history = client.get_metric_history(run_id, "val/loss")
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        if any(f.path == PROVENANCE for f in client.list_artifacts(run_id)):
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROVENANCE, dst_path=str(dst),
                                                tracking_uri=tracking_uri(root))
    last = max(history, key=lambda m: m.step) if history else None
    return RunRecord(run_id, dict(run.data.tags), dict(run.data.params), last.value if last else None,
                     last.step if last else None, dst / PROVENANCE)


def set_run_tags(run_id: str, tags: dict[str, Any], root: str | Path = ".") -> None:
    client = configure(root)
    with _reachable(root, f"tag run {run_id}"):
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


# ---------------------------------------------------------------------------------------------- model


class GenerationModel(mlflow.pyfunc.PythonModel):
    """pyfunc: a list of prompts → a list of continuations (the prompt is not repeated).

    Sampling settings are optional inference params (max_new_tokens, temperature, top_k, top_p, seed);
    their defaults are the ``generate`` section the model was trained with.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import torch

        from gptlab.checkpoint import load_model
        from gptlab.data.tokenizer import encoding_from_file

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, ckpt = load_model(context.artifacts["checkpoint"], device=device)
        self.encoding = encoding_from_file(context.artifacts["tokenizer"])
        g = ckpt.meta["config"]["generate"]
        self.defaults = {k: g[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        from gptlab.generate import Sampling, generate_text

        p = {**self.defaults, **(params or {})}
        sampling = Sampling(
            max_new_tokens=int(p["max_new_tokens"]),
            temperature=float(p["temperature"]),
            top_k=int(p["top_k"]),
            top_p=float(p["top_p"]),
        )
        seed = int(p["seed"])
        return [
            generate_text(self.model, self.encoding, prompt, num_samples=1, sampling=sampling, seed=seed + i)[0]
            for i, prompt in enumerate(model_input)
        ]


def _requirements() -> list[str]:
    """Exact versions of what the pyfunc imports (explicit: MLflow's inference is slow and guesses)."""
    versions = package_versions()
    names = ("torch", "numpy", "tiktoken", "safetensors", "pandas", "mlflow")
    return [f"{name}=={versions[name].split('+')[0]}" for name in names]


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str


def log_and_register(
    cfg: Config, *, run_id: str, checkpoint_dir: str | Path, tokenizer_file: str | Path, root: str | Path = "."
) -> RegisteredVersion:
    """Log the checkpoint as a generation pyfunc in ``run_id`` and register it with alias ``candidate``."""
    client = configure(root)
    import gptlab

    kept = Outbox.path_for(root, run_id)
    if kept.is_dir():
        raise TrackingError(
            f"run {run_id} still has tracking records in {kept} that never reached {tracking_uri(root)} "
            f"(the server was unreachable). The trained model is safe in {checkpoint_dir}. When the server is "
            "back: `gptlab sync` (delivers them), then `gptlab register` (registers the checkpoint as candidate)"
        )
    g = cfg.generate
    params = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_k": g.top_k,
              "top_p": g.top_p, "seed": g.seed}
    with (
        tempfile.TemporaryDirectory(prefix="gptlab-model-") as tmp,
        _reachable(root, "register the model"),
        mlflow.start_run(run_id=run_id),
    ):
        # Serving needs the weights and meta.json, not the optimizer state (twice the weights' size).
        served = Path(tmp) / Path(checkpoint_dir).name
        served.mkdir()
        from gptlab.checkpoint import META, WEIGHTS

        for file in (WEIGHTS, META):
            shutil.copy2(Path(checkpoint_dir) / file, served / file)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(gptlab.__file__).parent / "pyfunc_model.py"),  # models from code: no pickle
            artifacts={"checkpoint": str(served), "tokenizer": str(tokenizer_file)},
            code_paths=[str(Path(gptlab.__file__).parent)],  # self-contained: loads where gptlab is not installed
            # The signature comes from predict's type hints (list[str] → list[str]) and this example, whose
            # params become the inference params' defaults; MLflow also saves it as serving_input_example.json.
            input_example=([g.prompts[0]], params),
            pip_requirements=_requirements(),
        )
    with _reachable(root, "register the model"):
        version = mlflow.register_model(info.model_uri, cfg.tracking.registered_model, await_registration_for=60)
        client.set_registered_model_alias(cfg.tracking.registered_model, CANDIDATE, version.version)
        client.set_model_version_tag(cfg.tracking.registered_model, version.version, "gptlab.profile", cfg.profile)
    log.info("registered %s version %s (alias %s)", cfg.tracking.registered_model, version.version, CANDIDATE)
    return RegisteredVersion(cfg.tracking.registered_model, str(version.version), run_id, info.model_uri)


def versions_of_run(name: str, run_id: str, root: str | Path = ".") -> list[str]:
    client = configure(root)
    return [str(v.version) for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")]


def tag_versions_of_run(name: str, run_id: str, tags: dict[str, Any], root: str | Path = ".") -> None:
    for version in versions_of_run(name, run_id, root):
        set_version_tags(name, version, tags, root)


def _aliases(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """version → its aliases (search_model_versions does not fill them in)."""
    out: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        out.setdefault(str(version), []).append(alias)
    return {version: sorted(names) for version, names in out.items()}


def _versions_summary(client: MlflowClient, name: str) -> str:
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        aliases = _aliases(client, name) if versions else {}
    except MlflowException:
        versions, aliases = [], {}
    have = [f"{v} ({', '.join(aliases.get(str(v), [])) or 'no alias'})" for v in versions]
    return ", ".join(have) or "none (run the pipeline first)"


def resolve_alias(name: str, alias: str, root: str | Path = ".") -> ModelVersion:
    """The version ``models:/name@alias`` names, with its files checked; a clear error if either is gone."""
    client = configure(root)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        raise TrackingError(
            f"models:/{name}@{alias} does not resolve in {tracking_uri(root)}: {_short(e)} (the version it named "
            f"was deleted, or the alias was never set). Versions: {_versions_summary(client, name)}. Fix: "
            f"`gptlab promote --alias {alias} --version N` (add --force to skip the gate), then retry"
        ) from e
    try:
        files = mlflow.artifacts.list_artifacts(artifact_uri=f"models:/{name}/{version.version}")
    except Exception as e:  # noqa: BLE001 - any failure to list means the files cannot be served
        files, error = [], _short(e)
    else:
        error = "no files"
    if not any(Path(f.path).name == "MLmodel" for f in files):
        raise TrackingError(
            f"models:/{name}@{alias} is version {version.version}, but its files at {version.source} are gone "
            f"({error}): the run's artifacts were deleted. Fix: promote another version (`gptlab promote --alias "
            f"{alias} --version N`), or re-train. Versions: {_versions_summary(client, name)}"
        )
    return version


def _evaluated(client: MlflowClient, name: str, version: str) -> Evaluated:
    return Evaluated.from_tags(version, client.get_model_version(name, version).tags)


@dataclass(frozen=True)
class Promotion:
    """What ``gptlab promote`` decided; also recorded as tags ``promotion.<alias>.*`` on the candidate."""

    model: str
    alias: str
    version: str
    previous: str | None
    outcome: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "alias": self.alias, "version": self.version, "previous": self.previous,
                "outcome": self.outcome, "reason": self.reason, "uri": f"models:/{self.model}@{self.alias}"}


def promote(name: str, *, alias: str = CHAMPION, version: str | None = None, source_alias: str = CANDIDATE,
            margin: float = 0.0, force: bool = False, root: str | Path = ".") -> Promotion:
    """The promotion gate: point ``alias`` at ``version`` (default: the one ``source_alias`` names) only if
    its val perplexity beats the current holder's on the same val split by ``margin`` (or ``force``).

    The decision and its reason are recorded as version tags either way. Raises :class:`TrackingError`
    when the versions cannot be compared (never evaluated, different val data) and ``force`` is off.
    """
    client = configure(root)
    try:
        if version is None:
            version = str(client.get_model_version_by_alias(name, source_alias).version)
        candidate = _evaluated(client, name, str(version))
    except MlflowException as e:
        raise TrackingError(
            f"cannot promote {name} {'version ' + version if version else '@' + source_alias}: {_short(e)}. "
            f"Versions in {tracking_uri(root)}: {_versions_summary(client, name)}"
        ) from e
    try:
        holder = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        holder = None  # no alias yet, or its version was deleted (MLflow drops the alias with the version)
    champion = _evaluated(client, name, holder) if holder else None
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tag = f"promotion.{alias}"
    try:
        decision = decide(candidate, champion, margin=margin, force=force, alias=alias)
    except PromotionRefused as e:
        for key, value in {"outcome": "refused", "reason": str(e), "compared_with": holder or "none", "at": now}.items():
            client.set_model_version_tag(name, candidate.version, f"{tag}.{key}", value[:5000])
        raise TrackingError(f"{name} version {candidate.version} not promoted to {alias}: {e}") from e
    if decision.moves_alias:
        client.set_registered_model_alias(name, alias, candidate.version)
    if decision.outcome != "unchanged":
        for key, value in {"outcome": decision.outcome, "reason": decision.reason, "compared_with": holder or "none",
                           "at": now}.items():
            client.set_model_version_tag(name, candidate.version, f"{tag}.{key}", value[:5000])
    log.debug("promote %s version %s → @%s: %s (%s)", name, candidate.version, alias, decision.outcome, decision.reason)
    return Promotion(name, alias, candidate.version, holder, decision.outcome, decision.reason)


def version_tags(name: str, *, alias: str | None = None, version: str | None = None,
                 root: str | Path = ".") -> tuple[str, dict[str, str]] | None:
    """``(version, tags)`` of ``version``, or of the one ``alias`` names; None if the alias is not set."""
    client = configure(root)
    with _reachable(root, f"read {name} from the registry"):
        try:
            v = client.get_model_version_by_alias(name, alias) if version is None else client.get_model_version(name, version)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in e.message:
                raise
            return None
    return str(v.version), dict(v.tags or {})


def set_version_tags(name: str, version: str, tags: dict[str, Any], root: str | Path = ".") -> None:
    client = configure(root)
    with _reachable(root, f"tag {name} version {version}"):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))


def list_models(name: str, root: str | Path = ".") -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with aliases, metrics and the last promotion decisions."""
    client = configure(root)
    try:
        versions = client.search_model_versions(f"name='{name}'")
        aliases = _aliases(client, name) if versions else {}
    except MlflowException as e:
        raise TrackingError(f"cannot list {name} in {tracking_uri(root)}: {_short(e)}") from e
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        rows.append({
            "version": str(v.version),
            "aliases": ",".join(aliases.get(str(v.version), [])),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)),
            "run_id": v.run_id,
            "profile": tags.get("gptlab.profile", ""),
            "val_ppl": float(tags["val_ppl"]) if tags.get("val_ppl") else None,
            "val_loss": float(tags["val_loss"]) if tags.get("val_loss") else None,
            "val_sha256": tags.get("val_sha256", ""),
            "promotion": "; ".join(
                f"{key.split('.')[1]}: {value}" for key, value in sorted(tags.items())
                if key.startswith("promotion.") and key.endswith(".outcome")
            ),
        })
    return rows


def load_pyfunc(uri: str, root: str | Path = ".") -> mlflow.pyfunc.PyFuncModel:
    configure(root)
    return mlflow.pyfunc.load_model(uri)


def ui_command(root: str | Path = ".", *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command over the project's store, bound to loopback unless told otherwise."""
    cmd = ["mlflow", "ui", "--backend-store-uri", tracking_uri(root), "--host", host, "--port", str(port)]
    if is_embedded(root):
        cmd += ["--default-artifact-root", (Path(root) / ARTIFACT_DIR).resolve().as_uri()]
    return cmd


def serve_command(name: str, alias: str = CHAMPION, *, root: str | Path = ".", host: str = "127.0.0.1",
                  port: int = 5001) -> list[str]:
    """``mlflow models serve`` for ``models:/name@alias`` (checked first), bound to loopback unless told otherwise.

    ``--env-manager local``: the model runs in this environment, which already has torch and gptlab.
    """
    resolve_alias(name, alias, root)
    return ["mlflow", "models", "serve", "-m", f"models:/{name}@{alias}", "--env-manager", "local",
            "--host", host, "--port", str(port)]
