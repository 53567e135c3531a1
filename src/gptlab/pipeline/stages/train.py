"""The train stage: train (or resume) → ``models/final/``, ``metrics/train.json`` and the loss curve, one MLflow
run, and a registered version with alias ``candidate``.

Resumable checkpoints go to ``models/checkpoints/<run key>/`` (git-ignored, deliberately not a DVC out: DVC
would delete an out before re-running the stage). A killed run resumes from there (``train.resume: auto``)
into the same MLflow run. With ``train.nproc_per_node`` > 1, :func:`train_with_torchrun` starts that many
:mod:`gptlab.worker` processes (DDP); rank 0 tracks and writes, and registration runs once, afterwards.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gptlab.core import distributed
from gptlab.core.checkpoint import load_model, open_checkpoint
from gptlab.core.distributed import Dist
from gptlab.core.model import GPT
from gptlab.core.train import find_resume, run_key, train
from gptlab.data.loader import TokenSet
from gptlab.data.tokenizer import ranks_file
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_path, read_json, write_json
from gptlab.hf.weights import load_hf_gpt2
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config
from gptlab.tracking.registry import download_checkpoint, register_checkpoint
from gptlab.tracking.runs import recording, training_run
from gptlab.tracking.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    run: str
    """The MLflow run (its id, or its key while the tracking server has not created it yet)."""
    checkpoint: Path


def load_init(cfg: Config, paths: Paths) -> GPT | None:
    """The model ``train.init`` names (None for ``scratch``); a registered model is downloaded from MLflow."""
    kind, _, target = cfg.train.init.partition(":")
    if kind == "scratch":
        return None
    if kind == "hf":
        return load_hf_gpt2(target)
    if kind == "checkpoint":
        return load_model(paths.root / target)[0]  # relative to the project root (absolute stays absolute)
    with tempfile.TemporaryDirectory(prefix="gptlab-init-") as tmp:
        return load_model(download_checkpoint(Store.at(paths.root), cfg.train.init, tmp))[0]


def train_model(cfg: Config, paths: Paths) -> Trained | None:
    """Train with an MLflow run open; write the checkpoint, ``metrics/train.json`` and the loss curve.

    Under torchrun every process trains and rank 0 alone tracks and writes; the other ranks return None.
    """
    dist = distributed.setup(cfg.train.device, cfg.train.nproc_per_node)
    try:
        tokens = TokenSet.open(paths.tokens)
        run_dir = paths.checkpoints / run_key(cfg, tokens, dist.world_size)
        if not dist.is_main:
            logging.getLogger("gptlab").setLevel(logging.WARNING)  # rank 0 speaks for the job
            train(cfg, tokens=tokens, out_dir=paths.model, checkpoint_dir=run_dir, dist=dist)
            return None
        return _train_and_record(cfg, paths, tokens, run_dir, dist)
    finally:
        distributed.teardown(dist)


def _summary(cfg: Config, result: Any, tokens: TokenSet, dist: Dist, run: str) -> dict[str, Any]:
    train_tokens = tokens.tokens("train")
    return {
        "profile": cfg.profile,
        "params": result.params,
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "train_tokens": train_tokens,
        "epochs": result.tokens_seen / train_tokens,
        "train_loss": result.final_train_loss,
        "val_loss_estimate": result.final_val_loss,
        "best_val_loss_estimate": result.best_val_loss,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from,
        "processes": dist.world_size,
        "tokens_per_sec": result.tokens_per_sec,
        "mfu": result.mfu,
        "tracking_overhead": result.tracking_seconds / max(result.loop_seconds, 1e-9),
        "checkpoint_seconds": result.checkpoint_seconds,
        "mlflow_run_id": run,
    }


def _train_and_record(cfg: Config, paths: Paths, tokens: TokenSet, run_dir: Path, dist: Dist) -> Trained:
    resume = find_resume(run_dir, cfg.train.resume)
    init = load_init(cfg, paths) if resume is None else None
    previous_run = resume.checkpoint.meta.get("mlflow_run_id") if resume is not None else None
    store = Store.at(paths.root)
    with training_run(store, cfg, resume=previous_run, tokens_dir=paths.tokens) as tracker:
        result = train(
            cfg, tokens=tokens, out_dir=paths.model, tracker=tracker,
            meta={"mlflow_run_id": tracker.ref, "profile": cfg.profile},
            checkpoint_dir=run_dir, resume=resume, init=init, dist=dist,
        )
        summary = _summary(cfg, result, tokens, dist, tracker.ref)
        write_json(paths.metrics / "train.json", summary)
        curve = pd.DataFrame(result.history).rename(columns={"train/loss": "train_loss", "val/loss": "val_loss"})
        curve = curve.reindex(columns=["step", "train_loss", "val_loss", "lr", "tokens_per_sec"])
        with atomic_path(paths.metrics / "train_curve.csv") as tmp:
            curve.to_csv(tmp, index=False)
        tracker.log_metrics({"params": summary["params"]}, step=result.steps)
        tracker.set_tags({"gptlab.weights_sha256": result.checkpoint.meta["weights_sha256"]})
        for file in (paths.metrics / "train.json", paths.metrics / "train_curve.csv"):
            tracker.log_artifact(file, artifact_path="metrics")
    return Trained(tracker.ref, paths.model)


def torchrun_command(nproc_per_node: int, args: list[str]) -> list[str]:
    """``torchrun --standalone`` (one node, a free rendezvous port) running the training worker with ``args``."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
        "-m", "gptlab.worker", *args,
    ]


def train_with_torchrun(cfg: Config, paths: Paths, *, params: str | Path, overrides: list[str]) -> Trained:
    """Launch ``train.nproc_per_node`` training processes on this node with torchrun and wait for them.

    Each runs :func:`train_model` (:mod:`gptlab.worker`) with the same params and overrides; rank 0 writes the
    MLflow run and ``models/final``, whose meta names the run.
    """
    args = ["--params", str(Path(params).resolve())] + [a for o in overrides for a in ("-S", o)]
    cmd = torchrun_command(cfg.train.nproc_per_node, args)
    log.info("launching %d training processes: %s", cfg.train.nproc_per_node, " ".join(cmd))
    code = subprocess.run(cmd, cwd=paths.root).returncode
    if code != 0:
        raise GptlabError(f"distributed training failed (torchrun exit code {code}); the processes' errors are above")
    return Trained(open_checkpoint(paths.model).meta["mlflow_run_id"], paths.model)


def register(cfg: Config, paths: Paths, run: str) -> dict[str, Any]:
    """Register ``models/final`` as a new version (alias ``candidate``) in the run that trained it."""
    with recording(Store.at(paths.root), cfg, "register", attach=run) as tracker:
        return register_checkpoint(tracker, cfg, checkpoint_dir=paths.model,
                                   tokenizer_file=ranks_file(cfg.tokenize.tokenizer))


def register_final(cfg: Config, paths: Paths) -> dict[str, Any]:
    """``gptlab register``: register ``models/final`` under the run its meta names."""
    run = read_json(paths.model / "meta.json").get("mlflow_run_id") if (paths.model / "meta.json").is_file() else None
    if not run:
        raise GptlabError(f"{paths.model}/meta.json records no MLflow run: re-run `gptlab train`")
    return register(cfg, paths, run)


def run(cfg: Config, paths: Paths) -> dict[str, Any] | None:
    """Train, then register (one process; the train flow launches torchrun when nproc_per_node > 1)."""
    trained = train_model(cfg, paths)
    if trained is None:  # a torchrun process other than rank 0: rank 0 registers
        return None
    return {"run_id": trained.run, **register(cfg, paths, trained.run)}


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
