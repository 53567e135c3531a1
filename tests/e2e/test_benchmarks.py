"""The benchmarks still run against the code they measure (`make bench` runs them in full; nothing is timed here).

Each runs as a user would start it, at the smallest size its options allow, and must print its table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow


def bench(name: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done.stdout


def test_bench_train_compares_gptlab_with_the_reference_loop(bpe_cache, tmp_path):
    out = bench("bench_train.py", "--smoke", cwd=tmp_path)
    assert "| reference (nanoGPT-style) | fp32 | no |" in out and "| gptlab.core.train (seed defaults" in out
    # What ran, read from the models: the seed shape (the test checkout's params.yaml may say anything).
    assert "reference ran: model 6/6/384, context 512, vocab 50304" in out
    assert "gptlab ran:    model 6/6/384, context 512, vocab 50304" in out


def test_bench_eval_compares_the_eval_forward_with_a_training_step(tmp_path):
    out = bench("bench_eval.py", "--tokens", "2048", "--batch-size", "2", "--train-batch", "1", "--train-steps", "2",
                cwd=tmp_path)
    assert "| train step (forward+backward+AdamW)" in out and "| eval forward (gptlab.core.evaluate)" in out
    assert "profile seed: model 6/6/384, context 512, vocab 50304" in out and " threads of " in out


def test_bench_tokenize_compares_gptlab_with_raw_tiktoken(bpe_cache, tmp_path):
    import pydoc_data.topics

    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(pydoc_data.topics.topics.values()), encoding="utf-8")
    out = bench("bench_tokenize.py", str(text), "--sizes", "1", "2", "--skip-nanogpt", "--repeat", "1",
                "--workers", "1", cwd=tmp_path)
    assert "| gptlab tokenize |" in out and "| raw encode_ordinary_batch |" in out


def test_bench_tracking_measures_log_calls_with_the_server_up_and_down(tmp_path):
    out = bench("bench_tracking.py", cwd=tmp_path)
    assert "| server up (sqlite)" in out and "| server down (closed port)" in out and "none lost" in out


def test_bench_stats_compares_the_bootstrap_with_the_eval_forward(tmp_path):
    out = bench("bench_stats.py", "--smoke", cwd=tmp_path)
    assert "| val loss + ppl + bits/byte intervals (bootstrap)" in out and "| eval forward, whole split" in out


def test_profile_train_compares_the_compiled_variants_by_op(tmp_path):
    out = bench("profile_train.py", "--smoke", "--ops", "3", cwd=tmp_path)
    for variant in ("| eager |", "| compile(model) |", "| compile(forward + loss) |"):
        assert variant in out
    assert "model 1/2/32, context 32, vocab 50304" in out and "top 3 ops by self CPU time" in out
