from __future__ import annotations

import torch

from gptlab.core.generate import Sampling, filter_logits, sample
from gptlab.core.model import GPT

from .test_model import SMALL


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(SMALL).eval()


def _reference_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Cache-free greedy decoding with a sliding window, as nanoGPT's generate does."""
    seq = list(prompt)
    for _ in range(n):
        context = torch.tensor([seq[-model.config.block_size :]])
        seq.append(int(model(context).logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_greedy_with_cache_equals_cache_free_decoding_beyond_the_context():
    model = _model()
    prompt = [11, 22, 33, 44, 55]
    n = 30  # 5 + 30 > block_size 16: the window slides
    out = sample(model, prompt, num_samples=1, sampling=Sampling(max_new_tokens=n, temperature=0), seed=0, eot=-1)
    assert out[0] == _reference_greedy(model, prompt, n)


def test_top_k_1_is_greedy():
    model = _model()
    greedy = sample(model, [1, 2, 3], num_samples=1, sampling=Sampling(10, temperature=0), seed=0, eot=-1)
    top1 = sample(model, [1, 2, 3], num_samples=2, sampling=Sampling(10, temperature=1.0, top_k=1), seed=5, eot=-1)
    assert top1 == [greedy[0], greedy[0]]


def test_sampling_is_reproducible_and_seed_dependent():
    model = _model()
    s = Sampling(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9)
    a = sample(model, [5, 6], num_samples=3, sampling=s, seed=42, eot=-1)
    b = sample(model, [5, 6], num_samples=3, sampling=s, seed=42, eot=-1)
    c = sample(model, [5, 6], num_samples=3, sampling=s, seed=43, eot=-1)
    assert a == b and a != c
    assert len({tuple(x) for x in a}) > 1  # the samples of one call differ from each other


def test_generation_stops_before_end_of_text():
    model = _model()
    s = Sampling(max_new_tokens=20, temperature=1.0)
    [free] = sample(model, [1, 2], num_samples=1, sampling=s, seed=3, eot=-1)
    stop = next(i for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    [cut] = sample(model, [1, 2], num_samples=1, sampling=s, seed=3, eot=free[stop])
    assert cut == free[:stop]  # cut before the end-of-text token, which is not returned


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_k=0, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=0, top_p=0.81))
    assert kept.tolist() == [[True, True, True, False]]
    kept = torch.isfinite(filter_logits(logits[:, [3, 2, 1, 0]], top_k=0, top_p=0.4))
    assert kept.tolist() == [[False, False, False, True]]  # the top token always stays, in any order
