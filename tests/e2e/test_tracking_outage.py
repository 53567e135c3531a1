"""A tracking outage never fails a stage after its work: every stage records through the outbox.

A real `mlflow server` on loopback is killed while a stage runs; the stage finishes, writes its DVC outputs,
says in one line that its records are kept, and `gptlab sync` delivers them once the server is back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import REPO, TINY

pytestmark = pytest.mark.slow

FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # the outbox does the retrying and keeping


def _settings(*extra: str) -> list[str]:
    return [x for o in ["profile=demo", *TINY, "tracking.flush_timeout=2", *extra] for x in ("-S", o)]


def _run(project: Path, module: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # flows/ is not installed
    return subprocess.Popen([sys.executable, "-m", module, *args, "--params", str(project / "params.yaml")],
                            cwd=project, env={**os.environ, "PYTHONPATH": path, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{err}"
    return out, err


def test_evaluate_finishes_through_a_server_crash_and_sync_delivers_its_records(server, tokens_dir, project):
    env = {"MLFLOW_TRACKING_URI": server.uri, **FAIL_FAST}
    _finish(_run(project, "gptlab", "train", *_settings(), env=env))
    run_id = json.loads((project / "models" / "final" / "meta.json").read_text())["mlflow_run_id"]
    client = server.client()
    [version] = client.search_model_versions("name='gptlab'")

    proc = _run(project, "flows.evaluate", *_settings(), env=env)  # what `dvc repro evaluate` runs
    time.sleep(1.0)
    server.kill()  # while evaluate loads and scores
    _, err = _finish(proc)
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert evaluation["model"]["tokens"] > 10_000
    kept = [line for line in err.splitlines() if "gptlab sync" in line]
    assert len(kept) == 1, err  # one line says where the records wait
    assert (project / ".gptlab" / "outbox").is_dir()

    server.start()
    out, _ = _finish(_run(project, "gptlab", "sync", "-S", "profile=demo", env=env))
    assert all(box["left"] == 0 for box in json.loads(out)["runs"])
    run = client.get_run(run_id)
    assert run.data.metrics["eval/val_ppl"] == pytest.approx(evaluation["model"]["ppl"])
    assert any(a.path == "metrics" for a in client.list_artifacts(run_id))
    tags = client.get_model_version("gptlab", version.version).tags
    assert tags["val_sha256"] == evaluation["val_sha256"]
    assert float(tags["val_ppl"]) == pytest.approx(evaluation["model"]["ppl"], rel=1e-5)
