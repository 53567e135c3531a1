"""Sampling from a trained model: temperature, top-k, top-p, stop at <|endoftext|>, seeded, with a KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tiktoken
import torch

from gptlab.core.model import GPT, KVCache
from gptlab.data.tokenizer import EOT
from gptlab.settings import GenerateConfig


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    """0 = greedy."""
    top_k: int = 0
    """0 = off."""
    top_p: float = 1.0
    """1.0 = off."""


def filter_logits(logits: torch.Tensor, *, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf; (B, V) → (B, V)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top token always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits of the last position → (B,) token ids."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample(
    model: GPT,
    prompt: list[int],
    *,
    num_samples: int,
    sampling: Sampling,
    seed: int,
    eot: int = EOT,
) -> list[list[int]]:
    """``num_samples`` continuations of ``prompt`` (token ids, without the prompt, cut before <|endoftext|>)."""
    if not prompt:
        prompt = [eot]  # an empty prompt conditions on "start of a document"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    block = model.config.block_size
    generator = torch.Generator(device=device).manual_seed(seed)
    seq = torch.tensor([prompt[-block:]] * num_samples, dtype=torch.long, device=device)  # (B, T)
    cache = KVCache(model.config, num_samples, device=device, dtype=dtype)
    logits = model(seq, cache=cache).logits[:, -1, :]
    outputs: list[list[int]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for _ in range(sampling.max_new_tokens):
        token = next_token(logits, sampling, generator)  # (B,)
        for b, t in enumerate(token.tolist()):
            if not done[b]:
                if t == eot:
                    done[b] = True
                else:
                    outputs[b].append(t)
        if all(done):
            break
        seq = torch.cat([seq, token[:, None]], dim=1)
        if cache.length >= block:
            # The context is full: slide the window and rebuild the cache (what a cache-free model sees).
            seq = seq[:, -block:]
            cache = KVCache(model.config, num_samples, device=device, dtype=dtype)
            logits = model(seq, cache=cache).logits[:, -1, :]
        else:
            logits = model(token[:, None], cache=cache).logits[:, -1, :]
    model.train(was_training)
    return outputs


def generate_text(
    model: GPT, enc: tiktoken.Encoding, prompt: str, *, num_samples: int, sampling: Sampling, seed: int
) -> list[str]:
    """Decoded continuations of ``prompt`` (the prompt itself is not repeated)."""
    ids = enc.encode_ordinary(prompt)
    return [enc.decode(out) for out in sample(model, ids, num_samples=num_samples, sampling=sampling, seed=seed)]


def sample_prompts(model: GPT, enc: tiktoken.Encoding, g: GenerateConfig) -> list[dict[str, Any]]:
    """``[{"prompt", "samples"}]`` for every prompt of ``g``, seeded per prompt (adding a prompt does not change
    the others), so every model sampled with the same ``g`` gets the same prompts, settings and seeds."""
    sampling = Sampling(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p)
    return [
        {"prompt": prompt,
         "samples": generate_text(model, enc, prompt, num_samples=g.num_samples, sampling=sampling, seed=g.seed + i)}
        for i, prompt in enumerate(g.prompts)
    ]


def settings(g: GenerateConfig) -> dict[str, Any]:
    """The sampling settings recorded beside samples."""
    return {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p, "max_new_tokens": g.max_new_tokens,
            "num_samples": g.num_samples, "seed": g.seed}
