from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptlab.core.evaluate import WindowScores, perplexity, score_windows, unigram_floor
from gptlab.core.model import GPT
from gptlab.data.loader import sequential_windows, spread_windows

from .test_model import SMALL


@pytest.mark.parametrize("n, block, batch", [(100, 16, 3), (97, 16, 4), (17, 16, 2), (2, 16, 1)])
def test_windows_score_every_token_after_the_first_exactly_once(n, block, batch):
    tokens = np.arange(n, dtype=np.uint16)
    targets = [t for _, y in sequential_windows(tokens, block_size=block, batch_size=batch) for t in y.ravel()]
    assert targets == list(range(1, n))


def test_windows_pair_inputs_with_next_token_targets():
    tokens = np.arange(50, dtype=np.uint16)
    for x, y in sequential_windows(tokens, block_size=8, batch_size=2):
        np.testing.assert_array_equal(y, x + 1)


def test_perplexity_equals_a_brute_force_token_by_token_computation():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    tokens = np.random.default_rng(0).integers(0, 50257, size=45).astype(np.uint16)
    result = perplexity(model, tokens, context=16, batch_size=2, device=torch.device("cpu"))
    nll = []
    for start in range(0, 44, 16):  # each window sees only its own tokens as context
        window = torch.from_numpy(tokens[start : start + 17].astype(np.int64))[None]
        logp = torch.log_softmax(model(window[:, :-1]).logits[0], dim=-1)
        nll += [-logp[i, window[0, i + 1]].item() for i in range(window.size(1) - 1)]
    assert result.tokens == 44
    assert result.loss == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(result.loss))


def test_per_window_losses_split_at_documents_and_add_up_to_the_perplexity(tmp_path, bpe_cache):
    from gptlab.data.tokenizer import EOT, get_encoding, token_byte_lengths

    enc = get_encoding("gpt2")
    texts = ["Déjà vu: the for statement iterates.", "Zwölf Boxkämpfer jagen Viktor 🙂 quer über den Sylter Deich.",
             "x", "A dictionary maps keys to values; <|endoftext|> inside a text is ordinary text."]
    tokens = np.concatenate([np.r_[enc.encode_ordinary(t), EOT] for t in texts]).astype(np.uint16)
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    scores = score_windows(model, tokens, context=16, batch_size=3, device=torch.device("cpu"),
                           token_bytes=token_byte_lengths(enc))
    plain = perplexity(model, tokens, context=16, batch_size=3, device=torch.device("cpu"))
    assert scores.perplexity.loss == pytest.approx(plain.loss, rel=1e-6) and scores.perplexity.tokens == len(tokens) - 1
    # Pieces never cross a window or a document; every document's EOT is its last scored token.
    nats, count, nbytes = scores.per_document()
    lengths = [len(enc.encode_ordinary(t)) + 1 for t in texts]
    assert count.tolist() == [lengths[0] - 1, *lengths[1:]]  # the first token of the split has no prediction
    first = len(enc.decode_single_token_bytes(int(tokens[0])))
    assert nbytes.tolist() == [len(texts[0].encode()) - first, *(len(t.encode()) for t in texts[1:])]
    assert set(zip(scores.window.tolist(), scores.doc.tolist(), strict=True)) == {
        (j // 16, int(np.sum(tokens[: j + 1] == EOT))) for j in range(len(tokens) - 1)}
    # The per-document totals are the brute-force per-token losses summed by document.
    logp = []
    for start in range(0, len(tokens) - 1, 16):
        window = torch.from_numpy(tokens[start : start + 17].astype(np.int64))[None]
        lp = torch.log_softmax(model(window[:, :-1]).logits[0], dim=-1)
        logp += [lp[i, window[0, i + 1]].item() for i in range(window.size(1) - 1)]
    doc_of = np.cumsum(tokens == EOT)[:-1]
    expected = np.bincount(doc_of, weights=-np.array(logp))
    np.testing.assert_allclose(nats, expected, rtol=1e-5)
    scores.save(tmp_path / "w.npz")
    again = WindowScores.load(tmp_path / "w.npz")
    assert again.context == 16 and all(np.array_equal(getattr(again, k), getattr(scores, k)) for k in WindowScores.FIELDS)


def test_unigram_floor_by_hand():
    counts = np.array([3, 1, 0, 0])  # add-one smoothing: p = (c + 1) / (4 + 4) = [.5, .25, .125, .125]
    tokens = np.array([9, 0, 1, 3])  # the first token has no prediction; scored: 0, 1, 3
    floor = unigram_floor(counts, tokens)
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.125)) / 3
    assert floor.tokens == 3 and floor.loss == pytest.approx(expected)


def test_spread_windows_are_fixed_and_cover_the_split():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = spread_windows(tokens, block_size=10, count=5)
    assert x[:, 0].tolist() == [0, 247, 494, 741, 989] and (y == x + 1).all()


def _history_logprob(model: GPT, tokens: np.ndarray, target: int, begin: int) -> float:
    """log p(tokens[target] | tokens[begin:target]): one forward over exactly that history."""
    history = torch.from_numpy(tokens[begin:target].astype(np.int64))[None]
    return torch.log_softmax(model(history).logits[0, -1], dim=-1)[int(tokens[target])].item()


@pytest.mark.parametrize("n, context, stride, batch", [(30, 8, 1, 4), (30, 8, 3, 2), (41, 8, 5, 3), (9, 8, 3, 2)])
def test_strided_perplexity_gives_every_token_the_history_of_transformers_guide(n, context, stride, batch):
    # transformers' "Perplexity of fixed-length models": windows begin every `stride` tokens; a target is
    # scored by the first window that holds it, with every token of that window before it as history.
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    tokens = np.random.default_rng(1).integers(0, 50257, size=n).astype(np.uint16)
    result = perplexity(model, tokens, context=context, batch_size=batch, device=torch.device("cpu"), stride=stride)
    nll = []
    with torch.no_grad():
        for j in range(1, n):  # the first window begins at 0; later ones at the first multiple of stride that fits j
            begin = 0 if j <= context else -(-(j - context) // stride) * stride
            nll.append(-_history_logprob(model, tokens, j, begin))
    assert result.tokens == n - 1 and result.stride == stride
    assert result.loss == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def test_a_stride_of_the_whole_context_is_the_non_overlapping_windows():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    tokens = np.random.default_rng(2).integers(0, 50257, size=70).astype(np.uint16)
    plain = perplexity(model, tokens, context=16, batch_size=3, device=torch.device("cpu"))
    strided = perplexity(model, tokens, context=16, batch_size=3, device=torch.device("cpu"), stride=16)
    assert strided.tokens == plain.tokens and strided.loss == pytest.approx(plain.loss, rel=1e-6)
    one = perplexity(model, tokens, context=16, batch_size=3, device=torch.device("cpu"), stride=1)
    assert one.loss != pytest.approx(plain.loss, rel=1e-6)  # more history changes the numbers


def test_target_logprobs_are_float32_exact_for_a_gpt2_sized_vocabulary():
    # The (B, V, T) cross-entropy layout was off by up to 7e-5 here (2e-3 nats on a trained model's logits, on
    # torch 2.13's CPU kernel): enough to break parity with lm-eval at 1e-5. A float64 log-softmax is the truth.
    from gptlab.core.evaluate import target_logprobs

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 13, 50304, generator=gen) * 3
    targets = torch.randint(0, 50304, (2, 13), generator=gen)
    reference = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[..., None])[..., 0]
    logp, hits = target_logprobs(logits, targets, greedy=True)
    torch.testing.assert_close(logp.double(), reference, atol=1e-5, rtol=0)
    assert torch.equal(hits, logits.argmax(-1) == targets)
