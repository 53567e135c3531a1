"""Training throughput of the seed model on this machine: gptlab's loop against a plain nanoGPT-style loop,
side by side in one process, on the same tokens, with the same micro-batches.

Both train the model of ``--profile`` (default: the seed experiment, 6 layers, 6 heads, 384 wide, context 512,
GPT-2's padded vocabulary; the workspace's ``profile:`` is ignored, see ``pinned.py``) on the demo corpus (CPython's
bundled docs, tokenized here: no network) with ``--micro-batch`` × context-token micro-batches and 2 micro-batches
per optimizer step. The table's header is read from the models and configs that ran.

- **reference**: what nanoGPT's train.py does on this device, written out here: ``torch.compile``d model,
  float32 on CPU (its autocast is off for CPU) / bf16 autocast on CUDA, full logits and cross-entropy,
  AdamW (fused on CUDA), batches cut from a memmap with ``torch.randint`` offsets.
- **gptlab**: ``gptlab.core.train.train`` with the seed config's device-dependent defaults (``train.dtype: auto``,
  ``train.compile: auto``), logging every step to a real MLflow tracker (sqlite in a temp dir); where
  ``auto`` does not compile (CPU), once more with ``train.compile: true``.

The two alternate in rounds, so a change in machine load hits both. Throughput is measured per optimizer
step after ``--warmup`` steps (compilation happens there); the table reports the median.

    python benchmarks/bench_train.py [--profile seed] [--steps 6] [--warmup 2] [--rounds 2] [--micro-batch 8] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptlab.core.hardware import cpu_has_native_bf16, peak_flops, resolve_device
from gptlab.core.model import GPT
from gptlab.core.train import TrainResult, run_flops, train, use_compile
from gptlab.data.loader import TokenSet
from gptlab.data.shards import read_shard
from gptlab.pipeline.commandline import prepare_environment
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages import download, tokenize
from gptlab.settings import replace
from gptlab.tracking.runs import training_run
from gptlab.tracking.store import Store
from gptlab.tracking.tracker import Tracker
from pinned import DEFAULT_PROFILE, REPO, add_profile_argument, describe, load_average, pinned_config

GRAD_ACCUM = 2


def seed_config(root: Path, micro_batch: int, steps: int, profile: str = DEFAULT_PROFILE):
    """``profile``'s experiment (the seed's by default, whatever params.yaml's ``profile:`` says) on the demo
    corpus, sized for a benchmark."""
    cfg = pinned_config(profile, ["data.source=demo", "data.expected_docs=null", "tokenize.val_fraction=0.1"],
                        params=REPO / "params.yaml")
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


def gptlab_steps(cfg, root: Path, steps: int, warmup: int) -> tuple[list[float], TrainResult, float]:
    """``gptlab.core.train.train`` with an MLflow tracker: (seconds per step after warmup, its result, seconds
    the tracker took)."""
    cfg = replace(cfg, train={"max_iters": warmup + steps, "eval_interval": warmup + steps})
    with training_run(Store.at(root), cfg) as tracker:
        result = train(cfg, tokens=TokenSet.open(root / "data" / "tokens"), out_dir=root / "models" / "bench",
                       tracker=tracker)
    per_step = [cfg.tokens_per_step / h["tokens_per_sec"] for h in result.history if "tokens_per_sec" in h]
    return per_step[warmup:], result, result.tracking_seconds


def resolved_compile(cfg, device: torch.device) -> bool:
    """What ``train.compile`` resolves to for the whole run ``cfg`` describes (not the benchmark's few steps)."""
    return use_compile(cfg.train.compile, device, run_flops=run_flops(cfg) / cfg.train.nproc_per_node,
                       peak=peak_flops(device, cfg.train.peak_flops))


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
    add_profile_argument(parser)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per round and loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (torch.compile runs there)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two loops")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences of model.block_size tokens per micro-batch")
    parser.add_argument("--smoke", action="store_true",
                        help="check that the script runs (one tiny step each, nothing compiled): numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.rounds, args.micro_batch = 1, 0, 1, 1
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    with tempfile.TemporaryDirectory(prefix="gptlab-bench-") as tmp:
        root = Path(tmp)
        full = pinned_config(args.profile, params=REPO / "params.yaml")  # the profile's own run, for `auto`
        cfg = seed_config(root, args.micro_batch, args.warmup + args.steps, args.profile)
        paths = Paths(root)
        download.run(cfg, paths)
        tokenize.run(cfg, paths)
        tokens = TokenSet.open(paths.tokens)
        device = resolve_device(cfg.train.device)
        auto = resolved_compile(full, device)
        # The benchmark's few steps would never repay a compile: run what `train.compile` resolves to for the
        # profile's whole run (the seed's 20,000 steps), and, where that is eager, compiled as well.
        ours = {"defaults": replace(cfg, train={"compile": auto and not args.smoke})}
        if not auto and not args.smoke:
            ours["compile"] = replace(cfg, train={"compile": True})
        load_before = load_average()
        ref_times: list[float] = []
        our_times: dict[str, list[float]] = {name: [] for name in ours}
        results: dict[str, TrainResult] = {}
        tracking_s = loop_s = 0.0
        model = None
        for round_ in range(args.rounds):
            times, model = reference_steps(cfg, tokens, device, args.steps, args.warmup if round_ == 0 else 0, model,
                                           compile_model=not args.smoke)
            ref_times += times
            for name, variant in ours.items():
                times, results[name], tracked = gptlab_steps(variant, root, args.steps, args.warmup)
                our_times[name] += times
                tracking_s, loop_s = tracking_s + tracked, loop_s + results[name].loop_seconds
            print(f"round {round_ + 1}: reference {statistics.median(ref_times):.2f} s/step, gptlab "
                  + ", ".join(f"{n} {statistics.median(t):.2f} s/step" for n, t in our_times.items())
                  + f" (load {load_average()[0]:.1f})", file=sys.stderr)
        flush_s = flush_cost(root)
        load_after = load_average()

    _, raw, _ = model
    tokens_per_step = cfg.tokens_per_step
    ref = statistics.median(ref_times)
    ref_precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    rows = [("reference (nanoGPT-style)", ref_precision, "no" if args.smoke else "yes", tokens_per_step / ref, ref, 1.0)]
    for name in ours:
        step, result = statistics.median(our_times[name]), results[name]
        label = (f"gptlab.core.train ({args.profile} defaults: compile {cfg.train.compile} → "
                 f"{'true' if auto else 'false'})" if name == "defaults" else "gptlab.core.train, compile=true")
        precision = "fp32" if result.dtype == "float32" else f"{result.dtype.replace('bfloat16', 'bf16')} autocast"
        rows.append((label, precision, "yes" if result.compiled else "no", tokens_per_step / step, step, ref / step))
    ran = results["defaults"].checkpoint.meta["config"]
    print(f"\nTraining throughput, profile {args.profile}: {cfg.train.batch_size} × {cfg.model.block_size} tokens × "
          f"{cfg.train.grad_accum} micro-batches = {tokens_per_step:,} tokens per step; median of {len(ref_times)} steps "
          f"per loop; AdamW fused in gptlab, multi-tensor in the reference (nanoGPT fuses on CUDA only)")
    print(f"reference ran: {describe(raw, device=device, dtype=torch.bfloat16 if device.type == 'cuda' else torch.float32)}")
    m = ran["model"]
    print(f"gptlab ran:    model {m['n_layer']}/{m['n_head']}/{m['n_embd']}, context {m['block_size']}, vocab "
          f"{m['vocab_size']}, {results['defaults'].params / 1e6:.1f}M params (its checkpoint's config); "
          f"native bf16: {cpu_has_native_bf16()}")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| loop | precision | torch.compile | tokens/s | s/step | vs reference |")
    print("|---|---|---|---:|---:|---:|")
    for name, precision, compiled, tps, step, speedup in rows:
        print(f"| {name} | {precision} | {compiled} | {tps:,.0f} | {step:.2f} | {speedup:.2f}× |")
    print(f"\nMLflow logging inside gptlab's loop (every step logged, sqlite): {tracking_s:.3f} s of {loop_s:.1f} s "
          f"= {100 * tracking_s / loop_s:.2f}% of the loop (a call appends to the run's outbox; a background thread "
          f"delivers: one delivery of 200 buffered values takes {1000 * flush_s:.1f} ms, off the loop).")
    print("Goals on the seed profile: compile=true ≥ 3.0×, the defaults (compile auto) ≥ 3.0× the reference."
          + (" --smoke: nothing compiled, one step each; the numbers mean nothing." if args.smoke else ""))


if __name__ == "__main__":
    main()
