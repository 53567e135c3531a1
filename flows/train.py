"""The train flow: train with MLflow tracking, then log and register the model (alias `candidate`).

With ``train.nproc_per_node`` > 1 the training task launches that many processes with torchrun (DDP: one
per GPU, or gloo processes on CPU) and waits for them; registration then runs once, here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from gptlab.pipeline.config import load_config
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages.train import Trained, register, train_model, train_with_torchrun
from gptlab.settings import Config


@task(name="train-model", cache_policy=NONE)
def train_task(cfg: Config, paths: Paths, params: str, overrides: list[str]) -> Trained:
    if cfg.train.nproc_per_node > 1:
        return train_with_torchrun(cfg, paths, params=params, overrides=overrides)
    trained = train_model(cfg, paths)
    assert trained is not None  # a single process is rank 0
    return trained


# Registration goes through the run's outbox: an unreachable tracking server delays it, never fails it. Training
# itself is never retried blindly (a re-run resumes from its last checkpoint: `train.resume: auto`).
@task(name="register-model", cache_policy=NONE)
def register_task(cfg: Config, paths: Paths, run: str) -> dict[str, Any]:
    return register(cfg, paths, run)


@flow(name="gptlab-train")
def train_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])
    paths = Paths(Path(params).parent)
    trained = train_task(cfg, paths, params, list(overrides or []))
    return {"run_id": trained.run, **register_task(cfg, paths, trained.run)}


if __name__ == "__main__":
    from flows.common import main

    main(train_flow, __doc__)
