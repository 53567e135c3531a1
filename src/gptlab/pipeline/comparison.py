"""One measurement for every model: the same downstream data, the same code, the same record format.

Our model (evaluate stage) and each GPT-2 baseline (baselines stage) go through :func:`measure_tasks`, and
their results share one shape: ``{"measured": true, ...numbers}`` or ``{"measured": false, "reason": why}``,
so the report can show every cell it could not fill as "not measured: why", never as a silent gap. Beside
the numbers come the per-item scores they were computed from (:data:`gptlab.core.downstream.PER_ITEM`), which
the stages write next to their metrics (:mod:`gptlab.pipeline.examples`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gptlab.core.downstream import Encode, hellaswag, lambada, wikitext
from gptlab.core.evaluate import WindowScores, score_windows, unigram_floor
from gptlab.core.hardware import resolve_device, resolve_dtype
from gptlab.core.model import GPT
from gptlab.data.loader import TokenSet, val_tokens
from gptlab.data.tokenizer import EOT
from gptlab.hf.tasks import TaskDataUnavailable, load_hellaswag, load_texts
from gptlab.pipeline.intervals import accuracy_metrics, token_bytes, val_metrics
from gptlab.settings import EvalConfig

log = logging.getLogger(__name__)

# (task, config key, field holding the text in the task's file; None: the task reads whole rows)
TASKS = (("lambada", "lambada", "text"), ("wikitext", "wikitext", "page"), ("hellaswag", "hellaswag", None))
TASK_NAMES = tuple(task for task, _, _ in TASKS)


def measured(values: dict[str, Any]) -> dict[str, Any]:
    return {"measured": True, **values}


def not_measured(reason: str) -> dict[str, Any]:
    return {"measured": False, "reason": reason}


@dataclass
class Tasks:
    """The downstream tasks' items (texts; HellaSwag's MultipleChoice), or why a task cannot be measured here."""

    texts: dict[str, list[Any]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, dict[str, str]] = field(default_factory=dict)


def load_tasks(e: EvalConfig) -> Tasks:
    """Read ``eval.lambada``, ``eval.wikitext`` and ``eval.hellaswag`` once; offline or ``none`` makes a task not
    measured."""
    tasks = Tasks()
    for task, key, text_field in TASKS:
        try:
            if text_field is None:
                tasks.texts[task], tasks.provenance[task] = load_hellaswag(getattr(e, key), setting=f"eval.{key}")
            else:
                tasks.texts[task], tasks.provenance[task] = load_texts(getattr(e, key), text_field,
                                                                       setting=f"eval.{key}")
        except TaskDataUnavailable as exc:
            tasks.unavailable[task] = str(exc)
            tasks.provenance[task] = {"source": getattr(e, key)}
    return tasks


def eval_device(e: EvalConfig) -> tuple[torch.device, torch.dtype]:
    """Where and in which precision the evaluate and baselines stages score (``eval.device``, ``eval.dtype``)."""
    device = resolve_device(e.device)
    return device, resolve_dtype(e.dtype, device)


def score_val_windows(model: GPT, tokens: TokenSet, *, batch_size: int, device: torch.device,
                      dtype: torch.dtype, stride: int | None = None) -> tuple[dict[str, Any], WindowScores]:
    """Loss, perplexity and bits per byte (with 95 % intervals) of ``model`` over the whole val split of
    ``tokens`` at its own context (windows sliding by ``stride``, ``eval.stride``), and the unigram floor on the
    same tokens: what the evaluate stage reports and the promotion gate compares; with the per-window losses the
    intervals and paired tests come from."""
    val = val_tokens(tokens)
    context = model.config.block_size
    scores = score_windows(model, val, context=context, batch_size=batch_size, device=device, dtype=dtype,
                           eot=int(tokens.meta.get("eot_token", EOT)), token_bytes=token_bytes(tokens.meta["tokenizer"]),
                           stride=stride)
    ours = {**val_metrics(scores), "stride": stride}
    floor = unigram_floor(tokens.unigram_counts(), val)
    return {
        "context": context,
        "val_sha256": tokens.meta["val_sha256"],
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "model": ours,
        "unigram": floor.to_dict(),
        "beats_unigram": ours["ppl"] < floor.ppl,
    }, scores


def score_val(model: GPT, tokens: TokenSet, *, batch_size: int, device: torch.device,
              dtype: torch.dtype, stride: int | None = None) -> dict[str, Any]:
    """:func:`score_val_windows` without the per-window losses."""
    return score_val_windows(model, tokens, batch_size=batch_size, device=device, dtype=dtype, stride=stride)[0]


def val_tags(result: dict[str, Any]) -> dict[str, str]:
    """The tags a registered version carries of its evaluation: the promotion gate reads them."""
    return {"val_ppl": f"{result['model']['ppl']:.6g}", "val_loss": f"{result['model']['loss']:.6g}",
            "val_sha256": result["val_sha256"], "context": str(result["context"])}


@dataclass
class Measurement:
    """One model's downstream results at one context: the numbers and the per-item scores behind them."""

    results: dict[str, dict[str, Any]]
    """``{"lambada": {"measured": true, "acc": ...}, "wikitext": ..., "hellaswag": ...}`` (metrics files)."""
    per_item: dict[str, dict[str, np.ndarray]]
    """``{"lambada": {"acc": array, ...}, ...}`` for the measured tasks (the examples files)."""


def measure_tasks(
    model: GPT, tasks: Tasks, *, context: int, encode: Encode, batch_size: int, device: torch.device,
    dtype: torch.dtype,
) -> Measurement:
    """LAMBADA, WikiText and HellaSwag of ``model`` at ``context``."""
    scorers = {"lambada": lambada, "wikitext": wikitext, "hellaswag": hellaswag}
    out = Measurement({}, {})
    for task in TASK_NAMES:
        if task in tasks.unavailable:
            out.results[task] = not_measured(tasks.unavailable[task])
            continue
        result = scorers[task](model, tasks.texts[task], encode=encode, context=context, batch_size=batch_size,
                               device=device, dtype=dtype)
        values = result.to_dict()
        if task in ("lambada", "hellaswag"):
            values.update(accuracy_metrics(values["acc"], len(tasks.texts[task])))
        out.results[task] = measured(values)
        out.per_item[task] = result.per_item
    return out


def measure_contexts(
    model: GPT, name: str, *, contexts: Sequence[int], val: np.ndarray, tasks: Tasks, encode: Encode,
    batch_size: int, device: torch.device, dtype: torch.dtype, token_bytes: np.ndarray | None = None,
    windows: dict[str, WindowScores] | None = None, stride: int | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, np.ndarray]]]]:
    """``({"512": {"val", "lambada", "wikitext", "hellaswag"}, ...}, {"512": per-item scores, ...})``: the val
    split (windows sliding by ``stride``) and the tasks at each context; a context beyond the model's positions
    is not measured. ``windows`` (if given) receives each context's per-window val losses; ``token_bytes`` gives
    bits per byte."""
    out: dict[str, dict[str, Any]] = {}
    per_item: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    positions = model.config.block_size
    for context in contexts:
        if context > positions:
            reason = f"context {context} exceeds {name}'s {positions} positions"
            out[str(context)] = {part: not_measured(reason) for part in METRICS}
            continue
        scores = score_windows(model, val, context=context, batch_size=batch_size, device=device, dtype=dtype,
                               token_bytes=token_bytes, stride=stride)
        val_result = val_metrics(scores)
        if windows is not None:
            windows[str(context)] = scores
        downstream = measure_tasks(model, tasks, context=context, encode=encode, batch_size=batch_size,
                                   device=device, dtype=dtype)
        out[str(context)] = {"val": measured({**val_result, "stride": stride}), **downstream.results}
        per_item[str(context)] = downstream.per_item
        log.info("%s @%d: val ppl %.2f [%s, %s]", name, context, val_result["ppl"], _fmt(val_result["ppl_lo"]),
                 _fmt(val_result["ppl_hi"]))
    return out, per_item


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


# Metric names shared by every MLflow run (ours and baselines), so the UI compares them column by column.
METRICS = {
    "val": {"loss": "eval/val_loss", "ppl": "eval/val_ppl", "bits_per_byte": "eval/val_bits_per_byte",
            "loss_lo": "eval/val_loss_lo", "loss_hi": "eval/val_loss_hi", "ppl_lo": "eval/val_ppl_lo",
            "ppl_hi": "eval/val_ppl_hi", "bits_per_byte_lo": "eval/val_bits_per_byte_lo",
            "bits_per_byte_hi": "eval/val_bits_per_byte_hi"},
    "lambada": {"acc": "lambada/acc", "ppl": "lambada/ppl", "acc_stderr": "lambada/acc_stderr"},
    "wikitext": {"word_ppl": "wikitext/word_ppl", "byte_ppl": "wikitext/byte_ppl",
                 "bits_per_byte": "wikitext/bits_per_byte", "token_ppl": "wikitext/token_ppl"},
    "hellaswag": {"acc": "hellaswag/acc", "acc_norm": "hellaswag/acc_norm", "acc_stderr": "hellaswag/acc_stderr"},
}


def context_metrics(results: dict[str, dict[str, Any]], context: int) -> dict[str, float]:
    """``{"eval/val_ppl_ctx512": ..., "lambada/acc_ctx512": ...}`` from one context's measured results."""
    metrics = {}
    for part, names in METRICS.items():
        result = results.get(part, {})
        if result.get("measured"):
            metrics.update({f"{name}_ctx{context}": float(result[key]) for key, name in names.items()
                            if result.get(key) is not None})  # no interval with < 2 documents
    return metrics


def not_measured_tags(results: dict[str, Any], prefix: str = "gptlab.not_measured") -> dict[str, str]:
    """``{"gptlab.not_measured.lambada": why, ...}`` for every task of ``results`` that was not measured."""
    return {f"{prefix}.{task}": results[task]["reason"][:5000] for task in TASK_NAMES
            if task in results and not results[task]["measured"]}
