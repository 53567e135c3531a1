"""Training throughput of the seed model on this machine: gptlab's loop against a plain nanoGPT-style loop,
side by side in one process, on the same tokens, with the same micro-batches.

Both train the seed architecture (6 layers, 6 heads, 384 wide, context 512, GPT-2's padded vocabulary) on the
demo corpus (CPython's bundled docs, tokenized here: no network) with ``--micro-batch`` × 512-token
micro-batches and 2 micro-batches per optimizer step.

- **reference**: what nanoGPT's train.py does on this device, written out here: ``torch.compile``d model,
  float32 on CPU (its autocast is off for CPU) / bf16 autocast on CUDA, full logits and cross-entropy,
  AdamW (fused on CUDA), batches cut from a memmap with ``torch.randint`` offsets.
- **gptlab**: ``gptlab.core.train.train`` with the seed config's device-dependent defaults (``train.dtype: auto``,
  ``train.compile: auto``), logging every step to a real MLflow tracker (sqlite in a temp dir); where
  ``auto`` does not compile (CPU), once more with ``train.compile: true``.

The two alternate in rounds, so a change in machine load hits both. Throughput is measured per optimizer
step after ``--warmup`` steps (compilation happens there); the table reports the median.

    python benchmarks/bench_train.py [--steps 6] [--warmup 2] [--rounds 2] [--micro-batch 8] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptlab.core.hardware import cpu_has_native_bf16, resolve_device, resolve_dtype
from gptlab.core.model import GPT
from gptlab.core.train import train, use_compile
from gptlab.data.loader import TokenSet
from gptlab.data.shards import read_shard
from gptlab.pipeline.commandline import prepare_environment
from gptlab.pipeline.config import load_config
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages import download, tokenize
from gptlab.settings import replace
from gptlab.tracking.runs import training_run
from gptlab.tracking.store import Store
from gptlab.tracking.tracker import Tracker

REPO = Path(__file__).resolve().parents[1]
GRAD_ACCUM = 2


def seed_config(root: Path, micro_batch: int, steps: int):
    """The seed experiment (params.yaml) on the demo corpus, sized for a benchmark."""
    cfg = load_config(REPO / "params.yaml", ["data.source=demo", "data.expected_docs=null", "tokenize.val_fraction=0.1"])
    return replace(cfg, train={"batch_size": micro_batch, "grad_accum": GRAD_ACCUM, "max_iters": steps,
                               "warmup_iters": 1, "log_interval": 1, "eval_interval": steps, "eval_iters": 1,
                               "checkpoint_interval": 0})


def reference_steps(cfg, tokens: TokenSet, device: torch.device, steps: int, warmup: int, model=None,
                    compile_model: bool = True):
    """nanoGPT's training loop, plainly: returns (seconds per step after warmup, the compiled model)."""
    t, block = cfg.train, cfg.model.block_size
    data = read_shard(tokens.paths("train")[0])

    def get_batch():
        ix = torch.randint(len(data) - block, (t.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    if model is None:
        torch.manual_seed(1337)
        raw = GPT(cfg.model).to(device)
        # nanoGPT's configure_optimizers: decay on ≥2-D weights, the fused kernel on CUDA only.
        params = [p for p in raw.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2),
                                      **({"fused": True} if device.type == "cuda" else {}))
        model = (torch.compile(raw) if compile_model else raw, raw, optimizer)
    compiled, raw, optimizer = model
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    times = []
    x, y = get_batch()
    for step in range(warmup + steps):
        start = time.perf_counter()
        for _ in range(GRAD_ACCUM):
            with ctx:
                loss = compiled(x, y).loss / GRAD_ACCUM
            x, y = get_batch()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log_interval; one sync per step here
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times, model


def gptlab_steps(cfg, root: Path, steps: int, warmup: int) -> tuple[list[float], float, float]:
    """``gptlab.core.train.train`` with an MLflow tracker: (seconds per step after warmup, tracking s, loop s)."""
    cfg = replace(cfg, train={"max_iters": warmup + steps, "eval_interval": warmup + steps})
    with training_run(Store.at(root), cfg) as tracker:
        result = train(cfg, tokens=TokenSet.open(root / "data" / "tokens"), out_dir=root / "models" / "bench",
                       tracker=tracker)
    per_step = [cfg.tokens_per_step / h["tokens_per_sec"] for h in result.history if "tokens_per_sec" in h]
    return per_step[warmup:], result.tracking_seconds, result.loop_seconds


def flush_cost(root: Path, metrics: int = 200, repeats: int = 5) -> float:
    """Seconds one MLflow flush of ``metrics`` buffered values takes on this store (median of ``repeats``)."""
    tracker = Tracker.start(Store.at(root), experiment="bench", tags={}, flush_seconds=1e9)
    costs = []
    for r in range(repeats):
        for i in range(metrics // 5):
            tracker.log_metrics({f"m{k}": float(i) for k in range(5)}, step=r * metrics + i)
        start = time.perf_counter()
        tracker.flush()
        costs.append(time.perf_counter() - start)
    return statistics.median(costs)


def main() -> None:
    prepare_environment(Path(__file__).resolve().parents[1])  # the seeded BPE, telemetry off: as under make
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per round and loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (torch.compile runs there)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two loops")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences of 512 tokens per micro-batch")
    parser.add_argument("--smoke", action="store_true",
                        help="check that the script runs (one tiny step each, nothing compiled): numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.rounds, args.micro_batch = 1, 0, 1, 1
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    with tempfile.TemporaryDirectory(prefix="gptlab-bench-") as tmp:
        root = Path(tmp)
        cfg = seed_config(root, args.micro_batch, args.warmup + args.steps)
        paths = Paths(root)
        download.run(cfg, paths)
        tokenize.run(cfg, paths)
        tokens = TokenSet.open(paths.tokens)
        device = resolve_device(cfg.train.device)
        dtype = resolve_dtype(cfg.train.dtype, device)
        load_before = os.getloadavg()
        ours = {"defaults": cfg}
        if not use_compile(cfg.train.compile, device) and not args.smoke:
            ours["compile"] = replace(cfg, train={"compile": True})
        ref_times: list[float] = []
        our_times: dict[str, list[float]] = {name: [] for name in ours}
        tracking_s = loop_s = 0.0
        model = None
        for round_ in range(args.rounds):
            times, model = reference_steps(cfg, tokens, device, args.steps, args.warmup if round_ == 0 else 0, model,
                                           compile_model=not args.smoke)
            ref_times += times
            for name, variant in ours.items():
                times, tracked, looped = gptlab_steps(variant, root, args.steps, args.warmup)
                our_times[name] += times
                tracking_s, loop_s = tracking_s + tracked, loop_s + looped
            print(f"round {round_ + 1}: reference {statistics.median(ref_times):.2f} s/step, gptlab "
                  + ", ".join(f"{n} {statistics.median(t):.2f} s/step" for n, t in our_times.items())
                  + f" (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        flush_s = flush_cost(root)
        load_after = os.getloadavg()

    tokens_per_step = cfg.tokens_per_step
    ref = statistics.median(ref_times)
    ref_precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    our_precision = "bf16 autocast" if dtype == torch.bfloat16 else "fp32"
    rows = [("reference (nanoGPT-style)", ref_precision, "no" if args.smoke else "yes", tokens_per_step / ref, ref, 1.0)]
    for name, variant in ours.items():
        step = statistics.median(our_times[name])
        label = "gptlab.core.train (seed defaults)" if name == "defaults" else "gptlab.core.train, compile=true"
        compiled = "yes" if use_compile(variant.train.compile, device) else "no"
        rows.append((label, our_precision, compiled, tokens_per_step / step, step, ref / step))
    cpu = platform.processor() or platform.machine()
    print(f"\nTraining throughput, seed model (6/6/384, context 512, vocab 50304), {args.micro_batch} × 512 tokens × "
          f"{GRAD_ACCUM} micro-batches per step; median of {len(ref_times)} steps per loop; AdamW fused in "
          f"gptlab, multi-tensor in the reference (nanoGPT fuses on CUDA only)")
    print(f"device: {device} ({os.cpu_count()} CPU threads, {cpu}, native bf16: {cpu_has_native_bf16()}); "
          f"torch {torch.__version__}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| loop | precision | torch.compile | tokens/s | s/step | vs reference |")
    print("|---|---|---|---:|---:|---:|")
    for name, precision, compiled, tps, step, speedup in rows:
        print(f"| {name} | {precision} | {compiled} | {tps:,.0f} | {step:.2f} | {speedup:.2f}× |")
    print(f"\nMLflow logging inside gptlab's loop (every step logged, sqlite): {tracking_s:.3f} s of {loop_s:.1f} s "
          f"= {100 * tracking_s / loop_s:.2f}% of the loop (a call appends to the run's outbox; a background thread "
          f"delivers: one delivery of 200 buffered values takes {1000 * flush_s:.1f} ms, off the loop).")


if __name__ == "__main__":
    main()
