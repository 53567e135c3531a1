"""The pipeline's stages as plain functions: config in, files (DVC outs) and MLflow records out.

``gptlab <stage>`` calls these directly; the Prefect flows in ``flows/`` call the same functions as tasks.
Each stage reads only files that earlier stages wrote, so any one of them can be re-run alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptlab.config import Config
from gptlab.fileio import atomic_path, read_json, write_json

if TYPE_CHECKING:  # the stages import torch and the rest only when they run
    from gptlab.distributed import Dist
    from gptlab.model import GPT

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
    def checkpoints(self) -> Path:
        """Resumable checkpoints, one folder per run (gptlab.train.run_key); git-ignored, not a DVC out."""
        return self.root / "models" / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"


def download(cfg: Config, paths: Paths) -> dict[str, Any]:
    from gptlab.data.download import download as run

    result = run(cfg.data, paths.raw)
    return {"documents": result.documents, "rows": result.rows, "skipped": result.skipped}


def tokenize(cfg: Config, paths: Paths) -> dict[str, Any]:
    from gptlab.data.tokenize import tokenize as run

    result = run(cfg.tokenize, paths.raw, paths.tokens)
    return {"train_tokens": result.train_tokens, "val_tokens": result.val_tokens,
            "train_docs": result.train_docs, "val_docs": result.val_docs}


@dataclass(frozen=True)
class Trained:
    run_id: str
    checkpoint: Path


def _init_model(cfg: Config, paths: Paths) -> GPT | None:
    """The model ``train.init`` names; a registered model (``models:/…``) is downloaded from MLflow first."""
    import tempfile

    from gptlab.checkpoint import load_model
    from gptlab.train import load_init

    kind, _, target = cfg.train.init.partition(":")
    if kind == "checkpoint":
        return load_model(paths.root / target)[0]  # relative to the project root (absolute stays absolute)
    if kind != "models":
        return load_init(cfg.train.init)
    from gptlab import tracking

    with tempfile.TemporaryDirectory(prefix="gptlab-init-") as tmp:
        return load_model(tracking.download_checkpoint(cfg.train.init, tmp, root=paths.root))[0]


def train_model(cfg: Config, paths: Paths) -> Trained | None:
    """Train with an MLflow run open; write the checkpoint, ``metrics/train.json`` and the loss curve.

    Resumes (``train.resume: auto``) from the newest intact checkpoint of this configuration in
    ``models/checkpoints/<run key>/``, continuing its MLflow run. Under torchrun every process trains and
    rank 0 alone tracks and writes; the other ranks return None.
    """
    from gptlab import distributed
    from gptlab.data.loader import TokenSet
    from gptlab.train import run_key, train

    dist = distributed.setup(cfg.train.device, cfg.train.nproc_per_node)
    try:
        run_dir = paths.checkpoints / run_key(cfg, TokenSet.open(paths.tokens), dist.world_size)
        if not dist.is_main:
            logging.getLogger("gptlab").setLevel(logging.WARNING)  # rank 0 speaks for the job
            train(cfg, tokens_dir=paths.tokens, out_dir=paths.model, checkpoint_dir=run_dir, dist=dist)
            return None
        return _train_and_record(cfg, paths, run_dir, dist)
    finally:
        distributed.teardown(dist)


def _train_and_record(cfg: Config, paths: Paths, run_dir: Path, dist: Dist) -> Trained:
    import pandas as pd

    from gptlab import tracking
    from gptlab.train import find_resume, train

    resume = find_resume(run_dir, cfg.train.resume)
    init = _init_model(cfg, paths) if resume is None else None
    previous_run = resume.checkpoint.meta.get("mlflow_run_id") if resume is not None else None
    with tracking.training_run(cfg, root=paths.root, run_id=previous_run, tokens_dir=paths.tokens) as tracker:
        result = train(
            cfg, tokens_dir=paths.tokens, out_dir=paths.model, tracker=tracker,
            meta={"mlflow_run_id": tracker.run_id, "profile": cfg.profile},
            checkpoint_dir=run_dir, resume=resume, init=init, dist=dist,
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
            "resumed_from_step": result.resumed_from,
            "processes": dist.world_size,
            "tokens_per_sec": result.tokens_per_sec,
            "mfu": result.mfu,
            "tracking_overhead": result.tracking_seconds / max(result.loop_seconds, 1e-9),
            "checkpoint_seconds": result.checkpoint_seconds,
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


def train_model_with_torchrun(cfg: Config, paths: Paths, *, params: str | Path, overrides: list[str]) -> Trained:
    """Launch ``train.nproc_per_node`` training processes on this node with torchrun and wait for them.

    Each runs :func:`train_model` (``python -m gptlab.distributed``) with the same params and overrides;
    rank 0 writes the MLflow run and ``models/final``, whose meta names the run.
    """
    import subprocess

    from gptlab.checkpoint import open_checkpoint
    from gptlab.distributed import torchrun_command

    args = ["--params", str(Path(params).resolve())] + [a for o in overrides for a in ("-S", o)]
    cmd = torchrun_command(cfg.train.nproc_per_node, args)
    log.info("launching %d training processes: %s", cfg.train.nproc_per_node, " ".join(cmd))
    code = subprocess.run(cmd, cwd=paths.root).returncode
    if code != 0:
        raise RuntimeError(f"distributed training failed (torchrun exit code {code}); the processes' errors are above")
    return Trained(open_checkpoint(paths.model).meta["mlflow_run_id"], paths.model)


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


def train(cfg: Config, paths: Paths) -> dict[str, Any] | None:
    trained = train_model(cfg, paths)
    if trained is None:  # a torchrun process other than rank 0: rank 0 registers
        return None
    return {"run_id": trained.run_id, **register_model(cfg, paths, trained.run_id)}


def _run_id(paths: Paths) -> str | None:
    from gptlab.checkpoint import open_checkpoint

    return open_checkpoint(paths.model).meta.get("mlflow_run_id")


def _eval_device(cfg: Config) -> tuple[Any, Any]:
    from gptlab.train import resolve_device, resolve_dtype

    device = resolve_device(cfg.eval.device)
    return device, resolve_dtype(cfg.eval.dtype, device)


def score(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Loss and perplexity of the trained model over the whole val split, and the unigram floor."""
    from gptlab.checkpoint import load_model
    from gptlab.data.loader import TokenSet, val_tokens
    from gptlab.evaluate import perplexity, unigram_floor

    device, dtype = _eval_device(cfg)
    model, ckpt = load_model(paths.model, device=device)
    tokens = TokenSet.open(paths.tokens, verify=True)
    val = val_tokens(tokens)
    context = model.config.block_size
    ours = perplexity(model, val, context=context, batch_size=cfg.eval.batch_size, device=device, dtype=dtype)
    floor = unigram_floor(tokens.unigram_counts(), val)
    return {
        "context": context,
        "val_sha256": tokens.meta["val_sha256"],
        "checkpoint_step": ckpt.step,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "model": ours.to_dict(),
        "unigram": floor.to_dict(),
        "beats_unigram": ours.ppl < floor.ppl,
    }


def score_downstream(cfg: Config, paths: Paths) -> dict[str, Any]:
    """LAMBADA and WikiText-103 of the trained model at its own context (or why they are not measured)."""
    from gptlab.checkpoint import load_model
    from gptlab.comparison import load_tasks, measure_tasks
    from gptlab.data.tokenizer import get_encoding

    device, dtype = _eval_device(cfg)
    tasks = load_tasks(cfg.eval)
    model, _ = load_model(paths.model, device=device)
    encode = get_encoding(cfg.tokenize.tokenizer).encode_ordinary
    results = measure_tasks(model, tasks, context=model.config.block_size, encode=encode,
                            batch_size=cfg.eval.batch_size, device=device, dtype=dtype)
    return {**results, "tasks": tasks.provenance}


def _not_measured_tags(results: dict[str, Any], prefix: str = "gptlab.not_measured") -> dict[str, str]:
    return {f"{prefix}.{task}": results[task]["reason"][:5000] for task in ("lambada", "wikitext")
            if task in results and not results[task]["measured"]}


def record_evaluation(cfg: Config, paths: Paths, result: dict[str, Any]) -> None:
    from gptlab import tracking
    from gptlab.comparison import context_metrics, measured

    write_json(paths.metrics / "eval.json", result)
    downstream = {task: result[task] for task in ("lambada", "wikitext") if task in result}
    by_context = context_metrics({"val": measured(result["model"]), **downstream}, result["context"])
    with tracking.attach(_run_id(paths), cfg, "evaluate", root=paths.root) as run_id:
        tracking.log_metrics(
            {
                "eval/val_loss": result["model"]["loss"],
                "eval/val_ppl": result["model"]["ppl"],
                "eval/unigram_loss": result["unigram"]["loss"],
                "eval/unigram_ppl": result["unigram"]["ppl"],
                "eval/tokens_per_sec": result["model"]["tokens"] / max(result["model"]["seconds"], 1e-9),
                **{name.removesuffix(f"_ctx{result['context']}"): v for name, v in by_context.items()},
                **by_context,
            }
        )
        tracking.set_tags({"gptlab.val_sha256": result["val_sha256"], **_not_measured_tags(downstream)})
        tracking.log_artifacts(paths.metrics / "eval.json", artifact_path="metrics")
        tracking.tag_versions_of_run(
            cfg.tracking.registered_model, run_id,
            {"val_ppl": f"{result['model']['ppl']:.6g}", "val_loss": f"{result['model']['loss']:.6g}",
             "val_sha256": result["val_sha256"], "context": result["context"]},
            root=paths.root,
        )


def evaluate(cfg: Config, paths: Paths) -> dict[str, Any]:
    result = {**score(cfg, paths), **score_downstream(cfg, paths)}
    record_evaluation(cfg, paths, result)
    log.info(
        "evaluate: val ppl %.2f over %d tokens (unigram floor %.2f)",
        result["model"]["ppl"], result["model"]["tokens"], result["unigram"]["ppl"],
    )
    return result


# ------------------------------------------------------------------------------------------ baselines


def score_baseline(cfg: Config, paths: Paths, name: str, *, tasks: Any = None) -> tuple[dict[str, Any], list]:
    """One GPT-2 baseline on the val split, LAMBADA and WikiText at every ``eval.contexts`` that fits it, and
    its samples for the ``generate`` prompts; ``({"measured": false, "reason": why}, [])`` if it cannot load."""
    import torch

    from gptlab.baselines import BaselineUnavailable, display_name, load_baseline
    from gptlab.comparison import load_tasks, measure_contexts, not_measured
    from gptlab.data.loader import TokenSet, val_tokens
    from gptlab.data.tokenizer import get_encoding
    from gptlab.generate import sample_prompts
    from gptlab.repetition import repetition

    device, dtype = _eval_device(cfg)
    try:
        model = load_baseline(name, device=device)
    except BaselineUnavailable as e:
        log.warning("baseline %s: not measured: %s", name, e)
        return {"display": display_name(name), **not_measured(str(e))}, []
    enc = get_encoding(cfg.tokenize.tokenizer)
    contexts = measure_contexts(
        model, display_name(name), contexts=cfg.eval.contexts, val=val_tokens(TokenSet.open(paths.tokens)),
        tasks=tasks if tasks is not None else load_tasks(cfg.eval), encode=enc.encode_ordinary,
        batch_size=cfg.eval.batch_size, device=device, dtype=dtype,
    )
    samples = sample_prompts(model, enc, cfg.generate)
    result = {"display": display_name(name), "measured": True, "params": model.num_params(),
              "positions": model.config.block_size, "contexts": contexts,
              "repetition": repetition([enc.encode_ordinary(t) for item in samples for t in item["samples"]])}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the next baseline may be 10x larger
    return result, samples


def score_baselines(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Every ``eval.baselines`` entry, measured with the code and the val tokens our model is measured with."""
    from gptlab.baselines import is_local
    from gptlab.comparison import load_tasks
    from gptlab.data.loader import TokenSet

    tokens = TokenSet.open(paths.tokens, verify=True)
    device, dtype = _eval_device(cfg)
    tasks = load_tasks(cfg.eval) if cfg.eval.baselines else None
    results, samples = {}, {}
    for name in cfg.eval.baselines:
        results[name], samples[name] = score_baseline(cfg, paths, name, tasks=tasks)
        results[name]["source"] = "local folder" if is_local(name) else "Hugging Face hub"
    return {
        "val_sha256": tokens.meta["val_sha256"],
        "val_tokens": tokens.tokens("val"),
        "contexts": list(cfg.eval.contexts),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "tasks": tasks.provenance if tasks is not None else {},
        "baselines": results,
        "samples": samples,
    }


def record_baselines(cfg: Config, paths: Paths, result: dict[str, Any]) -> None:
    """``baselines/metrics.json`` + ``baselines/samples.json``, and one MLflow run per baseline (nested under one
    run for this stage), each tagged with the val split's sha256."""
    from gptlab import tracking
    from gptlab.comparison import context_metrics
    from gptlab.generate import settings

    metrics = {k: v for k, v in result.items() if k != "samples"}
    write_json(paths.baselines / "metrics.json", metrics)
    write_json(paths.baselines / "samples.json", {"settings": settings(cfg.generate), "samples": result["samples"]})
    shared = {"gptlab.val_sha256": result["val_sha256"], "gptlab.eval.contexts": str(result["contexts"])}
    with tracking.stage_run(cfg, "baselines", name="gpt2-baselines", tags=shared, root=paths.root) as parent:
        tracking.log_artifacts(paths.baselines / "metrics.json", paths.baselines / "samples.json",
                               artifact_path="baselines")
        for name, entry in result["baselines"].items():
            tags = {**shared, "gptlab.baseline": name, "gptlab.measured": str(entry["measured"]).lower()}
            if not entry["measured"]:
                tags["gptlab.not_measured"] = entry["reason"][:5000]
            with tracking.stage_run(cfg, "baselines", name=f"baseline {entry['display']}", tags=tags,
                                    parent_run_id=parent, root=paths.root):
                tracking.log_params({"baseline": name, "eval.contexts": result["contexts"],
                                     "eval.device": result["device"], "eval.dtype": result["dtype"]})
                if not entry["measured"]:
                    continue
                metrics_by_context: dict[str, float] = {}
                for context, parts in entry["contexts"].items():
                    metrics_by_context.update(context_metrics(parts, int(context)))
                    tracking.set_tags(_not_measured_tags(parts, prefix=f"gptlab.not_measured.ctx{context}"))
                rep = {f"samples/{k}": v for k, v in entry["repetition"].items()
                       if k in ("distinct_1", "distinct_2", "rep_4") and v is not None}
                tracking.log_metrics({**metrics_by_context, **rep, "params": entry["params"]})


def baselines(cfg: Config, paths: Paths) -> dict[str, Any]:
    result = score_baselines(cfg, paths)
    record_baselines(cfg, paths, result)
    return {name: ("measured" if entry["measured"] else f"not measured: {entry['reason']}")
            for name, entry in result["baselines"].items()}


# ------------------------------------------------------------------------------------------- generate


def sample(cfg: Config, paths: Paths) -> list[dict[str, Any]]:
    """Every prompt's samples, seeded per prompt so adding a prompt does not change the others."""
    from gptlab.checkpoint import load_model
    from gptlab.data.tokenizer import get_encoding
    from gptlab.generate import sample_prompts
    from gptlab.train import resolve_device

    model, _ = load_model(paths.model, device=resolve_device(cfg.train.device))
    return sample_prompts(model, get_encoding(cfg.tokenize.tokenizer), cfg.generate)


def record_samples(cfg: Config, paths: Paths, samples: list[dict[str, Any]]) -> None:
    from gptlab import tracking
    from gptlab.data.tokenizer import get_encoding
    from gptlab.generate import settings as sampling_settings
    from gptlab.report import quote
    from gptlab.repetition import repetition

    settings = sampling_settings(cfg.generate)
    write_json(paths.samples / "samples.json", {"settings": settings, "samples": samples})
    lines = ["# Samples", "", f"Settings: {settings}", ""]
    for item in samples:
        lines += [f"## {item['prompt']!r}", ""]
        for i, text in enumerate(item["samples"], start=1):
            lines += [f"Sample {i}:", "", quote(item["prompt"] + text), ""]
    with atomic_path(paths.samples / "samples.md") as tmp:
        tmp.write_text("\n".join(lines))
    encode = get_encoding(cfg.tokenize.tokenizer).encode_ordinary
    rep = repetition([encode(text) for item in samples for text in item["samples"]])
    write_json(paths.metrics / "generate.json", {"repetition": rep, "settings": settings})
    with tracking.attach(_run_id(paths), cfg, "generate", root=paths.root):
        tracking.log_metrics({f"samples/{k}": v for k, v in rep.items()
                              if k in ("distinct_1", "distinct_2", "rep_4") and v is not None})
        tracking.log_artifacts(paths.samples / "samples.json", paths.samples / "samples.md", artifact_path="samples")


def samples_summary(samples: list[dict[str, Any]]) -> dict[str, int]:
    return {"prompts": len(samples), "samples": sum(len(s["samples"]) for s in samples)}


def generate(cfg: Config, paths: Paths) -> dict[str, Any]:
    samples = sample(cfg, paths)
    record_samples(cfg, paths, samples)
    return samples_summary(samples)


# --------------------------------------------------------------------------------------------- report


def report(cfg: Config, paths: Paths) -> dict[str, Any]:
    from gptlab import tracking
    from gptlab.report import build_report

    out = build_report(
        train_metrics=paths.metrics / "train.json", eval_metrics=paths.metrics / "eval.json",
        curve=paths.metrics / "train_curve.csv", out_dir=paths.reports,
        generate_metrics=paths.metrics / "generate.json", baselines=paths.baselines / "metrics.json",
        samples=paths.samples / "samples.json", baseline_samples=paths.baselines / "samples.json",
        plateau_evals=cfg.eval.plateau_evals,
    )
    with tracking.attach(_run_id(paths), cfg, "report", root=paths.root):
        tracking.log_artifacts(*out.files(), artifact_path="report")
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
    "baselines": baselines,
    "generate": generate,
    "report": report,
}
