"""The report's statistics: interval cells (``101.7 [99.8, 103.6]``), the "versus" section (paired differences
of our model and each GPT-2 on the same val tokens), and the seeds section (mean ± std over seed runs of one
configuration). :mod:`gptlab.pipeline.report` lays them out; the numbers come from
:mod:`gptlab.pipeline.intervals`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from gptlab.core.evaluate import WindowScores
from gptlab.pipeline.intervals import baseline_windows, compare, difference_metrics

# Table columns that carry a 95 % interval: (column, its lower bound, its upper bound, cell format). The CSV keeps
# the bounds as numeric columns; report.md shows each as one "value [lo, hi]" cell.
INTERVAL_COLUMNS = [
    ("val_loss", "val_loss_lo", "val_loss_hi", "{:.4f}"),
    ("val_ppl", "val_ppl_lo", "val_ppl_hi", "{:.2f}"),
    ("val_bits_per_byte", "val_bits_per_byte_lo", "val_bits_per_byte_hi", "{:.4f}"),
    ("lambada_acc", "lambada_acc_lo", "lambada_acc_hi", "{:.2f}"),
]
BOUNDS = [b for _, lo, hi, _ in INTERVAL_COLUMNS for b in (lo, hi)]


def interval_cells(kind: str, result: dict[str, Any]) -> dict[str, Any]:
    """Table cells of one measured part (``val`` or ``lambada``): the bounds and bits per byte."""
    if kind == "val":
        return {"val_bits_per_byte": result.get("bits_per_byte"),
                **{f"val_{k}": result.get(k) for k in ("loss_lo", "loss_hi", "ppl_lo", "ppl_hi",
                                                       "bits_per_byte_lo", "bits_per_byte_hi")}}
    if kind == "lambada":
        return {f"lambada_{k}": (100 * result[k] if result.get(k) is not None else None) for k in ("acc_lo", "acc_hi")}
    return {}


def _cell(value: Any, lo: Any, hi: Any, fmt: str) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = fmt.format(value)
    if lo is None or hi is None or any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return text
    return f"{text} [{fmt.format(lo)}, {fmt.format(hi)}]"


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """report.md's view of the table: each interval column as ``value [lo, hi]``, the bound columns dropped."""
    out = table.astype(object).where(table.notna(), None)
    for column, lo, hi, fmt in INTERVAL_COLUMNS:
        if column in out:
            cells = [_cell(v, a, b, fmt) for v, a, b in zip(out[column], out.get(lo, [None] * len(out)),
                                                            out.get(hi, [None] * len(out)), strict=True)]
            out[column] = pd.Series(cells, index=out.index, dtype=object)  # object: None stays None ("—")
    return out.drop(columns=[b for b in BOUNDS if b in out])


# ------------------------------------------------------------------------------------------------ versus


def versus_rows(evaluation: dict[str, Any], baselines: dict[str, Any] | None, *, windows: Path | None,
                baselines_dir: Path | None, ours_label: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per measured GPT-2 and context: ours − it in val loss (nats/token) over the same documents, with
    its 95 % interval and two-sided p; and notes for the comparisons that could not be made."""
    notes: list[str] = []
    if windows is None or not Path(windows).is_file():
        return [], [f"not measured: {windows} is missing (run the evaluate stage)"]
    ours = WindowScores.load(windows)
    rows = []
    for name, entry in ((baselines or {}).get("baselines") or {}).items():
        if not entry.get("measured"):
            continue
        label = entry.get("display", name)
        for context, parts in sorted(entry["contexts"].items(), key=lambda item: int(item[0])):
            if not parts.get("val", {}).get("measured"):
                continue
            path = baseline_windows(Path(baselines_dir), label, context) if baselines_dir else None
            if path is None or not path.is_file():
                notes.append(f"{ours_label} vs {label} @{context} not measured: {path} is missing "
                             "(re-run the baselines stage)")
                continue
            if baselines.get("val_sha256") != evaluation.get("val_sha256"):
                notes.append(f"{ours_label} vs {label} @{context} not measured: scored on another val split")
                continue
            d = difference_metrics(compare(ours, WindowScores.load(path)))
            rows.append({
                "versus": f"{label} @{context}", "ours_context": evaluation["context"],
                "loss_delta": _cell(d["loss_delta"], d["loss_delta_lo"], d["loss_delta_hi"], "{:+.4f}"),
                "ppl_ratio": _cell(d["ppl_ratio"], d["ppl_ratio_lo"], d["ppl_ratio_hi"], "{:.3f}"),
                "p_two_sided": _p(d["p_two_sided"]), "documents": d["documents"],
                "verdict": _verdict(d, ours_label, label),
            })
    return rows, notes


def _p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"< {1e-3:g}" if p > 1.5e-4 else "< 1e-4")


def _verdict(d: dict[str, Any], ours: str, other: str) -> str:
    if d["loss_delta_lo"] is None:
        return "cannot tell (fewer than 2 documents)"
    if d["loss_delta_hi"] < 0:
        return f"{ours} is better"
    if d["loss_delta_lo"] > 0:
        return f"{other} is better"
    return "no clear difference at 95 %"


def versus_section(rows: list[dict[str, Any]], notes: list[str], *, samples: int) -> list[str]:
    lines = ["## Versus: paired differences on the same val tokens", ""]
    if rows:
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    lines += [
        "Δ loss: our val loss minus the other model's, in nats per token, over the same documents of the val split "
        "(negative: ours is better); ppl ratio = exp(Δ loss). [95 % interval] and p (two-sided, \"no difference\") "
        f"from a paired bootstrap over documents ({samples:,} resamples, seeded): both models are resampled on the "
        "same documents, so what a document's difficulty adds to both cancels. See docs/evaluation.md.",
        "",
    ]
    lines += [f"- {note}" for note in notes]
    return [*lines, ""] if notes else lines


# ------------------------------------------------------------------------------------------------- seeds


def seeds_section(seeds: dict[str, Any] | None) -> list[str]:
    """``seeds``: what :func:`gptlab.pipeline.seeds.seed_runs` found (``{"runs": [...], "summary": ...}``
    or ``{"reason": why}``)."""
    lines = ["## Seeds: this configuration over its seed runs", ""]
    if seeds is None:
        return []
    if "reason" in seeds:
        return [*lines, f"not measured: {seeds['reason']}", ""]
    s = seeds["summary"]
    cells = []
    for key, fmt in (("val_loss", "{:.4f}"), ("val_ppl", "{:.2f}")):
        m = s[key]
        std = "—" if m["std"] is None else fmt.format(m["std"])
        cells.append(f"{key} {fmt.format(m['mean'])} ± {std}")
    lines += [f"{', '.join(cells)} (mean ± sample std over n = {s['n']} seed runs: "
              f"seeds {', '.join(str(r['seed']) for r in seeds['runs'])}; versions "
              f"{', '.join(str(r['version']) for r in seeds['runs'])}).", "",
              "Seed runs: registered versions whose configuration without `train.seed` is this run's "
              f"(`gptlab.config_sha256` {seeds['config_sha256'][:12]}…), evaluated on this val split; read from the "
              "tracking store when the report was built.", ""]
    return lines
