"""The baselines stage: every GPT-2 of ``eval.baselines`` scored by the same code on the same val tokens,
LAMBADA, WikiText-103 and HellaSwag at every ``eval.contexts``, plus its samples for the same prompts →
``baselines/`` (``metrics.json`` with 95 % intervals, ``samples.json``, the per-item task scores in
``examples.npz``, and ``windows/<name>-ctx<context>.npz``: the per-window val losses the report's paired
comparisons with our model read).

It depends on the data, not on our model, so a training change does not re-run it; its outputs are cached,
so ``dvc exp`` and checkouts restore them. One MLflow run per baseline, nested under one run for the stage.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

from gptlab.core.evaluate import WindowScores
from gptlab.core.generate import sample_prompts, settings
from gptlab.core.repetition import repetition
from gptlab.data.loader import TokenSet, val_tokens
from gptlab.data.tokenizer import get_encoding
from gptlab.fileio import atomic_dir, write_json
from gptlab.hf.baselines import BaselineUnavailable, display_name, is_local, load_baseline
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.comparison import (
    Tasks,
    context_metrics,
    eval_device,
    load_tasks,
    measure_contexts,
    not_measured,
    not_measured_tags,
)
from gptlab.pipeline.examples import BASELINE_EXAMPLES, write_examples
from gptlab.pipeline.intervals import BASELINE_WINDOWS, token_bytes, windows_name
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config
from gptlab.tracking.runs import recording
from gptlab.tracking.store import Store

log = logging.getLogger(__name__)


def score_baseline(cfg: Config, tokens: TokenSet, name: str, *, tasks: Tasks,
                   windows: dict[str, WindowScores] | None = None) -> tuple[dict[str, Any], list]:
    """One GPT-2 baseline on the val split, LAMBADA, WikiText and HellaSwag at every ``eval.contexts`` that fits
    it (per-item scores under ``per_item``), and its samples for the ``generate`` prompts;
    ``({"measured": false, "reason": why}, [])`` if it cannot load. ``windows`` receives its per-window val
    losses at each context."""
    device, dtype = eval_device(cfg.eval)
    try:
        model = load_baseline(name, device=device)
    except BaselineUnavailable as e:
        log.warning("baseline %s: not measured: %s", name, e)
        return {"display": display_name(name), **not_measured(str(e))}, []
    enc = get_encoding(cfg.tokenize.tokenizer)
    contexts, per_item = measure_contexts(
        model, display_name(name), contexts=cfg.eval.contexts, val=val_tokens(tokens), tasks=tasks,
        encode=enc.encode_ordinary, batch_size=cfg.eval.batch_size, device=device, dtype=dtype,
        token_bytes=token_bytes(tokens.meta["tokenizer"]), windows=windows, stride=cfg.eval.stride,
    )
    samples = sample_prompts(model, enc, cfg.generate)
    result = {"display": display_name(name), "measured": True, "params": model.num_params(),
              "positions": model.config.block_size, "contexts": contexts,
              "repetition": repetition([enc.encode_ordinary(t) for item in samples for t in item["samples"]]),
              "per_item": per_item}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the next baseline may be 10x larger
    return result, samples


def score_baselines(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Every ``eval.baselines`` entry, measured with the code and the val tokens our model is measured with."""
    tokens = TokenSet.open(paths.tokens, verify=True)
    device, dtype = eval_device(cfg.eval)
    tasks = load_tasks(cfg.eval) if cfg.eval.baselines else Tasks()
    results, samples, windows = {}, {}, {}
    for name in cfg.eval.baselines:
        windows[name] = {}
        results[name], samples[name] = score_baseline(cfg, tokens, name, tasks=tasks, windows=windows[name])
        results[name]["source"] = "local folder" if is_local(name) else "Hugging Face hub"
    return {
        "windows": windows,
        "val_sha256": tokens.meta["val_sha256"],
        "val_tokens": tokens.tokens("val"),
        "contexts": list(cfg.eval.contexts),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "tasks": tasks.provenance,
        "baselines": results,
        "samples": samples,
    }


def record(cfg: Config, paths: Paths, result: dict[str, Any]) -> None:
    """``baselines/metrics.json`` + ``baselines/samples.json`` + ``baselines/examples.npz`` + ``baselines/windows/``,
    and one MLflow run per baseline (nested under one run for this stage), each tagged with the val split's sha256."""
    per_item = {entry["display"]: entry["per_item"] for entry in result["baselines"].values() if entry["measured"]}
    metrics = {k: v for k, v in result.items() if k not in ("samples", "baselines", "windows")}
    metrics["baselines"] = {name: {k: v for k, v in entry.items() if k != "per_item"}
                            for name, entry in result["baselines"].items()}
    write_json(paths.baselines / "metrics.json", metrics)
    write_examples(paths.baselines / BASELINE_EXAMPLES, per_item)
    write_json(paths.baselines / "samples.json", {"settings": settings(cfg.generate), "samples": result["samples"]})
    write_windows(paths, result["windows"], result["baselines"])
    store = Store.at(paths.root)
    shared = {"gptlab.val_sha256": result["val_sha256"], "gptlab.eval.contexts": str(result["contexts"])}
    with recording(store, cfg, "baselines", name="gpt2-baselines", tags=shared) as parent:
        parent.log_artifacts(paths.baselines / "metrics.json", paths.baselines / "samples.json",
                             paths.baselines / BASELINE_EXAMPLES, artifact_path="baselines")
        for name, entry in result["baselines"].items():
            tags = {**shared, "gptlab.baseline": name, "gptlab.measured": str(entry["measured"]).lower()}
            if not entry["measured"]:
                tags["gptlab.not_measured"] = entry["reason"][:5000]
            with recording(store, cfg, "baselines", name=f"baseline {entry['display']}", tags=tags,
                           parent=parent) as child:
                child.log_params({"baseline": name, "eval.contexts": result["contexts"],
                                  "eval.device": result["device"], "eval.dtype": result["dtype"]})
                if not entry["measured"]:
                    continue
                metrics: dict[str, float] = {}
                for context, parts in entry["contexts"].items():
                    metrics.update(context_metrics(parts, int(context)))
                    child.set_tags(not_measured_tags(parts, prefix=f"gptlab.not_measured.ctx{context}"))
                rep = {f"samples/{k}": v for k, v in entry["repetition"].items()
                       if k in ("distinct_1", "distinct_2", "rep_4") and v is not None}
                child.log_metrics({**metrics, **rep, "params": entry["params"]})


def write_windows(paths: Paths, windows: dict[str, dict[str, WindowScores]], entries: dict[str, Any]) -> None:
    """``baselines/windows/``: every measured baseline's per-window val losses at every context, replaced whole."""
    with atomic_dir(paths.baselines / BASELINE_WINDOWS) as tmp:
        for name, by_context in windows.items():
            for context, scores in by_context.items():
                scores.save(tmp / windows_name(entries[name].get("display", name), context))


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    result = score_baselines(cfg, paths)
    record(cfg, paths, result)
    return {name: ("measured" if entry["measured"] else f"not measured: {entry['reason']}")
            for name, entry in result["baselines"].items()}


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
