"""One command that turns a lent GPU's minutes into measured numbers: throughput, MFU, memory, correctness, forecasts.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR            # on the GPU: ≤ 6 minutes on one H200
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR --smoke    # the same code at tiny sizes on CPU (~30 s)

It needs only the torch core (gptlab.core, .data's token files, .settings, .errors, .fileio): torch, numpy,
safetensors and tiktoken, no mlflow, prefect, dvc, datasets, pandas or pydantic; tokens are synthetic, no tokenizer
files or network. Sections, each time-boxed (``--budget`` seconds in all, shared out by BUDGET_SHARES; a section
that runs out stops early and says so, one that fails records its error and the others still run):

1. training: gptlab's own loop (:func:`gptlab.core.train.train`) on the seed model (6/6/384, context 512,
   32 × 2 micro-batches) and gpt2-124m (12/12/768, context 1024, 12 × 2), eager and compiled, bf16 autocast
   where the device has it: tokens/s, step time, MFU against the device table (gptlab.core.hardware), peak memory.
   The seed model's eager and compiled runs take the same steps on the same batches: their loss curves are the
   "compiled equals eager" check.
2. resume: a run killed after its checkpoint and resumed equals the uninterrupted run.
3. logits: the device's bf16 autocast logits against CPU float32 logits for the same weights.
4. eval: the evaluate stage's forward (:func:`gptlab.core.evaluate.perplexity`) at the seed shape and at GPT-2
   XL's (48/25/1600, context 1024, random weights): tokens/s, peak memory.
5. generate: KV-cache sampling (:func:`gptlab.core.generate.sample`) at batch 1 and 32 with gpt2-124m's shape:
   tokens/s and memory-bandwidth utilisation (weights + KV cache read per step / time / the device's peak).
6. forecasts from the numbers above (formulas in docs/gpu.md): the seed training run, the baselines stage,
   LAMBADA + WikiText + HellaSwag for every model.

Writes DIR/gpu_check.json (every number, the tolerances, the device) and DIR/gpu_check.md (the table it prints).
Exit status 1 when a correctness check fails or a section errs, so a script can tell.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.core.evaluate import perplexity
from gptlab.core.generate import Sampling, sample
from gptlab.core.hardware import autocast, mfu, peak_bandwidth, peak_flops, resolve_dtype
from gptlab.core.model import GPT
from gptlab.core.train import find_resume, train
from gptlab.data.shards import write_shard
from gptlab.fileio import write_json
from gptlab.settings import (
    Config,
    DataConfig,
    EvalConfig,
    GenerateConfig,
    ModelConfig,
    ScalingConfig,
    ServeConfig,
    TokenizeConfig,
    TrackingConfig,
    TrainConfig,
)
from pinned import describe, device_name, load_average

# ----------------------------------------------------------------------------------------------- what it runs


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int = 1
    grad_accum: int = 1
    vocab_size: int = 50304
    bias: bool = False

    def model(self) -> ModelConfig:
        return ModelConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, block_size=self.block_size,
                           vocab_size=self.vocab_size, dropout=0.0, bias=self.bias)


# params.yaml's seed model and profiles/gpt2-124m.yaml's (micro-batch 12; 2 micro-batches suffice to time a
# step); GPT-2 XL as the baselines stage loads it (biases, the unpadded 50,257-token vocabulary).
FULL = {
    "seed": Shape("seed", 6, 6, 384, 512, batch_size=32, grad_accum=2),
    "gpt2-124m": Shape("gpt2-124m", 12, 12, 768, 1024, batch_size=12, grad_accum=2),
    "gpt2-xl": Shape("gpt2-xl", 48, 25, 1600, 1024, batch_size=8, vocab_size=50257, bias=True),
}
# --smoke: the same code at sizes a loaded 2-core CPU runs in seconds (a 4,096-token vocabulary: the synthetic
# tokens' own).
SMOKE = {
    "seed": Shape("seed", 2, 2, 32, 32, batch_size=2, grad_accum=2, vocab_size=4096),
    "gpt2-124m": Shape("gpt2-124m", 2, 2, 48, 64, batch_size=2, grad_accum=2, vocab_size=4096),
    "gpt2-xl": Shape("gpt2-xl", 2, 2, 64, 64, batch_size=2, vocab_size=4096, bias=True),
}
# GPT-2's four sizes as the baselines stage scores them (n_layer, n_head, n_embd; vocab 50257, biases).
GPT2_SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
              "gpt2-xl": (48, 25, 1600)}

# What the forecasts multiply. SEED_TOKENS: params.yaml's 20,000 steps × 32 × 2 × 512 tokens. VAL_TOKENS: the
# OpenWebText val split (nanoGPT's 0.0005 of 9B tokens). CONTEXTS: eval.contexts. Task tokens scored per model and
# context, approximate GPT-2 BPE counts: LAMBADA (OpenAI test, 5,153 passages of ~80 tokens), WikiText-103 test
# (~245K words ≈ 290K tokens), HellaSwag validation (10,042 items × 4 endings × ~100 tokens of context + ending).
SEED_TOKENS = 20_000 * 32 * 2 * 512
VAL_TOKENS = 4_400_000
CONTEXTS = (512, 1024)
TASK_TOKENS = {"lambada": 5_153 * 80, "wikitext": 290_000, "hellaswag": 10_042 * 4 * 100}

# The sections' shares of --budget (seconds); compiling the two models dominates "train".
BUDGET_SHARES = {"train": 0.55, "resume": 0.08, "logits": 0.04, "eval": 0.15, "generate": 0.12, "forecast": 0.0}

# Tolerances, and why. bf16 keeps 8 bits of mantissa (relative step 2^-8 ≈ 0.4%), so bf16 autocast against float32
# moves a mean cross-entropy by ~1e-3-1e-2 nats and single log-probs by up to a few tenths.
LOGITS_LOSS_TOL = 0.02  # nats, |mean loss (bf16 autocast, device) - mean loss (fp32, CPU)|
LOGITS_LOGP_TOL = 0.25  # nats, the largest |Δ log p(target)| over every scored token
# Resume: the same kernels on the same batches; only non-deterministic reductions (atomics in embedding backward)
# may differ, by rounding.
RESUME_TOL = 1e-3  # nats, the largest |Δ train loss| over the steps after the resume
# Compiled vs eager: the same maths in another order, so the trajectories drift apart by rounding only.
COMPILE_TOL = 0.02  # relative, |Δ| of the mean train loss over the last 10% of the steps


class Deadline:
    """A section's time box: ``left()`` seconds remain; ``over()`` once they are spent."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def over(self) -> bool:
        return self.left() <= 0


class TimeUp(Exception):
    """Raised from the tracker to end a training run whose section ran out of time."""


class Recorder:
    """A tracker for :func:`train`: keeps every record, ends the run at ``crash_at`` or at its deadline (once
    ``min_steps`` steps are in: a run cut before its warmup is over measures nothing)."""

    def __init__(self, deadline: Deadline | None = None, *, crash_at: int | None = None, min_steps: int = 0):
        self.records: list[dict[str, float]] = []
        self.deadline, self.crash_at, self.min_steps = deadline, crash_at, min_steps

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step == self.crash_at:
            raise TimeUp(f"killed at step {step}")
        self.records.append({"step": step, **metrics})
        if self.deadline is not None and self.deadline.over() and step >= self.min_steps:
            raise TimeUp(f"time box over at step {step}")


# ----------------------------------------------------------------------------------------------- synthetic data


def synthetic_tokens(root: Path, *, train_tokens: int, val_tokens: int, seed: int = 0) -> Path:
    """A token directory as the tokenize stage writes it, from a learnable synthetic stream: each token follows
    from the one before (``next = (7·prev + 13) mod 4096``) except 10% drawn at random, so a model's loss falls
    within a few hundred steps and two trajectories can be compared; no tokenizer or corpus needed."""
    rng = np.random.default_rng(seed)
    n = train_tokens + val_tokens
    tokens = np.empty(n, dtype=np.int64)
    tokens[0] = 1
    noise = rng.random(n) < 0.1
    random_ids = rng.integers(0, 4096, size=n)
    for i in range(1, n):  # ~1 µs per token; the full run writes ~2M
        tokens[i] = random_ids[i] if noise[i] else (7 * tokens[i - 1] + 13) % 4096
    shards = []
    for split, part in (("train", tokens[:train_tokens]), ("val", tokens[train_tokens:])):
        name = f"{split}_000.bin"
        shards.append({"name": name, "split": split, "tokens": int(part.size), "sha256": write_shard(root / name, part)})
    write_json(root / "meta.json", {"tokenizer": "synthetic", "source": "gpu_check", "vocab_size": 4096,
                                    "tokens": {"train": train_tokens, "val": val_tokens}, "shards": shards,
                                    "val_sha256": shards[1]["sha256"]})
    return root


def run_config(shape: Shape, *, steps: int, device: str, compile_: bool, checkpoint_interval: int = 0) -> Config:
    """A complete experiment for :func:`train` around ``shape`` (the sections train does not read hold the seed's
    values): fixed lr schedule, log every step, one val estimate at the end."""
    return Config(
        profile="gpu_check",
        data=DataConfig(source="demo", text_field="text", max_docs=None, expected_docs=None, max_doc_chars=10**8,
                        num_proc=1),
        tokenize=TokenizeConfig(tokenizer="gpt2", val_fraction=0.0005, split_seed=2357, shard_tokens=10**8,
                                num_workers=None),
        model=shape.model(),
        train=TrainConfig(device=device, dtype="auto", batch_size=shape.batch_size, grad_accum=shape.grad_accum,
                          max_iters=steps, lr=1e-3, min_lr=1e-4, lr_schedule="cosine", warmup_iters=min(10, steps),
                          weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, eval_interval=steps, eval_iters=1,
                          log_interval=1, seed=1337, compile=compile_, peak_flops=None, nproc_per_node=1,
                          checkpoint_interval=checkpoint_interval, resume="auto", init="scratch"),
        eval=EvalConfig(batch_size=shape.batch_size, device=device, dtype="auto", contexts=CONTEXTS, stride=None,
                        baselines=(), lambada="none", wikitext="none", hellaswag="none", plateau_evals=5),
        generate=GenerateConfig(prompts=("x",), num_samples=1, max_new_tokens=1, temperature=1.0, top_k=0, top_p=1.0,
                                seed=1337),
        tracking=TrackingConfig(experiment="gpu_check", registered_model="gpu_check", promote_margin=0.01,
                                flush_timeout=0.0, promote_alpha=0.01, promote_seeds=1),
        serve=ServeConfig(max_new_tokens=1, max_prompt_tokens=1, max_prompts=1),
        scaling=ScalingConfig(sizes=(), max_iters=(steps,), jobs=1, bootstrap=0, seed=0, gpu="H100", mfu=None,
                              forecast_iters=(steps,)),
    )


# ----------------------------------------------------------------------------------------------- measurements


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def train_run(shape: Shape, tokens: Path, out: Path, *, steps: int, device: torch.device, compile_: bool,
              deadline: Deadline, warmup: int, backend: str) -> dict[str, Any]:
    """Up to ``steps`` steps of gptlab's loop: tokens/s and step time (median after ``warmup`` steps), MFU, peak
    memory, the loss curve."""
    from gptlab.data.loader import TokenSet

    cfg = run_config(shape, steps=steps, device=str(device), compile_=compile_)
    recorder = Recorder(deadline, min_steps=warmup + 3)
    reset_peak(device)
    started = time.perf_counter()
    finished = True
    try:
        result = train(cfg, tokens=TokenSet.open(tokens), out_dir=out, tracker=recorder, compile_backend=backend)
        compiled = result.compiled
    except TimeUp:
        finished, compiled = False, compile_
    wall = time.perf_counter() - started
    if compile_:
        torch._dynamo.reset()  # drop the compiled graphs (and the model they hold) before the next run
    rates = [r["tokens_per_sec"] for r in recorder.records if "tokens_per_sec" in r][warmup:]
    losses = [r["train/loss"] for r in recorder.records if "train/loss" in r]
    flops = GPT.flops_per_token_of(cfg.model)
    peak = peak_flops(device)
    tps = statistics.median(rates) if rates else None
    return {
        "shape": shape.name, "model": f"{shape.n_layer}/{shape.n_head}/{shape.n_embd}", "context": shape.block_size,
        "tokens_per_step": cfg.tokens_per_step, "compiled": compiled, "backend": backend if compiled else None,
        "dtype": str(resolve_dtype("auto", device)).removeprefix("torch."),
        "steps": len(losses), "steps_asked": steps, "finished": finished, "timed_steps": len(rates),
        "tokens_per_sec": tps, "step_seconds": cfg.tokens_per_step / tps if tps else None,
        "mfu": mfu(flops, tps, peak) if tps else None, "flops_per_token": flops,
        "peak_memory_gib": peak_gib(device), "wall_seconds": wall,
        "first_step_seconds": (cfg.tokens_per_step / recorder.records[0]["tokens_per_sec"]
                               if recorder.records and "tokens_per_sec" in recorder.records[0] else None),
        "losses": losses,
    }


def compare_compiled(eager: dict[str, Any], compiled: dict[str, Any]) -> dict[str, Any]:
    """Compiled and eager took the same steps on the same batches: their mean loss over the last 10% agrees."""
    n = min(len(eager["losses"]), len(compiled["losses"]))
    if n < 2:
        return {"passed": False, "why": f"only {n} common steps"}
    tail = max(1, n // 10)
    a, b = statistics.fmean(eager["losses"][n - tail : n]), statistics.fmean(compiled["losses"][n - tail : n])
    rel = abs(a - b) / max(abs(a), 1e-9)
    return {"steps": n, "eager_tail_loss": a, "compiled_tail_loss": b, "relative_difference": rel,
            "first_loss_difference": abs(eager["losses"][0] - compiled["losses"][0]),
            "loss_drop": eager["losses"][0] - a, "tolerance": COMPILE_TOL, "passed": rel <= COMPILE_TOL}


def resume_check(shape: Shape, tokens: Path, work: Path, *, steps: int, device: torch.device) -> dict[str, Any]:
    """Uninterrupted vs killed after its checkpoint at steps/2 and resumed: the train losses after the resume."""
    from gptlab.data.loader import TokenSet

    every = steps // 2
    cfg = run_config(shape, steps=steps, device=str(device), compile_=False, checkpoint_interval=every)
    straight = train(cfg, tokens=TokenSet.open(tokens), out_dir=work / "a", checkpoint_dir=work / "ca")
    try:
        train(cfg, tokens=TokenSet.open(tokens), out_dir=work / "b", checkpoint_dir=work / "cb",
              tracker=Recorder(crash_at=every + 1))
    except TimeUp:
        pass
    resume = find_resume(work / "cb", "auto")
    if resume is None:
        return {"passed": False, "why": "no checkpoint to resume from"}
    resumed = train(cfg, tokens=TokenSet.open(tokens), out_dir=work / "b", checkpoint_dir=work / "cb", resume=resume)
    a = [h["train/loss"] for h in straight.history if h["step"] > every]
    b = [h["train/loss"] for h in resumed.history if h["step"] > every]
    worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
    return {"steps": steps, "resumed_from": resumed.resumed_from, "max_loss_difference": worst,
            "identical_weights": straight.checkpoint.meta["weights_sha256"] == resumed.checkpoint.meta["weights_sha256"],
            "tolerance": RESUME_TOL, "passed": resumed.resumed_from == every and worst <= RESUME_TOL}


@torch.no_grad()
def logits_check(model: GPT, tokens: Path, *, device: torch.device, batch: int) -> dict[str, Any]:
    """The same (trained) weights on CPU in float32 and on ``device`` under bf16 autocast: losses and log-probs."""
    from gptlab.core.evaluate import target_logprobs
    from gptlab.data.loader import TokenSet, spread_windows, val_tokens

    x, y = spread_windows(val_tokens(TokenSet.open(tokens)), block_size=model.config.block_size, count=batch)
    x, y = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
    model.eval()
    cpu_logp, _ = target_logprobs(model.to("cpu")(x).logits, y)
    dtype = torch.bfloat16
    with autocast(device, dtype):
        dev_logp, _ = target_logprobs(model.to(device)(x.to(device)).logits, y.to(device))
    dev_logp = dev_logp.float().cpu()
    loss_diff = abs(float(cpu_logp.mean()) - float(dev_logp.mean()))
    worst = float((cpu_logp - dev_logp).abs().max())
    return {"device": str(device), "dtype": "bfloat16 autocast", "tokens": int(y.numel()),
            "cpu_fp32_loss": -float(cpu_logp.mean()), "device_loss": -float(dev_logp.mean()),
            "loss_difference": loss_diff, "max_logp_difference": worst,
            "tolerance": {"loss": LOGITS_LOSS_TOL, "logp": LOGITS_LOGP_TOL},
            "passed": loss_diff <= LOGITS_LOSS_TOL and worst <= LOGITS_LOGP_TOL}


def eval_rate(shape: Shape, *, device: torch.device, tokens: int, deadline: Deadline) -> dict[str, Any]:
    """The evaluate stage's forward on random weights and random tokens (token values do not change the cost)."""
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: GPT-2 XL's 1.6B weights are not drawn on the CPU
        model = GPT(shape.model())
    dtype = resolve_dtype("auto", device)
    ids = np.random.default_rng(0).integers(0, min(shape.vocab_size, 50257), size=tokens + 1).astype(np.uint16)
    reset_peak(device)
    window = shape.batch_size * shape.block_size
    perplexity(model, ids, context=shape.block_size, batch_size=shape.batch_size, device=device, dtype=dtype,
               max_tokens=window)  # warm-up: allocator, kernels
    # Score as many windows as the time box allows, measured on one batch first.
    probe = perplexity(model, ids, context=shape.block_size, batch_size=shape.batch_size, device=device, dtype=dtype,
                       max_tokens=window)
    affordable = int(max(deadline.left(), 0) * 0.8 / max(probe.seconds, 1e-6)) * window
    scored = perplexity(model, ids, context=shape.block_size, batch_size=shape.batch_size, device=device, dtype=dtype,
                        max_tokens=max(window, min(tokens, affordable)))
    rate = scored.tokens / scored.seconds
    fwd = GPT.flops_per_token_of(shape.model()) / 3  # forward = a third of training's 6N + 12·L·C·T
    peak = peak_flops(device)
    line = describe(model, device=device, dtype=dtype, compiled=False)
    del model
    return {"shape": shape.name, "model": f"{shape.n_layer}/{shape.n_head}/{shape.n_embd}",
            "context": shape.block_size, "batch": shape.batch_size, "dtype": str(dtype).removeprefix("torch."),
            "tokens": scored.tokens, "seconds": scored.seconds, "tokens_per_sec": rate,
            "forward_flops_per_token": fwd, "achieved_flops": fwd * rate,
            "flops_utilisation": fwd * rate / peak if peak else None, "peak_memory_gib": peak_gib(device),
            "ran": line}


def generate_rate(shape: Shape, *, device: torch.device, batch: int, new_tokens: int, weights: torch.dtype
                  ) -> dict[str, Any]:
    """KV-cache sampling as the generate stage runs it; bandwidth: bytes read per decoding step / its time."""
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(shape.model()).to(dtype=weights)
    prompt = list(range(16))
    sampling = Sampling(max_new_tokens=new_tokens, temperature=1.0)
    sample(model, prompt, num_samples=batch, sampling=Sampling(max_new_tokens=4), seed=0, eot=-1)  # warm-up
    sync(device)
    start = time.perf_counter()
    out = sample(model, prompt, num_samples=batch, sampling=sampling, seed=0, eot=-1)  # eot=-1: never stops early
    sync(device)
    seconds = time.perf_counter() - start
    generated = sum(len(o) for o in out)
    c, size = shape.model(), torch.finfo(weights).bits // 8
    weight_bytes = sum(p.numel() for p in model.parameters()) * size
    # Each step reads every weight once and the cache of every token so far: 2 (k, v) × L × B × C per token.
    mean_cached = len(prompt) + new_tokens / 2
    cache_bytes = 2 * c.n_layer * batch * c.n_embd * mean_cached * size
    steps_per_sec = new_tokens / seconds
    bandwidth = peak_bandwidth(device)
    achieved = (weight_bytes + cache_bytes) * steps_per_sec
    del model
    return {"shape": shape.name, "batch": batch, "weights": str(weights).removeprefix("torch."),
            "new_tokens": new_tokens, "tokens_per_sec": generated / seconds, "step_ms": 1000 / steps_per_sec,
            "bytes_per_step": weight_bytes + cache_bytes, "achieved_bandwidth": achieved,
            "peak_bandwidth": bandwidth, "bandwidth_utilisation": achieved / bandwidth if bandwidth else None}


def forecasts(train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The bill before `dvc repro`, from the rates measured: seconds = tokens × FLOPs per token / FLOP/s achieved."""
    out: dict[str, Any] = {}
    seed = [r for r in train_rows if r["shape"] == "seed" and r.get("tokens_per_sec")]
    if seed:
        best = max(seed, key=lambda r: r["tokens_per_sec"])
        out["seed_training"] = {"tokens": SEED_TOKENS, "tokens_per_sec": best["tokens_per_sec"],
                                "compiled": best["compiled"], "hours": SEED_TOKENS / best["tokens_per_sec"] / 3600}
    achieved = {r["shape"]: r["achieved_flops"] for r in eval_rows if r.get("achieved_flops")}
    if not achieved:
        return out
    # Small models reach the seed shape's FLOP/s, the larger ones GPT-2 XL's (the nearest measured size).
    small, large = achieved.get("seed", achieved.get("gpt2-xl")), achieved.get("gpt2-xl", achieved.get("seed"))

    def seconds(layers: int, width: int, vocab: int, context: int, tokens: float, rate: float) -> float:
        cfg = ModelConfig(n_layer=layers, n_head=1, n_embd=width, block_size=context, vocab_size=vocab,
                          dropout=0.0, bias=True)
        return tokens * GPT.flops_per_token_of(cfg) / 3 / rate

    baselines, tasks = {}, {}
    task_tokens = sum(TASK_TOKENS.values())
    for name, (layers, _, width) in GPT2_SIZES.items():
        rate = small if name == "gpt2" else large
        baselines[name] = {str(c): seconds(layers, width, 50257, c, VAL_TOKENS, rate) for c in CONTEXTS}
        tasks[name] = sum(seconds(layers, width, 50257, c, task_tokens, rate) for c in CONTEXTS)
    tasks["seed model"] = seconds(6, 384, 50304, 512, task_tokens, small)
    out["baselines_stage"] = {"val_tokens": VAL_TOKENS, "contexts": list(CONTEXTS), "seconds": baselines,
                              "total_minutes": sum(sum(v.values()) for v in baselines.values()) / 60}
    out["downstream_tasks"] = {"task_tokens": TASK_TOKENS, "seconds": tasks, "total_minutes": sum(tasks.values()) / 60}
    return out


# ----------------------------------------------------------------------------------------------- the run


def section(report: dict[str, Any], name: str, budget: float, fn: Callable[[Deadline], Any]) -> Any:
    """Run one section in its time box; an error is recorded (with its traceback) and the next section runs."""
    deadline = Deadline(budget)
    started = time.perf_counter()
    print(f"[gpu_check] {name}: up to {budget:.0f} s", file=sys.stderr, flush=True)
    try:
        result = fn(deadline)
    except Exception as e:  # noqa: BLE001 - one failing section must not cost the other sections' GPU minutes
        result = None
        report["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        print(f"[gpu_check] {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    report["seconds"][name] = time.perf_counter() - started
    return result


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def table(report: dict[str, Any]) -> str:
    d = report["device"]
    lines = [f"# gpu_check on {d['name']} ({d['device']}), {report['date']}{' — SMOKE: tiny shapes' if report['smoke'] else ''}",
             "",
             f"torch {d['torch']}, CUDA {d['cuda']}, peak {fmt(d['peak_flops'] and d['peak_flops'] / 1e12, '.0f')} "
             f"TFLOP/s bf16, {fmt(d['peak_bandwidth'] and d['peak_bandwidth'] / 1e12, '.2f')} TB/s; "
             f"{d['threads']} threads; load {d['load']}; total {report['seconds']['total']:.0f} s", "",
             "| training | model | context | compiled | dtype | steps | first step s | tokens/s | step ms | MFU | peak GiB |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["train"]:
        lines.append(f"| {r['shape']} | {r['model']} | {r['context']} | {'yes' if r['compiled'] else 'no'} | "
                     f"{r['dtype']} | {r['steps']}{'' if r['finished'] else ' (time box)'} | "
                     f"{fmt(r['first_step_seconds'], '.1f')} | "
                     f"{fmt(r['tokens_per_sec'])} | {fmt(r['step_seconds'] and 1000 * r['step_seconds'], '.1f')} | "
                     f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f', '%')} | {fmt(r['peak_memory_gib'], '.2f')} |")
    lines += ["", "| eval forward | model | context × batch | tokens | tokens/s | of peak | peak GiB |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in report["eval"]:
        lines.append(f"| {r['shape']} | {r['model']} | {r['context']} × {r['batch']} | {r['tokens']:,} | "
                     f"{fmt(r['tokens_per_sec'])} | {fmt(r['flops_utilisation'] and 100 * r['flops_utilisation'], '.1f', '%')} | "
                     f"{fmt(r['peak_memory_gib'], '.2f')} |")
    lines += ["", "| generate (KV cache) | batch | weights | tokens/s | ms/step | bandwidth of peak |",
              "|---|---:|---|---:|---:|---:|"]
    for r in report["generate"]:
        lines.append(f"| {r['shape']} | {r['batch']} | {r['weights']} | {fmt(r['tokens_per_sec'])} | "
                     f"{r['step_ms']:.2f} | {fmt(r['bandwidth_utilisation'] and 100 * r['bandwidth_utilisation'], '.1f', '%')} |")
    lines += ["", "| check | measured | tolerance | passed |", "|---|---|---|---|"]
    for name, c in report["checks"].items():
        if c is None:
            lines.append(f"| {name} | not run | | no |")
            continue
        measured = {"logits": lambda c=c: f"Δ mean loss {c['loss_difference']:.2e}, largest Δ log p "
                                          f"{c['max_logp_difference']:.3f} ({c['tokens']:,} tokens)",
                    "resume": lambda c=c: f"largest Δ loss {c['max_loss_difference']:.2e} after step {c['resumed_from']}, "
                                      f"identical weights: {c['identical_weights']}",
                    "compiled_vs_eager": lambda c=c: f"{c['steps']} steps, last-10% loss {c['eager_tail_loss']:.4f} vs "
                                                 f"{c['compiled_tail_loss']:.4f} (rel {c['relative_difference']:.2e})"}
        text = measured[name]() if "why" not in c else c["why"]
        tol = c.get("tolerance", "")
        tol = ", ".join(f"{k} ≤ {v}" for k, v in tol.items()) if isinstance(tol, dict) else f"≤ {tol}" if tol else ""
        lines.append(f"| {name} | {text} | {tol} | {'yes' if c['passed'] else '**NO**'} |")
    f = report["forecasts"]
    lines += ["", "Forecasts (formulas: docs/gpu.md):"]
    if "seed_training" in f:
        s = f["seed_training"]
        lines.append(f"- seed training, {s['tokens'] / 1e6:.0f}M tokens at {s['tokens_per_sec']:,.0f} tokens/s "
                     f"({'compiled' if s['compiled'] else 'eager'}): {s['hours']:.2f} h")
    if "baselines_stage" in f:
        b = f["baselines_stage"]
        lines.append(f"- baselines stage, 4 GPT-2 sizes × {len(b['contexts'])} contexts × {b['val_tokens'] / 1e6:.1f}M "
                     f"val tokens: {b['total_minutes']:.1f} min")
        t = f["downstream_tasks"]
        lines.append(f"- LAMBADA + WikiText + HellaSwag ({sum(t['task_tokens'].values()) / 1e6:.1f}M tokens per model "
                     f"and context), all models: {t['total_minutes']:.1f} min")
    if report["errors"]:
        lines += ["", "Errors: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in report["errors"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the code runs (make test)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 330; smoke 300)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; aot_eager with --smoke, which skips the C++ build)")
    args = parser.parse_args(argv)
    shapes = SMOKE if args.smoke else FULL
    budget = args.budget or (300.0 if args.smoke else 330.0)  # smoke: every section runs to its end
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    backend = args.compile_backend or ("aot_eager" if args.smoke else "inductor")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --smoke (tiny shapes on CPU) or on the GPU machine")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    steps = 12 if args.smoke else 200  # the seed's eager and compiled runs: also the "compiled = eager" check
    big_steps, warmup = (6, 2) if args.smoke else (30, 5)
    total_start = time.perf_counter()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
        "device": {"device": str(device), "name": device_name(device), "torch": torch.__version__,
                   "cuda": torch.version.cuda, "peak_flops": peak_flops(device), "peak_bandwidth": peak_bandwidth(device),
                   "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
                   "load": "/".join(f"{x:.1f}" for x in load_average())},
        "shapes": {k: vars(v) for k, v in shapes.items()},
        "train": [], "eval": [], "generate": [], "checks": {}, "forecasts": {}, "errors": {}, "seconds": {},
        "budget_seconds": budget, "compile_backend": backend,
    }
    if device.type == "cuda":
        report["device"]["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        tokens = synthetic_tokens(work / "tokens", train_tokens=200_000 if args.smoke else 2_000_000,
                                  val_tokens=20_000 if args.smoke else 200_000)
        share = {k: v * budget for k, v in BUDGET_SHARES.items()}

        def training(deadline: Deadline) -> None:
            # (shape, compiled, steps, weight): what is left is shared among the runs still to go in proportion
            # to their weights (a compiled run also compiles), so a slow compile cannot starve the rest.
            plan = [("seed", False, steps, 1), ("seed", True, steps, 2), ("gpt2-124m", False, big_steps, 1),
                    ("gpt2-124m", True, big_steps, 2)]
            for i, (name, compiled, n, weight) in enumerate(plan):
                box = Deadline(max(deadline.left(), 0) * weight / sum(w for *_, w in plan[i:]))
                try:
                    row = train_run(shapes[name], tokens, work / f"train-{name}-{compiled}", steps=n, device=device,
                                    compile_=compiled, deadline=box, warmup=warmup, backend=backend)
                except Exception as e:  # noqa: BLE001 - a failed compile must not cost the other runs
                    report["errors"][f"train {name} {'compiled' if compiled else 'eager'}"] = (
                        f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
                    print(f"[gpu_check]   {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                    continue
                report["train"].append(row)
                print(f"[gpu_check]   {name} {'compiled' if compiled else 'eager'}: "
                      f"{fmt(row['tokens_per_sec'])} tokens/s, {row['steps']} steps", file=sys.stderr, flush=True)

        section(report, "train", share["train"], training)
        seed_rows = {r["compiled"]: r for r in report["train"] if r["shape"] == "seed"}
        report["checks"]["compiled_vs_eager"] = (compare_compiled(seed_rows[False], seed_rows[True])
                                                 if len(seed_rows) == 2 else None)
        report["checks"]["resume"] = section(
            report, "resume", share["resume"],
            lambda d: resume_check(shapes["seed"], tokens, work / "resume", steps=4 if args.smoke else 20,
                                   device=device))

        def logits(deadline: Deadline) -> dict[str, Any]:
            from gptlab.core.checkpoint import load_model

            model, _ = load_model(work / "resume" / "a")  # the resume check's seed-shape weights: trained a little
            return logits_check(model, tokens, device=device, batch=4 if args.smoke else 16)

        report["checks"]["logits"] = section(report, "logits", share["logits"], logits)

        def evaluation(deadline: Deadline) -> None:
            for name in ("seed", "gpt2-xl"):
                box = Deadline(max(deadline.left(), 0) / (2 if name == "seed" else 1))
                report["eval"].append(eval_rate(shapes[name], device=device, tokens=20_000 if args.smoke else 2_000_000,
                                                deadline=box))

        section(report, "eval", share["eval"], evaluation)

        def generation(deadline: Deadline) -> None:
            for weights in (torch.float32, torch.bfloat16):  # fp32: what the generate stage loads; bf16: possible
                for batch in (1, 32):
                    if deadline.over():
                        return
                    report["generate"].append(generate_rate(shapes["gpt2-124m"], device=device, batch=batch,
                                                            new_tokens=8 if args.smoke else 128, weights=weights))

        section(report, "generate", share["generate"], generation)
        report["forecasts"] = section(report, "forecast", 1.0, lambda d: forecasts(report["train"], report["eval"])) or {}
    report["seconds"]["total"] = time.perf_counter() - total_start
    for row in report["train"]:
        row["losses"] = [round(x, 5) for x in row["losses"]]
    text = table(report)
    print(text)
    (args.out / "gpu_check.md").write_text(text + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    failed = [k for k, c in report["checks"].items() if not (c and c["passed"])]
    return 1 if failed or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
