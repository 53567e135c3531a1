"""Every `dvc exp run` keeps its metrics: the project's .gitignore lets each uncached metrics and plots file of
dvc.yaml into the experiment's git ref, where `dvc exp show` and `dvc exp diff` read it.

The real pipeline runs in tests/e2e/test_walkthrough.py (minutes); this runs the same DVC mechanism in seconds:
the project's .gitignore and every uncached metrics/plots path of its dvc.yaml, written by a one-line stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ..conftest import REPO
from ..dvcrepo import BIN, run_command

pytestmark = pytest.mark.slow


def _uncached_files() -> list[str]:
    """The metrics and plots files dvc.yaml declares `cache: false` (git, not the DVC cache, must hold them)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    files = []
    for stage in stages.values():
        for kind in ("metrics", "plots", "outs"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    files += [path for path, opts in entry.items() if opts and opts.get("cache") is False]
    return files


def test_each_experiment_keeps_its_own_metrics_in_its_ref(tmp_path: Path):
    files = _uncached_files()
    assert "metrics/eval.json" in files and "metrics/train.json" in files
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text("lr: 1\n")
    writer = (
        "import json, pathlib, yaml; lr = yaml.safe_load(open('params.yaml'))['lr']; "
        f"[pathlib.Path(f).parent.mkdir(parents=True, exist_ok=True) for f in {files!r}]; "
        f"[pathlib.Path(f).write_text(json.dumps({{'loss': 10.0 / lr}}) if f.endswith('.json') "
        f"else 'step,loss\\n1,' + str(10.0 / lr) + '\\n') for f in {files!r}]"
    )
    stage = {"cmd": f'python -c "{writer}"', "params": ["lr"],
             "metrics": [{f: {"cache": False}} for f in files if f.endswith(".json")],
             "plots": [{f: {"cache": False}} for f in files if not f.endswith(".json")]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"all": stage}}))
    dvc = str(BIN / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        run_command(cmd, root)

    run_command([dvc, "exp", "run", "-n", "slow", "-S", "lr=1"], root)
    run_command([dvc, "exp", "run", "-n", "fast", "-S", "lr=4"], root)

    show = json.loads(run_command([dvc, "exp", "show", "--json"], root))
    revs = {rev["name"]: rev["data"] for baseline in show for exp in baseline.get("experiments") or []
            for rev in exp["revs"]}
    for name, loss in (("slow", 10.0), ("fast", 2.5)):
        for path in (f for f in files if f.endswith(".json")):
            assert revs[name]["metrics"][path].get("data") == {"loss": loss}, (name, path, revs[name]["metrics"])
    diff = json.loads(run_command([dvc, "exp", "diff", "slow", "fast", "--json"], root))
    assert diff["metrics"]["metrics/eval.json"]["loss"] == {"old": 10.0, "new": 2.5, "diff": -7.5}
