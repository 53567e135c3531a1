"""The retraining deployment for real: a Prefect server on loopback, `prefect deploy` of prefect.yaml, a process
worker that runs the pipeline flow (dvc repro, then the promotion gate) in a checkout, as on a GPU machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..conftest import REPO
from ..dvcrepo import run_command
from ..servers import free_port, wait_for_http

BIN = Path(sys.executable).parent


def test_the_deployment_runs_the_pipeline_flow_on_a_gpu_pool():
    """prefect.yaml's entrypoint, parameters and schedule are what the flow and Prefect accept."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [deployment] = spec["deployments"]
    assert deployment["work_pool"]["name"] == "gpu"
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert flow.name == "gptlab-pipeline"
    flow.validate_parameters(deployment["parameters"])  # raises on an unknown or mistyped parameter
    [schedule] = deployment["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    for step in spec["pull"]:
        [name] = step
        import_object(name)
    flow_code = (REPO / "flows" / "pipeline.py").read_text()
    assert ".deploy(" not in flow_code and ".serve(" not in flow_code  # deployments live apart from flows


@pytest.mark.slow
def test_a_deployed_pipeline_run_retrains_and_ends_with_the_promotion_gate(repo: Path, tmp_path: Path):
    # The worker's checkout pulls from its origin before each run (prefect.yaml's pull steps).
    shutil.copy(REPO / "prefect.yaml", repo / "prefect.yaml")
    run_command(["git", "add", "prefect.yaml"], repo)
    run_command(["git", "commit", "-qm", "deployment"], repo)
    origin = tmp_path / "origin.git"
    run_command(["git", "clone", "-q", "--bare", str(repo), str(origin)], repo)
    run_command(["git", "remote", "add", "origin", str(origin)], repo)
    run_command(["git", "fetch", "-q", "origin"], repo)
    branch = run_command(["git", "rev-parse", "--abbrev-ref", "HEAD"], repo).strip()
    run_command(["git", "branch", "-q", f"--set-upstream-to=origin/{branch}"], repo)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": api,
           "PREFECT_HOME": str(tmp_path / "prefect"), "GPTLAB_HOME": str(repo)}
    log = open(tmp_path / "prefect-server.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={**env, "PREFECT_API_URL": ""}, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        try:
            wait_for_http(f"{api}/health", server)
        except AssertionError:
            raise AssertionError((tmp_path / "prefect-server.log").read_text()) from None

        def prefect(*args: str, timeout: float = 120) -> str:
            result = subprocess.run([str(BIN / "prefect"), *args], cwd=repo, env=env, capture_output=True, text=True,
                                    timeout=timeout)
            assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
            return result.stdout + result.stderr

        prefect("work-pool", "create", "gpu", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        prefect("deployment", "run", "gptlab-pipeline/weekly-retrain", "--param", "pull=false", "--param", "push=false")
        prefect("worker", "start", "--pool", "gpu", "--run-once", "--limit", "1", timeout=900)
        runs = json.loads(prefect("flow-run", "ls", "--flow-name", "gptlab-pipeline", "-o", "json"))
        assert any(r["state_type"] == "SCHEDULED" for r in runs)  # the weekly schedule is live
        [run] = [r for r in runs if r["state_type"] != "SCHEDULED"]
        assert run["state_type"] == "COMPLETED", run
        assert run["parameters"] == {"params": "params.yaml", "pull": False, "push": False, "force_promote": False}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()

    # dvc repro ran every stage and recorded it; the gate made the first candidate champion and said why.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "tokenize", "train", "baselines", "evaluate", "generate", "scaling", "report"}
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("gptlab", "champion")
    assert champion.version == client.get_model_version_by_alias("gptlab", "candidate").version
    assert champion.tags["promotion.champion.outcome"] == "promoted"
    assert "no current champion" in champion.tags["promotion.champion.reason"]

    # The champion's run rebuilds from its records alone, its token files taken from the DVC cache by hash.
    shutil.rmtree(repo / "data" / "tokens")
    result = subprocess.run([str(BIN / "gptlab"), "reproduce", champion.run_id], cwd=repo, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    reproduced = json.loads(result.stdout)
    assert reproduced["data"].startswith("the DVC cache") and reproduced["delta"] == 0.0
    assert reproduced["weights_identical"] is True
