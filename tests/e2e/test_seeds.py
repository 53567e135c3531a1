"""Several seeds through a real DVC queue: `dvc exp run --queue -S train.seed=…`, `dvc queue start`, and the
runs land in the repository's MLflow store as seed runs of one configuration (the report's seeds section and
the gate's `tracking.promote_seeds` read them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ..dvcrepo import BIN, run_command

pytestmark = pytest.mark.slow


def _wait_for_queue(repo: Path, timeout: float = 1500) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = run_command([str(BIN / "dvc"), "queue", "status"], repo)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        if time.monotonic() > deadline:
            run_command([str(BIN / "dvc"), "queue", "stop", "--kill"], repo)
            raise AssertionError(f"the DVC queue did not finish in {timeout:.0f} s:\n{status}")
        time.sleep(5)


def test_two_queued_seeds_are_one_configuration(repo: Path, monkeypatch: pytest.MonkeyPatch):
    dvc = str(BIN / "dvc")
    # The queue's worker starts a Prefect ephemeral server per stage; on a loaded CI machine it needs more than
    # Prefect's default 20 s to answer.
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    for seed in (1, 2):
        run_command([dvc, "exp", "run", "--queue", "-S", f"train.seed={seed}", "--name", f"seed-{seed}"], repo)
    run_command([dvc, "queue", "start"], repo)  # one worker: the experiments run one after the other
    try:
        status = _wait_for_queue(repo)
    finally:
        run_command([dvc, "queue", "stop"], repo)  # no worker outlives the test
    assert status.count("Success") == 2, status

    shown = json.loads(run_command([dvc, "exp", "show", "--json"], repo))
    exps = {rev["name"]: rev for entry in shown for group in (entry.get("experiments") or [])
            for rev in group["revs"] if rev.get("name")}
    assert {"seed-1", "seed-2"} <= set(exps), sorted(exps)
    for name in ("seed-1", "seed-2"):
        assert exps[name]["data"]["params"]["params.yaml"]["data"]["train"]["seed"] == int(name.split("-")[1])

    # Both runs are in the repository's store (not the deleted temp copies), tagged as one configuration.
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    versions = {v.tags.get("gptlab.seed"): v for v in client.search_model_versions("name='gptlab'")}
    assert {"1", "2"} <= set(versions)
    configs = {versions[s].tags["gptlab.config_sha256"] for s in ("1", "2")}
    splits = {versions[s].tags["val_sha256"] for s in ("1", "2")}
    assert len(configs) == 1 and len(splits) == 1

    # The second experiment's report saw both seeds.
    mlflow.set_tracking_uri(uri)
    second = versions["2"].run_id
    report = Path(mlflow.artifacts.download_artifacts(run_id=second, artifact_path="report/report.md",
                                                      dst_path=str(repo / "dl")))
    text = report.read_text()
    assert "## Seeds" in text and "over n = 2 seed runs: seeds 1, 2" in text, text[text.find("## Seeds"):][:600]

    # The gate counts them: two seed runs of the candidate's configuration, as tracking.promote_seeds=2 asks.
    code = run_command([str(BIN / "gptlab"), "promote", "-S", "tracking.promote_seeds=2"], repo)
    decision = json.loads(code)
    assert decision["outcome"] == "promoted" and decision["version"] == str(versions["2"].version)
