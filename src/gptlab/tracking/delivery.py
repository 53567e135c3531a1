"""Delivering a logged model from the outbox: log the pyfunc in its run, register it, point the alias at it.

The tracker delivers ``model`` records (:mod:`gptlab.tracking.tracker`); :mod:`gptlab.tracking.registry` writes
them (``register_checkpoint``) and reads the registry. Kept apart from both so the tracker does not import the
registry that builds on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.tracking import MlflowClient

MODEL_NAME = "model"  # the logged model's name inside a run
RECORD_TAG = "gptlab.outbox_record"  # on a version: the outbox record that registered it (delivery is idempotent)
PYFUNC_ENTRY = "pyfunc_model.py"


def send_model(client: MlflowClient, outbox_path: Path, run_id: str, record: dict[str, Any]) -> None:
    """Deliver a ``model`` record: log the pyfunc in the run, register it, point the alias at it."""
    name, record_id = record["registered_model"], record["id"]
    done = [v for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
            if (v.tags or {}).get(RECORD_TAG) == record_id]
    if done:
        version = done[0].version
    else:
        folder = outbox_path / record["folder"]
        example = record["input_example"]
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(folder / PYFUNC_ENTRY),  # models from code: nothing is pickled
                artifacts={"checkpoint": str(folder / "checkpoint"), "tokenizer": str(folder / record["tokenizer"])},
                code_paths=[str(folder / "gptlab")],
                # The signature comes from predict's type hints (list[str] → list[str]) and this example, whose
                # params become the inference params' defaults; MLflow also saves it as serving_input_example.json.
                input_example=(example["prompts"], example["params"]),
                pip_requirements=record["requirements"],
            )
        registered = mlflow.register_model(info.model_uri, name, await_registration_for=60,
                                           tags={RECORD_TAG: record_id, **record["version_tags"]})
        version = registered.version
    client.set_registered_model_alias(name, record["alias"], str(version))
