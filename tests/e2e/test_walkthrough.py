"""The README's walkthrough, run as written on the demo profile: two experiments that differ in one setting,
compared in DVC and MLflow, the better one promoted through the gate, served, and the champion rolled back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..conftest import REPO, TINY
from ..dvcrepo import BIN, run_command
from ..servers import free_port, wait_for_http

pytestmark = pytest.mark.slow

SETTING = "profiles/demo.yaml:train.max_iters"  # the one setting the two experiments differ in


def _demo_repo(repo: Path) -> Path:
    """The temp project on the committed demo profile (its own experiment and registered model), shrunk to the
    tests' tiny model: profiles/demo.yaml with TINY's sizes, params.yaml on `profile: demo`, committed."""
    profile = yaml.safe_load((REPO / "profiles" / "demo.yaml").read_text())
    for item in TINY:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        if section != "tracking":  # the demo's own names are what this test is about
            profile[section][name] = yaml.safe_load(value)
    (repo / "profiles" / "demo.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("profile: tiny", "profile: demo", 1))
    run_command(["git", "commit", "-qam", "the demo profile, tiny"], repo)
    return repo


def _exp_metrics(show: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` → {experiment name: {metrics file: its data}} (only files DVC could read)."""
    found = {}
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                files = (rev.get("data") or {}).get("metrics") or {}
                found[rev["name"]] = {path: entry.get("data") or {} for path, entry in files.items()}
    return found


def _ask(port: int, prompts: list[str], params: dict) -> list[str]:
    body = json.dumps({"inputs": prompts, "params": params}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


def _gptlab(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(BIN / "gptlab"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert (result.returncode == 0) == ok, f"gptlab {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_two_experiments_compared_promoted_served_and_rolled_back(repo: Path, monkeypatch: pytest.MonkeyPatch):
    # Each Prefect flow starts an ephemeral API server; on a loaded 2-core box it takes longer than Prefect's 20 s.
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    repo = _demo_repo(repo)
    dvc = str(BIN / "dvc")
    baseline = run_command(["git", "rev-parse", "HEAD"], repo).strip()

    # 1. The first experiment (in the README: `make demo`), promoted: the demo's first champion.
    run_command([dvc, "exp", "run", "-n", "short", "-S", f"{SETTING}=20"], repo)
    first = json.loads(_gptlab(repo, "promote").stdout)
    assert (first["model"], first["version"], first["outcome"]) == ("gptlab-demo", "1", "promoted")

    # 2. A second experiment that differs in one setting.
    run_command([dvc, "exp", "run", "-n", "long", "-S", f"{SETTING}=80"], repo)

    # 3. Compare in DVC: each experiment keeps its own metrics (git-tracked `cache: false` files in its exp ref).
    metrics = _exp_metrics(json.loads(run_command([dvc, "exp", "show", "--json"], repo)))
    short, long = metrics["short"], metrics["long"]
    for name, files in (("short", short), ("long", long)):
        for path in ("metrics/train.json", "metrics/eval.json", "metrics/generate.json"):
            assert files.get(path), f"experiment {name} holds no {path}: {files}"
    loss = {name: files["metrics/eval.json"]["model"]["loss"] for name, files in (("short", short), ("long", long))}
    assert loss["long"] < loss["short"]  # 80 steps learn more than 20
    diff = json.loads(run_command([dvc, "exp", "diff", "short", "long", "--json"], repo))
    changed = diff["metrics"]["metrics/eval.json"]["model.loss"]
    assert (changed["old"], changed["new"]) == (loss["short"], loss["long"]) and changed["diff"] < 0
    assert diff["params"]["profiles/demo.yaml"]["train.max_iters"] == {"old": 20, "new": 80, "diff": 60}
    # The README's `dvc exp show --only-changed`, as CSV: a table wider than the terminal would be cut to "…".
    table = run_command([dvc, "exp", "show", "--only-changed", "--csv"], repo).splitlines()
    assert "train.max_iters" in table[0] and "model.loss" in table[0]
    assert any(row.startswith("short,") for row in table) and any(row.startswith("long,") for row in table)

    # ... and in MLflow: each run and registered version names its DVC experiment and baseline commit, in the
    # demo's own experiment and registered model (the team's `gptlab` is never touched).
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("gptlab-demo")
    assert experiment is not None and client.get_experiment_by_name("gptlab") is None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`gptlab.stage` = 'train'")
    assert {r.data.tags["dvc.exp_name"]: r.data.tags["dvc.exp_baseline"] for r in runs} == {"short": baseline,
                                                                                         "long": baseline}
    versions = {v.version: v for v in client.search_model_versions("name='gptlab-demo'")}
    assert {str(n): versions[n].tags["dvc.exp_name"] for n in versions} == {"1": "short", "2": "long"}
    assert not client.search_registered_models("name='gptlab'")
    rows = json.loads(_gptlab(repo, "models", "--json").stdout)
    assert [(r["version"], r["dvc_exp"], r["baseline"]) for r in rows] == [("2", "long", baseline),
                                                                          ("1", "short", baseline)]
    listing = _gptlab(repo, "models").stdout
    assert "gptlab-demo in" in listing and " long " in listing and baseline[:7] in listing

    # 4. Promote the better one through the gate: the candidate (long) against the champion (short).
    decision = json.loads(_gptlab(repo, "promote").stdout)
    assert (decision["version"], decision["previous"], decision["outcome"]) == ("2", "1", "promoted")
    assert "on the same val split" in decision["reason"]

    # 5. Serve the champion; it answers with version 2's text.
    port = free_port()
    server = subprocess.Popen([str(BIN / "gptlab"), "serve", "--port", str(port)], cwd=repo, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        params = {"max_new_tokens": 8, "seed": 3}
        served = _ask(port, ["A dictionary maps"], params)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, by the PID we started
        server.wait(timeout=30)
    import mlflow.pyfunc

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    assert mlflow.pyfunc.load_model("models:/gptlab-demo/2").predict(["A dictionary maps"], params=params) == served

    # 6. Roll back to the previous champion: the gate says no (version 1 scored worse), --force moves the alias
    # and records why.
    refused = _gptlab(repo, "promote", "--version", "1", ok=False)
    assert "not promoted to champion" in refused.stderr and "--force" in refused.stderr
    back = json.loads(_gptlab(repo, "promote", "--version", "1", "--force").stdout)
    assert (back["version"], back["previous"], back["outcome"]) == ("1", "2", "forced")
    assert str(client.get_model_version_by_alias("gptlab-demo", "champion").version) == "1"
    assert client.get_model_version("gptlab-demo", "1").tags["promotion.champion.outcome"] == "forced"
