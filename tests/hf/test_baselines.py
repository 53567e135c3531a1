"""GPT-2 baselines: scored by our code on our val tokens, one MLflow run each, "not measured: why" otherwise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.fileio import read_json
from gptlab.hf.baselines import BaselineUnavailable, display_name, load_baseline
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages import baselines
from gptlab.settings import replace

from ..conftest import HELLASWAG_ROWS, save_tiny_gpt2, write_hellaswag_file, write_task_files

CPU = torch.device("cpu")


def test_an_unloadable_baseline_says_why(tmp_path: Path):
    with pytest.raises(BaselineUnavailable, match=r"gpt2-medium is not in the local Hugging Face cache .*HF_HUB_OFFLINE=1"):
        load_baseline("gpt2-medium", device=CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaselineUnavailable, match="cannot load .* from a local folder"):
        load_baseline(str(tmp_path / "empty"), device=CPU)


def test_a_local_folder_loads_under_its_folder_name(tmp_path: Path):
    folder = save_tiny_gpt2(tmp_path / "my-gpt2")
    assert load_baseline(str(folder), device=CPU).config.block_size == 24
    assert display_name(str(folder)) == "my-gpt2" and display_name("gpt2-xl") == "gpt2-xl"


def test_offline_a_baseline_in_the_hub_cache_still_loads(tmp_path: Path):
    import shutil

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--someone--tiny-gpt2"
    commit = "0" * 40
    save_tiny_gpt2(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    try:
        assert load_baseline("someone/tiny-gpt2", device=CPU).config.block_size == 24
    finally:
        shutil.rmtree(repo)


def _transformers_loss(folder: Path, tokens: np.ndarray, context: int) -> float:
    """Mean loss of the Hugging Face model itself over non-overlapping windows: the brute-force reference."""
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    windows = [torch.from_numpy(tokens[s : s + context + 1].astype(np.int64)) for s in range(0, len(tokens) - 1, context)]
    full, tail = [w for w in windows if len(w) == context + 1], [w for w in windows if len(w) < context + 1]
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in [torch.stack(full[i : i + 256]) for i in range(0, len(full), 256)] + [w[None] for w in tail]:
            logits = hf(batch[:, :-1]).logits
            total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="sum").item()
            count += batch[:, 1:].numel()
    return total / count


def test_baselines_stage_scores_gpt2_with_our_code_on_our_val_tokens(tiny_cfg, tokens_dir: Path, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from gptlab.data.loader import TokenSet, val_tokens

    folder = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    lambada, wikitext = write_task_files(tmp_path / "tasks")
    hellaswag = write_hellaswag_file(tmp_path / "tasks")
    cfg = replace(tiny_cfg, eval={"baselines": ("gpt2", str(folder)), "contexts": (16, 32),
                                  "lambada": f"local:{lambada}", "wikitext": f"local:{wikitext}",
                                  "hellaswag": f"local:{hellaswag}"})
    paths = Paths(tokens_dir.parents[1])
    summary = baselines.run(cfg, paths)
    assert summary[str(folder)] == "measured" and summary["gpt2"].startswith("not measured: gpt2 is not in the")

    metrics = read_json(paths.baselines / "metrics.json")
    tokens = TokenSet.open(tokens_dir)
    assert metrics["val_sha256"] == tokens.meta["val_sha256"]
    tiny = metrics["baselines"][str(folder)]
    at16, at32 = tiny["contexts"]["16"], tiny["contexts"]["32"]
    assert at16["val"]["tokens"] == tokens.tokens("val") - 1  # the whole split, every token once
    assert at16["val"]["loss"] == pytest.approx(_transformers_loss(folder, val_tokens(tokens), 16), rel=1e-4)
    assert at16["lambada"]["examples"] == 3 and at16["wikitext"]["documents"] == 2
    assert at16["hellaswag"]["examples"] == len(HELLASWAG_ROWS)
    assert at32["val"] == {"measured": False, "reason": "context 32 exceeds tiny-gpt2's 24 positions"}
    # Every val number with its 95 % interval over the split's documents, bits per byte beside them, and the
    # per-window losses they came from kept as baselines/windows/<name>-ctx<context>.npz.
    from gptlab.core.evaluate import WindowScores

    val = at16["val"]
    assert val["loss_lo"] < val["loss"] < val["loss_hi"] and val["ppl_lo"] < val["ppl"] < val["ppl_hi"]
    assert val["bits_per_byte"] == pytest.approx(val["loss"] * val["tokens"] / math.log(2) / val["bytes"])
    assert val["bits_per_byte_lo"] < val["bits_per_byte"] < val["bits_per_byte_hi"]
    assert val["documents"] == tokens.meta["documents"]["val"] > 1
    kept = WindowScores.load(paths.baselines / "windows" / "tiny-gpt2-ctx16.npz")
    assert kept.perplexity.loss == pytest.approx(val["loss"]) and kept.context == 16
    assert sorted(p.name for p in (paths.baselines / "windows").iterdir()) == ["tiny-gpt2-ctx16.npz"]
    acc = at16["lambada"]["acc"]
    assert at16["lambada"]["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / 2))  # lm-eval's, n = 3
    assert tiny["repetition"]["samples"] == len(cfg.generate.prompts) * cfg.generate.num_samples
    samples = read_json(paths.baselines / "samples.json")
    assert [s["prompt"] for s in samples["samples"][str(folder)]] == list(cfg.generate.prompts)
    assert samples["samples"]["gpt2"] == [] and samples["settings"]["seed"] == cfg.generate.seed

    # One MLflow run per baseline, nested under the stage's run, each tagged with the val split's hash.
    client = MlflowClient(f"sqlite:///{paths.root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "gpt2-baselines"]
    children = {r.data.tags["gptlab.baseline"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"gpt2", str(folder)}
    assert all(r.data.tags["gptlab.val_sha256"] == tokens.meta["val_sha256"] for r in runs)
    assert children["gpt2"].data.tags["gptlab.not_measured"].startswith("gpt2 is not in the local Hugging Face cache")
    measured = children[str(folder)].data
    assert measured.metrics["eval/val_loss_ctx16"] == pytest.approx(at16["val"]["loss"])
    assert measured.metrics["eval/val_ppl_hi_ctx16"] == pytest.approx(at16["val"]["ppl_hi"])
    assert measured.metrics["eval/val_bits_per_byte_ctx16"] == pytest.approx(at16["val"]["bits_per_byte"])
    assert measured.metrics["lambada/acc_ctx16"] == pytest.approx(at16["lambada"]["acc"])
    assert math.isfinite(measured.metrics["wikitext/word_ppl_ctx16"])
    assert "eval/val_loss_ctx32" not in measured.metrics
    assert measured.metrics["hellaswag/acc_norm_ctx16"] == pytest.approx(at16["hellaswag"]["acc_norm"])


    # The per-item scores behind every mean, in baselines/examples.npz (a DVC out, for intervals / paired tests).
    from gptlab.pipeline.examples import read_examples

    items = read_examples(paths.baselines / "examples.npz")["tiny-gpt2"]["16"]
    assert set(read_examples(paths.baselines / "examples.npz")) == {"tiny-gpt2"}  # gpt2 was not measured
    assert items["lambada"]["acc"].mean() == pytest.approx(at16["lambada"]["acc"])
    assert math.exp(-items["lambada"]["logprob"].mean()) == pytest.approx(at16["lambada"]["ppl"])
    wiki = items["wikitext"]
    assert len(wiki["logprob"]) == 2 and wiki["tokens"].sum() == at16["wikitext"]["tokens"]
    assert math.exp(-wiki["logprob"].sum() / wiki["words"].sum()) == pytest.approx(at16["wikitext"]["word_ppl"])
    assert items["hellaswag"]["logprobs"].shape == (len(HELLASWAG_ROWS), 4)
    assert items["hellaswag"]["acc"].mean() == pytest.approx(at16["hellaswag"]["acc"])
    assert items["hellaswag"]["acc_norm"].mean() == pytest.approx(at16["hellaswag"]["acc_norm"])
