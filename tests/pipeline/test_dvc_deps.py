"""Every DVC stage depends on all the project code it runs, so `dvc repro` never keeps a result of stale code.

For each stage of dvc.yaml, the modules its command runs are found by walking the imports of its entry module
(transitively, imports inside functions included, `if TYPE_CHECKING:` blocks excluded: they never run), and
every one of them must lie under one of the stage's `deps`.
"""

from __future__ import annotations

import pytest
import yaml

from ..importgraph import REPO, imported_names, modules_run_by


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def entry_module(cmd: str) -> str:
    words = cmd.split()
    assert words[:2] == ["python", "-m"], f"stage command {cmd!r} is not `python -m MODULE`"
    return words[2]


@pytest.mark.parametrize("stage", list(_stages()))
def test_every_module_a_stage_runs_is_one_of_its_deps(stage):
    spec = _stages()[stage]
    deps = [REPO / d for d in spec.get("deps", [])]
    run = modules_run_by(entry_module(spec["cmd"]))
    assert run, f"stage {stage}: found no project module behind {spec['cmd']!r}"
    uncovered = sorted(
        str(f.relative_to(REPO)) for f in run if not any(f == d or d in f.parents for d in deps)
    )
    assert not uncovered, f"stage {stage} runs these modules but does not depend on them: {uncovered}"


def test_the_import_walk_sees_lazy_imports_and_skips_type_checking_blocks(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gptlab.never\n"
        "def f():\n    from gptlab.core import model\n    import gptlab.data.loader\n"
        "CMD = ['python', '-m', 'gptlab.worker', '-m', 'torch.distributed.run']\n"
    )
    names = imported_names(source, "gptlab.pipeline.m")
    assert {"gptlab.core.model", "gptlab.data.loader", "gptlab.worker"} <= names
    assert "gptlab.never" not in names and "torch.distributed.run" not in names
