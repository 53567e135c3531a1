"""The tiny gptlab project in a temp git + DVC repo, and running commands in it (the end-to-end tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from gptlab.settings import SECTIONS

from .conftest import REPO, TINY, committed_params, save_tiny_gpt2, write_hellaswag_file, write_task_files

BIN = Path(sys.executable).parent


def _profile(overrides: list[str]) -> dict:
    """A profile file (every section present) from `-S`-style overrides."""
    tree: dict = {s: {} for s in SECTIONS}
    tree["data"]["source"] = "demo"
    tree["data"]["expected_docs"] = None  # the seed's 8,013,769 is OpenWebText's count
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        tree[section][name] = yaml.safe_load(value)
    return tree


def run_command(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def stages_ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def make_repo(tmp_path: Path) -> Path:
    root = tmp_path / "gptlab"
    root.mkdir()
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("src", "flows", "profiles"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(committed_params().replace("profile: seed", "profile: tiny", 1))
    # Baselines: OpenAI's gpt2 (offline here: "not measured") and a tiny local GPT-2 folder (measured); local
    # copies of LAMBADA / WikiText / HellaSwag in their pinned files' formats.
    lambada, wikitext = write_task_files(tmp_path / "tasks")
    hellaswag = write_hellaswag_file(tmp_path / "tasks")
    folder = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    evaluation = [f"eval.baselines=[gpt2, {folder}]", "eval.contexts=[16, 32]", f"eval.lambada=local:{lambada}",
                  f"eval.wikitext=local:{wikitext}", f"eval.hellaswag=local:{hellaswag}"]
    (root / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(_profile(TINY + evaluation)))
    run_command(["git", "init", "-q"], root)
    run_command([str(BIN / "dvc"), "init", "-q"], root)
    run_command(["git", "add", "-A"], root)
    run_command(["git", "commit", "-qm", "tiny gptlab"], root)
    return root
