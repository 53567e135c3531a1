"""A training killed with SIGKILL, between checkpoints and in the middle of writing one, resumes into exactly
the run that was never interrupted: same losses, same weights, one MLflow run whose every metric holds each
step once. Real processes (`gptlab train`), real kills, MLflow on sqlite."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
from mlflow.tracking import MlflowClient

from gptlab.core.checkpoint import checkpoint_steps, open_checkpoint
from gptlab.tracking.outbox import Outbox, find_outboxes
from gptlab.tracking.runs import training_run
from gptlab.tracking.store import Store

from ..conftest import TINY

STEPS = 60
ARGS = ["profile=demo", *TINY, f"train.max_iters={STEPS}", "train.checkpoint_interval=10", "train.log_interval=1",
        "train.eval_interval=10"]

# The child: `gptlab train`, optionally with metrics sent to MLflow at every log call (so a kill leaves steps
# after the last checkpoint already logged: the duplicates a resume must not repeat), and optionally killing
# itself (SIGKILL) inside a checkpoint write, after the weights file and before the rest and the rename.
CHILD = """
import os, signal, sys
from gptlab import cli
from gptlab.tracking.tracker import Tracker
mode, kill_at = sys.argv[1], int(sys.argv[2])
if mode in ("flush", "checkpoint"):
    log = Tracker.log_metrics
    def log_and_flush(self, metrics, step):
        log(self, metrics, step)
        self.flush()
    Tracker.log_metrics = log_and_flush
if mode == "checkpoint":
    import safetensors.torch
    save = safetensors.torch.save_file
    def save_then_die(tensors, filename, metadata=None):
        save(tensors, filename, metadata=metadata)
        if f".step-{kill_at:08d}." in str(filename):
            os.kill(os.getpid(), signal.SIGKILL)
    safetensors.torch.save_file = save_then_die
sys.exit(cli.main(["train", *sys.argv[3:]]))
"""


def _start(project: Path, mode: str, kill_at: int = -1) -> subprocess.Popen:
    cmd = [sys.executable, "-c", CHILD, mode, str(kill_at), "--params", str(project / "params.yaml")]
    cmd += [part for arg in ARGS for part in ("-S", arg)]
    return subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after_step(proc: subprocess.Popen, step: int) -> int:
    """SIGKILL the child as soon as it reports ``step``; returns the last step it reported."""
    seen, output = 0, []
    for line in proc.stderr:
        output.append(line)
        if match := re.search(r"step (\d+)/", line):
            seen = int(match.group(1))
            if seen >= step:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before step {step}:\n{''.join(output)[-3000:]}"
    return seen


def _finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate()
    return err


def _run(client: MlflowClient) -> str:
    runs = client.search_runs([client.get_experiment_by_name("gptlab").experiment_id])
    assert len(runs) == 1, f"expected one MLflow run, found {len(runs)}"
    return runs[0].info.run_id


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(project, tokens_dir, tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("params.yaml", "profiles", "data"):
        src = project / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, reference / name)

    # The reference trains in one go (`python -m gptlab.worker`: the train stage without registration).
    cmd = [sys.executable, "-m", "gptlab.worker", "--params", str(reference / "params.yaml")]
    done = subprocess.run(cmd + [part for arg in ARGS for part in ("-S", arg)], cwd=reference, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    assert not (project / "models").exists()
    # 1. Killed between checkpoints, metrics buffered in the tracker (lost with the process).
    killed_at = [_kill_after_step(_start(project, "buffered"), 15)]
    (run_dir,) = (project / "models" / "checkpoints").iterdir()
    latest = [checkpoint_steps(run_dir)[0][0]]
    # 2. Killed between checkpoints with every metric already in MLflow, steps past the checkpoint included.
    killed_at.append(_kill_after_step(_start(project, "flush"), 34))
    latest.append(checkpoint_steps(run_dir)[0][0])
    client = Store.at(project).client()
    logged = [m.step for m in client.get_metric_history(_run(client), "train/loss")]
    assert max(logged) > latest[-1], "the setup must leave logged steps after the last checkpoint"
    # 3. Killed inside the write of the step-50 checkpoint: its temp folder holds weights and nothing else.
    proc = _start(project, "checkpoint", kill_at=50)
    _finish(proc)
    assert proc.returncode == -signal.SIGKILL
    (partial,) = [p for p in run_dir.iterdir() if p.name.startswith(".step-00000050.")]
    assert sorted(f.name for f in partial.iterdir()) == ["model.safetensors"]
    latest.append(checkpoint_steps(run_dir)[0][0])
    assert latest == [10, 30, 40], latest  # resumes picked up where each kill left the checkpoints
    # 4. Resume to the end.
    last = _start(project, "buffered")
    err = _finish(last)
    assert last.returncode == 0, err[-3000:]
    assert "resuming at step 40 of 60" in err
    assert not partial.exists()

    ours, theirs = Store.at(project).client(), MlflowClient(Store.at(reference).uri)
    run_id, ref_id = _run(ours), _run(theirs)
    run = ours.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gptlab.resumes"] == "3"
    assert set(run.data.metrics) == set(theirs.get_run(ref_id).data.metrics)
    for key in run.data.metrics:
        steps = [m.step for m in ours.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), f"{key}: duplicated steps"
        assert sorted(steps) == sorted(m.step for m in theirs.get_metric_history(ref_id, key)), f"{key}: gaps"
    for key in ("train/loss", "val/loss", "lr", "tokens_seen"):
        resumed = {m.step: m.value for m in ours.get_metric_history(run_id, key)}
        straight = {m.step: m.value for m in theirs.get_metric_history(ref_id, key)}
        assert max(abs(resumed[s] - straight[s]) for s in straight) <= 1e-6, key
    assert len(ours.get_metric_history(run_id, "train/loss")) == STEPS

    final, expected = (safetensors.torch.load_file(p / "models" / "final" / "model.safetensors")
                       for p in (project, reference))
    assert max((final[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
    assert open_checkpoint(project / "models" / "final").meta["mlflow_run_id"] == run_id
    assert [str(v.version) for v in ours.search_model_versions("name='gptlab'")] == ["1"]
    assert killed_at[0] < latest[1] < killed_at[1]


def test_a_resumed_run_logs_each_step_once(tiny_cfg, project):
    """Steps 1-5 reached MLflow before the kill; the resumed loop re-sends 1-8: the run holds 1-8, once each."""
    store = Store.at(project)
    with training_run(store, tiny_cfg) as tracker:
        for step in range(1, 6):
            tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
        tracker.log_metrics({"val/loss": 9.0}, step=4)
    with training_run(store, tiny_cfg, resume=tracker.run_id) as resumed:
        for step in range(1, 9):
            resumed.log_metrics({"train/loss": 10.0 - step, "val/loss": 8.0}, step=step)
    client = store.client()
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    # Per metric: val/loss had reached step 4, so the re-sent steps 1-3 are not new either.
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "val/loss")) == [4, 5, 6, 7, 8]
    assert {m.step: m.value for m in client.get_metric_history(tracker.run_id, "val/loss")}[4] == 9.0
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gptlab.resumes"] == "1"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_resume_first_delivers_what_the_killed_process_kept(tiny_cfg, project):
    """The killed process had logged steps 1-6, but only 1-3 reached MLflow: 4-6 were still in its outbox.
    The resumed run delivers those first and then re-sends 1-8: the run holds 1-8, once each."""
    store = Store.at(project)
    with training_run(store, tiny_cfg) as tracker:
        for step in range(1, 4):
            tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
    kept = Outbox.create(store.outbox, tracker.run_id, store.uri, tracker.run_id)
    for step in range(4, 7):
        kept.append({"type": "metrics", "metrics": [["train/loss", 10.0 - step, 1_700_000_000_000, step]]})
    with training_run(store, tiny_cfg, resume=tracker.run_id) as resumed:
        for step in range(1, 9):
            resumed.log_metrics({"train/loss": 10.0 - step}, step=step)
    history = store.client().get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    assert {m.step: m.timestamp for m in history}[5] == 1_700_000_000_000  # the kept record, not the replay
    assert find_outboxes(store.outbox) == []
