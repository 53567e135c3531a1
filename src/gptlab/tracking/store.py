"""Where MLflow lives for a project: one object every tracking call goes through.

The tracking store is ``MLFLOW_TRACKING_URI`` when set, else the embedded default: ``sqlite:///mlflow.db``
with artifacts in ``mlartifacts/``, both at the project root. Records that could not be delivered yet wait
in the project's ``.gptlab/outbox/`` (:mod:`gptlab.tracking.outbox`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gptlab.errors import GptlabError
from gptlab.fileio import state_root

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
OUTBOX_DIR = Path(".gptlab") / "outbox"
LOCK_FILE = Path(".gptlab") / "mlflow.db.lock"  # held while a process opens the embedded store first
_READY: set[str] = set()  # embedded stores this process has opened (created or migrated) already


class TrackingError(GptlabError, RuntimeError):
    """A registry or run lookup that failed in a way the user can fix."""


def short(error: BaseException) -> str:
    """One line about a failure: MLflow's HTTP errors run to several hundred characters."""
    text = getattr(error, "message", None) or str(error)
    if "Connection refused" in text or "Failed to establish a new connection" in text:
        return "connection refused"
    return text.splitlines()[0][:300] if text else type(error).__name__


def _client_defaults() -> None:
    """MLflow client settings gptlab needs; an explicit environment variable still wins."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars flood stage logs
    # MLflow retries a failed HTTP call 7 times with backoff 2 (about 4 minutes). gptlab keeps its own records
    # through an outage (the outbox), so a call may fail fast: 4 retries at backoff 1 (about 15 s).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # gptlab's stdout is its JSON result


@dataclass(frozen=True)
class Store:
    """The project's tracking store: its URI, its outbox, and clients for it."""

    root: Path
    uri: str

    @classmethod
    def at(cls, root: str | Path = ".", uri: str | None = None) -> Store:
        """The store of the project at ``root``: ``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded one.

        In a queued DVC experiment's temporary workspace, the project is the repository it was queued from
        (:func:`gptlab.fileio.state_root`): its runs and outbox outlive the workspace.
        """
        root = state_root(root)
        return cls(root, uri or os.environ.get("MLFLOW_TRACKING_URI") or cls.embedded_uri(root))

    @staticmethod
    def embedded_uri(root: Path) -> str:
        return f"sqlite:///{(root / DB_FILE).resolve()}"

    @property
    def embedded(self) -> bool:
        """True when runs go to the project's own sqlite store."""
        return self.uri == self.embedded_uri(self.root)

    @property
    def artifact_root(self) -> Path:
        """Where the embedded store keeps artifacts (beside its database, not relative to each process's cwd)."""
        return (self.root / ARTIFACT_DIR).resolve()

    @property
    def outbox(self) -> Path:
        return self.root / OUTBOX_DIR

    def client(self) -> MlflowClient:
        """A client for the store; MLflow's fluent API (artifacts, models) is pointed at it too."""
        _client_defaults()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        if self.embedded and self.uri not in _READY:
            self._create_once(client)
        return client

    def _create_once(self, client: MlflowClient) -> None:
        """Open the embedded store under a lock held across processes: MLflow creates (and migrates) a new sqlite
        store on first use, and two processes doing it at once (two queued experiments, `dvc queue start -j 2`)
        collide in alembic ("table _alembic_tmp_model_versions already exists")."""
        import fcntl

        (self.root / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                client.search_experiments(max_results=1)  # the tracking store: tables and migrations
                client.search_registered_models(max_results=1)  # the registry store over the same file
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        _READY.add(self.uri)

    def experiment_id(self, name: str, client: MlflowClient | None = None) -> str:
        client = client or self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = self.artifact_root.as_uri() if self.embedded else None
        return client.create_experiment(name, artifact_location=location)

    @contextlib.contextmanager
    def reachable(self, action: str) -> Iterator[None]:
        """Turn MLflow's failures (an unreachable server above all) into one message with the fix."""
        try:
            yield
        except MlflowException as e:
            hint = "" if self.embedded else " Is the tracking server up? Start it, or unset MLFLOW_TRACKING_URI."
            raise TrackingError(f"cannot {action}: MLflow at {self.uri} failed: {short(e)}.{hint}") from e
