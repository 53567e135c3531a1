"""Reading finished runs back from MLflow: what a sweep has done, what the scaling fit is fitted to."""

from __future__ import annotations

from dataclasses import dataclass

from gptlab.tracking.store import Store

MAX_RUNS = 50_000  # MLflow's search_runs page limit


@dataclass(frozen=True)
class FinishedRun:
    """A training run that ended FINISHED: its params (as logged, strings), latest metrics and tags."""

    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def finished_training_runs(store: Store, experiment: str) -> list[FinishedRun]:
    """Every FINISHED training run of ``experiment`` (tag ``gptlab.stage = train``), oldest first; [] when the
    experiment does not exist yet."""
    client = store.client()
    with store.reachable(f"read the runs of experiment {experiment!r}"):
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs = client.search_runs(
            [found.experiment_id],
            filter_string="tags.`gptlab.stage` = 'train' and attributes.status = 'FINISHED'",
            max_results=MAX_RUNS, order_by=["attributes.start_time ASC"],
        )
    return [FinishedRun(r.info.run_id, dict(r.data.params), dict(r.data.metrics), dict(r.data.tags)) for r in runs]
