"""The edges a user touches, for real in a temp git + DVC repo: an override a profile would shadow."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from ..dvcrepo import BIN

pytestmark = pytest.mark.slow


def _sh(command: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_dvc_exp_run_with_a_value_the_profile_shadows_fails_before_any_work_and_its_fix_works(repo, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"doc{i}.txt").write_text(f"My own document number {i}, which nobody here prepared.\n" * 20)
    # The natural command: DVC writes data.source into params.yaml, and profiles/tiny.yaml's `source: demo` would win.
    refused = _sh(f"dvc exp run -S data.source=local:{corpus} download", repo)
    assert refused.returncode != 0
    assert f"`data.source: local:{corpus}` (profiles/tiny.yaml has demo)" in refused.stderr, refused.stderr
    assert not (repo / "data" / "raw").exists()  # nothing ran
    [command] = re.findall(r"`(git checkout params\.yaml && dvc exp run [^`]+)`", refused.stderr)
    assert f"-S profiles/tiny.yaml:data.source=local:{corpus}" in command

    done = _sh(f"{command} download", repo)  # the command it printed, on the download stage
    assert done.returncode == 0, done.stderr
    manifest = json.loads((repo / "data" / "raw" / "manifest.json").read_text())
    assert manifest["source"] == f"local:{corpus}" and manifest["documents"] == 3, manifest
