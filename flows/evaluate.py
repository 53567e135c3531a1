"""The evaluate flow: score the trained model on the whole val split, LAMBADA, WikiText-103 and HellaSwag, then
record it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from gptlab.core.evaluate import WindowScores
from gptlab.pipeline.config import load_config
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages.evaluate import record, score, score_downstream
from gptlab.settings import Config


@task(name="score-val-split", cache_policy=NONE)
def score_task(cfg: Config, paths: Paths) -> tuple[dict[str, Any], WindowScores]:
    return score(cfg, paths)


@task(name="score-downstream-tasks", cache_policy=NONE)
def downstream_task(cfg: Config, paths: Paths) -> dict[str, Any]:
    return score_downstream(cfg, paths)


@task(name="record-evaluation", cache_policy=NONE)
def record_task(cfg: Config, paths: Paths, result: dict[str, Any], windows: WindowScores) -> None:
    record(cfg, paths, result, windows)  # through the outbox: a tracking outage keeps the records, never fails the task


@flow(name="gptlab-evaluate")
def evaluate_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])
    paths = Paths(Path(params).parent)
    scored, windows = score_task(cfg, paths)
    result = {**scored, **downstream_task(cfg, paths)}
    record_task(cfg, paths, result, windows)
    return {k: v for k, v in result.items() if k != "per_item"}  # the per-item arrays are in eval_examples.npz


if __name__ == "__main__":
    from flows.common import main

    main(evaluate_flow, __doc__)
