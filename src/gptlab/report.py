"""The report stage: metrics files → a comparison table (markdown + CSV) and a loss-curve PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gptlab.fileio import atomic_path, read_json


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    csv: Path
    loss_png: Path


def results_table(train: dict, evaluation: dict) -> pd.DataFrame:
    """One row per model measured; the unigram floor as its own clearly labelled row."""
    ours = evaluation["model"]
    floor = evaluation["unigram"]
    rows = [
        {
            "model": f"gptlab ({train['profile']})",
            "params_M": round(train["params"] / 1e6, 2),
            "context": evaluation["context"],
            "tokens_seen_M": round(train["tokens_seen"] / 1e6, 2),
            "val_tokens": ours["tokens"],
            "val_loss": round(ours["loss"], 4),
            "val_ppl": round(ours["ppl"], 2),
        },
        {
            "model": "unigram floor (train-split token frequencies)",
            "params_M": None,
            "context": 0,
            "tokens_seen_M": round(train["train_tokens"] / 1e6, 2),
            "val_tokens": floor["tokens"],
            "val_loss": round(floor["loss"], 4),
            "val_ppl": round(floor["ppl"], 2),
        },
    ]
    return pd.DataFrame(rows)


def plot_losses(curve: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    train = curve.dropna(subset=["train_loss"])
    val = curve.dropna(subset=["val_loss"])
    ax.plot(train["step"], train["train_loss"], label="train loss", alpha=0.8)
    ax.plot(val["step"], val["val_loss"], "o-", label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def build_report(
    *,
    train_metrics: str | Path = "metrics/train.json",
    eval_metrics: str | Path = "metrics/eval.json",
    curve: str | Path = "metrics/train_curve.csv",
    out_dir: str | Path = "reports",
) -> ReportPaths:
    out_dir = Path(out_dir)
    table = results_table(read_json(train_metrics), read_json(eval_metrics))
    paths = ReportPaths(out_dir / "report.md", out_dir / "report.csv", out_dir / "loss.png")
    with atomic_path(paths.csv) as tmp:
        table.to_csv(tmp, index=False)
    body = [
        "# gptlab report",
        "",
        "Validation loss and perplexity over the whole validation split (non-overlapping windows).",
        "The unigram floor scores the same tokens with train-split token frequencies: a model below it",
        "has learned to use context.",
        "",
        table.to_markdown(index=False),
        "",
        "![loss curves](loss.png)",
        "",
    ]
    with atomic_path(paths.markdown) as tmp:
        tmp.write_text("\n".join(body))
    plot_losses(pd.read_csv(curve), paths.loss_png)
    return paths
