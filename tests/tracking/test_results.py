"""Reading finished training runs back from a real MLflow store (sqlite), as the sweep and the scaling fit do."""

from __future__ import annotations

from pathlib import Path

from gptlab.tracking.results import finished_training_runs
from gptlab.tracking.store import Store


def test_only_finished_training_runs_come_back_with_params_metrics_and_tags(tmp_path: Path):
    store = Store.at(tmp_path)
    assert finished_training_runs(store, "gptlab") == []  # no experiment yet: nothing, not an error
    client = store.client()
    experiment = store.experiment_id("gptlab", client)
    runs = {}
    for name, stage, status in [("done", "train", "FINISHED"), ("killed", "train", "FAILED"),
                                ("running", "train", None), ("report", "report", "FINISHED")]:
        run = client.create_run(experiment, tags={"gptlab.stage": stage, "gptlab.val_sha256": "ab" * 32})
        client.log_param(run.info.run_id, "model.n_embd", "32")
        client.log_metric(run.info.run_id, "eval/val_loss", 4.5, step=0)
        client.log_metric(run.info.run_id, "eval/val_loss", 4.25, step=1)
        if status:
            client.set_terminated(run.info.run_id, status=status)
        runs[name] = run.info.run_id
    [found] = finished_training_runs(store, "gptlab")
    assert found.run_id == runs["done"]
    assert found.params == {"model.n_embd": "32"} and found.metrics["eval/val_loss"] == 4.25  # the latest value
    assert found.tags["gptlab.val_sha256"] == "ab" * 32
