"""End to end: the real dvc.yaml in a temp git repo, `dvc repro` through the Prefect flows into MLflow."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from .conftest import REPO, TINY, committed_params, save_tiny_gpt2, write_task_files

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _profile(overrides: list[str]) -> dict:
    """A profile file (every section present) from `-S`-style overrides."""
    tree: dict = {s: {} for s in ("data", "tokenize", "model", "train", "eval", "generate", "tracking")}
    tree["data"]["source"] = "demo"
    tree["data"]["expected_docs"] = None  # the seed's 8,013,769 is OpenWebText's count
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        tree[section][name] = yaml.safe_load(value)
    return tree


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def _ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture
def repo(tmp_path: Path, bpe_cache: Path) -> Path:
    root = tmp_path / "gptlab"
    root.mkdir()
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("src", "flows", "profiles"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(committed_params().replace("profile: seed", "profile: tiny", 1))
    # Baselines: OpenAI's gpt2 (offline here: "not measured") and a tiny local GPT-2 folder (measured); local
    # copies of LAMBADA / WikiText in their pinned files' formats.
    lambada, wikitext = write_task_files(tmp_path / "tasks")
    folder = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    evaluation = [f"eval.baselines=[gpt2, {folder}]", "eval.contexts=[16, 32]", f"eval.lambada=local:{lambada}",
                  f"eval.wikitext=local:{wikitext}"]
    (root / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(_profile(TINY + evaluation)))
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "tiny gptlab"], root)
    return root


def test_dvc_repro_from_corpus_to_a_promoted_model(repo: Path):
    out = _run([str(BIN / "dvc"), "repro"], repo)
    assert _ran(out) == ["download", "tokenize", "train", "evaluate", "baselines", "generate", "report"]

    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert evaluation["model"]["tokens"] == evaluation["unigram"]["tokens"] > 10_000
    assert evaluation["model"]["ppl"] < evaluation["unigram"]["ppl"]  # the model learned to use context
    assert evaluation["lambada"]["examples"] == 3 and evaluation["wikitext"]["documents"] == 2
    baselines = json.loads((repo / "baselines" / "metrics.json").read_text())
    assert baselines["val_sha256"] == evaluation["val_sha256"]
    [local] = [e for e in baselines["baselines"].values() if e["measured"]]
    assert local["contexts"]["16"]["val"]["tokens"] == evaluation["model"]["tokens"]  # the same val tokens
    samples = json.loads((repo / "samples" / "samples.json").read_text())
    assert [s["prompt"] for s in samples["samples"]] == list(yaml.safe_load(committed_params())["generate"]["prompts"])
    assert all(len(s["samples"]) == 2 for s in samples["samples"])
    report = (repo / "reports" / "report.md").read_text()
    assert "gptlab (tiny)" in report and "unigram floor" in report and "| tiny-gpt2 @16 " in report
    assert "not measured: gpt2 is not in the local Hugging Face cache" in report
    assert "| gpt2 (published) " in report
    for png in ("loss.png", "val_ppl.png"):
        assert (repo / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # One MLflow run holds params, per-step metrics and what the later stages added.
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("gptlab").experiment_id
    [run] = client.search_runs([experiment], filter_string="tags.`gptlab.stage` = 'train'")
    assert run.data.params["model.n_embd"] == "32" and run.data.params["profile"] == "tiny"
    assert all(math.isfinite(v) for v in run.data.metrics.values())
    assert run.data.metrics["eval/val_ppl"] == pytest.approx(evaluation["model"]["ppl"])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 9
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics", "samples", "report"} <= artifacts
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    tokens_md5 = next(o["md5"] for o in lock["stages"]["tokenize"]["outs"] if o["path"] == "data/tokens")
    assert run.data.tags["dvc.tokenize:data/tokens"] == tokens_md5

    # The registry: a candidate, promoted to champion by the CLI, loads and generates.
    candidate = client.get_model_version_by_alias("gptlab", "candidate")
    assert candidate.run_id == run.info.run_id and candidate.tags["val_sha256"] == evaluation["val_sha256"]
    promoted = json.loads(_run([str(BIN / "gptlab"), "promote", "--alias", "champion"], repo))
    assert int(promoted["version"]) == int(candidate.version)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    champion = mlflow.pyfunc.load_model("models:/gptlab@champion")
    [text] = champion.predict(["The future of AI is"], params={"max_new_tokens": 8})
    assert isinstance(text, str) and text

    # Nothing changed: nothing runs. A train.* change re-runs training and what follows, not the data stages.
    assert _ran(_run([str(BIN / "dvc"), "repro"], repo)) == []
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The baselines depend on the data, not on our model: they are not measured again.
    assert _ran(_run([str(BIN / "dvc"), "repro"], repo)) == ["train", "evaluate", "generate", "report"]
    assert int(client.get_model_version_by_alias("gptlab", "candidate").version) == int(candidate.version) + 1
    assert int(client.get_model_version_by_alias("gptlab", "champion").version) == int(candidate.version)
