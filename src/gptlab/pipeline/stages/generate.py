"""The generate stage: samples for every prompt of ``generate`` → ``samples/samples.{json,md}`` and
``metrics/generate.json`` (repetition), recorded in the training's MLflow run."""

from __future__ import annotations

import sys
from typing import Any

from gptlab.core.checkpoint import load_model
from gptlab.core.generate import sample_prompts, settings
from gptlab.core.hardware import resolve_device
from gptlab.core.repetition import repetition
from gptlab.data.tokenizer import get_encoding
from gptlab.fileio import atomic_path, read_json, write_json
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.samples import samples_markdown
from gptlab.settings import Config
from gptlab.tracking.runs import recording
from gptlab.tracking.store import Store


def sample(cfg: Config, paths: Paths) -> list[dict[str, Any]]:
    """Every prompt's samples, seeded per prompt so adding a prompt does not change the others."""
    model, _ = load_model(paths.model, device=resolve_device(cfg.train.device))
    return sample_prompts(model, get_encoding(cfg.tokenize.tokenizer), cfg.generate)


def record(cfg: Config, paths: Paths, samples: list[dict[str, Any]]) -> None:
    sampling = settings(cfg.generate)
    write_json(paths.samples / "samples.json", {"settings": sampling, "samples": samples})
    with atomic_path(paths.samples / "samples.md") as tmp:
        tmp.write_text(samples_markdown(samples, sampling))
    encode = get_encoding(cfg.tokenize.tokenizer).encode_ordinary
    rep = repetition([encode(text) for item in samples for text in item["samples"]])
    write_json(paths.metrics / "generate.json", {"repetition": rep, "settings": sampling})
    run = read_json(paths.model / "meta.json").get("mlflow_run_id")
    with recording(Store.at(paths.root), cfg, "generate", attach=run) as tracker:
        tracker.log_metrics({f"samples/{k}": v for k, v in rep.items()
                             if k in ("distinct_1", "distinct_2", "rep_4") and v is not None})
        tracker.log_artifacts(paths.samples / "samples.json", paths.samples / "samples.md", artifact_path="samples")


def summary(samples: list[dict[str, Any]]) -> dict[str, int]:
    return {"prompts": len(samples), "samples": sum(len(s["samples"]) for s in samples)}


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    samples = sample(cfg, paths)
    record(cfg, paths, samples)
    return summary(samples)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
