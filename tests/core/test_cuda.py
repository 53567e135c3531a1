"""The CUDA path: bf16 autocast, torch.compile with inductor, fused AdamW, pinned copies, exact resume on a GPU.

Marked ``gpu`` and skipped where no CUDA device is present; benchmarks/gpu_check.py measures the same paths.
"""

from __future__ import annotations

import pytest
import torch

from gptlab.core.checkpoint import load_model
from gptlab.core.evaluate import target_logprobs
from gptlab.core.hardware import autocast, mfu, peak_flops
from gptlab.core.model import GPT
from gptlab.core.train import train
from gptlab.data.loader import TokenSet, to_device
from gptlab.settings import replace

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


@pytest.fixture
def cuda_cfg(tiny_cfg):
    return replace(tiny_cfg, train={"device": "cuda", "dtype": "bfloat16", "max_iters": 12, "eval_interval": 6,
                                    "log_interval": 1})


def test_bf16_logits_on_cuda_match_fp32_logits_on_cpu(tiny_cfg):
    torch.manual_seed(0)
    model = GPT(tiny_cfg.model).eval()
    x = torch.randint(0, 50257, (4, tiny_cfg.model.block_size))
    y = torch.randint(0, 50257, (4, tiny_cfg.model.block_size))
    with torch.no_grad():
        cpu, _ = target_logprobs(model(x).logits, y)
        with autocast(CUDA, torch.bfloat16):
            gpu, _ = target_logprobs(model.to(CUDA)(x.to(CUDA)).logits, y.to(CUDA))
    assert abs(float(cpu.mean()) - float(gpu.mean().cpu())) <= 0.02  # bf16: 8 mantissa bits
    assert float((cpu - gpu.cpu()).abs().max()) <= 0.25


def test_pinned_copies_arrive_intact():
    import numpy as np

    batch = np.arange(4 * 32, dtype=np.uint16).reshape(4, 32)
    on_gpu = to_device(batch, CUDA)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), torch.from_numpy(batch.astype(np.int64)))


def test_compiled_training_on_cuda_follows_eager_and_reports_mfu(cuda_cfg, tokens_dir, tmp_path):
    eager = train(cuda_cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "eager")
    compiled = train(replace(cuda_cfg, train={"compile": True}), tokens=TokenSet.open(tokens_dir),
                     out_dir=tmp_path / "compiled")
    assert compiled.compiled and compiled.dtype == "bfloat16"
    a = [h["train/loss"] for h in eager.history if "train/loss" in h]
    b = [h["train/loss"] for h in compiled.history if "train/loss" in h]
    assert b == pytest.approx(a, rel=0.02)
    model, _ = load_model(tmp_path / "compiled")  # the plain module's weights
    assert isinstance(model, GPT)
    if peak_flops(CUDA) is not None:
        assert compiled.mfu is not None and 0 < compiled.mfu < 1
    assert mfu(1.0, 1.0, None) is None


def test_a_killed_cuda_run_resumes_onto_the_same_trajectory(cuda_cfg, tokens_dir, tmp_path):
    from gptlab.core.train import find_resume

    from .test_train import _CrashAt

    cfg = replace(cuda_cfg, train={"checkpoint_interval": 6})
    straight = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "a", checkpoint_dir=tmp_path / "ca")
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "cb",
              tracker=_CrashAt(9))
    resume = find_resume(tmp_path / "cb", "auto")
    resumed = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "cb",
                    resume=resume)
    assert resumed.resumed_from == 6
    a = [h["train/loss"] for h in straight.history if "train/loss" in h]
    b = [h["train/loss"] for h in resumed.history if "train/loss" in h]
    assert b == pytest.approx(a, abs=1e-3)  # only non-deterministic reductions may differ, by rounding
