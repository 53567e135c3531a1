"""MLflow for real, on a sqlite store in a temp dir: runs, provenance, metrics, pyfunc, the registry and its gate."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from gptlab.cli import main
from gptlab.fileio import read_json
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages import evaluate
from gptlab.pipeline.stages.train import register, train_model
from gptlab.settings import replace
from gptlab.tracking.outbox import Outbox, find_outboxes
from gptlab.tracking.provenance import code_fingerprint, package_versions
from gptlab.tracking.store import Store
from gptlab.tracking.tracker import Tracker

from ..servers import free_port, wait_for_http


@pytest.fixture
def trained(tiny_cfg, tokens_dir, project):
    cfg = replace(tiny_cfg, train={"max_iters": 20, "eval_interval": 10})
    paths = Paths(project)
    run = train_model(cfg, paths)
    return cfg, paths, run


@pytest.fixture
def evaluated(trained):
    """Version 1 registered (alias candidate) and evaluated (val_* tags), as `dvc repro` leaves it."""
    cfg, paths, run = trained
    registered = register(cfg, paths, run.run)
    evaluate.run(cfg, paths)
    return cfg, paths, run, registered["version"]


def _cli(capsys, project: Path, *args: str) -> tuple[int, str, str]:
    code = main([args[0], "--params", str(project / "params.yaml"), "-S", "profile=demo", *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_training_run_records_params_metrics_and_provenance(trained, tokens_dir):
    cfg, paths, run = trained
    client = MlflowClient(Store.at(paths.root).uri)
    data = client.get_run(run.run).data
    for key, value in cfg.flat().items():
        assert data.params[key] == str(value)[:6000]
    assert data.params["profile"] == "demo"
    history = client.get_metric_history(run.run, "train/loss")
    assert [m.step for m in history] == [1, 11, 20] and all(math.isfinite(m.value) for m in history)
    assert [m.step for m in client.get_metric_history(run.run, "val/loss")] == [10, 20]
    for key in ("lr", "tokens_seen", "tokens_per_sec", "val/ppl"):
        assert key in data.metrics
    assert data.tags["gptlab.stage"] == "train" and "mlflow.source.git.commit" in data.tags
    assert data.tags["gptlab.version.torch"]
    assert data.tags["gptlab.code_sha256"] == code_fingerprint()
    assert data.tags["gptlab.weights_sha256"] == read_json(paths.model / "meta.json")["weights_sha256"]
    # What rebuilds the run: the resolved config, the token files' hashes, the installed packages.
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.run, artifact_path="provenance",
                                                     dst_path=str(paths.root / "dl")))
    recorded = yaml.safe_load((local / "config.yaml").read_text())
    assert recorded == json.loads(json.dumps(cfg.to_dict()))
    assert read_json(local / "tokens_meta.json") == read_json(tokens_dir / "meta.json")
    environment = (local / "environment.txt").read_text()
    assert f"torch=={package_versions()['torch']}" in environment and "mlflow==" in environment
    assert {a.path for a in client.list_artifacts(run.run, "metrics")} == {"metrics/train.json",
                                                                              "metrics/train_curve.csv"}
    # The store is the embedded default at the project root, artifacts beside it; nothing left undelivered.
    assert (paths.root / "mlflow.db").is_file()
    assert client.get_run(run.run).info.artifact_uri.startswith((paths.root / "mlartifacts").resolve().as_uri())
    assert client.get_run(run.run).info.status == "FINISHED"
    assert find_outboxes(Store.at(paths.root).outbox) == []


def test_buffered_tracker_delivers_every_metric(trained):
    _, paths, run = trained
    store = Store.at(paths.root)
    tracker = Tracker.attach(store, run.run, flush_seconds=3600)
    for step in range(1500):
        tracker.log_metrics({"bench/a": step, "bench/b": -step}, step=step)
    assert tracker.flush() and tracker.pending == 0
    assert len(store.client().get_metric_history(run.run, "bench/a")) == 1500
    assert tracker.close(None).kept == 0 and not tracker.box.path.exists()


def test_the_outbox_keeps_records_across_processes(tmp_path):
    box = Outbox.create(tmp_path, "run1", "http://127.0.0.1:9/", "run1")
    box.append({"type": "metrics", "metrics": [["a", 1.0, 0, 1]]})
    box.append({"type": "tags", "tags": {"x": "y"}})
    box.mark_delivered(1)
    with open(box.path / "records.jsonl", "a") as f:
        f.write('{"type": "met')  # a process killed mid-write: the unfinished record was never acknowledged
    [again] = find_outboxes(tmp_path)
    assert (again.run_id, again.tracking_uri) == ("run1", "http://127.0.0.1:9/")
    assert again.pending() == [{"type": "tags", "tags": {"x": "y"}}]


def test_register_promote_and_generate_from_the_champion(evaluated, capsys):
    cfg, paths, run, version = evaluated
    client = Store.at(paths.root).client()
    assert str(client.get_model_version_by_alias("gptlab", "candidate").version) == version
    code, out, _ = _cli(capsys, paths.root, "promote")
    assert code == 0
    decision = json.loads(out)
    assert decision["version"] == version and decision["outcome"] == "promoted" and decision["previous"] is None
    assert str(client.get_model_version_by_alias("gptlab", "champion").version) == version
    tags = client.get_model_version("gptlab", version).tags
    assert tags["promotion.champion.outcome"] == "promoted" and "no current champion" in tags["promotion.champion.reason"]
    # The served model holds the weights and their meta, not the optimizer state.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/gptlab@champion", dst_path=str(paths.root / "dl")))
    assert sorted(p.name for p in (local / "artifacts" / "checkpoint").iterdir()) == ["meta.json", "model.safetensors"]
    model = mlflow.pyfunc.load_model("models:/gptlab@champion")
    out = model.predict(["The future of AI is", "def"], params={"max_new_tokens": 5})
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
    assert model.predict(["The future of AI is"], params={"max_new_tokens": 5}) == out[:1]  # seeded
    frame = model.predict(pd.DataFrame({"prompt": ["The future of AI is"]}), params={"max_new_tokens": 5})
    assert list(frame) == out[:1]  # a one-column DataFrame works too
    params = {p.name: p.default for p in model.metadata.signature.params.params}
    g = cfg.generate
    assert params == {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_k": g.top_k,
                      "top_p": g.top_p, "seed": g.seed}


# What the issue found a served model accepting, and what it must say instead (the param, the value, the range).
BAD_REQUESTS = [
    ({"max_new_tokens": -5}, "`max_new_tokens` must be > 0, got -5"),
    ({"temperature": -1.0}, "`temperature` must be ≥ 0, got -1.0"),
    ({"top_p": 7.0}, "`top_p` must be in (0, 1], got 7.0"),
    ({"top_k": 10**6}, "`top_k` (1000000) exceeds `model.vocab_size`"),
    ({"max_new_tokens": 100000}, "`max_new_tokens` must be ≤ 512 (the server's serve.max_new_tokens), got 100000"),
    ({"bogus": 1}, "unknown param(s) ['bogus']: this model takes max_new_tokens, temperature, top_k, top_p, seed"),
]


def test_the_pyfunc_refuses_bad_params_unknown_params_and_oversized_requests(evaluated):
    from mlflow.exceptions import MlflowException

    cfg, paths, _, version = evaluated
    Store.at(paths.root).client()
    model = mlflow.pyfunc.load_model(f"models:/gptlab/{version}")
    for params, message in BAD_REQUESTS:
        with pytest.raises(MlflowException, match=re.escape(message)) as refused:
            model.predict(["The future of AI is"], params=params)
        assert refused.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match=re.escape("prompt 1 is 4000 tokens long: at most 2048")):
        model.predict(["fine", " a" * 4000], params={"max_new_tokens": 2})
    with pytest.raises(MlflowException, match=re.escape("17 prompts in one request: at most 16")):
        model.predict(["a"] * 17, params={"max_new_tokens": 2})
    # A refusal leaves nothing behind: the next request is answered.
    assert model.predict(["The future of AI is"], params={"max_new_tokens": 3})[0]


def test_the_gate_needs_the_margin_on_the_same_val_split(evaluated, capsys):
    cfg, paths, run, v1 = evaluated
    client = Store.at(paths.root).client()
    assert _cli(capsys, paths.root, "promote")[0] == 0  # v1: the first champion
    champion = client.get_model_version("gptlab", v1).tags
    ppl, split = float(champion["val_ppl"]), champion["val_sha256"]
    v2 = register(cfg, paths, run.run)["version"]  # the new candidate

    def candidate(val_ppl: float, val_sha256: str = split) -> None:
        client.set_model_version_tag("gptlab", v2, "val_ppl", f"{val_ppl:.10g}")
        client.set_model_version_tag("gptlab", v2, "val_sha256", val_sha256)

    def holder() -> str:
        return str(client.get_model_version_by_alias("gptlab", "champion").version)

    # Never evaluated: refused, whatever the numbers.
    code, _, err = _cli(capsys, paths.root, "promote")
    assert code == 1 and "never evaluated" in err and "flows.evaluate" in err and holder() == v1
    assert client.get_model_version("gptlab", v2).tags["promotion.champion.outcome"] == "refused"
    # 0.5% better does not clear the 1% margin of params.yaml: rejected, exit 1, recorded.
    assert cfg.tracking.promote_margin == 0.01
    candidate(ppl * 0.995)
    code, _, err = _cli(capsys, paths.root, "promote")
    assert code == 1 and "not promoted" in err and "-0.50%" in err and holder() == v1
    tags = client.get_model_version("gptlab", v2).tags
    assert tags["promotion.champion.outcome"] == "rejected" and tags["promotion.champion.compared_with"] == v1
    # The same improvement clears a 0.1% margin.
    code, out, _ = _cli(capsys, paths.root, "promote", "-S", "tracking.promote_margin=0.001")
    assert code == 0 and json.loads(out)["outcome"] == "promoted" and holder() == v2
    # Back to v1 (forced: it is worse), then a candidate scored on other val data cannot be compared.
    code, out, _ = _cli(capsys, paths.root, "promote", "--version", v1, "--force")
    assert code == 0 and json.loads(out)["outcome"] == "forced" and holder() == v1
    candidate(ppl * 0.5, "0" * 64)
    code, _, err = _cli(capsys, paths.root, "promote")
    assert code == 1 and "not comparable" in err and "gptlab rescore --alias champion" in err and holder() == v1
    code, out, _ = _cli(capsys, paths.root, "promote", "--force")
    assert code == 0 and json.loads(out)["outcome"] == "forced" and holder() == v2
    assert "not comparable" in client.get_model_version("gptlab", v2).tags["promotion.champion.reason"]

    # `gptlab models` shows all of it.
    code, out, _ = _cli(capsys, paths.root, "models")
    assert code == 0
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("|")}
    assert "champion" in lines[v2] and "candidate" in lines[v2] and "forced" in lines[v2]
    assert f"{ppl:.4g}" in lines[v1]
    code, out, _ = _cli(capsys, paths.root, "models", "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert rows[v1]["val_ppl"] == pytest.approx(ppl, rel=1e-5) and rows[v1]["val_sha256"] == split


def test_a_new_val_split_rescores_the_champion_before_the_gate(evaluated, tiny_cfg, bpe_cache):
    from gptlab.pipeline.promotion import gate
    from gptlab.pipeline.stages import tokenize

    cfg, paths, _, v1 = evaluated
    client = Store.at(paths.root).client()
    assert gate(cfg, paths)["outcome"] == "promoted"  # v1 becomes champion on the first split
    old = client.get_model_version("gptlab", v1).tags
    # New data: another split of the corpus, a new model trained and evaluated on it.
    cfg2 = replace(cfg, tokenize={"val_fraction": 0.2}, train={"seed": 7})
    tokenize.run(cfg2, paths)
    run2 = train_model(cfg2, paths)
    v2 = register(cfg2, paths, run2.run)["version"]
    new_split = evaluate.run(cfg2, paths)["val_sha256"]
    assert new_split != old["val_sha256"]

    result = gate(cfg2, paths)
    champion = client.get_model_version("gptlab", v1).tags
    assert result["rescored_champion"]["version"] == v1
    assert champion["val_sha256"] == new_split and champion["previous.val_sha256"] == old["val_sha256"]
    assert champion["previous.val_ppl"] == old["val_ppl"] and champion["val_ppl"] != old["val_ppl"]
    ppl1, ppl2 = float(champion["val_ppl"]), float(client.get_model_version("gptlab", v2).tags["val_ppl"])
    expected = "promoted" if ppl2 < ppl1 * (1 - cfg.tracking.promote_margin) else "rejected"
    assert result["outcome"] == expected and result["version"] == v2
    assert str(client.get_model_version_by_alias("gptlab", "champion").version) == (v2 if expected == "promoted" else v1)


def _gptlab(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptlab", *args, "--params", str(project / "params.yaml"),
                           "-S", "profile=demo"], cwd=project, capture_output=True, text=True, timeout=timeout)


def test_an_alias_whose_version_is_gone_is_explained(evaluated, capsys):
    cfg, paths, run, v1 = evaluated
    client = Store.at(paths.root).client()
    assert _cli(capsys, paths.root, "promote")[0] == 0
    v2 = register(cfg, paths, run.run)["version"]
    client.delete_model_version("gptlab", v1)  # the champion's version is deleted
    result = _gptlab(paths.root, "serve")
    assert result.returncode == 1, result.stderr
    assert "models:/gptlab@champion does not resolve" in result.stderr and "was deleted" in result.stderr
    assert f"Versions: {v2} (candidate)" in result.stderr
    assert "gptlab promote --alias champion --version N" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # one message (and the traceback hint), no traceback

    # The alias is set, but the version's files were deleted from the artifact store.
    client.set_registered_model_alias("gptlab", "champion", v2)
    source = client.get_model_version("gptlab", v2).source
    logged = client.get_logged_model(source.removeprefix("models:/"))
    import shutil

    shutil.rmtree(Path(logged.artifact_location.removeprefix("file://")))
    result = _gptlab(paths.root, "serve")
    assert result.returncode == 1 and f"is version {v2}, but its files" in result.stderr, result.stderr
    assert "promote another version" in result.stderr


@pytest.mark.slow
def test_the_champion_is_served_over_http_on_loopback(evaluated, capsys):
    cfg, paths, _, _ = evaluated
    assert _cli(capsys, paths.root, "promote")[0] == 0
    port = free_port()
    # `gptlab serve` resolves the alias, then becomes `mlflow models serve -m models:/gptlab@champion`.
    server = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "serve", "--params", str(paths.root / "params.yaml"), "--port", str(port),
         "-S", "serve.max_new_tokens=64", "-S", "serve.max_prompt_tokens=100"],
        cwd=paths.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert b"models" in cmdline and b"serve" in cmdline and b"models:/gptlab@champion" in cmdline
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = [line.split()[3] for line in listening.splitlines()]
        assert local and all(address.startswith("127.0.0.1:") for address in local), listening

        body = {"inputs": ["The future of AI is", "A dictionary maps"], "params": {"max_new_tokens": 8, "seed": 3}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 2 and all(isinstance(t, str) and t for t in predictions)
        # The same prompts and seed through the registry in-process give the same text.
        local = mlflow.pyfunc.load_model("models:/gptlab@champion")
        assert local.predict(body["inputs"], params=body["params"]) == predictions

        # Bad requests are refused with 400 and the reason, at once; the limits are the server's serve.* settings.
        def refusal(inputs: list[str], params: dict) -> str:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                data=json.dumps({"inputs": inputs, "params": params}).encode())
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=20)
            assert refused.value.code == 400
            return json.loads(refused.value.read())["message"]

        for params, message in BAD_REQUESTS:
            message = message.replace("≤ 512", "≤ 64").replace("-1.0", "-1").replace("7.0", "7")
            assert message in refusal(["The future of AI is"], params)
        assert "prompt 0 is 300 tokens long: at most 100 (serve.max_prompt_tokens)" in refusal([" a" * 300], {})
        with urllib.request.urlopen(request, timeout=60) as response:  # and the server still answers
            assert json.loads(response.read())["predictions"] == predictions
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, by the PID we started
        server.wait(timeout=30)
