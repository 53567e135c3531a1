"""MLflow: runs, params, buffered metrics, the generation pyfunc, the registry and its aliases.

The only module that imports mlflow. The tracking store is ``MLFLOW_TRACKING_URI`` when set, else the
embedded default: ``sqlite:///mlflow.db`` with artifacts in ``mlartifacts/``, both at the project root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gptlab.config import Config
from gptlab.provenance import dvc_lock_hashes, git_state, package_versions

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_NAME = "model"  # the logged model's name inside a run


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


def configure(root: str | Path = ".") -> MlflowClient:
    """Point MLflow (tracking and registry) at the project's store; returns a client for it."""
    uri = tracking_uri(root)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars flood stage logs
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
    """The training loop's tracker: buffers metrics and sends them in batches, so logging never stalls a step."""

    def __init__(self, client: MlflowClient, run_id: str, *, flush_seconds: float = 5.0, max_buffer: int = 900):
        self.client = client
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.max_buffer = max_buffer  # MLflow's log_batch accepts at most 1000 metrics per call
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now_ms = int(time.time() * 1000)
        self._buffer.extend(Metric(key, float(value), now_ms, step) for key, value in metrics.items())
        if len(self._buffer) >= self.max_buffer or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[: self.max_buffer], self._buffer[self.max_buffer :]
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        self._last_flush = time.monotonic()


def run_tags(cfg: Config, stage: str, root: str | Path = ".") -> dict[str, str]:
    git = git_state(root)
    tags = {
        "gptlab.stage": stage,
        "gptlab.profile": cfg.profile,
        "mlflow.source.git.commit": git["sha"] or "unknown",
        "gptlab.git_dirty": str(git["dirty"]).lower(),
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


def _existing_run(client: MlflowClient, run_id: str, root: str | Path) -> bool:
    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        log.warning("MLflow run %s (named by the checkpoint) is not in %s: the resumed training starts a new run "
                    "and re-logs the history the checkpoint holds", run_id, tracking_uri(root))
        return False


@contextlib.contextmanager
def training_run(
    cfg: Config, *, root: str | Path = ".", extra_tags: dict[str, str] | None = None, run_id: str | None = None
) -> Iterator[MlflowTracker | SkipLogged]:
    """Start the run that a training writes to: every param under its params.yaml path, provenance tags.

    With ``run_id`` (a training resumed from a checkpoint), continue that run instead: its params stay, the
    tag ``gptlab.resumes`` counts the restarts, and the tracker skips metric steps the run already holds.
    """
    client = configure(root)
    if run_id is not None and _existing_run(client, run_id, root):
        resumes = int(client.get_run(run_id).data.tags.get("gptlab.resumes", "0")) + 1
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "gptlab.resumes", str(resumes))
        logged = last_logged_steps(client, run_id)
        tracker: MlflowTracker | SkipLogged = SkipLogged(MlflowTracker(client, run_id), logged)
    else:
        exp = experiment_id(cfg.tracking.experiment, root)
        run = client.create_run(exp, tags={**run_tags(cfg, "train", root), **(extra_tags or {})}, run_name=None)
        run_id = run.info.run_id
        tracker = MlflowTracker(client, run_id)
        params = {key: str(value) for key, value in {"profile": cfg.profile, **cfg.flat()}.items()}
        items = list(params.items())
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in items[i : i + 100]])
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        with contextlib.suppress(Exception):
            tracker.flush()
        client.set_terminated(run_id, status=status)


def download_checkpoint(model_uri: str, dst: str | Path, root: str | Path = ".") -> Path:
    """The gptlab checkpoint inside a logged model (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/…``),
    downloaded under ``dst``: fine-tuning starts from a registered model this way (``train.init``)."""
    import yaml

    configure(root)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    except MlflowException as e:
        raise TrackingError(
            f"cannot download {model_uri} from {tracking_uri(root)}: {e.message}. List the versions with the "
            "MLflow UI (`make ui`) or use `train.init=checkpoint:PATH` for a local checkpoint"
        ) from e
    spec = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise TrackingError(f"{model_uri} is not a gptlab model: its MLmodel lists no `checkpoint` artifact")
    return local / artifacts["checkpoint"]["path"]


@contextlib.contextmanager
def attach(run_id: str | None, cfg: Config, stage: str, *, root: str | Path = ".") -> Iterator[str]:
    """Reopen the training run (evaluate, generate and report add to it); a new run if it is gone."""
    client = configure(root)
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow run %s is not in %s; logging %s to a new run", run_id, tracking_uri(root), stage)
            run_id = None
    if run_id is None:
        exp = experiment_id(cfg.tracking.experiment, root)
        run_id = client.create_run(exp, tags=run_tags(cfg, stage, root)).info.run_id
    with mlflow.start_run(run_id=run_id):
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

    g = cfg.generate
    params = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_k": g.top_k,
              "top_p": g.top_p, "seed": g.seed}
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(gptlab.__file__).parent / "pyfunc_model.py"),  # models from code: no pickle
            artifacts={"checkpoint": str(checkpoint_dir), "tokenizer": str(tokenizer_file)},
            code_paths=[str(Path(gptlab.__file__).parent)],  # self-contained: loads where gptlab is not installed
            # The signature comes from predict's type hints (list[str] → list[str]) and this example, whose
            # params become the inference params' defaults; MLflow also saves it as serving_input_example.json.
            input_example=([g.prompts[0]], params),
            pip_requirements=_requirements(),
        )
    version = mlflow.register_model(info.model_uri, cfg.tracking.registered_model, await_registration_for=60)
    client.set_registered_model_alias(cfg.tracking.registered_model, CANDIDATE, version.version)
    client.set_model_version_tag(cfg.tracking.registered_model, version.version, "gptlab.profile", cfg.profile)
    log.info("registered %s version %s (alias %s)", cfg.tracking.registered_model, version.version, CANDIDATE)
    return RegisteredVersion(cfg.tracking.registered_model, str(version.version), run_id, info.model_uri)


def versions_of_run(name: str, run_id: str, root: str | Path = ".") -> list[str]:
    client = configure(root)
    return [str(v.version) for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")]


def tag_versions_of_run(name: str, run_id: str, tags: dict[str, Any], root: str | Path = ".") -> None:
    client = configure(root)
    for version in versions_of_run(name, run_id, root):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))


def promote(name: str, *, alias: str = CHAMPION, version: str | None = None, source_alias: str = CANDIDATE,
            root: str | Path = ".") -> str:
    """Point ``alias`` at ``version`` (default: the version that ``source_alias`` points to); returns it."""
    client = configure(root)
    try:
        if version is None:
            version = str(client.get_model_version_by_alias(name, source_alias).version)
        else:
            client.get_model_version(name, version)
    except MlflowException as e:
        have = [f"{v.version} ({', '.join(v.aliases) or 'no alias'})" for v in client.search_model_versions(f"name='{name}'")]
        raise TrackingError(
            f"cannot promote {name} {'version ' + version if version else '@' + source_alias}: {e.message}. "
            f"Versions in {tracking_uri(root)}: {', '.join(have) or 'none (run the pipeline first)'}"
        ) from e
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, f"gptlab.promoted.{alias}", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return version


def load_pyfunc(uri: str, root: str | Path = ".") -> mlflow.pyfunc.PyFuncModel:
    configure(root)
    return mlflow.pyfunc.load_model(uri)


def ui_command(root: str | Path = ".", *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command over the project's store, bound to loopback unless told otherwise."""
    cmd = ["mlflow", "ui", "--backend-store-uri", tracking_uri(root), "--host", host, "--port", str(port)]
    if is_embedded(root):
        cmd += ["--default-artifact-root", (Path(root) / ARTIFACT_DIR).resolve().as_uri()]
    return cmd
