"""The generate flow: sample every prompt, then record the samples (files + MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from gptlab.pipeline.config import load_config
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages.generate import record, sample, summary
from gptlab.settings import Config


@task(name="sample-prompts", cache_policy=NONE)
def sample_task(cfg: Config, paths: Paths) -> list[dict[str, Any]]:
    return sample(cfg, paths)


@task(name="record-samples", cache_policy=NONE)
def record_task(cfg: Config, paths: Paths, samples: list[dict[str, Any]]) -> None:
    record(cfg, paths, samples)  # through the outbox: a tracking outage keeps the records, never fails the task


@flow(name="gptlab-generate")
def generate_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])
    paths = Paths(Path(params).parent)
    samples = sample_task(cfg, paths)
    record_task(cfg, paths, samples)
    return summary(samples)


if __name__ == "__main__":
    from flows.common import main

    main(generate_flow, __doc__)
