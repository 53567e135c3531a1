"""Where a training step's time goes, by op: eager, the model compiled alone, and forward + loss compiled as one.

One optimizer step is what gptlab's loop does per step: ``grad_accum`` micro-batches of forward, fp32 upcast,
cross-entropy and backward under the loop's autocast, then the fused AdamW step. Three variants on the same
weights and batches:

- **eager**: ``TrainingLoss(model)`` uncompiled (``train.compile: false``);
- **compile(model)**: ``torch.compile(model)`` with the loss taken from its output (gptlab before issue 12: the
  (B, T, V) logits are a graph output, the upcast and cross-entropy partly outside the graph's fusion);
- **compile(forward + loss)**: ``torch.compile(TrainingLoss(model))``, what ``train.compile`` runs now.

The variants alternate per round, so a change in machine load hits all three; the table shows the median step
and, with ``--ops N``, torch.profiler's top N ops by self CPU time of one step each.

    python benchmarks/profile_train.py [--profile seed] [--micro-batch 8] [--steps 3] [--rounds 2] [--ops 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from gptlab.core.hardware import autocast, resolve_device, resolve_dtype
from gptlab.core.model import GPT
from gptlab.core.train import TrainingLoss
from pinned import add_profile_argument, describe, load_average, pinned_config


class ModelThenLoss(torch.nn.Module):
    """The loss read from a separately compiled model's output (the old compiled path)."""

    def __init__(self, compiled_model: torch.nn.Module, scale: float):
        super().__init__()
        self.compiled_model, self.scale = compiled_model, scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.compiled_model(x, y).loss / self.scale


def one_step(objective, optimizer, batches, ctx_args) -> None:
    for x, y in batches:
        with autocast(*ctx_args):
            loss = objective(x, y)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"] + optimizer.param_groups[1]["params"], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_profile_argument(parser)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ops", type=int, default=12, help="top ops to list per variant (0: no profile)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, one step, aot_eager: checks it runs")
    args = parser.parse_args()
    overrides = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32"] if args.smoke else []
    cfg = pinned_config(args.profile, overrides)
    backend = "aot_eager" if args.smoke else "inductor"
    if args.smoke:
        args.micro_batch, args.steps, args.rounds = 2, 1, 1
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    accum, block = cfg.train.grad_accum, cfg.model.block_size
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 50257, (args.micro_batch, block), generator=gen).to(device),
                torch.randint(0, 50257, (args.micro_batch, block), generator=gen).to(device)) for _ in range(accum)]
    torch.manual_seed(0)
    raw = GPT(cfg.model).to(device)
    optimizer = raw.configure_optimizer(lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type)
    variants = {
        "eager": TrainingLoss(raw, scale=accum),
        "compile(model)": ModelThenLoss(torch.compile(raw, backend=backend), accum),
        "compile(forward + loss)": torch.compile(TrainingLoss(raw, scale=accum), backend=backend),
    }
    ctx_args = (device, dtype)
    compile_s = {}
    for name, objective in variants.items():  # the first step compiles; it is not timed
        start = time.perf_counter()
        one_step(objective, optimizer, batches, ctx_args)
        compile_s[name] = time.perf_counter() - start
        print(f"{name}: first step {compile_s[name]:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    load_before = load_average()
    for _ in range(args.rounds):
        for name, objective in variants.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                one_step(objective, optimizer, batches, ctx_args)
                times[name].append(time.perf_counter() - start)
    load_after = load_average()
    tokens = args.micro_batch * block * accum
    print(f"\nOne training step by variant, profile {args.profile}: {args.micro_batch} × {block} tokens × {accum} "
          f"micro-batches; median of {args.rounds * args.steps} steps")
    print(describe(raw, device=device, dtype=dtype))
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| variant | first step s (compile) | s/step | tokens/s | vs eager |")
    print("|---|---:|---:|---:|---:|")
    eager = statistics.median(times["eager"])
    for name, ts in times.items():
        step = statistics.median(ts)
        print(f"| {name} | {compile_s[name]:.1f} | {step:.3f} | {tokens / step:,.0f} | {eager / step:.2f}× |")
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        for name, objective in variants.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                one_step(objective, optimizer, batches, ctx_args)
            print(f"\n{name}: top {args.ops} ops by self CPU time of one step")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops, max_name_column_width=48))


if __name__ == "__main__":
    main()
