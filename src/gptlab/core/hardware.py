"""What the device can do: peak FLOP/s for MFU, peak memory bandwidth, and whether a CPU has native bfloat16
arithmetic.

MFU (model FLOPs utilisation, PaLM paper §B) is the model's training FLOPs per second divided by the
hardware's peak. The peak is the device's dense bf16 tensor throughput, the figure training runs in; a GPU
missing from the table (or a CPU) gets no MFU unless ``train.peak_flops`` names its peak.
"""

from __future__ import annotations

import contextlib
import platform
import re
from pathlib import Path

import torch

from gptlab.errors import GptlabError

# Dense (no 2:4 sparsity) bf16 tensor-core FLOP/s per GPU, from the vendors' datasheets and architecture
# whitepapers. Matched as whole words in torch.cuda.get_device_name() ("NVIDIA H100 80GB HBM3"), first match
# wins, so the more specific names come first ("H100 NVL" before "H100").
GPU_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),  # Grace Hopper: H100 SXM-class GPU
    ("H200 NVL", 835e12),
    ("H200", 989e12),  # H200 SXM
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("B200", 2250e12),
    ("B100", 1750e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10", 125e12),  # not the A10G, whose clocks differ (set train.peak_flops)
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 6000 Ada", 364e12),
    ("RTX 4090", 165e12),  # GeForce: bf16 with fp32 accumulate (Ada whitepaper)
    ("RTX 3090", 35.6e12),  # GeForce Ampere: fp32 accumulate runs at half rate (GA102 whitepaper)
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
)


# Peak memory bandwidth in bytes/s per GPU (HBM/GDDR, from the same datasheets), for the bandwidth utilisation
# of token-by-token generation (weights + KV cache read per token / time / peak). Matched as GPU_PEAK_BF16.
GPU_PEAK_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("GH200", 4.0e12),  # 96 GB HBM3 (the 144 GB HBM3e version: 4.9 TB/s)
    ("H200 NVL", 4.8e12),
    ("H200", 4.8e12),  # H200 SXM, 141 GB HBM3e
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # H100 SXM5 80 GB HBM3
    ("H800", 3.35e12),
    ("B200", 8.0e12),
    ("B100", 8.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # the 40 GB versions
    ("A800", 2.039e12),
    ("A10", 600e9),
    ("L40S", 864e9),
    ("L40", 864e9),
    ("L4", 300e9),
    ("RTX 6000 Ada", 960e9),
    ("RTX 4090", 1008e9),
    ("RTX 3090", 936e9),
    ("MI300X", 5.3e12),
    ("MI250X", 3.2e12),
)


def _lookup(table: tuple[tuple[str, float], ...], name: str) -> float | None:
    for pattern, value in table:
        if re.search(rf"\b{re.escape(pattern)}\b", name):
            return value
    return None


def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``name`` (as CUDA reports it), or None if it is not in the table."""
    return _lookup(GPU_PEAK_BF16, name)


def gpu_peak_bandwidth(name: str) -> float | None:
    """The peak memory bandwidth (bytes/s) of the GPU called ``name``, or None if it is not in the table."""
    return _lookup(GPU_PEAK_BANDWIDTH, name)


def peak_bandwidth(device: torch.device, override: float | None = None) -> float | None:
    """Peak memory bandwidth (bytes/s) of one ``device``: ``override``, else the table's entry for a GPU, else None."""
    if override is not None:
        return override
    if device.type == "cuda":
        return gpu_peak_bandwidth(torch.cuda.get_device_name(device))
    return None


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """Peak FLOP/s of one ``device``: ``override`` when given, else the table's entry for a GPU, else None."""
    if override is not None:
        return override
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device))
    return None


def mfu(flops_per_token: float, tokens_per_second: float, peak: float | None, *, devices: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all ``devices``; None without a peak."""
    if peak is None or peak <= 0:
        return None
    return flops_per_token * tokens_per_second / (peak * devices)


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, Arm BF16).

    Without these, oneDNN emulates bf16 with conversions and autocast makes training slower, not faster.
    """
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    flags = _cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_device(name: str) -> torch.device:
    """``train.device`` → a torch device (``auto``: CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError(f"device {name!r} is set but CUDA is not available here: use `-S train.device=cpu` "
                          "(`-S eval.device=cpu` for evaluation)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``train.dtype`` → the autocast dtype. ``auto`` is bf16 where the device computes in bf16 natively."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype`` (weights stay float32); nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
