"""From a DVC experiment to its MLflow run and registered version, and back: both carry the experiment's name and
baseline commit, and `gptlab models` shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptlab.cli import main
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages.train import register, train_model
from gptlab.settings import replace
from gptlab.tracking.registry import list_models
from gptlab.tracking.runs import run_tags
from gptlab.tracking.store import Store

from ..conftest import TINY

BASELINE = "0123456789abcdef0123456789abcdef01234567"


def test_outside_an_experiment_no_experiment_tags(tiny_cfg, project: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    tags = run_tags(tiny_cfg, "train", project)
    assert "dvc.exp_name" not in tags and "dvc.exp_baseline" not in tags


def test_a_run_and_its_version_name_the_dvc_experiment(tiny_cfg, tokens_dir, project: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch):
    # What `dvc exp run -n lr-low` hands every stage command (dvc/repo/experiments/queue/base.py).
    monkeypatch.setenv("DVC_EXP_NAME", "lr-low")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", BASELINE)
    cfg = replace(tiny_cfg, train={"max_iters": 4, "eval_interval": 2})
    paths = Paths(project)
    trained = train_model(cfg, paths)
    version = register(cfg, paths, trained.run)["version"]

    store = Store.at(project)
    client = store.client()
    tags = client.get_run(trained.run).data.tags
    assert (tags["dvc.exp_name"], tags["dvc.exp_baseline"]) == ("lr-low", BASELINE)
    version_tags = client.get_model_version(cfg.tracking.registered_model, version).tags
    assert (version_tags["dvc.exp_name"], version_tags["dvc.exp_baseline"]) == ("lr-low", BASELINE)
    [row] = list_models(store, cfg.tracking.registered_model)
    assert (row["dvc_exp"], row["baseline"]) == ("lr-low", BASELINE)

    names = [x for o in TINY if o.startswith("tracking.") for x in ("-S", o)]
    assert main(["models", "--params", str(project / "params.yaml"), "-S", "profile=demo", *names]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("|"))
    assert "dvc_exp" in header and "baseline" in header
    assert "| lr-low " in table and f"| {BASELINE[:7]} " in table  # a hash stays text, leading zero and all
    assert main(["models", "--json", "--params", str(project / "params.yaml"), "-S", "profile=demo", *names]) == 0
    assert json.loads(capsys.readouterr().out)[0]["dvc_exp"] == "lr-low"
