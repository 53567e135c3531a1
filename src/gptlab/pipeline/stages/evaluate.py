"""The evaluate stage: the trained model's loss, perplexity and bits per byte over the whole val split (95 %
intervals over documents), the unigram floor, LAMBADA, WikiText-103 and HellaSwag → ``metrics/eval.json``, the
per-window val losses → ``metrics/val_windows.npz`` and the tasks' per-item scores → ``metrics/eval_examples.npz``;
recorded in the training's MLflow run (the per-window file as the artifact ``val_windows/<val sha256>/``, which
the promotion gate reads) and on its version."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gptlab.core.checkpoint import load_model
from gptlab.core.evaluate import WindowScores
from gptlab.data.loader import TokenSet
from gptlab.data.tokenizer import get_encoding
from gptlab.fileio import read_json, write_json
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.comparison import (
    TASK_NAMES,
    context_metrics,
    eval_device,
    load_tasks,
    measure_tasks,
    measured,
    not_measured_tags,
    score_val_windows,
    val_tags,
)
from gptlab.pipeline.examples import EVAL_EXAMPLES, write_examples
from gptlab.pipeline.intervals import WINDOWS_FILE
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config
from gptlab.tracking.evidence import windows_artifact_path
from gptlab.tracking.runs import recording
from gptlab.tracking.store import Store

log = logging.getLogger(__name__)


def score(cfg: Config, paths: Paths) -> tuple[dict[str, Any], WindowScores]:
    """Loss, perplexity and bits per byte of the trained model over the whole val split (with intervals), the
    unigram floor, and the per-window losses."""
    device, dtype = eval_device(cfg.eval)
    model, ckpt = load_model(paths.model, device=device)
    tokens = TokenSet.open(paths.tokens, verify=True)
    result, windows = score_val_windows(model, tokens, batch_size=cfg.eval.batch_size, device=device, dtype=dtype,
                                        stride=cfg.eval.stride)
    return {**result, "checkpoint_step": ckpt.step}, windows


def score_downstream(cfg: Config, paths: Paths) -> dict[str, Any]:
    """LAMBADA, WikiText-103 and HellaSwag of the trained model at its own context (or why they are not
    measured); ``per_item`` holds their per-item scores."""
    device, dtype = eval_device(cfg.eval)
    tasks = load_tasks(cfg.eval)
    model, _ = load_model(paths.model, device=device)
    encode = get_encoding(cfg.tokenize.tokenizer).encode_ordinary
    measurement = measure_tasks(model, tasks, context=model.config.block_size, encode=encode,
                                batch_size=cfg.eval.batch_size, device=device, dtype=dtype)
    return {**measurement.results, "tasks": tasks.provenance, "per_item": measurement.per_item}


def record(cfg: Config, paths: Paths, result: dict[str, Any], windows: WindowScores) -> None:
    """``metrics/eval.json``, ``metrics/val_windows.npz`` and ``metrics/eval_examples.npz``, then the metrics and
    those files in the training's run and the val tags on its version."""
    per_item = result.get("per_item", {})
    result = {k: v for k, v in result.items() if k != "per_item"}
    write_json(paths.metrics / "eval.json", result)
    windows.save(paths.metrics / WINDOWS_FILE)
    write_examples(paths.metrics / EVAL_EXAMPLES, per_item)
    downstream = {task: result[task] for task in TASK_NAMES if task in result}
    by_context = context_metrics({"val": measured(result["model"]), **downstream}, result["context"])
    run = read_json(paths.model / "meta.json").get("mlflow_run_id")
    with recording(Store.at(paths.root), cfg, "evaluate", attach=run) as tracker:
        tracker.log_metrics({
            "eval/val_loss": result["model"]["loss"],
            "eval/val_ppl": result["model"]["ppl"],
            "eval/unigram_loss": result["unigram"]["loss"],
            "eval/unigram_ppl": result["unigram"]["ppl"],
            "eval/tokens_per_sec": result["model"]["tokens"] / max(result["model"]["seconds"], 1e-9),
            **{name.removesuffix(f"_ctx{result['context']}"): v for name, v in by_context.items()},
            **by_context,
        })
        tracker.set_tags({"gptlab.val_sha256": result["val_sha256"], **not_measured_tags(downstream)})
        tracker.log_artifact(paths.metrics / "eval.json", artifact_path="metrics")
        tracker.log_artifact(paths.metrics / WINDOWS_FILE, artifact_path=windows_artifact_path(result["val_sha256"]))
        tracker.log_artifact(paths.metrics / EVAL_EXAMPLES, artifact_path="metrics")
        tracker.tag_versions(cfg.tracking.registered_model, val_tags(result))


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    scored, windows = score(cfg, paths)
    result = {**scored, **score_downstream(cfg, paths)}
    record(cfg, paths, result, windows)
    m = result["model"]
    log.info("evaluate: val ppl %.2f [%s, %s] over %d tokens in %d documents, %s bits/byte (unigram floor %.2f); "
             "intervals in %.2f s", m["ppl"], m["ppl_lo"], m["ppl_hi"], m["tokens"], m["documents"],
             m.get("bits_per_byte"), result["unigram"]["ppl"], m["bootstrap_seconds"])
    return {k: v for k, v in result.items() if k != "per_item"}  # what eval.json holds (printed as JSON)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
