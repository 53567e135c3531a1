"""The train flow: train with MLflow tracking, then log and register the model (alias `candidate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from gptlab.config import Config, load_config
from gptlab.stages import Paths, Trained, register_model, train_model


@task(name="train-model", cache_policy=NONE)
def train_task(cfg: Config, paths: Paths) -> Trained:
    return train_model(cfg, paths)


# Registration talks to the tracking server: retry when it flakes; training itself is never retried blindly.
@task(name="register-model", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def register_task(cfg: Config, paths: Paths, run_id: str) -> dict[str, str]:
    return register_model(cfg, paths, run_id)


@flow(name="gptlab-train")
def train_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])
    paths = Paths(Path(params).parent)
    trained = train_task(cfg, paths)
    return {"run_id": trained.run_id, **register_task(cfg, paths, trained.run_id)}


if __name__ == "__main__":
    from flows.common import main

    main(train_flow, __doc__)
