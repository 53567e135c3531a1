"""Hugging Face GPT-2 import/export, checked against transformers' own forward pass (offline, tiny models)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptlab.core.model import GPT
from gptlab.hf.weights import HFImportError, export_hf, load_hf_gpt2

from ..core.test_model import SMALL

transformers = pytest.importorskip("transformers")


@pytest.fixture
def tiny_hf(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=50257)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random biases and LayerNorm gains, so a wrong mapping cannot hide behind init values
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def test_imported_gpt2_gives_transformers_logits(tiny_hf):
    hf, path = tiny_hf
    ours = load_hf_gpt2(str(path)).eval()
    assert ours.config.block_size == 24 and ours.config.vocab_size == 50257 and ours.config.bias
    idx = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, hf(idx).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_export_round_trips_through_transformers(tmp_path, bias, bpe_cache):
    torch.manual_seed(1)
    model = GPT(dataclasses.replace(SMALL, bias=bias)).eval()
    export_hf(model, tmp_path / "out")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx).logits, atol=1e-4, rtol=1e-4)
        back = load_hf_gpt2(str(tmp_path / "out")).eval()
        torch.testing.assert_close(back(idx).logits, model(idx).logits, atol=1e-4, rtol=1e-4)


def test_an_unloadable_model_says_where_it_looked(tmp_path):
    with pytest.raises(HFImportError, match="cannot load .* from a local folder"):
        (tmp_path / "empty").mkdir()
        load_hf_gpt2(str(tmp_path / "empty"))
    with pytest.raises(HFImportError, match="Hugging Face hub"):
        load_hf_gpt2("gpt2-does-not-exist-offline")
