"""Sweeps: every model size × token budget of the ``scaling`` section as one ordinary DVC experiment.

``gptlab sweep plan`` prints the points, their cost and the ``dvc exp run --queue`` command of each;
``gptlab sweep run`` queues the points not done yet and starts ``dvc queue start -j N``, then waits and
reports. Each point is a named experiment (its own row in ``dvc exp show``) that runs the pipeline up to
the evaluate stage (train + evaluate: the final val loss over the whole split is what the fit needs), with
its own MLflow run and checkpoints.

What is done is read from MLflow, the records the fit uses too: a point is done when a FINISHED training run
of the experiment has exactly the point's data, tokenize, model and train settings (those that decide its
losses: the watch-only ones of :data:`gptlab.core.train.NOT_IN_RUN_KEY` aside) and an ``eval/val_loss``.
Points DVC still holds as queued or running (``dvc exp show --json``) are not queued twice. So a sweep whose
``gptlab sweep run`` was interrupted, or whose queue was killed, resumes by running ``gptlab sweep run``
again: finished points are skipped, a point killed mid-training resumes from its last checkpoint
(kept in the repository the experiment was queued from: see :func:`gptlab.fileio.state_root`).

Overrides go into the profile file (``-S profiles/<profile>.yaml:model.n_layer=4``): the profile overlays
params.yaml, so a ``-S model.n_layer=4`` written into params.yaml would be shadowed by it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.core.hardware import gpu_peak_flops
from gptlab.core.scaling import non_embedding_params
from gptlab.core.train import NOT_IN_RUN_KEY
from gptlab.errors import GptlabError
from gptlab.pipeline.config import load_config, parse_override
from gptlab.settings import Config, ModelShape
from gptlab.tracking.results import FinishedRun, finished_training_runs
from gptlab.tracking.store import Store

log = logging.getLogger(__name__)

TARGET = "evaluate"  # each point runs the pipeline up to here: the fit needs the final loss, not samples or a report
SWEPT = ("model.n_layer", "model.n_head", "model.n_embd", "train.max_iters")
IDENTITY_SECTIONS = ("data", "tokenize", "model", "train")
# Settings that change how a run is fetched, encoded, checked or watched, not its losses.
NOT_IDENTITY = {"data.num_proc", "data.expected_docs", "tokenize.num_workers",
                *(f"train.{k}" for k in NOT_IN_RUN_KEY)}
ASSUMED_MFU = 0.35  # nanoGPT reports ~35% MFU training GPT-2 124M on A100s; used when no run measured one
IN_FLIGHT = ("queued", "running")


class SweepError(GptlabError, RuntimeError):
    """A sweep that cannot be planned or queued; the message says what to do."""


def identity(flat: dict[str, Any]) -> dict[str, str]:
    """The settings that decide a run's losses, as MLflow logged them (``str`` of each value)."""
    return {k: str(v) for k, v in flat.items()
            if k.split(".")[0] in IDENTITY_SECTIONS and k not in NOT_IDENTITY}


def family(flat: dict[str, Any]) -> dict[str, str]:
    """:func:`identity` without the swept settings: runs of one family differ only in size and budget."""
    return {k: v for k, v in identity(flat).items() if k not in SWEPT}


def matches(run: FinishedRun, wanted: dict[str, str]) -> bool:
    return all(run.params.get(k) == v for k, v in wanted.items())


def train_flops_per_token(cfg: Config) -> float:
    """Training FLOPs per token as the MFU of :mod:`gptlab.core.model` counts them: 6 × (non-embedding params +
    the tied token embedding) + 12·L·d·T for attention (PaLM, appendix B)."""
    m = cfg.model
    params = non_embedding_params(n_layer=m.n_layer, n_embd=m.n_embd, bias=m.bias) + m.vocab_size * m.n_embd
    return 6 * params + 12 * m.n_layer * m.n_embd * m.block_size


def gpu_hours(flops: float, *, gpu: str, mfu: float) -> float | None:
    """Hours on one ``gpu`` at ``mfu`` of its dense bf16 peak; None for a GPU missing from gptlab.hardware."""
    peak = gpu_peak_flops(gpu)
    return None if peak is None else flops / (peak * mfu) / 3600.0


@dataclass(frozen=True)
class SweepPoint:
    name: str
    shape: ModelShape
    max_iters: int
    cfg: Config
    """The point's resolved configuration."""
    sets: tuple[str, ...]
    """The ``-S`` values of its ``dvc exp run``."""

    @property
    def N(self) -> int:
        m = self.cfg.model
        return non_embedding_params(n_layer=m.n_layer, n_embd=m.n_embd, bias=m.bias)

    @property
    def D(self) -> int:
        return self.max_iters * self.cfg.tokens_per_step

    @property
    def flops(self) -> float:
        return self.D * train_flops_per_token(self.cfg)

    def command(self) -> list[str]:
        return ["dvc", "exp", "run", "--queue", "-n", self.name, *(a for s in self.sets for a in ("-S", s)), TARGET]


def point_name(profile: str, shape: ModelShape, max_iters: int) -> str:
    return f"{profile}-{shape.n_layer}x{shape.n_head}x{shape.n_embd}-{max_iters}"


def plan(params: str | Path, overrides: Sequence[str] = ()) -> list[SweepPoint]:
    """Every size × budget of the configuration's ``scaling`` section, each resolved (and so validated)."""
    cfg = load_config(params, overrides)
    if not cfg.scaling.sizes or not cfg.scaling.max_iters:
        raise SweepError(f"profile {cfg.profile!r} has an empty sweep: list scaling.sizes and scaling.max_iters "
                         "(profiles/scaling.yaml is the offline example)")
    profile_file = f"profiles/{cfg.profile}.yaml"
    extra = []
    for text in overrides:
        key, _ = parse_override(text)
        # Into the profile file, where a params.yaml value would be shadowed; the sweep's own settings
        # (scaling.*) choose the points and stay out of them.
        if key != "profile" and not key.startswith("scaling."):
            extra.append(f"{profile_file}:{text.strip()}")
    points = []
    for shape in cfg.scaling.sizes:
        for iters in cfg.scaling.max_iters:
            swept = {"model.n_layer": shape.n_layer, "model.n_head": shape.n_head, "model.n_embd": shape.n_embd,
                     "train.max_iters": iters}
            mine = [f"{k}={v}" for k, v in swept.items()]
            point_cfg = load_config(params, [*overrides, *mine])
            sets = (f"profile={cfg.profile}", *extra, *(f"{profile_file}:{s}" for s in mine))
            points.append(SweepPoint(point_name(cfg.profile, shape, iters), shape, iters, point_cfg, sets))
    return points


def done_runs(points: Sequence[SweepPoint], runs: Sequence[FinishedRun]) -> dict[str, FinishedRun]:
    """The newest finished, evaluated training run of each point that has one."""
    done = {}
    for point in points:
        wanted = identity(point.cfg.flat())
        for run in runs:  # oldest first: the newest wins
            if "eval/val_loss" in run.metrics and matches(run, wanted):
                done[point.name] = run
    return done


def _dvc(args: list[str], root: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise SweepError("the `dvc` command is not on PATH: activate the project's environment (.venv/bin)") from e


def experiment_states(root: Path) -> dict[str, str]:
    """``{experiment name: state}`` of the experiments DVC knows of (queued, running, success, failed)."""
    out = _dvc(["exp", "show", "--json", "--no-fetch"], root)
    if out.returncode != 0:
        raise SweepError(f"`dvc exp show --json` failed in {root}: {out.stderr.strip()[:500]}")
    states: dict[str, str] = {}
    for baseline in json.loads(out.stdout or "[]"):
        for exp in baseline.get("experiments") or []:
            executor = exp.get("executor") or {}
            name = exp.get("name") or next((r.get("name") for r in exp.get("revs", []) if r.get("name")), None)
            if name:
                states[name] = executor.get("state") or "success"
    return states


def _workers(root: Path) -> int:
    out = _dvc(["queue", "status"], root).stdout
    found = re.search(r"Worker status: (\d+) active", out)
    return int(found.group(1)) if found else 0


def _start_workers(root: Path, jobs: int) -> None:
    """``dvc queue start -j N``. Its workers run on in the background holding whatever stdout they were given:
    a captured pipe would never reach end-of-file while they live, so their output goes to a log file."""
    log_file = root / ".dvc" / "tmp" / "gptlab-sweep-queue.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # Each point starts Prefect's ephemeral API server for its flows; its 20 s default start-up timeout failed
    # points on a loaded 2-core machine (measured at load 16). An explicit setting still wins.
    env = {**os.environ}
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    with open(log_file, "ab") as sink:
        code = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=root, stdin=subprocess.DEVNULL,
                              stdout=sink, stderr=sink, env=env).returncode
    if code != 0:
        raise SweepError(f"`dvc queue start -j {jobs}` failed (exit code {code}): see {log_file}")


def status(params: str | Path, overrides: Sequence[str] = (), *, root: Path | None = None) -> list[dict[str, Any]]:
    """One row per point: its size, budget and cost, and whether it is done (with its run), queued, running
    or still to run."""
    points = plan(params, overrides)
    root = root or Path(params).parent
    cfg = points[0].cfg
    done = done_runs(points, finished_training_runs(Store.at(root), cfg.tracking.experiment))
    states = experiment_states(root) if (root / ".dvc").is_dir() else {}
    mfu = cfg.scaling.mfu or ASSUMED_MFU
    cost = {"gpu": cfg.scaling.gpu, "mfu": mfu, "mfu_assumed": cfg.scaling.mfu is None}
    rows = []
    for p in points:
        run = done.get(p.name)
        state = "done" if run else states.get(p.name) if states.get(p.name) in IN_FLIGHT else "to run"
        rows.append({
            "name": p.name, "n_layer": p.shape.n_layer, "n_head": p.shape.n_head, "n_embd": p.shape.n_embd,
            "N": p.N, "max_iters": p.max_iters, "D": p.D, "flops": p.flops,
            "gpu_hours": gpu_hours(p.flops, gpu=cfg.scaling.gpu, mfu=mfu), "state": state,
            "run_id": run.run_id if run else None,
            "val_loss": run.metrics["eval/val_loss"] if run else None,
            "command": " ".join(p.command()), **cost,
        })
    return rows


def _queue(point: SweepPoint, root: Path) -> None:
    out = _dvc(point.command()[1:], root)
    if out.returncode != 0 and "conflicts with existing experiment" in out.stdout + out.stderr:
        # A finished experiment of that name whose run is not (or no longer) in MLflow: replace it.
        _dvc(["exp", "remove", point.name], root)
        out = _dvc(point.command()[1:], root)
    if out.returncode != 0:
        raise SweepError(f"`{' '.join(point.command())}` failed: {(out.stderr or out.stdout).strip()[:800]}")


def run(params: str | Path, overrides: Sequence[str] = (), *, jobs: int | None = None, wait: bool = True,
        poll_seconds: float = 10.0, root: Path | None = None) -> dict[str, Any]:
    """Queue every point not done and not already queued or running, start ``jobs`` queue workers, and (with
    ``wait``) wait for the queue, then report each point's state."""
    root = root or Path(params).parent
    if not (root / ".dvc").is_dir():
        raise SweepError(f"{root.resolve()} is not a DVC repository: sweeps run through `dvc exp run --queue` "
                         "(run `gptlab sweep run` in the project's checkout)")
    rows = status(params, overrides, root=root)
    points = {p.name: p for p in plan(params, overrides)}
    cfg = next(iter(points.values())).cfg
    jobs = jobs or cfg.scaling.jobs
    queued = []
    skipped = [r["name"] for r in rows if r["state"] == "done"]
    if skipped:
        log.info("sweep: %d point(s) already done in MLflow, skipped: %s", len(skipped), ", ".join(skipped))
    pending = [r["name"] for r in rows if r["state"] != "done"]
    if any(r["state"] in IN_FLIGHT for r in rows) and _workers(root) < jobs:
        _start_workers(root, jobs)  # what an earlier sweep left queued runs while the rest is queued
    for row in rows:
        if row["state"] == "to run":
            _queue(points[row["name"]], root)
            queued.append(row["name"])
            log.info("sweep: queued %s (N=%s, D=%s)", row["name"], f"{row['N']:,}", f"{row['D']:,}")
            if len(queued) == 1 and _workers(root) < jobs:
                _start_workers(root, jobs)  # training starts while the other points are queued
    if wait:
        started = time.monotonic()
        while pending:
            states = experiment_states(root)
            left = [n for n in pending if states.get(n) in IN_FLIGHT]
            if not left:
                break
            if any(states.get(n) == "queued" for n in left) and _workers(root) == 0:
                _start_workers(root, jobs)  # a worker stops when it finds the queue empty, maybe before the last
            log.info("sweep: %d of %d point(s) queued or running (%.0f s)", len(left), len(rows),
                     time.monotonic() - started)
            time.sleep(poll_seconds)
        rows = status(params, overrides, root=root)
    failed = [r["name"] for r in rows if r["state"] == "to run"] if wait else []
    result = {"points": len(rows), "done": sum(r["state"] == "done" for r in rows), "queued_now": queued,
              "skipped_done": skipped, "not_done": failed,
              "next": f"fit: `dvc exp run -S profile={cfg.profile}` (the scaling stage) or "
                      f"`gptlab scaling -S profile={cfg.profile}`"}
    if failed:
        result["hint"] = ("points not done: see `dvc queue logs NAME`; `gptlab sweep run` again re-queues them "
                          "(a killed training resumes from its last checkpoint)")
    return result
