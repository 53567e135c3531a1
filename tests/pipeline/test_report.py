"""The seed's comparison table, regenerated from metrics files written by hand here."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from gptlab.fileio import write_json
from gptlab.pipeline.report import build_report, loss_plateau

PNG = b"\x89PNG\r\n\x1a\n"
OFFLINE = "gpt2-medium is not in the local Hugging Face cache and the hub is out of reach (HF_HUB_OFFLINE=1)"


def _measured(**values):
    return {"measured": True, **values}


def _files(root: Path) -> dict[str, Path]:
    files = {name: root / name for name in ("train.json", "eval.json", "curve.csv", "generate.json",
                                             "baselines.json", "samples.json", "baseline_samples.json")}
    write_json(files["train.json"], {"profile": "seed", "params": 29_940_000, "tokens_seen": 655_360_000,
                                     "train_tokens": 9_000_000_000})
    write_json(files["eval.json"], {
        "context": 512, "val_sha256": "ab" * 32,
        "model": {"loss": 3.5, "ppl": math.exp(3.5), "tokens": 4_400_000, "seconds": 10.0},
        "unigram": {"loss": 7.0, "ppl": math.exp(7.0), "tokens": 4_400_000},
        "lambada": _measured(acc=0.25, ppl=80.0, examples=5153, context=512, seconds=1.0),
        "wikitext": {"measured": False, "reason": "`eval.wikitext` is none"},
        "hellaswag": _measured(acc=0.2725, acc_norm=0.28, examples=10042, context=512, seconds=1.0),
    })
    # val loss at steps 100..600; the last 3 evals are 3.6, 3.5, 3.4 → plateau 3.5
    pd.DataFrame({"step": [100, 200, 300, 400, 500, 600], "train_loss": [9, 6, 5, 4, 3.7, 3.5],
                  "val_loss": [9.1, float("nan"), 5.2, 3.6, 3.5, 3.4]}).to_csv(files["curve.csv"], index=False)
    write_json(files["generate.json"], {"repetition": {"distinct_1": 0.5, "distinct_2": 0.7, "rep_4": 0.2}})
    gpt2_contexts = {
        str(c): {"val": _measured(loss=loss, ppl=math.exp(loss), tokens=4_400_000),
                 "lambada": _measured(acc=0.33, ppl=40.0), "wikitext": _measured(word_ppl=37.0, token_ppl=30.0,
                                                                                bits_per_byte=1.1)}
        for c, loss in ((512, 3.2), (1024, 3.1))
    }
    write_json(files["baselines.json"], {"val_sha256": "ab" * 32, "baselines": {
        "gpt2": {"display": "gpt2", "measured": True, "params": 123_650_000, "positions": 1024,
                 "contexts": gpt2_contexts, "repetition": {"distinct_1": 0.6, "distinct_2": 0.9, "rep_4": 0.01}},
        "gpt2-medium": {"display": "gpt2-medium", "measured": False, "reason": OFFLINE},
    }})
    prompt = {"prompt": "Once upon a time", "samples": [" there was"]}
    write_json(files["samples.json"], {"settings": {"seed": 1}, "samples": [prompt]})
    write_json(files["baseline_samples.json"], {"samples": {"gpt2": [{**prompt, "samples": [" a king"]}],
                                                            "gpt2-medium": []}})
    return files


def _build(files: dict[str, Path], out: Path, plateau_evals: int = 3):
    return build_report(
        train_metrics=files["train.json"], eval_metrics=files["eval.json"], curve=files["curve.csv"], out_dir=out,
        generate_metrics=files["generate.json"], baselines=files["baselines.json"], samples=files["samples.json"],
        baseline_samples=files["baseline_samples.json"], plateau_evals=plateau_evals,
    )


def test_report_table_has_ours_baselines_per_context_published_and_floor(tmp_path: Path):
    out = _build(_files(tmp_path / "in"), tmp_path / "reports")
    table = pd.read_csv(out.csv).set_index("model")
    assert list(table.index) == [
        "gptlab (seed)", "gpt2 @512", "gpt2 @1024", "gpt2-medium", "gpt2 (published)", "gpt2-medium (published)",
        "gpt2-large (published)", "gpt2-xl (published)", "unigram floor (train-split token frequencies)"]
    ours = table.loc["gptlab (seed)"]
    assert (ours["kind"], ours["context"], ours["val_loss"], ours["params_M"]) == ("ours", 512, 3.5, 29.94)
    assert ours["train_tokens_M"] == 655.36 and ours["loss_plateau"] == pytest.approx(3.5)
    assert ours["lambada_acc"] == 25.0 and ours["rep_4"] == 0.2
    assert math.isnan(ours["wikitext_word_ppl"]) and "WikiText-103 not measured: `eval.wikitext` is none" in ours["note"]
    assert table.loc["gpt2 @1024", "val_loss"] == 3.1 and table.loc["gpt2 @512", "context"] == 512
    assert table.loc["gpt2-medium", "note"] == f"not measured: {OFFLINE}"
    assert table.loc["gpt2 (published)", "val_loss"] == 3.12 and table.loc["gpt2 (published)", "kind"] == "published"
    assert table.loc["gpt2-xl (published)", "lambada_acc"] == 63.24
    # HellaSwag: ours measured (in %), GPT-2's published rows as lm-eval measured them (quoted by llm.c).
    assert (ours["hellaswag_acc"], ours["hellaswag_acc_norm"]) == (27.25, 28.0)
    assert (table.loc["gpt2 (published)", "hellaswag_acc"], table.loc["gpt2 (published)", "hellaswag_acc_norm"]) == (
        28.92, 31.14)
    assert table.loc["gpt2-xl (published)", "hellaswag_acc_norm"] == 50.89
    assert "llm.c" in table.loc["gpt2-xl (published)", "note"] and "llm.c" not in table.loc["gpt2-large (published)", "note"]
    assert math.isnan(table.loc["gpt2 @512", "hellaswag_acc"])  # a baselines file from before HellaSwag
    assert table.loc["unigram floor (train-split token frequencies)", "val_loss"] == 7.0

    markdown = out.markdown.read_text()
    assert f"not measured: {OFFLINE}" in markdown and "| gpt2 (published)" in markdown
    for png in (out.loss_png, out.ppl_png):
        assert png.read_bytes()[:8] == PNG
    samples = out.samples.read_text()
    assert samples.index("**gptlab (seed)**") < samples.index("**gpt2**") and "gpt2-medium" not in samples
    assert "Once upon a time a king" in samples


def test_loss_plateau_is_the_mean_of_the_last_evals():
    curve = pd.DataFrame({"val_loss": [5.0, float("nan"), 4.0, 3.0, 2.0]})
    assert loss_plateau(curve, 2) == pytest.approx(2.5)
    assert loss_plateau(curve, 10) == pytest.approx(3.5)
    assert loss_plateau(pd.DataFrame({"val_loss": [float("nan")]}), 3) is None


def test_report_without_baselines_says_how_to_get_them(tmp_path: Path):
    files = _files(tmp_path / "in")
    files["baselines.json"].unlink()
    table = pd.read_csv(_build(files, tmp_path / "reports").csv).set_index("model")
    assert "not measured: baselines/metrics.json is missing (run `gptlab baselines`)" in table.loc["GPT-2 baselines", "note"]


def _windows(nats_per_doc, tokens_per_doc, context: int):
    """Per-window losses with one piece per document (enough for per-document statistics)."""
    import numpy as np

    from gptlab.core.evaluate import WindowScores

    n = len(tokens_per_doc)
    return WindowScores(window=np.arange(n), doc=np.arange(n), tokens=np.asarray(tokens_per_doc, dtype=np.int64),
                        nats=np.asarray(nats_per_doc, dtype=np.float64), bytes=4 * np.asarray(tokens_per_doc),
                        context=context)


def test_report_shows_intervals_and_pairs_ours_with_each_gpt2_on_the_same_documents(tmp_path: Path):
    import numpy as np

    from gptlab.fileio import read_json

    files = _files(tmp_path / "in")
    evaluation = read_json(files["eval.json"])
    evaluation["model"].update(loss_lo=3.45, loss_hi=3.55, ppl_lo=math.exp(3.45), ppl_hi=math.exp(3.55),
                               bits_per_byte=1.2345, bits_per_byte_lo=1.2, bits_per_byte_hi=1.3, bootstrap_samples=10000)
    evaluation["lambada"].update(acc_lo=0.24, acc_hi=0.26)
    write_json(files["eval.json"], evaluation)
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, 1000, size=40)
    difficulty = rng.normal(3.3, 0.4, size=40)
    ours = _windows(tokens * difficulty, tokens, 512)
    ours.save(tmp_path / "in" / "val_windows.npz")
    (tmp_path / "in" / "baselines" / "windows").mkdir(parents=True)
    # gpt2 @512 is clearly better on every document; @1024 the same as ours up to noise.
    _windows(tokens * (difficulty - 0.2), tokens, 512).save(tmp_path / "in" / "baselines" / "windows" / "gpt2-ctx512.npz")
    _windows(tokens * difficulty + rng.normal(0, 1, 40) * np.sqrt(tokens), tokens, 1024).save(
        tmp_path / "in" / "baselines" / "windows" / "gpt2-ctx1024.npz")
    out = build_report(
        train_metrics=files["train.json"], eval_metrics=files["eval.json"], curve=files["curve.csv"],
        out_dir=tmp_path / "reports", generate_metrics=files["generate.json"], baselines=files["baselines.json"],
        samples=files["samples.json"], baseline_samples=files["baseline_samples.json"],
        windows=tmp_path / "in" / "val_windows.npz", baseline_windows=tmp_path / "in" / "baselines",
        seeds={"config_sha256": "c" * 64, "runs": [{"version": "1", "seed": "1337"}, {"version": "2", "seed": "1"}],
               "summary": {"val_loss": {"mean": 3.5, "std": 0.01, "n": 2}, "val_ppl": {"mean": 33.1, "std": 0.3, "n": 2},
                           "n": 2}},
    )
    markdown = out.markdown.read_text()
    assert f"| {math.exp(3.5):.2f} [{math.exp(3.45):.2f}, {math.exp(3.55):.2f}] |" in markdown  # ppl 33.12 [31.50, 34.81]
    assert "| 3.5000 [3.4500, 3.5500] |" in markdown and "1.2345 [1.2000, 1.3000]" in markdown
    assert "25.00 [24.00, 26.00]" in markdown and "val_ppl_lo" not in markdown
    table = pd.read_csv(out.csv).set_index("model")
    assert table.loc["gptlab (seed)", "val_ppl_hi"] == pytest.approx(math.exp(3.55), abs=0.01)  # numeric in the CSV
    versus = markdown[markdown.index("## Versus"):]
    rows = {line.split("|")[1].strip(): line for line in versus.splitlines() if line.startswith("| gpt2")}
    assert "gptlab (seed) is worse" not in versus and "gpt2 is better" in rows["gpt2 @512"]
    assert "+0.2000" in rows["gpt2 @512"] and "< 1e-4" in rows["gpt2 @512"]
    assert "no clear difference at 95 %" in rows["gpt2 @1024"]
    assert "paired bootstrap over documents (10,000 resamples" in versus
    assert "val_loss 3.5000 ± 0.0100, val_ppl 33.10 ± 0.30 (mean ± sample std over n = 2 seed runs" in markdown
    assert table["val_ppl"].dtype.kind == "f"  # the CSV stays numeric: the cells are text only in report.md
