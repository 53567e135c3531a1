"""Evaluation throughput of the seed model against a training step, measured in the same run.

The evaluate stage scores the whole val split (OpenWebText's is ~4.4M tokens) with
:func:`gptlab.core.evaluate.perplexity`: no autograd, larger batches, bf16 autocast on CUDA. Per token it should run
several times faster than a training step (forward + backward + AdamW). This prints one table:

    python benchmarks/bench_eval.py                     # the seed model, 4.4M synthetic val tokens
    python benchmarks/bench_eval.py --tokens 131072     # a quick run (CPU)
    python benchmarks/bench_eval.py --profile gpt2-124m # another profile's model (never params.yaml's `profile:`)

Token values do not change the cost of a forward, so the val shard is synthetic (seeded random ids) unless
``--text FILE`` is given (tokenized with GPT-2's BPE and repeated to ``--tokens``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gptlab.core.evaluate import perplexity
from gptlab.core.hardware import autocast, resolve_device, resolve_dtype
from gptlab.core.model import GPT
from gptlab.pipeline.commandline import prepare_environment
from pinned import REPO, add_profile_argument, describe, pinned_config


def val_shard(n: int, *, text: Path | None, vocab: int) -> np.ndarray:
    if text is None:
        return np.random.default_rng(0).integers(0, vocab, size=n + 1, dtype=np.int64).astype(np.uint16)
    from gptlab.data.tokenizer import get_encoding

    ids = np.array(get_encoding("gpt2").encode_ordinary(text.read_text()), dtype=np.uint16)
    return np.resize(ids, n + 1)  # repeated to length


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step_rate(model: GPT, *, batch: int, context: int, steps: int, device: torch.device,
                    dtype: torch.dtype) -> tuple[float, float]:
    """Tokens/s and seconds per step of forward + backward + AdamW step (what train.py does per micro-batch)."""
    model.train()
    opt = model.configure_optimizer(lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(device)
    y = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(device)
    times = []
    for step in range(steps + 1):  # the first step warms up allocators and kernels
        sync(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            loss = model(x, y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step:
            times.append(time.perf_counter() - start)
    per_step = float(np.median(times))
    return batch * context / per_step, per_step


def main() -> None:
    prepare_environment(REPO)  # the seeded BPE, telemetry off: as under make
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_profile_argument(parser)
    parser.add_argument("--tokens", type=int, default=4_400_000, help="val tokens to score (default: 4.4M)")
    parser.add_argument("--batch-size", type=int, default=None, help="eval windows per forward (default: eval.batch_size)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps (median reported)")
    parser.add_argument("--train-batch", type=int, default=None, help="training micro-batch (default: train.batch_size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--text", type=Path, default=None, help="real text to tokenize and repeat instead")
    args = parser.parse_args()

    cfg = pinned_config(args.profile)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    context, train_batch = cfg.model.block_size, args.train_batch or cfg.train.batch_size
    eval_batch = args.batch_size or cfg.eval.batch_size
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    tokens = val_shard(args.tokens, text=args.text, vocab=50257)

    train_rate, step_s = train_step_rate(model, batch=train_batch, context=context, steps=args.train_steps,
                                         device=device, dtype=dtype)
    perplexity(model, tokens, context=context, batch_size=eval_batch, device=device, dtype=dtype,
               max_tokens=eval_batch * context)  # warm-up
    sync(device)
    result = perplexity(model, tokens, context=context, batch_size=eval_batch, device=device, dtype=dtype)
    eval_rate = result.tokens / result.seconds

    print(f"profile {args.profile}: {describe(model, device=device, dtype=dtype, compiled=False)}")
    print()
    print("| measurement                          | batch      | tokens     | seconds | tokens/s  | vs train step |")
    print("|--------------------------------------|------------|------------|---------|-----------|---------------|")
    print(f"| train step (forward+backward+AdamW)  | {train_batch:>3} x {context:<4} | {train_batch * context:>10,} "
          f"| {step_s:>7.2f} | {train_rate:>9,.0f} |         1.00x |")
    print(f"| eval forward (gptlab.core.evaluate)  | {eval_batch:>3} x {context:<4} | {result.tokens:>10,} "
          f"| {result.seconds:>7.1f} | {eval_rate:>9,.0f} | {eval_rate / train_rate:>12.2f}x |")
    print()
    print(f"val loss {result.loss:.3f} (an untrained model on {'real' if args.text else 'random'} tokens: "
          f"~ln 50257 = 10.8 expected)")


if __name__ == "__main__":
    main()
