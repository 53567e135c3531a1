"""The one way gptlab writes to MLflow: records go to the run's outbox on disk, then to the server.

Logging never stalls the caller and a tracking outage loses nothing. Every record (params, metrics, tags, an
artifact, a model to register, tags for the run's registered versions, the run's end, and the run's creation
when the server was down at its start) is appended to the run's :class:`~gptlab.tracking.outbox.Outbox`; a
background thread sends the records in batches. While the server is unreachable, work goes on and records
pile up on disk; they are re-sent with backoff and delivered when the server is back. If it is still down
when the tracker closes (after ``flush_timeout`` seconds of retrying), they stay for the next tracker of the
same run or ``gptlab sync``; :meth:`Tracker.close` returns the one line that says which.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from gptlab.tracking.delivery import send_model
from gptlab.tracking.outbox import Outbox, find_outboxes, new_key, resolve
from gptlab.tracking.store import Store, TrackingError, short

log = logging.getLogger(__name__)

BATCH_METRICS = 900  # metrics per delivery: MLflow's log_batch accepts at most 1000
BATCH_PARAMS = 100  # log_batch accepts at most 100 params per call
# Tracking URIs this process waited out at a tracker's close without reaching them, and when. A stage with
# several runs (the baselines) waits ``flush_timeout`` once per outage, not once per run.
_outages: dict[str, float] = {}
OUTAGE_MEMORY_S = 600.0


def _recent_outage(uri: str) -> bool:
    since = _outages.get(uri)
    return since is not None and time.monotonic() - since < OUTAGE_MEMORY_S


class NotYet(Exception):
    """A record that cannot be delivered before another one is (a child run before its parent)."""


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
        batch.append(record)
        count += len(record["metrics"])
    return batch


def _create(store: Store, client: MlflowClient, box: Outbox, record: dict[str, Any]) -> None:
    tags = dict(record["tags"])
    if record.get("parent"):
        parent = resolve(box.path.parent, record["parent"])
        if parent is None:
            raise NotYet(f"its parent run {record['parent']} is not created yet")
        tags["mlflow.parentRunId"] = parent
    experiment = store.experiment_id(record["experiment"], client)
    run = client.create_run(experiment, tags=tags, run_name=record.get("name"))
    box.set_run_id(run.info.run_id)


def _send(store: Store, client: MlflowClient, box: Outbox, batch: list[dict[str, Any]]) -> None:
    """Deliver a batch of records (idempotent: MLflow drops duplicate metrics, tags and files overwrite, a model
    record registers once)."""
    kind = batch[0]["type"]
    if kind == "create":
        if box.run_id is None:
            _create(store, client, box, batch[0])
        return
    if box.run_id is None:
        raise NotYet("the run is not created yet")
    run_id = box.run_id
    if kind == "metrics":
        metrics = [Metric(k, v, ts, step) for r in batch for k, v, ts, step in r["metrics"]]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
        return
    [record] = batch
    if kind == "params":
        items = list(record["params"].items())
        for i in range(0, len(items), BATCH_PARAMS):
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + BATCH_PARAMS]], synchronous=True)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()], synchronous=True)
    elif kind == "artifact":
        file = box.path / record["file"]
        if file.is_dir():
            client.log_artifacts(run_id, str(file), artifact_path=record["artifact_path"])
        else:
            client.log_artifact(run_id, str(file), artifact_path=record["artifact_path"])
    elif kind == "version_tags":
        for version in client.search_model_versions(f"name='{record['name']}' and run_id='{run_id}'"):
            for key, value in record["tags"].items():
                client.set_model_version_tag(record["name"], version.version, key, value)
    elif kind == "status":
        client.update_run(run_id, status=record["status"])
    elif kind == "end":
        client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
    elif kind == "model":
        send_model(client, box.path, run_id, record)
    else:
        raise ValueError(f"{box.path}: unknown record type {kind!r}")  # written by a newer gptlab?


def deliver(store: Store, box: Outbox) -> Exception | None:
    """Send ``box``'s pending records to ``store`` in order until one fails; None when all were delivered."""
    client = store.client()
    records = box.records()
    done = box.delivered()
    while done < len(records):
        batch = _next_batch(records[done:], BATCH_METRICS)
        try:
            _send(store, client, box, batch)
        except Exception as e:  # noqa: BLE001 - the HTTP stack raises many types; any is a failed delivery
            return e
        done += len(batch)
        box.mark_delivered(done)
    return None


@dataclass(frozen=True)
class Closed:
    """How a tracker ended: the records kept for later (0: all delivered) and the line that says so."""

    kept: int
    line: str


class Tracker:
    """An MLflow run written through its outbox (see the module docstring)."""

    def __init__(self, store: Store, box: Outbox, *, flush_seconds: float = 5.0, flush_timeout: float = 60.0,
                 max_retry_seconds: float = 60.0):
        self.store = store
        self.box = box
        self.flush_seconds = flush_seconds
        self.flush_timeout = flush_timeout
        self.max_retry_seconds = max_retry_seconds
        self._pending_metrics = 0
        self._send_lock = threading.Lock()  # one delivery at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offline_since: float | None = None
        self._closed: Closed | None = None

    # -- opening

    @classmethod
    def start(cls, store: Store, *, experiment: str, tags: dict[str, str], name: str | None = None,
              parent: Tracker | None = None, **kw: Any) -> Tracker:
        """A new run. Created on the server now when it answers; else the creation waits in the outbox too."""
        record = {"type": "create", "experiment": experiment, "tags": tags, "name": name,
                  "parent": parent.ref if parent is not None else None}
        box = Outbox.create(store.outbox, new_key(), store.uri, None)
        box.append(record)
        tracker = cls(store, box, **kw)
        if _recent_outage(store.uri) or not tracker.flush():
            log.warning("MLflow at %s is unreachable: run %r is created when it is back (records kept in %s)",
                        store.uri, name or experiment, box.path)
        return tracker

    @classmethod
    def attach(cls, store: Store, ref: str, **kw: Any) -> Tracker:
        """Add to the run ``ref`` names (a run id, or the key of a run still waiting to be created)."""
        box = Outbox.find(store.outbox, ref)
        if box is None:
            run_id = resolve(store.outbox, ref)
            if run_id is None:
                raise TrackingError(
                    f"run {ref} was never created on {store.uri} and no outbox holds it: its records were lost "
                    f"(was {store.outbox} deleted?). Re-run the stage that started it"
                )
            box = Outbox.create(store.outbox, run_id, store.uri, run_id)
        return cls(store, box, **kw)

    @property
    def ref(self) -> str:
        """What names this run everywhere gptlab records it: its run id, or its key while it waits."""
        return self.box.run_id or self.box.key

    @property
    def run_id(self) -> str | None:
        return self.box.run_id

    # -- what the stages call

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now_ms = int(time.time() * 1000)
        self._add({"type": "metrics", "metrics": [[k, float(v), now_ms, int(step)] for k, v in metrics.items()]})

    def log_params(self, params: dict[str, Any]) -> None:
        self._add({"type": "params", "params": {k: str(v)[:6000] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, Any]) -> None:
        if tags:
            self._add({"type": "tags", "tags": {k: str(v)[:5000] for k, v in tags.items()}})

    def set_status(self, status: str) -> None:
        """Mark the run RUNNING again (a resumed training) or otherwise, without ending it."""
        self._add({"type": "status", "status": status})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder; the outbox keeps a copy, so it may change or vanish before delivery."""
        path = Path(path)
        kept = self.box.keep_tree(path) if path.is_dir() else self.box.keep_file(path)
        self._add({"type": "artifact", "file": kept, "artifact_path": artifact_path})

    def log_artifacts(self, *paths: str | Path, artifact_path: str | None = None) -> None:
        for path in paths:
            if Path(path).exists():
                self.log_artifact(path, artifact_path)

    def tag_versions(self, name: str, tags: dict[str, Any]) -> None:
        """Tag every version of registered model ``name`` that this run produced."""
        self._add({"type": "version_tags", "name": name, "tags": {k: str(v) for k, v in tags.items()}})

    def log_model(self, folder: str | Path, **record: Any) -> str:
        """Log and register the model in ``folder`` (see :func:`gptlab.tracking.registry.register_checkpoint`);
        returns the record's id, which the registered version carries as a tag."""
        record_id = uuid.uuid4().hex
        self._add({"type": "model", "id": record_id, "folder": self.box.keep_tree(folder), **record})
        return record_id

    @property
    def pending(self) -> int:
        return len(self.box.records()) - self.box.delivered()

    def logged_steps(self) -> dict[str, int]:
        """The highest step of each metric this run's outbox holds, delivered or not."""
        steps: dict[str, int] = {}
        for record in self.box.records():
            for key, _, _, step in record.get("metrics", ()):
                steps[key] = max(step, steps.get(key, -1))
        return steps

    def flush(self, timeout: float = -1) -> bool:
        """Send every pending record now; True when all were delivered (a failure keeps them for later)."""
        return self._deliver(timeout)

    def close(self, status: str | None = "FINISHED") -> Closed:
        """Deliver everything (retrying up to ``flush_timeout`` s), ending the run with ``status`` unless None.

        Returns how it went; a run whose records are all delivered leaves no outbox behind.
        """
        if self._closed is not None:
            return self._closed
        if status is not None:
            self._add({"type": "end", "status": status, "end_time": int(time.time() * 1000)}, wake=False)
        deadline = time.monotonic() + (0.0 if _recent_outage(self.store.uri) else self.flush_timeout)
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
            _outages.pop(self.store.uri, None)
            self.box.remove()
            line = f"tracking: every record of run {self.ref} is in MLflow at {self.store.uri}"
        else:
            _outages[self.store.uri] = time.monotonic()
            line = (f"tracking: MLflow at {self.store.uri} is unreachable: {left} record(s) of run {self.ref} are "
                    f"kept in {self.box.path}; nothing is lost: run `gptlab sync` when the server is back")
        self._closed = Closed(left, line)
        return self._closed

    # -- internals

    def _add(self, record: dict[str, Any], *, wake: bool = True) -> None:
        if self._closed is not None:
            raise RuntimeError(f"tracker of run {self.ref} is closed")  # a bug in the caller
        self.box.append(record)  # on disk before anything else: a crash or an outage loses nothing
        self._pending_metrics += len(record.get("metrics", ()))
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._sender, name=f"mlflow-sender-{self.box.key[:8]}",
                                            daemon=True)
            self._thread.start()
        due = record["type"] != "metrics" or self._pending_metrics >= BATCH_METRICS
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
            self._pending_metrics = 0
            error = deliver(self.store, self.box)
            if error is not None:
                if self._offline_since is None:
                    self._offline_since = time.monotonic()
                    log.warning("MLflow at %s is unreachable (%s): work goes on; tracking records are kept in %s "
                                "and re-sent until it is back", self.store.uri, short(error), self.box.path)
                return False
            if self._offline_since is not None:
                log.warning("MLflow at %s is reachable again after %.0f s: the kept records were delivered",
                            self.store.uri, time.monotonic() - self._offline_since)
                self._offline_since = None
            return True
        finally:
            self._send_lock.release()


def sync(root: str | Path) -> list[dict[str, Any]]:
    """Deliver what runs kept in ``.gptlab/outbox/`` while their tracking server was unreachable."""
    results, failed = [], []
    outbox_dir = Store.at(root).outbox
    for box in find_outboxes(outbox_dir):
        store = Store.at(root, uri=box.tracking_uri)
        start, total = box.delivered(), len(box.records())
        error = deliver(store, box)
        done = box.delivered()
        results.append({"run_id": box.run_id or box.key, "tracking_uri": box.tracking_uri,
                        "delivered": done - start, "left": total - done})
        if error is None:
            box.remove()
        else:
            failed.append(f"run {box.run_id or box.key} at {box.tracking_uri}: {short(error)} ({total - done} left)")
    if failed:
        raise TrackingError(
            f"could not deliver every kept record: {'; '.join(failed)}. Start the tracking server "
            f"(or fix MLFLOW_TRACKING_URI) and run `gptlab sync` again; the records stay in {outbox_dir}"
        )
    return results
