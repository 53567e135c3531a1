"""The pipeline's stages as plain functions: config in, files (DVC outs) and MLflow records out.

``gptlab <stage>`` calls these directly; the Prefect flows in ``flows/`` call the same functions as tasks.
Each stage reads only files that earlier stages wrote, so any one of them can be re-run alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.config import Config
from gptlab.fileio import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, relative to the project root (the folder of dvc.yaml)."""

    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def tokens(self) -> Path:
        return self.root / "data" / "tokens"

    @property
    def model(self) -> Path:
        return self.root / "models" / "final"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


def download(cfg: Config, paths: Paths) -> dict[str, Any]:
    from gptlab.data.download import download as run

    result = run(cfg.data, paths.raw)
    return {"documents": result.documents, "skipped_empty": result.skipped_empty}


def tokenize(cfg: Config, paths: Paths) -> dict[str, Any]:
    from gptlab.data.tokenize import tokenize as run

    result = run(cfg.tokenize, paths.raw, paths.tokens)
    return {"train_tokens": result.train_tokens, "val_tokens": result.val_tokens}


@dataclass(frozen=True)
class Trained:
    run_id: str
    checkpoint: Path


def train_model(cfg: Config, paths: Paths) -> Trained:
    """Train with an MLflow run open; write the checkpoint, ``metrics/train.json`` and the loss curve."""
    import pandas as pd

    from gptlab import tracking
    from gptlab.train import train

    with tracking.training_run(cfg, root=paths.root, tokens_dir=paths.tokens) as tracker:
        result = train(
            cfg, tokens_dir=paths.tokens, out_dir=paths.model, tracker=tracker,
            meta={"mlflow_run_id": tracker.run_id, "profile": cfg.profile},
        )
        train_tokens = read_json(paths.tokens / "meta.json")["tokens"]["train"]
        summary = {
            "profile": cfg.profile,
            "params": result.params,
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "train_tokens": train_tokens,
            "epochs": result.tokens_seen / train_tokens,
            "train_loss": result.final_train_loss,
            "val_loss_estimate": result.final_val_loss,
            "best_val_loss_estimate": result.best_val_loss,
            "seconds": result.seconds,
            "mlflow_run_id": tracker.run_id,
        }
        write_json(paths.metrics / "train.json", summary)
        curve = pd.DataFrame(result.history).rename(columns={"train/loss": "train_loss", "val/loss": "val_loss"})
        curve = curve.reindex(columns=["step", "train_loss", "val_loss", "lr", "tokens_per_sec"])
        with atomic_path(paths.metrics / "train_curve.csv") as tmp:
            curve.to_csv(tmp, index=False)
        tracker.log_metrics({"params": summary["params"]}, step=result.steps)
        tracker.set_tags({"gptlab.weights_sha256": result.checkpoint.meta["weights_sha256"]})
        for file in (paths.metrics / "train.json", paths.metrics / "train_curve.csv"):
            tracker.log_artifact(file, artifact_path="metrics")
    return Trained(tracker.run_id, paths.model)


def register_model(cfg: Config, paths: Paths, run_id: str) -> dict[str, str]:
    """Log the checkpoint as a generation pyfunc and register it as a new version with alias ``candidate``."""
    from gptlab import tracking
    from gptlab.data.tokenizer import ranks_file

    version = tracking.log_and_register(
        cfg, run_id=run_id, checkpoint_dir=paths.model, tokenizer_file=ranks_file(cfg.tokenize.tokenizer),
        root=paths.root,
    )
    return {"name": version.name, "version": version.version, "model_uri": version.model_uri}


def register_checkpoint(cfg: Config, paths: Paths) -> dict[str, str]:
    """Register ``models/final`` under the run that trained it (``gptlab register``: after a tracking outage)."""
    run_id = _run_id(paths)
    if not run_id:
        raise ValueError(f"{paths.model}/meta.json records no MLflow run: re-run `gptlab train`")
    return {"run_id": run_id, **register_model(cfg, paths, run_id)}


def train(cfg: Config, paths: Paths) -> dict[str, Any]:
    trained = train_model(cfg, paths)
    return {"run_id": trained.run_id, **register_model(cfg, paths, trained.run_id)}


def _run_id(paths: Paths) -> str | None:
    from gptlab.checkpoint import open_checkpoint

    return open_checkpoint(paths.model).meta.get("mlflow_run_id")


def score(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Loss and perplexity of the trained model over the whole val split, and the unigram floor."""
    from gptlab.checkpoint import load_model
    from gptlab.data.loader import TokenSet, val_tokens
    from gptlab.evaluate import perplexity, unigram_floor
    from gptlab.train import resolve_device, resolve_dtype

    device = resolve_device(cfg.train.device)
    model, ckpt = load_model(paths.model, device=device)
    tokens = TokenSet.open(paths.tokens, verify=True)
    val = val_tokens(tokens)
    context = model.config.block_size
    ours = perplexity(model, val, context=context, batch_size=cfg.eval.batch_size, device=device,
                      dtype=resolve_dtype(cfg.train.dtype, device))
    floor = unigram_floor(tokens.unigram_counts(), val)
    return {
        "context": context,
        "val_sha256": tokens.meta["val_sha256"],
        "checkpoint_step": ckpt.step,
        "model": ours.to_dict(),
        "unigram": floor.to_dict(),
        "beats_unigram": ours.ppl < floor.ppl,
    }


def record_evaluation(cfg: Config, paths: Paths, result: dict[str, Any]) -> None:
    from gptlab import tracking

    write_json(paths.metrics / "eval.json", result)
    with tracking.attach(_run_id(paths), cfg, "evaluate", root=paths.root) as run_id:
        tracking.log_metrics(
            {
                "eval/val_loss": result["model"]["loss"],
                "eval/val_ppl": result["model"]["ppl"],
                "eval/unigram_loss": result["unigram"]["loss"],
                "eval/unigram_ppl": result["unigram"]["ppl"],
                "eval/tokens_per_sec": result["model"]["tokens"] / max(result["model"]["seconds"], 1e-9),
            }
        )
        tracking.log_artifacts(paths.metrics / "eval.json", artifact_path="metrics")
        tracking.tag_versions_of_run(
            cfg.tracking.registered_model, run_id,
            {"val_ppl": f"{result['model']['ppl']:.6g}", "val_loss": f"{result['model']['loss']:.6g}",
             "val_sha256": result["val_sha256"], "context": result["context"]},
            root=paths.root,
        )


def evaluate(cfg: Config, paths: Paths) -> dict[str, Any]:
    result = score(cfg, paths)
    record_evaluation(cfg, paths, result)
    log.info(
        "evaluate: val ppl %.2f over %d tokens (unigram floor %.2f)",
        result["model"]["ppl"], result["model"]["tokens"], result["unigram"]["ppl"],
    )
    return result


def sample(cfg: Config, paths: Paths) -> list[dict[str, Any]]:
    """Every prompt's samples, seeded per prompt so adding a prompt does not change the others."""
    from gptlab.checkpoint import load_model
    from gptlab.data.tokenizer import get_encoding
    from gptlab.generate import Sampling, generate_text
    from gptlab.train import resolve_device

    g = cfg.generate
    model, _ = load_model(paths.model, device=resolve_device(cfg.train.device))
    enc = get_encoding(cfg.tokenize.tokenizer)
    sampling = Sampling(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p)
    return [
        {"prompt": prompt, "samples": generate_text(model, enc, prompt, num_samples=g.num_samples,
                                                    sampling=sampling, seed=g.seed + i)}
        for i, prompt in enumerate(g.prompts)
    ]


def record_samples(cfg: Config, paths: Paths, samples: list[dict[str, Any]]) -> None:
    from gptlab import tracking

    g = cfg.generate
    settings = {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p,
                "max_new_tokens": g.max_new_tokens, "seed": g.seed}
    write_json(paths.samples / "samples.json", {"settings": settings, "samples": samples})
    lines = ["# Samples", "", f"Settings: {settings}", ""]
    for item in samples:
        lines += [f"## {item['prompt']!r}", ""]
        for i, text in enumerate(item["samples"], start=1):
            body = "\n".join(f"> {line}" for line in (item["prompt"] + text).splitlines()) or ">"
            lines += [f"Sample {i}:", "", body, ""]
    with atomic_path(paths.samples / "samples.md") as tmp:
        tmp.write_text("\n".join(lines))
    with tracking.attach(_run_id(paths), cfg, "generate", root=paths.root):
        tracking.log_artifacts(paths.samples / "samples.json", paths.samples / "samples.md", artifact_path="samples")


def samples_summary(samples: list[dict[str, Any]]) -> dict[str, int]:
    return {"prompts": len(samples), "samples": sum(len(s["samples"]) for s in samples)}


def generate(cfg: Config, paths: Paths) -> dict[str, Any]:
    samples = sample(cfg, paths)
    record_samples(cfg, paths, samples)
    return samples_summary(samples)


def report(cfg: Config, paths: Paths) -> dict[str, Any]:
    from gptlab import tracking
    from gptlab.report import build_report

    out = build_report(
        train_metrics=paths.metrics / "train.json", eval_metrics=paths.metrics / "eval.json",
        curve=paths.metrics / "train_curve.csv", out_dir=paths.reports,
    )
    with tracking.attach(_run_id(paths), cfg, "report", root=paths.root):
        tracking.log_artifacts(out.markdown, out.csv, out.loss_png, artifact_path="report")
    evaluation = read_json(paths.metrics / "eval.json")
    return {
        "report": str(out.markdown),
        "val_ppl": evaluation["model"]["ppl"],
        "unigram_ppl": evaluation["unigram"]["ppl"],
        "learned": evaluation["model"]["ppl"] < evaluation["unigram"]["ppl"] and math.isfinite(evaluation["model"]["ppl"]),
    }


STAGES = {
    "download": download,
    "tokenize": tokenize,
    "train": train,
    "evaluate": evaluate,
    "generate": generate,
    "report": report,
}
