"""What every benchmark measures, pinned, and the line that says what it ran.

A benchmark must not measure whatever the workspace happens to hold: `make demo` (`dvc exp run -S profile=demo`)
leaves params.yaml on ``profile: demo``, and a benchmark that read it as is would time the 2 × 128 demo model
under a "seed model" header. :func:`pinned_config` therefore always names the profile (the seed experiment unless
``--profile`` says otherwise), and :func:`describe` reads the shape, dtype, device, threads and load from the
objects that ran, never from a header string.

:func:`describe` imports only torch and the standard library (``benchmarks/gpu_check.py`` runs on a bare image);
:func:`pinned_config` reads params.yaml through :mod:`gptlab.pipeline.config`.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROFILE = "seed"


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"profiles/<PROFILE>.yaml to measure (default: {DEFAULT_PROFILE}, whatever params.yaml's "
                             "`profile:` says)")


def pinned_config(profile: str = DEFAULT_PROFILE, overrides: Sequence[str] = (), *,
                  params: str | Path = REPO / "params.yaml") -> Any:
    """``params`` on ``profiles/<profile>.yaml``, then ``overrides``: the workspace's ``profile:`` is ignored."""
    from gptlab.pipeline.config import load_config

    return load_config(params, [f"profile={profile}", *overrides])


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def device_name(device: torch.device) -> str:
    """The GPU's name as CUDA reports it, or the CPU's model name (Linux), processor or machine."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def shape(model: torch.nn.Module) -> str:
    """``6/6/384, context 512, vocab 50304, 29.9M params`` from the model's own config (a GPT)."""
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return f"{c.n_layer}/{c.n_head}/{c.n_embd}, context {c.block_size}, vocab {c.vocab_size}, {n / 1e6:.1f}M params"


def describe(model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, compiled: bool | None = None,
             profile: str | None = None) -> str:
    """One line: what ran (shape, weights' and autocast dtype, device, threads, torch) and the machine's load."""
    weights = str(next(model.parameters()).dtype).removeprefix("torch.")
    load = load_average()
    parts = [
        f"model {shape(model)}" + (f" (profile {profile})" if profile else ""),
        f"{weights} weights, {'autocast ' + str(dtype).removeprefix('torch.') if dtype != torch.float32 else 'fp32'}"
        + ("" if compiled is None else (", torch.compile" if compiled else ", eager")),
        f"{device} ({device_name(device)})",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads of {os.cpu_count()} cpus",
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
    ]
    return "; ".join(parts)
