"""`gptlab reproduce RUN_ID`: a run rebuilt from its records alone trains to the same val loss, bit for bit on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.cli import main
from gptlab.fileio import read_json
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages.train import train_model
from gptlab.settings import replace
from gptlab.tracking.store import Store

from ..conftest import REPO, TINY


def test_the_same_weights_always_give_the_same_file(tmp_path):
    """Byte-identical checkpoint files (and so equal weights_sha256) for equal weights, save after save."""
    import torch

    from gptlab.core.checkpoint import save_checkpoint
    from gptlab.core.model import GPT

    from ..core.test_model import SMALL

    torch.manual_seed(0)
    model = GPT(SMALL)
    hashes = {save_checkpoint(tmp_path / f"c{i}", model=model, meta={"step": 0}).meta["weights_sha256"]
              for i in range(12)}
    assert len(hashes) == 1


def _reproduce(capsys, project: Path, run_id: str, *extra: str) -> tuple[int, dict | None, str]:
    code = main(["reproduce", run_id, "--params", str(project / "params.yaml"), *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


@pytest.mark.slow
def test_reproduce_rebuilds_a_cpu_run_bit_for_bit(tiny_cfg, tokens_dir, project, capsys):
    cfg = replace(tiny_cfg, train={"max_iters": 12, "eval_interval": 6})
    paths = Paths(project)
    run = train_model(cfg, paths)
    recorded = read_json(paths.metrics / "train.json")["val_loss_estimate"]

    code, result, err = _reproduce(capsys, project, run.run)
    assert code == 0, err
    assert result["recorded_val_loss"] == recorded
    assert abs(result["delta"]) <= 1e-6 and result["matches"]
    assert result["weights_identical"] is True  # not just the loss: the very same weights
    assert "this checkout" in result["code"] and str(paths.tokens) in result["data"]
    tags = Store.at(project).client().get_run(run.run).data.tags
    assert float(tags["gptlab.reproduce.delta_val_loss"]) == result["delta"]
    # The reproduction trained in its own workspace: the project's registry and runs are untouched.
    assert len(Store.at(project).client().search_runs([Store.at(project).experiment_id("gptlab")])) == 1

    # Without the project's data, the token files are rebuilt from the recorded settings and checked.
    shutil.rmtree(paths.tokens)
    shutil.rmtree(paths.raw)
    code, result, err = _reproduce(capsys, project, run.run)
    assert code == 0, err
    assert result["data"].startswith("rebuilt") and abs(result["delta"]) <= 1e-6 and result["weights_identical"]
    assert not paths.tokens.exists()  # the workspace was temporary


def test_reproduce_refuses_what_it_cannot_rebuild(tiny_cfg, tokens_dir, project, capsys):
    cfg = replace(tiny_cfg, train={"max_iters": 4, "eval_interval": 2})
    run = train_model(cfg, Paths(project))
    code, _, err = _reproduce(capsys, project, "0123456789abcdef0123456789abcdef")
    assert code == 1 and "is not in sqlite:///" in err and "gptlab models" in err
    code, _, err = _reproduce(capsys, project, run.run, "-S", "train.max_iters=many")
    assert code == 2 and "`train.max_iters` must be int, got 'many'" in err


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_reproduce_rebuilds_the_runs_commit_and_uncommitted_changes(tokens_dir, project):
    """Code changed since the run: reproduce exports the run's commit, applies its recorded diff, and matches."""
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (project / ".gitignore").write_text("/data/\n/mlflow.db\n/mlartifacts/\n/metrics/\n/models/\n/.gptlab/\n")
    _git("init", "-q", cwd=project)
    _git("add", "-A", cwd=project)
    _git("commit", "-qm", "gptlab", cwd=project)
    train_py = project / "src" / "gptlab" / "core" / "train.py"
    train_py.write_text(train_py.read_text() + "\n# an uncommitted change the run was trained with\n")
    env = {**os.environ, "PYTHONPATH": str(project / "src")}  # this project's gptlab, not the installed one

    def gptlab(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "gptlab", *args, "--params", str(project / "params.yaml")],
                                cwd=project, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    overrides = [x for o in ["profile=demo", *TINY, "train.max_iters=8", "train.eval_interval=4"] for x in ("-S", o)]
    run_id = json.loads(gptlab("train", *overrides))["run_id"]
    run = Store.at(project).client().get_run(run_id)
    assert run.data.tags["gptlab.git_dirty"] == "true"
    commit = run.data.tags["mlflow.source.git.commit"]

    # Afterwards: the change is reverted and another one committed, so this checkout is not the run's code.
    _git("checkout", "--", ".", cwd=project)
    model_py = project / "src" / "gptlab" / "core" / "model.py"
    model_py.write_text(model_py.read_text() + "\n# a later commit\n")
    _git("commit", "-qam", "later", cwd=project)

    result = json.loads(gptlab("reproduce", run_id))
    assert result["code"].startswith(f"git commit {commit[:12]} + the run's git.diff")
    assert abs(result["delta"]) <= 1e-6 and result["weights_identical"] is True
