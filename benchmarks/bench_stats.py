"""What the intervals cost on OpenWebText's val split, against the evaluation forward they sit beside.

The evaluate stage keeps per-(window, document) losses and bootstraps over documents (:mod:`gptlab.core.stats`);
both must stay small next to scoring the ~4.4M val tokens. This prints one table, all measured in this run:

    python benchmarks/bench_stats.py                    # 4.4M tokens in 4,007 documents (OWT val), seed model
    python benchmarks/bench_stats.py --smoke            # seconds: 50K tokens, 40 documents, tiny reference

Per-token losses and document lengths are synthetic (seeded; lengths drawn like OWT's, ~1,100 tokens a
document): the cost depends on the counts, not the values. The reference is the evaluation forward of the seed
model at its context on this machine, timed on ``--forward-batches`` batches and scaled to the split's tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from gptlab.core.evaluate import WindowScores, perplexity, pieces
from gptlab.core.hardware import resolve_device, resolve_dtype
from gptlab.core.model import GPT
from gptlab.data.tokenizer import EOT
from gptlab.pipeline.config import load_config
from gptlab.pipeline.intervals import compare, val_metrics

REPO = Path(__file__).resolve().parents[1]


def synthetic_split(tokens: int, documents: int, seed: int = 0) -> np.ndarray:
    """``tokens`` + 1 token ids with ``documents`` EOT-terminated documents of log-normally spread lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=0.0, sigma=0.9, size=documents)
    lengths = np.maximum(2, np.round(lengths / lengths.sum() * (tokens + 1))).astype(np.int64)
    ids = rng.integers(0, EOT, size=int(lengths.sum()), dtype=np.int64)
    ids[np.cumsum(lengths) - 1] = EOT
    return ids[: tokens + 1].astype(np.uint16)


def timed(f, *args, **kw):
    start = time.perf_counter()
    out = f(*args, **kw)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4_400_000, help="val tokens (default: 4.4M, OWT's val split)")
    parser.add_argument("--documents", type=int, default=4007, help="val documents (default: OWT's 4,007)")
    parser.add_argument("--forward-batches", type=int, default=2, help="eval batches timed for the reference")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run: small split, tiny reference model")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.documents, args.forward_batches = 50_000, 40, 1

    cfg = load_config(REPO / "params.yaml", ["profile=seed"])
    model_cfg = cfg.model if not args.smoke else dataclasses.replace(cfg.model, n_layer=1, n_head=2, n_embd=32,
                                                                     block_size=64)
    context, batch = model_cfg.block_size, cfg.eval.batch_size if not args.smoke else 8
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    tokens = synthetic_split(args.tokens, args.documents)
    rng = np.random.default_rng(1)
    logp = -rng.gamma(3.0, 1.0, size=len(tokens) - 1).astype(np.float32)  # per-token log-probabilities
    token_bytes = rng.integers(1, 8, size=EOT + 1)

    scores, t_pieces = timed(pieces, tokens, logp, context=context, eot=EOT, token_bytes=token_bytes, n=len(tokens))
    metrics, t_intervals = timed(val_metrics, scores)
    other = WindowScores(scores.window, scores.doc, scores.tokens, scores.nats * 0.99, scores.bytes, context)
    diff, t_paired = timed(compare, scores, other)

    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    sample = batch * context * args.forward_batches
    perplexity(model, tokens, context=context, batch_size=batch, device=device, dtype=dtype,
               max_tokens=batch * context)  # warm-up
    ref, t_ref = timed(perplexity, model, tokens, context=context, batch_size=batch, device=device, dtype=dtype,
                       max_tokens=sample)
    t_forward = t_ref / ref.tokens * (len(tokens) - 1)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"val split: {len(tokens) - 1:,} tokens, {metrics['documents']:,} documents, {len(scores.doc):,} "
          f"(window, document) pieces at context {context}; bootstrap {metrics['bootstrap_samples']:,} resamples; "
          f"reference model {model_cfg.n_layer}/{model_cfg.n_head}/{model_cfg.n_embd} "
          f"({model.num_params() / 1e6:.1f}M params) on {device} ({name}), {str(dtype).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} threads, numpy {np.__version__}, load average {load[0]:.1f}")
    print()
    print("| step                                                 | seconds | vs eval forward |")
    print("|------------------------------------------------------|---------|-----------------|")
    rows = [("per-token losses → (window, document) pieces", t_pieces),
            ("val loss + ppl + bits/byte intervals (bootstrap)", t_intervals),
            ("paired difference + p-value (1 bootstrap)", t_paired),
            (f"eval forward, whole split (scaled from {ref.tokens:,} tokens)", t_forward)]
    for label, seconds in rows:
        print(f"| {label:<52} | {seconds:>7.2f} | {seconds / t_forward:>14.1%} |")
    print()
    print(f"val ppl {metrics['ppl']:.2f} [{metrics['ppl_lo']:.2f}, {metrics['ppl_hi']:.2f}]; paired Δ loss "
          f"{diff.delta:+.4f} [{diff.lo:+.4f}, {diff.hi:+.4f}], p(two-sided) {diff.p_two_sided:.2g}")


if __name__ == "__main__":
    main()
