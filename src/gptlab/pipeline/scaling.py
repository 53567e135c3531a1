"""The scaling study: the fitted law over a sweep's runs, the forecast of what reaching GPT-2 takes, the plots.

The runs are every FINISHED training run of the experiment that is of this configuration's family (the same
data, tokenize, model and train settings except the size and ``train.max_iters``: see
:func:`gptlab.pipeline.sweep.family`), was evaluated (``eval/val_loss`` over the whole val split) and was
scored on this val split (its ``gptlab.val_sha256`` tag). N = non-embedding parameters, D = training tokens.

Forecast targets are the GPT-2 baselines measured on the same split (``baselines/metrics.json``) and GPT-2's
published OpenWebText losses (labelled as such: comparable only when the runs are on OpenWebText). Each
forecast states how far beyond the fitted grid it reaches. Too few runs is an outcome, not an error: the
files then say "not enough runs: …" and what to run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.core.scaling import Fit, Point, ScalingError, fit, non_embedding_params
from gptlab.fileio import atomic_path, read_json, write_json
from gptlab.pipeline.report import PUBLISHED, plot_file
from gptlab.pipeline.sweep import ASSUMED_MFU, family, gpu_hours, matches
from gptlab.settings import Config
from gptlab.tracking.results import FinishedRun

# GPT-2's shapes (Radford et al. 2019, Table 2; all with biases): for the tokens a model of its size needs.
GPT2_SHAPES = {"gpt2": (12, 768), "gpt2-medium": (24, 1024), "gpt2-large": (36, 1280), "gpt2-xl": (48, 1600)}
PPL_CLAIM = 60.0  # the seed's recommendation: "train 50k+ iterations for ppl under 60"
TRUSTED_BEYOND = 3.0  # a forecast further than this past the fitted grid is flagged as an extrapolation


@dataclass(frozen=True)
class ScalingPaths:
    json: Path
    markdown: Path
    loss_png: Path
    isoflop_png: Path

    @classmethod
    def under(cls, reports: Path) -> ScalingPaths:
        return cls(reports / "scaling.json", reports / "scaling.md", reports / "scaling_loss.png",
                   reports / "scaling_isoflop.png")

    def files(self) -> list[Path]:
        return [self.json, self.markdown, self.loss_png, self.isoflop_png]


def runs_to_fit(cfg: Config, runs: list[FinishedRun], val_sha256: str) -> tuple[list[Point], list[str], float | None]:
    """The points of this family on this split (the newest run of each size × budget), the ids of their runs,
    and the median MFU they measured (None on CPU)."""
    wanted = family(cfg.flat())
    chosen: dict[tuple[int, int], FinishedRun] = {}
    for run in runs:
        if (run.tags.get("gptlab.val_sha256") == val_sha256 and "eval/val_loss" in run.metrics
                and matches(run, wanted)):
            p = run.params
            N = non_embedding_params(n_layer=int(p["model.n_layer"]), n_embd=int(p["model.n_embd"]),
                                     bias=p["model.bias"] == "True")
            chosen[(N, int(p["train.max_iters"]))] = run  # oldest first: the newest of a point wins
    points, ids, mfus = [], [], []
    for (N, iters), run in sorted(chosen.items()):
        D = iters * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
        shape = f"{run.params['model.n_layer']}x{run.params['model.n_head']}x{run.params['model.n_embd']}"
        points.append(Point(float(N), float(D), run.metrics["eval/val_loss"], label=f"{shape}-{iters}"))
        ids.append(run.run_id)
        if run.metrics.get("mfu"):
            mfus.append(run.metrics["mfu"])
    return points, ids, statistics.median(mfus) if mfus else None


def _interval(result: Fit, fn) -> list[float] | None:
    found = result.interval(fn)
    return list(found) if found is not None else None


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no inf: null means "never", said beside it


def targets(baselines: dict[str, Any] | None, context: int, val_sha256: str) -> list[dict[str, Any]]:
    """GPT-2 losses to forecast: measured here on this split (at our context, else the largest measured), then
    the published OpenWebText ones."""
    out = []
    if baselines and baselines.get("val_sha256") == val_sha256:
        for name, entry in baselines.get("baselines", {}).items():
            if not entry.get("measured"):
                continue
            measured = {int(c): parts["val"]["loss"] for c, parts in entry["contexts"].items()
                        if parts.get("val", {}).get("measured")}
            if measured:
                ctx = context if context in measured else max(measured)
                out.append({"name": entry.get("display", name), "key": name, "loss": measured[ctx],
                            "source": f"measured on this val split @{ctx}"})
    for pub in PUBLISHED:
        out.append({"name": pub["name"], "key": pub["name"], "loss": pub["val_loss"],
                    "source": "published (OpenWebText val @1024, nanoGPT README)"})
    return out


def forecast(result: Fit, cfg: Config, seed: Config | None, tgts: list[dict[str, Any]], *, mfu: float,
             mfu_note: str) -> dict[str, Any]:
    law = result.law
    tokens_per_step = cfg.tokens_per_step
    ours_n = non_embedding_params(n_layer=cfg.model.n_layer, n_embd=cfg.model.n_embd, bias=cfg.model.bias)
    rows = []
    for t in tgts:
        L = t["loss"]
        n_opt, d_opt, c_opt = law.optimal_for_loss(L)
        shape = GPT2_SHAPES.get(t["key"])
        gpt2_n = non_embedding_params(n_layer=shape[0], n_embd=shape[1], bias=True) if shape else None
        row = {
            **t,
            "tokens_at_our_N": _num(law.tokens_for(L, ours_n)),
            "tokens_at_our_N_95": _interval(result, lambda w, L=L: w.tokens_for(L, ours_n)),
            "our_N": ours_n,
            "tokens_at_gpt2_N": _num(law.tokens_for(L, gpt2_n)) if gpt2_n else None,
            "gpt2_N": gpt2_n,
            "optimal_N": _num(n_opt), "optimal_D": _num(d_opt), "optimal_flops": _num(c_opt),
            "optimal_flops_95": _interval(result, lambda w, L=L: w.optimal_for_loss(L)[2]),
            "gpu_hours": _num(gpu_hours(c_opt, gpu=cfg.scaling.gpu, mfu=mfu) or math.nan),
            "beyond_grid": _num(result.beyond(N=n_opt, D=d_opt)),
        }
        rows.append(row)
    expected = []
    if seed is not None:
        seed_n = non_embedding_params(n_layer=seed.model.n_layer, n_embd=seed.model.n_embd, bias=seed.model.bias)
        for iters in cfg.scaling.forecast_iters:
            D = iters * seed.tokens_per_step
            loss = float(law.loss(seed_n, D))
            interval = _interval(result, lambda w, D=D: float(w.loss(seed_n, D)))
            expected.append({
                "iters": iters, "N": seed_n, "D": D, "loss": loss, "loss_95": interval, "ppl": math.exp(loss),
                "ppl_95": [math.exp(v) for v in interval] if interval else None,
                "ppl_under_60": (interval[1] < math.log(PPL_CLAIM)) if interval else loss < math.log(PPL_CLAIM),
                "beyond_grid": result.beyond(N=seed_n, D=D),
            })
    return {"targets": rows, "seed": expected, "mfu": mfu, "mfu_note": mfu_note, "gpu": cfg.scaling.gpu,
            "flops_note": "C = 6ND, the law's compute (non-embedding N); the embeddings and attention add to it",
            "our_tokens_per_step": tokens_per_step}


def study(cfg: Config, *, runs: list[FinishedRun], val_sha256: str, baselines: dict[str, Any] | None,
          seed: Config | None) -> dict[str, Any]:
    """Everything ``reports/scaling.json`` holds: the fit (or why there is none) and the forecast."""
    points, ids, measured_mfu = runs_to_fit(cfg, runs, val_sha256)
    base = {"val_sha256": val_sha256, "profile": cfg.profile, "runs": len(points), "run_ids": ids,
            "points": [{"label": p.label, "N": p.N, "D": p.D, "loss": p.loss} for p in points]}
    try:
        result = fit(points, bootstrap=cfg.scaling.bootstrap, seed=cfg.scaling.seed)
    except ScalingError as e:
        return {**base, "fitted": False,
                "reason": f"not enough runs: {len(points)} finished run(s) of this configuration family on val "
                          f"split {val_sha256[:12]}. {e}. Run the sweep: `gptlab sweep run -S profile={cfg.profile}`"}
    if cfg.scaling.mfu is not None:
        mfu, note = cfg.scaling.mfu, "scaling.mfu"
    elif measured_mfu is not None:
        mfu, note = measured_mfu, "median MFU the fitted runs measured"
    else:
        mfu, note = ASSUMED_MFU, "assumed (the runs measured none: CPU); nanoGPT's ~35% for GPT-2 124M on A100"
    seed_same_data = seed is not None and seed.data.source == cfg.data.source
    for p, r in zip(base["points"], result.residuals, strict=True):
        p["fitted"] = float(result.law.loss(p["N"], p["D"]))
        p["residual"] = r
    return {
        **base, "fitted": True,
        "law": result.law.to_dict(), "law_95": result.parameter_intervals(),
        "rms_residual": result.rms_residual, "max_abs_residual": max(abs(r) for r in result.residuals),
        "bootstrap": {"resamples": len(result.bootstrap), "skipped": result.bootstrap_skipped},
        "grid": {"N": list(result.n_range), "D": list(result.d_range)},
        "forecast": forecast(result, cfg, seed, targets(baselines, cfg.model.block_size, val_sha256), mfu=mfu,
                             mfu_note=note),
        "seed_same_data": seed_same_data,
        "_fit": result,
    }


# ------------------------------------------------------------------------------------------- writing


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "never"
    return f"{x:.{digits}g}"


def _iv(iv: list[float] | None, digits: int = 3) -> str:
    if not iv:
        return ""
    return f" [{_fmt(iv[0] if math.isfinite(iv[0]) else None, digits)}, {_fmt(iv[1] if math.isfinite(iv[1]) else None, digits)}]"


def _beyond(x: float | None) -> str:
    if x is None:
        return "—"
    return "inside the grid" if x <= 1.0 else (f"×{x:.3g} past the grid" + (" (extrapolated)" if x > TRUSTED_BEYOND
                                                                           else ""))


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Scaling law", ""]
    if not result["fitted"]:
        return "\n".join(lines + [result["reason"], ""])
    law, iv = result["law"], result["law_95"]
    lines += [
        f"L(N, D) = E + A/N^α + B/D^β fitted to {result['runs']} runs (val split `{result['val_sha256'][:12]}`): "
        "Huber loss (δ = 1e-3) on log-loss from a grid of initialisations (Hoffmann et al. 2022, approach 3; "
        "Besiroglu et al. 2024). N = non-embedding parameters, D = training tokens. 95% intervals: bootstrap over "
        f"runs ({result['bootstrap']['resamples']} resamples, {result['bootstrap']['skipped']} skipped for holding "
        "fewer than 3 sizes or budgets).",
        "",
        "| parameter | value | 95% interval |",
        "|---|---|---|",
        *(f"| {name} | {law[name]:.4g} |{_iv(iv[name], 4)} |" for name in ("E", "A", "alpha", "B", "beta")),
        "",
        f"Residuals (log observed − log fitted): RMS {result['rms_residual']:.2%}, largest "
        f"{result['max_abs_residual']:.2%}. Fitted over N {result['grid']['N'][0]:.3g}–{result['grid']['N'][1]:.3g}"
        f" and D {result['grid']['D'][0]:.3g}–{result['grid']['D'][1]:.3g}; a forecast beyond that is marked.",
        "",
        "| run | N | D | val loss | fitted | residual |",
        "|---|---|---|---|---|---|",
        *(f"| {p['label']} | {p['N']:.4g} | {p['D']:.4g} | {p['loss']:.4f} | {p['fitted']:.4f} | {p['residual']:+.2%} |"
          for p in result["points"]),
        "",
        "![loss against tokens per model size](scaling_loss.png)",
        "",
        "![iso-FLOP curves](scaling_isoflop.png)",
        "",
        "## What reaching each GPT-2 takes",
        "",
    ]
    f = result["forecast"]
    lines += [
        f"Compute-optimal (N, D) for each target loss; C = 6ND; GPU-hours on one {f['gpu']} at MFU {f['mfu']:.2g} "
        f"({f['mfu_note']}). \"never\": the law's floor at that N (or E) is above the target.",
        "",
        f"| target | val loss | source | tokens at our N ({f['targets'][0]['our_N']:.3g}) | tokens at its own N | "
        "optimal N | optimal D | C (FLOPs) | GPU-hours | reach |" if f["targets"] else "",
        "|---|---|---|---|---|---|---|---|---|---|" if f["targets"] else "",
    ]
    for t in f["targets"]:
        lines.append(
            f"| {t['name']} | {t['loss']:.3f} | {t['source']} | {_fmt(t['tokens_at_our_N'])}{_iv(t['tokens_at_our_N_95'])} | "
            f"{_fmt(t['tokens_at_gpt2_N']) if t['gpt2_N'] else '—'} | {_fmt(t['optimal_N'])} | {_fmt(t['optimal_D'])} | "
            f"{_fmt(t['optimal_flops'])}{_iv(t['optimal_flops_95'])} | {_fmt(t['gpu_hours'])} | {_beyond(t['beyond_grid'])} |"
        )
    if f["seed"]:
        lines += ["", "## The seed configuration at more iterations", ""]
        if not result["seed_same_data"]:
            lines += ["The seed trains on a different corpus than these runs: its numbers below only show the "
                      "arithmetic, not a prediction.", ""]
        lines += ["| iterations | tokens | expected val loss | ppl | ppl < 60? | reach |", "|---|---|---|---|---|---|"]
        for s in f["seed"]:
            lines.append(f"| {s['iters']:,} | {s['D']:.3g} | {s['loss']:.3f}{_iv(s['loss_95'], 4)} | "
                         f"{s['ppl']:.1f}{_iv(s['ppl_95'])} | {'yes' if s['ppl_under_60'] else 'no'} | "
                         f"{_beyond(s['beyond_grid'])} |")
    return "\n".join(lines + [""])


def summary_lines(result: dict[str, Any] | None) -> list[str]:
    """The report's scaling section: the law with intervals and the headline forecasts, or why there is none."""
    lines = ["## Scaling law", ""]
    if result is None:
        return lines + ["Not measured: reports/scaling.json is missing (run the scaling stage).", ""]
    if not result["fitted"]:
        return lines + [result["reason"], ""]
    law, iv = result["law"], result["law_95"]
    terms = ", ".join(f"{name} = {law[name]:.3g}{_iv(iv[name])}" for name in ("E", "A", "alpha", "B", "beta"))
    lines += [f"L(N, D) = E + A/N^α + B/D^β over {result['runs']} runs: {terms} (95% bootstrap intervals); "
              f"RMS residual {result['rms_residual']:.2%}. Details, residuals and the forecast: "
              "[scaling.md](scaling.md).", ""]
    for t in result["forecast"]["targets"]:
        lines.append(f"- {t['name']} ({t['source']}, val loss {t['loss']:.3f}): compute-optimal "
                     f"N {_fmt(t['optimal_N'])}, D {_fmt(t['optimal_D'])}, C {_fmt(t['optimal_flops'])} FLOPs "
                     f"({_fmt(t['gpu_hours'])} GPU-hours); {_beyond(t['beyond_grid'])}")
    for s in result["forecast"]["seed"]:
        lines.append(f"- the seed configuration at {s['iters']:,} iterations: val loss {s['loss']:.3f}"
                     f"{_iv(s['loss_95'])}, ppl {s['ppl']:.1f}{_iv(s['ppl_95'])}; {_beyond(s['beyond_grid'])}")
    return lines + ["", "![loss against tokens per model size](scaling_loss.png)", ""]


def plot_loss_vs_tokens(result: Fit, path: Path) -> None:
    """Each size's runs (val loss against D) with the fitted curve and its bootstrap band."""
    with plot_file(path, figsize=(7, 4.2)) as (fig, ax):
        d_lo, d_hi = result.d_range
        grid_d = np.geomspace(d_lo / 2, d_hi * 4, 100)
        for i, N in enumerate(sorted({p.N for p in result.points})):
            pts = [p for p in result.points if p.N == N]
            color = f"C{i}"
            ax.plot([p.D for p in pts], [p.loss for p in pts], "o", color=color, label=f"N = {N:.3g}")
            ax.plot(grid_d, result.law.loss(N, grid_d), "-", color=color, linewidth=1)
            if result.bootstrap:
                curves = np.array([b.loss(N, grid_d) for b in result.bootstrap])
                lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
                ax.fill_between(grid_d, lo, hi, color=color, alpha=0.15, linewidth=0)
        law = result.law
        ax.set_title(f"L = {law.E:.3g} + {law.A:.3g}/N^{law.alpha:.3g} + {law.B:.3g}/D^{law.beta:.3g}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D (log scale)")
        ax.set_ylabel("val loss (nats / token)")
        ax.legend(fontsize=8)


def plot_isoflop(result: Fit, path: Path) -> None:
    """Loss against N at fixed compute C = 6ND, for compute budgets spanning the runs', with each optimum."""
    with plot_file(path, figsize=(7, 4.2)) as (fig, ax):
        flops = [6 * p.N * p.D for p in result.points]
        n_lo, n_hi = result.n_range
        grid_n = np.geomspace(n_lo / 4, n_hi * 4, 120)
        for i, C in enumerate(np.geomspace(min(flops), max(flops), 4)):
            ax.plot(grid_n, result.law.loss(grid_n, C / (6 * grid_n)), color=f"C{i}", label=f"C = {C:.2g} FLOPs")
            n_opt, d_opt = result.law.compute_optimal(C)
            ax.plot([n_opt], [result.law.loss(n_opt, d_opt)], "*", color=f"C{i}", markersize=10)
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N (log scale)")
        ax.set_ylabel("fitted val loss at fixed compute")
        ax.set_title("iso-FLOP curves (★: compute-optimal N)", fontsize=9)
        ax.legend(fontsize=8)


def plot_message(path: Path, text: str) -> None:
    """A plot that says why there is none (DVC requires every declared plot file)."""
    with plot_file(path, figsize=(7, 2)) as (fig, ax):
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9)


def write(result: dict[str, Any], paths: ScalingPaths) -> None:
    fitted: Fit | None = result.pop("_fit", None)
    write_json(paths.json, result)
    with atomic_path(paths.markdown) as tmp:
        tmp.write_text(markdown(result))
    if fitted is None:
        for png in (paths.loss_png, paths.isoflop_png):
            plot_message(png, result["reason"][:200])
        return
    plot_loss_vs_tokens(fitted, paths.loss_png)
    plot_isoflop(fitted, paths.isoflop_png)


def read_optional(path: Path) -> Any:
    return read_json(path) if path.is_file() else None

