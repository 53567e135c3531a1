"""The train flow: train with MLflow tracking, then log and register the model (alias `candidate`).

With ``train.nproc_per_node`` > 1 the training task launches that many processes with torchrun (DDP: one
per GPU, or gloo processes on CPU) and waits for them; registration then runs once, here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from gptlab.config import Config, load_config
from gptlab.stages import Paths, Trained, register_model, train_model, train_model_with_torchrun


@task(name="train-model", cache_policy=NONE)
def train_task(cfg: Config, paths: Paths, params: str, overrides: list[str]) -> Trained:
    if cfg.train.nproc_per_node > 1:
        return train_model_with_torchrun(cfg, paths, params=params, overrides=overrides)
    trained = train_model(cfg, paths)
    assert trained is not None  # a single process is rank 0
    return trained


# Registration talks to the tracking server: retry when it flakes; training itself is never retried blindly
# (a re-run resumes from its last checkpoint: `train.resume: auto`).
@task(name="register-model", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def register_task(cfg: Config, paths: Paths, run_id: str) -> dict[str, str]:
    return register_model(cfg, paths, run_id)


@flow(name="gptlab-train")
def train_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])
    paths = Paths(Path(params).parent)
    trained = train_task(cfg, paths, params, list(overrides or []))
    return {"run_id": trained.run_id, **register_task(cfg, paths, trained.run_id)}


if __name__ == "__main__":
    from flows.common import main

    main(train_flow, __doc__)
