"""End to end: the real dvc.yaml in a temp git repo, `dvc repro` through the Prefect flows into MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..conftest import committed_params
from ..dvcrepo import BIN, run_command, stages_ran

pytestmark = pytest.mark.slow


def test_dvc_repro_from_corpus_to_a_promoted_model(repo: Path):
    out = run_command([str(BIN / "dvc"), "repro"], repo)
    ran = stages_ran(out)
    assert ran[:5] == ["download", "tokenize", "train", "evaluate", "baselines"] and ran[-1] == "report"
    assert sorted(ran[5:-1]) == ["generate", "scaling"]
    # One training is no grid: the scaling stage says so and `dvc repro` goes on.
    scaling = json.loads((repo / "reports" / "scaling.json").read_text())
    assert not scaling["fitted"] and scaling["reason"].startswith("not enough runs: 1 finished run(s)")

    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert evaluation["model"]["tokens"] == evaluation["unigram"]["tokens"] > 10_000
    assert evaluation["model"]["ppl"] < evaluation["unigram"]["ppl"]  # the model learned to use context
    assert evaluation["lambada"]["examples"] == 3 and evaluation["wikitext"]["documents"] == 2
    assert evaluation["hellaswag"]["examples"] == 3
    # Per-item scores beside the metrics (a DVC out): the means in eval.json come from them.
    from gptlab.pipeline.examples import read_examples

    items = read_examples(repo / "metrics" / "eval_examples.npz")
    assert items["lambada"]["acc"].mean() == pytest.approx(evaluation["lambada"]["acc"])
    assert items["hellaswag"]["acc_norm"].mean() == pytest.approx(evaluation["hellaswag"]["acc_norm"])
    assert set(read_examples(repo / "baselines" / "examples.npz")) == {"tiny-gpt2"}
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
    promoted = json.loads(run_command([str(BIN / "gptlab"), "promote", "--alias", "champion"], repo))
    assert int(promoted["version"]) == int(candidate.version)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    champion = mlflow.pyfunc.load_model("models:/gptlab@champion")
    [text] = champion.predict(["The future of AI is"], params={"max_new_tokens": 8})
    assert isinstance(text, str) and text

    # Nothing changed: nothing runs but the scaling stage, which reads MLflow (always_changed); its output is
    # the same, so the report does not run again. A train.* change re-runs training and what follows, not the
    # data stages.
    assert stages_ran(run_command([str(BIN / "dvc"), "repro"], repo)) == ["scaling"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The baselines depend on the data, not on our model: they are not measured again.
    assert sorted(stages_ran(run_command([str(BIN / "dvc"), "repro"], repo))) == ["evaluate", "generate", "report",
                                                                                 "scaling", "train"]
    assert int(client.get_model_version_by_alias("gptlab", "candidate").version) == int(candidate.version) + 1
    assert int(client.get_model_version_by_alias("gptlab", "champion").version) == int(candidate.version)

    # A code change makes exactly the stages that run that code stale (`dvc status`; nothing is re-run here).
    def stale_after_editing(path: str) -> set[str]:
        file = repo / path
        original = file.read_text()
        file.write_text(original + "\n# an edit\n")
        try:
            status = json.loads(run_command([str(BIN / "dvc"), "status", "--json"], repo))
            scaling = status.pop("scaling")  # always changed (it reads MLflow); stale too when its code changed
            assert "always changed" in scaling
            return set(status) | ({"scaling"} if len(scaling) > 1 else set())
        finally:
            file.write_text(original)

    assert stale_after_editing("src/gptlab/pipeline/report.py") == {"report", "scaling"}  # scaling's summary uses it
    assert stale_after_editing("src/gptlab/pipeline/comparison.py") == {"evaluate", "baselines"}
    assert stale_after_editing("src/gptlab/core/model.py") == {"train", "evaluate", "baselines", "generate", "report",
                                                               "scaling"}
    assert stale_after_editing("src/gptlab/settings.py") == {"download", "tokenize", "train", "evaluate", "baselines",
                                                             "generate", "report", "scaling"}
    assert stale_after_editing("src/gptlab/data/loader.py") == {"train", "evaluate", "baselines", "generate", "report",
                                                                "scaling"}
