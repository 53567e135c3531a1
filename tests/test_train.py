from __future__ import annotations

import math

import pytest
import torch

from gptlab.checkpoint import load_model
from gptlab.config import replace
from gptlab.train import learning_rate, train


def test_schedule_warms_up_then_decays_to_min_lr(tiny_cfg):
    for schedule in ("cosine", "linear"):
        t = replace(tiny_cfg, train={"lr_schedule": schedule, "warmup_iters": 10, "max_iters": 110}).train
        lrs = [learning_rate(s, t) for s in range(120)]
        assert lrs[0] == pytest.approx(t.lr / 11)
        assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # warmup increases
        assert lrs[10] == pytest.approx(t.lr)
        assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111], strict=True))  # then decays
        assert lrs[110] == pytest.approx(t.min_lr) and lrs[119] == t.min_lr
        mid = t.min_lr + 0.5 * (t.lr - t.min_lr)
        assert lrs[60] == pytest.approx(mid)  # both schedules pass the midpoint halfway through decay
    cosine = replace(tiny_cfg, train={"lr_schedule": "cosine", "warmup_iters": 10, "max_iters": 110}).train
    linear = replace(tiny_cfg, train={"lr_schedule": "linear", "warmup_iters": 10, "max_iters": 110}).train
    assert learning_rate(35, cosine) > learning_rate(35, linear)  # cosine stays high longer


def test_training_learns_and_writes_a_checkpoint(tiny_cfg, tokens_dir, tmp_path):
    result = train(tiny_cfg, tokens_dir=tokens_dir, out_dir=tmp_path / "ckpt")
    losses = [h["val/loss"] for h in result.history if "val/loss" in h]
    # From ln(50304) ≈ 10.8 at init (uniform) to far below within the first eval interval, and still falling.
    assert len(losses) == 4 and losses[0] < 8.0 and losses[-1] < losses[0]
    assert result.tokens_seen == 80 * 4 * 2 * 32
    model, ckpt = load_model(tmp_path / "ckpt")
    assert ckpt.step == 80 and math.isclose(ckpt.meta["val_loss"], losses[-1])
    assert (tmp_path / "ckpt" / "optimizer.pt").is_file()


def test_identical_runs_give_identical_weights(tiny_cfg, tokens_dir, tmp_path):
    cfg = replace(tiny_cfg, train={"max_iters": 6, "eval_interval": 3})
    a = train(cfg, tokens_dir=tokens_dir, out_dir=tmp_path / "a").checkpoint.meta["weights_sha256"]
    b = train(cfg, tokens_dir=tokens_dir, out_dir=tmp_path / "b").checkpoint.meta["weights_sha256"]
    assert a == b


def test_gradient_accumulation_matches_one_big_batch(tiny_cfg, tokens_dir, tmp_path):
    """4 sequences × 2 micro-batches take the same step as 8 sequences at once (fp32, same windows)."""
    from gptlab.data.loader import RandomWindows, TokenSet
    from gptlab.model import GPT

    tokens = TokenSet.open(tokens_dir)
    windows = RandomWindows(tokens.paths("train"), block_size=32, batch_size=8, seed=1)
    x, y = (torch.from_numpy(a.astype("int64")) for a in windows.next_numpy())
    grads = []
    for chunks in (1, 2):
        torch.manual_seed(0)
        model = GPT(tiny_cfg.model)
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
            (model(xc, yc).loss / chunks).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_block_size_larger_than_the_data_is_refused_before_training(tiny_cfg, tokens_dir, tmp_path):
    cfg = replace(tiny_cfg, model={"block_size": 100_000})
    with pytest.raises(ValueError, match="the val split has .* tokens, not more than model.block_size=100000"):
        train(cfg, tokens_dir=tokens_dir, out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
