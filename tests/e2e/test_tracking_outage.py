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
import yaml

from ..conftest import REPO, TINY
from ..dvcrepo import BIN, stages_ran

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


def test_the_whole_pipeline_outlives_a_server_stopped_and_started_again_partway(server, repo):
    """`dvc repro` of every stage against a real server: killed once the data stages are done (train and evaluate
    run without it), started again before the baselines. Every stage finishes; every record arrives."""
    tiny = repo / "profiles" / "tiny.yaml"
    profile = yaml.safe_load(tiny.read_text())
    profile["tracking"] = {"flush_timeout": 3}  # the end of a stage waits this long for a server that is down
    tiny.write_text(yaml.safe_dump(profile))
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, **FAIL_FAST,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 1200
    for ready, act in ((repo / "data" / "tokens" / "meta.json", server.kill),
                       (repo / "metrics" / "eval.json", server.start)):
        while not ready.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the pipeline did not get that far in time"
            time.sleep(0.2)
        act()
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out
    ran = stages_ran(out)
    assert ran[:5] == ["download", "tokenize", "train", "evaluate", "baselines"] and ran[-1] == "report"
    assert sorted(ran[5:-1]) == ["generate", "scaling"]

    synced, _ = _finish(_run(repo, "gptlab", "sync", env=env))  # what the outage kept, once the server is back
    assert all(box["left"] == 0 for box in json.loads(synced)["runs"]), synced
    assert not list((repo / ".gptlab" / "outbox").glob("*/records.jsonl"))
    client = server.client()
    experiment = client.get_experiment_by_name("gptlab").experiment_id
    [run] = client.search_runs([experiment], filter_string="tags.`gptlab.stage` = 'train'")
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert run.data.metrics["eval/val_ppl"] == pytest.approx(evaluation["model"]["ppl"])
    steps = json.loads((repo / "metrics" / "train.json").read_text())
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) == len({m.step for m in history}) == 9, steps  # every logged step, once
    assert {"metrics", "samples", "report", "provenance"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    [version] = client.search_model_versions("name='gptlab'")
    assert version.run_id == run.info.run_id and float(version.tags["val_ppl"]) == pytest.approx(
        evaluation["model"]["ppl"], rel=1e-5)
    assert str(client.get_model_version_by_alias("gptlab", "candidate").version) == str(version.version)
    baselines = client.search_runs([experiment], filter_string="tags.`gptlab.stage` = 'baselines'")
    assert baselines, "the baselines stage recorded no run"
