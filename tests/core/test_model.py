from __future__ import annotations

import dataclasses

import pytest
import torch

from gptlab.core.model import GPT, KVCache
from gptlab.pipeline.config import load_config
from gptlab.settings import ModelConfig

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50304, dropout=0.0, bias=True)


def test_seed_model_has_about_30m_parameters(project):
    cfg = load_config(project / "params.yaml")
    with torch.device("meta"):
        model = GPT(cfg.model)
    assert 29e6 < model.num_params() < 31e6
    # GPT-2 module names, so Hugging Face weights map key by key.
    names = set(model.state_dict())
    for key in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
                "transformer.h.0.attn.c_proj.weight", "transformer.h.0.mlp.c_fc.weight", "transformer.ln_f.weight",
                "lm_head.weight"):
        assert key in names


def test_shapes_and_weight_tying():
    torch.manual_seed(0)
    model = GPT(SMALL)
    idx = torch.randint(0, 50257, (3, 16))
    out = model(idx, torch.randint(0, 50257, (3, 16)))
    assert out.logits.shape == (3, 16, 50304)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert model.lm_head.weight is model.transformer.wte.weight
    # At init the loss is near uniform over the vocabulary: ln(50304) ≈ 10.83.
    assert abs(out.loss.item() - 10.83) < 0.3


def test_targets_minus_one_are_ignored():
    torch.manual_seed(0)
    model = GPT(SMALL)
    idx = torch.randint(0, 50257, (2, 8))
    targets = idx.clone()
    targets[:, 4:] = -1
    full = model(idx).logits[:, :4].reshape(-1, 50304)
    expected = torch.nn.functional.cross_entropy(full, idx[:, :4].reshape(-1))
    torch.testing.assert_close(model(idx, targets).loss, expected)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="exceeds model.block_size=16"):
        GPT(SMALL)(torch.zeros(1, 17, dtype=torch.long))


def test_kv_cache_gives_the_same_logits_as_a_full_forward():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(0, 50257, (2, 12))
    full = model(idx).logits
    cache = KVCache(SMALL, 2, device=torch.device("cpu"), dtype=torch.float32)
    prefix = model(idx[:, :5], cache=cache).logits  # prefill
    middle = model(idx[:, 5:8], cache=cache).logits  # several tokens after a cached prefix
    steps = [model(idx[:, i : i + 1], cache=cache).logits for i in range(8, 12)]  # one at a time
    torch.testing.assert_close(torch.cat([prefix, middle, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


def test_one_batch_overfits():
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, bias=False)
    model = GPT(cfg)
    optimizer = model.configure_optimizer(lr=3e-3, weight_decay=0.0, betas=(0.9, 0.95), device_type="cpu")
    idx = torch.randint(0, 50257, (4, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    for _ in range(150):
        loss = model(x, y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model(x, y).loss.item() < 0.05


def test_weight_decay_only_on_matrices():
    model = GPT(SMALL)
    optimizer = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))

