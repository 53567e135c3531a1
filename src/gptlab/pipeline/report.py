"""The report stage: the seed's comparison table regenerated from measurements, with plots and samples.

Reads only files earlier stages wrote (``metrics/train.json``, ``eval.json``, ``train_curve.csv``,
``generate.json``, ``baselines/metrics.json``, the samples) and writes ``reports/``:

- ``report.md`` / ``report.csv``: one row per measured model and context (ours, each GPT-2 baseline), then
  published numbers and the unigram floor as separately labelled rows. A cell that could not be measured is
  empty and its row's ``note`` says why ("not measured: …").
- ``val_ppl.png``: validation perplexity by model, ours highlighted; ``loss.png``: our loss curves with the
  baselines' measured val loss at our context as reference lines.
- ``samples.md``: every model's samples for the same prompts and settings, side by side, with repetition metrics.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gptlab.fileio import atomic_path, read_json
from gptlab.pipeline.samples import quote
from gptlab.pipeline.versus import BOUNDS, interval_cells, seeds_section, versus_rows, versus_section, with_intervals

# Published numbers, never measured here: nanoGPT's README ("baselines": OpenAI's checkpoints evaluated on
# OpenWebText val at context 1024) and the GPT-2 paper (Radford et al. 2019, Table 3, zero-shot; its own
# de-tokenizers, and a LAMBADA accuracy with a stop-word filter, so not lm-eval's definition).
PUBLISHED = [
    {"name": "gpt2", "params_M": 124, "val_loss": 3.12, "lambada_acc": 45.99, "lambada_ppl": 35.13,
     "wikitext_word_ppl": 37.50},
    {"name": "gpt2-medium", "params_M": 350, "val_loss": 2.84, "lambada_acc": 55.48, "lambada_ppl": 15.60,
     "wikitext_word_ppl": 26.37},
    {"name": "gpt2-large", "params_M": 774, "val_loss": 2.67, "lambada_acc": 60.12, "lambada_ppl": 10.87,
     "wikitext_word_ppl": 22.05},
    {"name": "gpt2-xl", "params_M": 1558, "val_loss": 2.54, "lambada_acc": 63.24, "lambada_ppl": 8.63,
     "wikitext_word_ppl": 17.48},
]
PUBLISHED_SOURCE = "nanoGPT README (OWT val, ctx 1024); GPT-2 paper Table 3 (LAMBADA, WikiText-103)"
# HellaSwag (validation, 0-shot) by lm-evaluation-harness, as quoted in llm.c's dev/data/hellaswag.py.
PUBLISHED_HELLASWAG = {"gpt2": (28.92, 31.14), "gpt2-xl": (40.04, 50.89)}
PUBLISHED_HELLASWAG_SOURCE = "HellaSwag: lm-eval as quoted by llm.c (dev/data/hellaswag.py)"

COLUMNS = ["model", "kind", "params_M", "context", "train_tokens_M", "val_loss", "val_ppl", "loss_plateau",
           "lambada_acc", "lambada_ppl", "wikitext_word_ppl", "wikitext_token_ppl", "wikitext_bits_per_byte",
           "hellaswag_acc", "hellaswag_acc_norm", "distinct_1", "distinct_2", "rep_4", "note"]
COLUMNS[COLUMNS.index("val_ppl") + 1 : COLUMNS.index("val_ppl") + 1] = ["val_bits_per_byte"]
COLUMNS += BOUNDS  # 95 % interval bounds (report.csv); report.md shows them inside the cells
TASK_NAMES = {"val": "val split", "lambada": "LAMBADA", "wikitext": "WikiText-103", "hellaswag": "HellaSwag"}


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    csv: Path
    loss_png: Path
    ppl_png: Path
    samples: Path

    def files(self) -> list[Path]:
        return [self.markdown, self.csv, self.loss_png, self.ppl_png, self.samples]


def _read_optional(path: str | Path | None) -> Any:
    return read_json(path) if path is not None and Path(path).is_file() else None


def loss_plateau(curve: pd.DataFrame, evals: int) -> float | None:
    """Mean val loss of the last ``evals`` periodic evals (all of them when there are fewer)."""
    val = curve["val_loss"].dropna() if "val_loss" in curve else pd.Series(dtype=float)
    return float(val.tail(evals).mean()) if len(val) else None


def _task_cells(parts: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Table cells from one context's ``{"val", "lambada", "wikitext"}`` results, and the not-measured notes."""
    cells: dict[str, Any] = {}
    notes = []
    for part, result in parts.items():
        if not result.get("measured"):
            notes.append(f"{TASK_NAMES.get(part, part)} not measured: {result.get('reason', 'unknown')}")
            continue
        cells.update(interval_cells(part, result))
        if part == "val":
            cells.update(val_loss=result["loss"], val_ppl=result["ppl"])
        elif part == "lambada":
            cells.update(lambada_acc=100 * result["acc"], lambada_ppl=result["ppl"])
        elif part == "wikitext":
            cells.update(wikitext_word_ppl=result["word_ppl"], wikitext_token_ppl=result["token_ppl"],
                         wikitext_bits_per_byte=result["bits_per_byte"])
        elif part == "hellaswag":
            cells.update(hellaswag_acc=100 * result["acc"], hellaswag_acc_norm=100 * result["acc_norm"])
    return cells, notes


def _repetition_cells(rep: dict[str, Any] | None) -> dict[str, Any]:
    rep = rep or {}
    return {k: rep.get(k) for k in ("distinct_1", "distinct_2", "rep_4")}


def results_table(
    train: dict, evaluation: dict, *, baselines: dict | None = None, generation: dict | None = None,
    plateau: float | None = None,
) -> pd.DataFrame:
    """Ours, each baseline at each context, the published numbers, and the unigram floor, in that order."""
    ours_parts = {"val": {"measured": True, **evaluation["model"]}}
    ours_parts.update({t: evaluation[t] for t in ("lambada", "wikitext", "hellaswag") if t in evaluation})
    cells, notes = _task_cells(ours_parts)
    if generation is None:
        notes.append("samples not measured: metrics/generate.json is missing (run the generate stage)")
    rows = [{
        "model": f"gptlab ({train['profile']})", "kind": "ours", "params_M": train["params"] / 1e6,
        "context": evaluation["context"], "train_tokens_M": train["tokens_seen"] / 1e6, "loss_plateau": plateau,
        **cells, **_repetition_cells((generation or {}).get("repetition")), "note": "; ".join(notes),
    }]
    if baselines is None:
        rows.append({"model": "GPT-2 baselines", "kind": "baseline",
                     "note": "not measured: baselines/metrics.json is missing (run `gptlab baselines`)"})
    else:
        for name, entry in baselines["baselines"].items():
            label = entry.get("display", name)
            if not entry["measured"]:
                rows.append({"model": label, "kind": "baseline", "note": f"not measured: {entry['reason']}"})
                continue
            for context, parts in sorted(entry["contexts"].items(), key=lambda item: int(item[0])):
                cells, notes = _task_cells(parts)
                rows.append({
                    "model": f"{label} @{context}", "kind": "baseline", "params_M": entry["params"] / 1e6,
                    "context": int(context), **cells, **_repetition_cells(entry.get("repetition")),
                    "note": "; ".join(notes),
                })
    for pub in PUBLISHED:
        hellaswag = PUBLISHED_HELLASWAG.get(pub["name"])
        rows.append({
            "model": f"{pub['name']} (published)", "kind": "published", "params_M": pub["params_M"], "context": 1024,
            "val_loss": pub["val_loss"], "val_ppl": math.exp(pub["val_loss"]), "lambada_acc": pub["lambada_acc"],
            "lambada_ppl": pub["lambada_ppl"], "wikitext_word_ppl": pub["wikitext_word_ppl"],
            **({"hellaswag_acc": hellaswag[0], "hellaswag_acc_norm": hellaswag[1]} if hellaswag else {}),
            "note": PUBLISHED_SOURCE + (f"; {PUBLISHED_HELLASWAG_SOURCE}" if hellaswag else ""),
        })
    floor = evaluation["unigram"]
    rows.append({
        "model": "unigram floor (train-split token frequencies)", "kind": "floor", "context": 0,
        "train_tokens_M": train["train_tokens"] / 1e6, "val_loss": floor["loss"], "val_ppl": floor["ppl"],
        "note": "no context: a model that does not beat it has learned nothing from context",
    })
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return table.round({"val_loss_lo": 4, "val_loss_hi": 4, "val_ppl_lo": 2, "val_ppl_hi": 2,
                        "val_bits_per_byte": 4, "val_bits_per_byte_lo": 4, "val_bits_per_byte_hi": 4,
                        "lambada_acc_lo": 2, "lambada_acc_hi": 2,
                        "params_M": 2, "train_tokens_M": 2, "val_loss": 4, "val_ppl": 2, "loss_plateau": 4,
                        "lambada_acc": 2, "lambada_ppl": 2, "wikitext_word_ppl": 2, "wikitext_token_ppl": 2,
                        "wikitext_bits_per_byte": 4, "hellaswag_acc": 2, "hellaswag_acc_norm": 2, "distinct_1": 3, "distinct_2": 3, "rep_4": 3})


# ----------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


@contextlib.contextmanager
def plot_file(path: Path, *, figsize: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
    """``with plot_file(path, figsize=...) as (fig, ax):`` draw; the PNG is written atomically, the figure closed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    try:
        yield fig, ax
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)


def plot_losses(curve: pd.DataFrame, path: Path, *, references: dict[str, float] | None = None) -> None:
    """Our train/val loss by step, with each measured baseline's val loss at our context as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    train = curve.dropna(subset=["train_loss"])
    val = curve.dropna(subset=["val_loss"])
    ax.plot(train["step"], train["train_loss"], label="train loss", alpha=0.8)
    ax.plot(val["step"], val["val_loss"], "o-", label="val loss")
    for i, (label, loss) in enumerate((references or {}).items()):
        ax.axhline(loss, linestyle="--", linewidth=1, color=f"C{i + 2}", label=f"{label} val loss (measured)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_perplexity(table: pd.DataFrame, path: Path) -> None:
    """Horizontal bars of val perplexity (log scale): ours highlighted, published hatched, floor grey."""
    plt = _pyplot()
    rows = table.dropna(subset=["val_ppl"]).iloc[::-1]  # matplotlib draws bottom-up: keep the table's order
    colors = {"ours": "#d62728", "baseline": "#1f77b4", "published": "#aec7e8", "floor": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2), dpi=120)
    bars = ax.barh(rows["model"], rows["val_ppl"], color=[colors[k] for k in rows["kind"]],
                   hatch=None, edgecolor="black", linewidth=0.5)
    for bar, kind in zip(bars, rows["kind"], strict=True):
        if kind == "published":
            bar.set_hatch("//")
        if kind == "ours":
            bar.set_linewidth(2)
    for bar, value in zip(bars, rows["val_ppl"], strict=True):
        ax.text(bar.get_width() * 1.03, bar.get_y() + bar.get_height() / 2, f"{value:.1f}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("validation perplexity (log scale; lower is better)")
    from matplotlib.patches import Patch

    legend = {"ours": "ours (measured)", "baseline": "GPT-2 (measured here)", "published": "GPT-2 (published)",
              "floor": "unigram floor"}
    ax.legend(handles=[Patch(facecolor=colors[k], edgecolor="black", hatch="//" if k == "published" else None,
                             label=text) for k, text in legend.items() if k in set(rows["kind"])],
              fontsize=7, loc="upper right")
    for label in ax.get_yticklabels():
        if label.get_text().startswith("gptlab"):
            label.set_fontweight("bold")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(right=ax.get_xlim()[1] * 1.6)  # room for the value labels
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- samples


def side_by_side(models: dict[str, list[dict]], repetition: dict[str, dict], settings: dict | None) -> str:
    """Every model's samples for each prompt, one after another, with the repetition metrics on top."""
    lines = ["# Samples side by side", ""]
    if settings is not None:
        lines += [f"Same prompts, settings and seeds for every model: {settings}", ""]
    if repetition:
        rep = pd.DataFrame([{"model": m, **_repetition_cells(r)} for m, r in repetition.items()])
        lines += [rep.to_markdown(index=False, missingval="—", floatfmt=".3f"), "",
                  "In GPT-2 BPE tokens of the continuations. distinct-n: distinct / all n-grams over a model's samples "
                  "(higher: more varied); rep_4: share of a sample's 4-grams that repeat an earlier one (higher: "
                  "more looping).", ""]
    prompts = next(iter(models.values()), [])
    for i, item in enumerate(prompts):
        lines += [f"## {item['prompt']!r}", ""]
        for model, samples in models.items():
            for j, text in enumerate(samples[i]["samples"], start=1):
                lines += [f"**{model}**, sample {j}:", "", quote(item["prompt"] + text), ""]
    if not models:
        lines += ["No samples: run the generate and baselines stages."]
    return "\n".join(lines)


def build_report(
    *,
    train_metrics: str | Path = "metrics/train.json",
    eval_metrics: str | Path = "metrics/eval.json",
    curve: str | Path = "metrics/train_curve.csv",
    out_dir: str | Path = "reports",
    generate_metrics: str | Path | None = "metrics/generate.json",
    baselines: str | Path | None = "baselines/metrics.json",
    samples: str | Path | None = "samples/samples.json",
    baseline_samples: str | Path | None = "baselines/samples.json",
    plateau_evals: int = 5,
    windows: str | Path | None = "metrics/val_windows.npz",
    baseline_windows: str | Path | None = "baselines",
    seeds: dict[str, Any] | None = None,
    sections: list[str] | None = None,
) -> ReportPaths:
    """``sections``: more markdown lines, placed before the link to the samples (the scaling summary)."""
    out_dir = Path(out_dir)
    train = read_json(train_metrics)
    evaluation = read_json(eval_metrics)
    curve_df = pd.read_csv(curve)
    baseline_results = _read_optional(baselines)
    table = results_table(train, evaluation, baselines=baseline_results, generation=_read_optional(generate_metrics),
                          plateau=loss_plateau(curve_df, plateau_evals))
    paths = ReportPaths(out_dir / "report.md", out_dir / "report.csv", out_dir / "loss.png",
                        out_dir / "val_ppl.png", out_dir / "samples.md")
    with atomic_path(paths.csv) as tmp:
        table.to_csv(tmp, index=False)
    body = [
        "# gptlab report",
        "",
        f"Validation loss and perplexity over the **whole** validation split ({evaluation['model']['tokens']:,} "
        f"tokens, val sha256 `{evaluation['val_sha256'][:12]}`) in non-overlapping windows of `context` tokens; "
        "every measured row is scored by the same code on the same tokens. LAMBADA (accuracy in %, perplexity of "
        "the last word), WikiText-103 (word-level perplexity, rolling windows) and HellaSwag (validation, "
        "accuracy in %: acc sums each ending's log-likelihood, acc_norm divides it by the ending's length in "
        "characters) follow lm-evaluation-harness's definitions. Loss plateau: mean val loss of the last "
        f"{plateau_evals} evals during training. Repetition: distinct-1/2 and repeated 4-grams of the samples "
        "(GPT-2 BPE tokens).",
        "",
        with_intervals(table).to_markdown(index=False, missingval="—", floatfmt="g"),
        "",
        "[95 % intervals] of val loss, perplexity and bits per byte (total nats / ln 2 / UTF-8 bytes of the val "
        "documents): a seeded bootstrap over the val split's documents; of LAMBADA accuracy: ± 1.96 × lm-eval's "
        "stderr √(p(1 − p)/(n − 1)). See docs/evaluation.md.",
        "",
        *versus_section(*versus_rows(evaluation, baseline_results, windows=Path(windows) if windows else None,
                                     baselines_dir=Path(baseline_windows) if baseline_windows else None,
                                     ours_label=f"gptlab ({train['profile']})"),
                        samples=int(evaluation["model"].get("bootstrap_samples") or 0)),
        *seeds_section(seeds),
        "Published rows are quoted, not measured: GPT-2 was trained on WebText (not released), so on OpenWebText "
        "there is a domain gap, and the GPT-2 paper's LAMBADA / WikiText-103 numbers use its own de-tokenizers "
        "and LAMBADA formulation. The unigram floor scores the same val tokens with train-split token "
        "frequencies: a model below it has learned to use context.",
        "",
        "![validation perplexity by model](val_ppl.png)",
        "",
        "![loss curves](loss.png)",
        "",
        *(sections or []),
        "Samples side by side: [samples.md](samples.md)",
        "",
    ]
    with atomic_path(paths.markdown) as tmp:
        tmp.write_text("\n".join(body))
    ours_context = evaluation["context"]
    references = {}
    for name, entry in ((baseline_results or {}).get("baselines") or {}).items():
        val = entry.get("contexts", {}).get(str(ours_context), {}).get("val", {}) if entry["measured"] else {}
        if val.get("measured"):
            references[f"{entry.get('display', name)} @{ours_context}"] = val["loss"]
    plot_losses(curve_df, paths.loss_png, references=references)
    plot_perplexity(table, paths.ppl_png)
    models, repetition = {}, {}
    ours_samples, generation = _read_optional(samples), _read_optional(generate_metrics)
    ours_label = f"gptlab ({train['profile']})"
    if ours_samples is not None:
        models[ours_label] = ours_samples["samples"]
        repetition[ours_label] = (generation or {}).get("repetition", {})
    for name, items in (_read_optional(baseline_samples) or {}).get("samples", {}).items():
        entry = (baseline_results or {}).get("baselines", {}).get(name, {})
        if items and entry.get("measured"):
            models[entry.get("display", name)] = items
            repetition[entry.get("display", name)] = entry.get("repetition", {})
    with atomic_path(paths.samples) as tmp:
        tmp.write_text(side_by_side(models, repetition, (ours_samples or {}).get("settings")))
    return paths
