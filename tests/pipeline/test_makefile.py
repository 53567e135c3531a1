"""The Makefile's promises, run with the real make in a temp copy of the project: `make clean` keeps the tracking
store, `make clean-tracking` asks first, the demo's closing hints run as printed, .venv follows TORCH_SPEC and the
Python version is checked before anything is created."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.cli import build_parser
from gptlab.pipeline.config import load_config

from ..conftest import REPO, committed_params

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _make(cwd: Path, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    # Run detached from any terminal: `make clean-tracking` must not find one to ask on.
    return subprocess.run(["make", "--no-print-directory", "-s", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=stdin, start_new_session=True, timeout=60)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile in a temp folder, with what a demo leaves behind: outputs, checkpoints, the MLflow store."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for folder in ("data/raw", "data/tokens", "models/final", "models/checkpoints/abc", "metrics", "samples",
                   "mlartifacts/1/run/artifacts", ".gptlab/outbox/run1", "baselines", "reports"):
        (tmp_path / folder).mkdir(parents=True)
    for file in ("mlflow.db", "mlartifacts/1/run/artifacts/model.safetensors", ".gptlab/outbox/run1/records.jsonl",
                 "metrics/eval.json", "models/final/model.safetensors", "baselines/metrics.json", "reports/report.md",
                 "baselines/.gitignore", "reports/.gitignore"):
        (tmp_path / file).write_text("x")
    return tmp_path


STORE = ("mlflow.db", "mlartifacts/1/run/artifacts/model.safetensors", ".gptlab/outbox/run1/records.jsonl")


def test_make_clean_removes_outputs_but_never_the_tracking_store(checkout: Path):
    result = _make(checkout, "clean")
    assert result.returncode == 0, result.stderr
    for gone in ("data/raw", "data/tokens", "models/final", "models/checkpoints", "metrics", "samples",
                 "baselines/metrics.json", "reports/report.md"):
        assert not (checkout / gone).exists(), gone
    for kept in (*STORE, "baselines/.gitignore", "reports/.gitignore"):
        assert (checkout / kept).is_file(), f"make clean deleted {kept}"


def test_make_clean_tracking_says_what_it_deletes_and_needs_a_yes(checkout: Path):
    refused = _make(checkout, "clean-tracking")
    assert refused.returncode != 0
    assert "mlflow.db mlartifacts" in refused.stdout and "every registered version" in refused.stdout
    assert "Nothing deleted" in refused.stdout and "FORCE=1" in refused.stdout
    assert all((checkout / kept).is_file() for kept in STORE)

    done = _make(checkout, "clean-tracking", "FORCE=1")
    assert done.returncode == 0, done.stderr
    assert not any((checkout / name).exists() for name in ("mlflow.db", "mlartifacts", ".gptlab/outbox"))
    assert (checkout / "metrics/eval.json").is_file()  # the outputs are `make clean`'s business


def _printed_commands(text: str) -> list[str]:
    """The commands in `make demo`'s closing lines (`Label:  cmd  |  cmd  (comment)`): each `gptlab …`, `dvc …`,
    `make …`, `git …`, `source …`."""
    found = []
    for line in text.splitlines():
        line = re.sub(r"^[A-Z][\w ]*:\s+", "", line.strip())
        for part in line.split(" | "):
            part = part.split("(")[0].strip()
            if re.match(r"(gptlab|dvc|make|git|source) ", part):
                found.append(part)
    return found


def test_make_demo_ends_with_commands_that_exist_and_never_promote_the_toy_or_start_the_seed(checkout: Path):
    result = _make(checkout, "demo-next")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    commands = _printed_commands(text)
    assert {"source .venv/bin/activate", "gptlab models", "make ui", "git checkout params.yaml",
            "dvc exp show --only-changed", "dvc metrics show", "dvc plots show"} <= set(commands), commands
    # Each runs as printed once .venv is activated: the activate script is where `make env` puts it (the venv
    # running these tests is one), the gptlab command and the make target exist, dvc knows the subcommand and flags.
    assert (Path(sys.executable).parent / "activate").is_file()
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    gptlab = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no API
    for command in commands:
        tool, *rest = command.split()
        if tool == "gptlab":
            assert rest[0] in gptlab, command
        elif tool == "make":
            assert rest[0] in targets, command
        elif tool == "dvc":
            words = [w for w in rest if not w.startswith("-")]
            helptext = subprocess.run([str(Path(sys.executable).parent / "dvc"), *words, "--help"],
                                      capture_output=True, text=True)
            assert helptext.returncode == 0, command
            assert all(flag in helptext.stdout for flag in rest if flag.startswith("-")), command
    # The toy never goes near the team's registry, and going back to the seed starts nothing.
    assert "gptlab promote" not in text and "champion" not in text
    assert "git checkout params.yaml" in text and "profile=seed" not in text


def test_the_demo_has_its_own_experiment_and_registered_model(project: Path):
    seed = load_config(project / "params.yaml", []).tracking
    demo = load_config(project / "params.yaml", ["profile=demo"]).tracking
    assert (demo.experiment, demo.registered_model) == ("gptlab-demo", "gptlab-demo")
    assert demo.experiment != seed.experiment and demo.registered_model != seed.registered_model


def test_no_hint_anywhere_sends_a_laptop_into_the_seed_run():
    """`dvc exp run -S profile=seed` starts the 24 GB OpenWebText download; the way back is git checkout."""
    places = [REPO / "Makefile", REPO / "README.md", REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml")),
              *sorted((REPO / "docs").glob("*.md"))]
    for place in places:
        assert not re.search(r"exp run[^\n`]*-S profile=seed", place.read_text()), place
    assert "git checkout params.yaml" in committed_params()


def test_a_changed_torch_spec_rebuilds_the_venv(checkout: Path):
    venv = checkout / ".venv"
    venv.mkdir()
    (venv / ".installed").write_text("")
    (venv / "kept").write_text("")
    # A .venv from before the spec was recorded is taken as built with the current spec: nothing is rebuilt.
    assert _make(checkout, ".venv/.torch-spec").returncode == 0
    assert (venv / "kept").is_file() and (venv / ".torch-spec").read_text() == "torch==2.13.0\n"
    assert (venv / ".torch-spec").stat().st_mtime <= (venv / ".installed").stat().st_mtime
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    result = _make(checkout, ".venv/.torch-spec", f"TORCH_SPEC={spec}")
    assert result.returncode == 0 and "TORCH_SPEC changed" in result.stdout, result.stdout + result.stderr
    assert not (venv / "kept").exists() and not (venv / ".installed").exists()  # `make env` builds it afresh
    assert (venv / ".torch-spec").read_text() == spec + "\n"


def test_an_old_python_is_refused_before_anything_is_created(checkout: Path):
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, checkout / name)
    result = _make(checkout, "env", "PYTHON_MIN=99.0", f"PYTHON={sys.executable}")
    assert result.returncode != 0
    assert "gptlab needs Python >= 99.0" in result.stdout and "nothing was created or downloaded" in result.stdout
    assert not (checkout / ".venv").exists()
