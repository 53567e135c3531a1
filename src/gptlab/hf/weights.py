"""Hugging Face GPT-2 ⇄ gptlab GPT: import OpenAI's weights (baselines, fine-tuning) and export ours.

GPT-2 stores its four projection matrices as ``Conv1D`` weights of shape (in, out); ``nn.Linear`` wants
(out, in), so those four are transposed. Every other tensor maps key by key (same module names).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab.core.model import GPT
from gptlab.errors import GptlabError
from gptlab.hf.tokenizer import write_tokenizer_files
from gptlab.settings import ModelConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


class HFImportError(GptlabError, RuntimeError):
    """A Hugging Face model that cannot be loaded or is not a GPT-2."""


def _hf_config_to_ours(hf_config) -> ModelConfig:
    problems = []
    if getattr(hf_config, "model_type", None) != "gpt2":
        problems.append(f"model_type is {getattr(hf_config, 'model_type', None)!r}, not 'gpt2'")
    if hf_config.activation_function != "gelu_new":
        problems.append(f"activation {hf_config.activation_function!r} (ours is GPT-2's tanh GELU, 'gelu_new')")
    if abs(hf_config.layer_norm_epsilon - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon {hf_config.layer_norm_epsilon} (ours is 1e-5)")
    if problems:
        raise HFImportError("not importable as a gptlab GPT: " + "; ".join(problems))
    return ModelConfig(
        n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
        block_size=hf_config.n_positions, vocab_size=hf_config.vocab_size, dropout=0.0, bias=True,
    )


def from_hf_state(hf_config, state: dict[str, torch.Tensor]) -> GPT:
    """A GPT holding the weights of a Hugging Face ``GPT2LMHeadModel`` state dict."""
    model = GPT(_hf_config_to_ours(hf_config))
    ours = model.state_dict()
    missing = [key for key in ours if key not in state and key != "lm_head.weight"]
    if missing:
        raise HFImportError(f"the Hugging Face weights lack {missing[:4]}{' …' if len(missing) > 4 else ''}")
    with torch.no_grad():
        for key, target in ours.items():
            source = state.get(key, state["transformer.wte.weight"] if key == "lm_head.weight" else None)
            if key.endswith(CONV1D):
                source = source.t()
            if source.shape != target.shape:
                raise HFImportError(f"{key}: shape {tuple(source.shape)} does not fit {tuple(target.shape)}")
            target.copy_(source)
    return model


def load_hf_gpt2(name_or_path: str, *, device: str | torch.device = "cpu", local_files_only: bool = False) -> GPT:
    """OpenAI's GPT-2 (``gpt2`` … ``gpt2-xl`` on the hub) or a local Hugging Face folder, as a gptlab GPT.

    ``local_files_only`` reads only a local folder or the hub cache (no network attempt).
    """
    try:
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(name_or_path, dtype=torch.float32, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        where = "a local folder" if Path(name_or_path).exists() else "the Hugging Face hub (network, or its cache)"
        raise HFImportError(f"cannot load {name_or_path!r} from {where}: {e}") from e
    return from_hf_state(hf.config, hf.state_dict()).to(device)


def export_hf(model: GPT, out_dir: str | Path, *, tokenizer: str = "gpt2") -> Path:
    """Save ``model`` as a self-contained Hugging Face GPT-2 folder: ``config.json`` and ``model.safetensors``
    (``GPT2LMHeadModel.from_pretrained`` loads them) beside GPT-2's tokenizer files written from the BPE
    tiktoken uses (``AutoTokenizer.from_pretrained`` loads them offline; see :mod:`gptlab.hf.tokenizer`).

    Without biases (``model.bias: false``) the exported biases are zeros: the same function.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    hf_config = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True,
    )
    hf = GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    with torch.no_grad():
        for key, target in hf.state_dict().items():
            if key in ours:
                source = ours[key].t() if key.endswith(CONV1D) else ours[key]
                target.copy_(source)
            elif key.endswith(".bias"):
                target.zero_()  # a bias-free gptlab model
    out_dir = Path(out_dir)
    write_tokenizer_files(out_dir, model_max_length=cfg.block_size, name=tokenizer)  # first: needs the BPE cache
    hf.save_pretrained(out_dir)
    return out_dir
