"""End to end: a 2 × 2 sweep through the real DVC queue, interrupted after half of it, resumed, then the scaling
stage over its MLflow runs (which refuses to fit a grid this small, and says so without failing)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..dvcrepo import BIN, run_command

pytestmark = pytest.mark.slow

SIZES = [{"n_layer": 1, "n_head": 2, "n_embd": 16}, {"n_layer": 1, "n_head": 2, "n_embd": 32}]


def test_a_partial_sweep_resumes_with_what_is_left_and_each_point_is_a_dvc_experiment(repo: Path):
    profile = repo / "profiles" / "tiny.yaml"
    tree = yaml.safe_load(profile.read_text())
    tree["scaling"] = {"sizes": SIZES, "max_iters": [10, 20], "bootstrap": 4}
    profile.write_text(yaml.safe_dump(tree))
    run_command(["git", "commit", "-qam", "a 2 x 2 sweep"], repo)
    gptlab = str(BIN / "gptlab")

    plan = _json([gptlab, "sweep", "plan", "--json"], repo)
    assert [p["name"] for p in plan["points"]] == ["tiny-1x2x16-10", "tiny-1x2x16-20", "tiny-1x2x32-10",
                                                   "tiny-1x2x32-20"]
    assert {p["state"] for p in plan["points"]} == {"to run"}

    # Half the sweep (the first budget only), as a sweep stopped after two points would leave it.
    first = _json([gptlab, "sweep", "run", "-S", "scaling.max_iters=[10]"], repo)
    assert first["queued_now"] == ["tiny-1x2x16-10", "tiny-1x2x32-10"] and first["done"] == 2

    # Resumed: the finished points are skipped (read from MLflow), only what is left is queued.
    second = _json([gptlab, "sweep", "run", "-j", "1"], repo)
    assert second["skipped_done"] == ["tiny-1x2x16-10", "tiny-1x2x32-10"]
    assert second["queued_now"] == ["tiny-1x2x16-20", "tiny-1x2x32-20"]
    assert second["done"] == 4 and second["not_done"] == []

    # Each point is an ordinary experiment (a row of `dvc exp show`) with its own MLflow training run.
    shown = _json([str(BIN / "dvc"), "exp", "show", "--json"], repo)
    names = {e["name"]: e["executor"]["state"] if e.get("executor") else "success"
             for baseline in shown for e in baseline.get("experiments") or []}
    assert {n: names.get(n) for n in [p["name"] for p in plan["points"]]} == dict.fromkeys(
        [p["name"] for p in plan["points"]], "success")
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gptlab").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`gptlab.stage` = 'train'")
    shapes = sorted((r.data.params["model.n_embd"], r.data.params["train.max_iters"]) for r in runs)
    assert shapes == [("16", "10"), ("16", "20"), ("32", "10"), ("32", "20")]  # each point once: none re-trained
    assert all(r.info.status == "FINISHED" and "eval/val_loss" in r.data.metrics for r in runs)
    status = _json([gptlab, "sweep", "plan", "--json"], repo)
    assert {p["state"] for p in status["points"]} == {"done"}

    # The fit over these runs: a 2 × 2 grid is refused with what to add, and the stage still succeeds.
    run_command([str(BIN / "dvc"), "repro", "tokenize"], repo)
    out = _json([gptlab, "scaling"], repo)
    assert out["fitted"] is False and out["runs"] == 4
    result = json.loads((repo / "reports" / "scaling.json").read_text())
    assert result["reason"].startswith("not enough runs: 4 finished run(s)")
    assert "2 distinct model sizes" in result["reason"] and "add to scaling.sizes" in result["reason"]
    assert sorted(result["run_ids"]) == sorted(r.info.run_id for r in runs)


def _json(cmd: list[str], cwd: Path) -> Any:
    """The JSON object a gptlab command prints on stdout (its logs go to stderr)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)
