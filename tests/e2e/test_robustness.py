"""Faults injected for real: a tracking server killed mid-training, bad params, corrupt files, secrets in the env.

Each one must end in one clear message (what, which file, the fix) and a non-zero exit, and lose nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from gptlab.cli import main
from gptlab.fileio import read_json, sha256_file, write_json
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages import evaluate
from gptlab.pipeline.stages.train import register, train_model
from gptlab.settings import replace
from gptlab.tracking.outbox import find_outboxes

from ..conftest import REPO, TINY


def _gptlab(project: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gptlab", *args, "--params", str(project / "params.yaml")]
    return subprocess.Popen(cmd, cwd=project, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _settings(*extra: str) -> list[str]:
    return [x for o in ["profile=demo", *TINY, *extra] for x in ("-S", o)]


# A run with many records to lose: 31 logged steps, 3 evaluations.
LONG = ["train.max_iters=60", "train.log_interval=2", "train.eval_interval=20"]
# Fail fast inside MLflow's client while the server is down (the tracker does its own retrying and keeping).
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def _wait_for_training(client: MlflowClient, proc: subprocess.Popen) -> str:
    """The run's id once it is open with its params: from here on the loop logs only through the tracker."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended before the fault was injected:\n{proc.communicate()}"
        exp = client.get_experiment_by_name("gptlab")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and runs[0].data.params:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError("no run reached the server")


def _logged_steps(max_iters: int, log_interval: int) -> list[int]:
    return [s + 1 for s in range(max_iters) if s % log_interval == 0 or s == max_iters - 1]


@pytest.mark.slow
def test_training_outlives_a_tracking_server_crash_and_delivers_every_metric(server, tokens_dir, project):
    env = {"MLFLOW_TRACKING_URI": server.uri, **NO_RETRIES}
    proc = _gptlab(project, "train", *_settings(*LONG, "tracking.flush_timeout=600"), env=env)
    run_id = _wait_for_training(server.client(), proc)
    server.kill()  # mid-run: every metric of the training is logged while the server is down
    time.sleep(3)
    server.start()  # the same store comes back on the same port
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "is unreachable" in err  # the outage was seen, and training went on

    client = server.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == _logged_steps(60, 2)  # every logged step, none lost, none twice
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [20, 40, 60]
    assert read_json(project / "models" / "final" / "meta.json")["mlflow_run_id"] == run_id
    assert {a.path for a in client.list_artifacts(run_id)} >= {"metrics", "provenance"}
    assert client.get_model_version_by_alias("gptlab", "candidate").run_id == run_id
    assert find_outboxes(project / ".gptlab" / "outbox") == []


@pytest.mark.slow
def test_records_kept_through_an_outage_are_delivered_by_gptlab_sync(server, tokens_dir, project):
    env = {"MLFLOW_TRACKING_URI": server.uri, **NO_RETRIES}
    proc = _gptlab(project, "train", *_settings(*LONG, "tracking.flush_timeout=2"), env=env)
    run_id = _wait_for_training(server.client(), proc)
    server.kill()  # and it stays down until training has ended
    out, err = proc.communicate(timeout=600)
    # Training finished and saved its checkpoint; the registration waits in the outbox with the metrics.
    assert proc.returncode == 0, err
    assert read_json(project / "models" / "final" / "meta.json")["mlflow_run_id"] == run_id
    assert json.loads(out)["version"] == "pending"
    kept_lines = [line for line in err.splitlines() if "`gptlab sync`" in line]
    assert len(kept_lines) == 2 and all("nothing is lost" in line for line in kept_lines)  # training, registering
    [kept] = find_outboxes(project / ".gptlab" / "outbox")
    assert kept.run_id == run_id and (kept.path / "records.jsonl").is_file()

    server.start()
    sync = _gptlab(project, "sync", env=env)
    out, err = sync.communicate(timeout=300)
    assert sync.returncode == 0, err
    [delivered] = json.loads(out)["runs"]
    assert delivered["run_id"] == run_id and delivered["left"] == 0 and delivered["delivered"] > 0
    assert not kept.path.exists()
    client = server.client()
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == _logged_steps(60, 2)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id, "metrics")} == {"metrics/train.json", "metrics/train_curve.csv"}
    assert client.get_model_version_by_alias("gptlab", "candidate").run_id == run_id  # registered by the sync


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


BAD = ["train.lrr=0.1", "train.max_iters=many", "model.n_head=5"]  # unknown key, wrong type, impossible combination
COMMANDS = [["download"], ["tokenize"], ["train"], ["evaluate"], ["generate"], ["report"], ["config"], ["promote"],
            ["models"], ["rescore"], ["register"], ["sync"], ["reproduce", "0123abcd"]]


def test_bad_params_of_every_kind_fail_at_once_and_touch_nothing(tokens_dir, project, capsys):
    before = _snapshot(project)
    for command in COMMANDS:
        code = main([*command, "--params", str(project / "params.yaml"), *_settings(*BAD)])
        _, err = capsys.readouterr()
        assert code == 2, (command, err)
        assert "3 problem(s)" in err and "`train.lrr` is not a setting; did you mean `train.lr`?" in err, command
        assert "`train.max_iters` must be int, got 'many'" in err and "must be divisible by `model.n_head` (5)" in err
    # The same problems written into params.yaml itself.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(lrr=0.1, max_iters="many")
    params["model"]["n_head"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before["params.yaml"] = _snapshot(project)["params.yaml"]
    assert main(["train", "--params", str(project / "params.yaml")]) == 2
    assert "3 problem(s)" in capsys.readouterr().err
    assert _snapshot(project) == before  # no file written, changed or removed (no mlflow.db either)
    # The registry's settings are checked like the others.
    code = main(["promote", "--params", str(project / "params.yaml"), "-S", "tracking.promote_margin=1.5",
                 "-S", "tracking.flush_timeout=-1", "-S", "train.max_iters=10"])
    err = capsys.readouterr().err
    assert code == 2 and "`tracking.promote_margin` must be in [0, 1)" in err and "`tracking.flush_timeout` must be ≥ 0" in err


@pytest.mark.slow
def test_bad_params_stop_the_commands_that_start_servers_and_flows(project):
    for cmd in (["-m", "gptlab", "serve"], ["-m", "gptlab", "ui"], ["-m", "flows.pipeline"]):
        result = subprocess.run([sys.executable, *cmd, "--params", str(project / "params.yaml"), *_settings(*BAD)],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (cmd, result.stderr)
        assert "3 problem(s)" in result.stderr, cmd
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml", "profiles"]


@pytest.fixture
def trained_project(tiny_cfg, tokens_dir, project):
    cfg = replace(tiny_cfg, train={"max_iters": 4, "eval_interval": 2})
    train_model(cfg, Paths(project))
    return project


def _fails_clearly(capsys, project: Path, command: str, *needles: str) -> str:
    code = main([command, "--params", str(project / "params.yaml"), *_settings()])
    _, err = capsys.readouterr()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[1] == "(set GPTLAB_TRACEBACK=1 for the traceback)", err  # one message
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_a_truncated_token_shard_names_the_file_and_the_fix(tokens_dir, project, capsys):
    shard = tokens_dir / "train-00000.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    _fails_clearly(capsys, project, "train", str(shard), "truncated", "re-run `gptlab tokenize`")


def test_a_checkpoint_with_a_wrong_hash_is_refused(trained_project, capsys):
    weights = trained_project / "models" / "final" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    _fails_clearly(capsys, trained_project, "evaluate", str(weights), "corrupt or was replaced", "dvc pull")


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('code ran')",))


def test_a_pickle_in_place_of_the_weights_is_refused_without_running_it(trained_project, capsys, monkeypatch):
    """Even with meta.json's hash updated to match, a pickle is never unpickled: no code runs."""
    ckpt = trained_project / "models" / "final"
    (ckpt / "model.safetensors").write_bytes(pickle.dumps({"transformer.wte.weight": _Exploit()}))
    meta = read_json(ckpt / "meta.json")
    meta["weights_sha256"] = sha256_file(ckpt / "model.safetensors")
    write_json(ckpt / "meta.json", meta)
    monkeypatch.chdir(trained_project)
    for command in ("evaluate", "generate"):
        _fails_clearly(capsys, trained_project, command, str(ckpt / "model.safetensors"), "not a safetensors file",
                       "never from a pickle")
    assert not (trained_project / "PWNED").exists()


def test_environment_secrets_are_never_recorded(tiny_cfg, tokens_dir, project, monkeypatch):
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-3f9c1e7d",
        "MLFLOW_TRACKING_PASSWORD": "mlflow-password-8b2a",
        "HF_TOKEN": "hf_token_5d7e",
        "GPTLAB_API_TOKEN": "gptlab-token-0c4f",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    cfg = replace(tiny_cfg, train={"max_iters": 4, "eval_interval": 2})
    paths = Paths(project)
    run = train_model(cfg, paths)
    register(cfg, paths, run.run)
    evaluate.run(cfg, paths)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    data = client.get_run(run.run).data
    recorded = json.dumps([data.params, data.tags, sorted(data.metrics)])
    assert len(data.params) > 30 and data.tags  # the check below looks at real records
    for key, value in secrets.items():
        assert value not in recorded and key not in recorded
    # Nowhere on disk either: the store, the artifacts (model, provenance, metrics), the outputs.
    for file in (p for p in project.rglob("*") if p.is_file()):
        content = file.read_bytes()
        for value in secrets.values():
            assert value.encode() not in content, file
