"""Device facts: the peak FLOP/s table behind MFU, and the CPU bf16 check behind `train.dtype: auto`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptlab.core.hardware import gpu_peak_flops, mfu, peak_flops, resolve_dtype


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # SXM
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100-PCIE-40GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA A10G", None),  # not the A10: unknown rather than wrong
        ("NVIDIA RTX A1000", None),
        ("Tesla V100-SXM2-16GB", None),  # no bf16 tensor cores
    ],
)
def test_gpu_peaks_are_looked_up_by_name(name, peak):
    assert gpu_peak_flops(name) == peak


def test_mfu_is_model_flops_over_the_peak_of_every_device():
    # 6 × 124M params ≈ 744 MFLOP per token at 600K tokens/s on 8 A100s: 446 TFLOP/s of 8 × 312.
    assert mfu(744e6, 600e3, 312e12, devices=8) == pytest.approx(744e6 * 600e3 / (8 * 312e12))
    assert mfu(744e6, 600e3, None) is None
    cpu = torch.device("cpu")
    assert peak_flops(cpu) is None and peak_flops(cpu, 2e12) == 2e12  # a CPU has MFU only with train.peak_flops


def test_auto_dtype_on_cpu_is_bf16_exactly_when_the_cpu_has_bf16_instructions():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize(
    ("name", "bandwidth"),
    [
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA A100-SXM4-80GB", 2.039e12),
        ("NVIDIA A100-PCIE-40GB", 1.555e12),
        ("NVIDIA L4", 300e9),
        ("NVIDIA A10G", None),
    ],
)
def test_gpu_bandwidths_are_looked_up_by_name(name, bandwidth):
    from gptlab.core.hardware import gpu_peak_bandwidth, peak_bandwidth

    assert gpu_peak_bandwidth(name) == bandwidth
    assert peak_bandwidth(torch.device("cpu")) is None and peak_bandwidth(torch.device("cpu"), 1e11) == 1e11
