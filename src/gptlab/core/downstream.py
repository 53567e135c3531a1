"""Zero-shot LAMBADA and WikiText with lm-evaluation-harness's definitions, scored by one batched forward.

Both tasks reduce to *requests*: a token sequence whose last ``scored`` tokens are the targets. A request's
log-likelihood is the sum of the targets' log-probabilities given everything before them in the sequence, and
it is *greedy* when every target is the model's most likely token at its position (lm-eval's ``is_greedy``).

- **LAMBADA** (lm-eval task ``lambada_openai``): the passage split at its last space into context and
  continuation (``" " + last word``); the continuation's tokens are the tokens of ``context + continuation``
  after those of ``context``. Accuracy is the share of greedy passages (every token of the last word matched);
  perplexity is ``exp(-mean log-likelihood of the last word)`` over passages.
- **WikiText** (lm-eval task ``wikitext``, ``loglikelihood_rolling``): each article is detokenized, encoded and
  scored whole in windows of the model's context: the first window starts with <|endoftext|> as the only
  context, each later window scores the next ``context`` tokens (so a target sees at most ``context`` tokens),
  and a short last window is given the full ``context`` of preceding tokens. Word perplexity divides the
  article's log-likelihood by its words *before* detokenization (``re.split(r"\\s+", page)``), byte perplexity
  by its UTF-8 bytes; we add token perplexity (per scored BPE token).

Sequences are right-padded into batches: with causal attention, padding after a sequence cannot change it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from gptlab.core.evaluate import target_logprobs
from gptlab.core.hardware import autocast
from gptlab.core.model import GPT
from gptlab.data.tokenizer import EOT
from gptlab.errors import DataError

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Request:
    tokens: list[int]
    """Input tokens followed by the last target: at most context + 1 tokens."""
    scored: int
    """How many of the last tokens are targets."""


@dataclass(frozen=True)
class Scored:
    logprob: float
    """Sum of the targets' log-probabilities (nats)."""
    greedy: bool
    """Every target is the most likely token at its position."""


@torch.inference_mode()
def score_requests(
    model: GPT, requests: Sequence[Request], *, batch_size: int, device: torch.device, dtype: torch.dtype
) -> list[Scored]:
    """Log-likelihood and greedy match of every request, in request order."""
    for r in requests:
        if not 0 < r.scored < len(r.tokens) or len(r.tokens) - 1 > model.config.block_size:
            raise ValueError(f"a request of {len(r.tokens)} tokens scoring {r.scored} does not fit the model")
    was_training = model.training
    model.eval()
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].tokens))  # longest first: OOM shows early
    results: list[Scored | None] = [None] * len(requests)
    with autocast(device, dtype):
        for start in range(0, len(order), batch_size):
            batch = [requests[i] for i in order[start : start + batch_size]]
            T = len(batch[0].tokens) - 1
            x = torch.zeros((len(batch), T), dtype=torch.long)  # right padding: token 0, never scored
            y = torch.zeros((len(batch), T), dtype=torch.long)
            scored = torch.zeros((len(batch), T), dtype=torch.bool)
            for row, r in enumerate(batch):
                n = len(r.tokens) - 1
                x[row, :n] = torch.tensor(r.tokens[:-1])
                y[row, :n] = torch.tensor(r.tokens[1:])
                scored[row, n - r.scored : n] = True
            x, y, scored = x.to(device), y.to(device), scored.to(device)
            logp, hits = target_logprobs(model(x).logits, y, greedy=True)
            sums = torch.where(scored, logp.double(), 0.0).sum(dim=1).tolist()
            greedy = (hits | ~scored).all(dim=1).tolist()
            for row, i in enumerate(order[start : start + batch_size]):
                results[i] = Scored(sums[row], bool(greedy[row]))
    model.train(was_training)
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- LAMBADA


def split_last_word(text: str) -> tuple[str, str]:
    """lm-eval's ``lambada_openai`` prompt: everything before the last space, and ``" " + last word``."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def encode_pair(encode: Encode, context: str, continuation: str, *, eot: int = EOT) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-eval forms them: trailing spaces of the context move to the
    continuation; the continuation is what encoding both adds after the context's own tokens; an empty context
    becomes <|endoftext|>."""
    if not context:
        return [eot], encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode(context)
    return context_ids, encode(context + continuation)[len(context_ids) :]


def lambada_requests(texts: Sequence[str], encode: Encode, *, context: int, eot: int = EOT) -> list[Request]:
    """One request per passage; a context longer than the model's is cut from the left (as lm-eval does)."""
    requests = []
    for text in texts:
        ctx, cont = encode_pair(encode, *split_last_word(text), eot=eot)
        if not cont:
            raise DataError(f"LAMBADA passage without a last word: {text[-60:]!r}")
        tokens = (ctx + cont)[-(context + 1) :]
        requests.append(Request(tokens, min(len(cont), len(tokens) - 1)))
    return requests


@dataclass(frozen=True)
class LambadaResult:
    acc: float
    """Share of passages whose last word the model predicts greedily, every token of it."""
    ppl: float
    """exp(-mean log-likelihood of the last word)."""
    examples: int
    context: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def lambada(
    model: GPT, texts: Sequence[str], *, encode: Encode, context: int, batch_size: int,
    device: torch.device, dtype: torch.dtype = torch.float32,
) -> LambadaResult:
    start = time.perf_counter()
    scores = score_requests(model, lambada_requests(texts, encode, context=context), batch_size=batch_size,
                            device=device, dtype=dtype)
    mean_logprob = sum(s.logprob for s in scores) / len(scores)
    return LambadaResult(
        acc=sum(s.greedy for s in scores) / len(scores), ppl=math.exp(-mean_logprob), examples=len(scores),
        context=context, seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------------------ WikiText

# lm-eval's ``wikitext_detokenizer``: undo WikiText's tokenization (spaces around punctuation, @-@ number
# separators, spaced headings) before BPE, applied in this order. (lm-eval also has a rule on the literal text
# "/' [0-9]/", a pattern written as if it were a regex; it never occurs in WikiText, so it is left out.)
_DETOKENIZE: list[tuple[str | re.Pattern[str], str]] = [
    ("s '", "s'"),
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="),
    (" \u00b0 ", "\u00b0"),
    (" \n", "\n"), ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
]


def detokenize(page: str) -> str:
    for pattern, replacement in _DETOKENIZE:
        page = pattern.sub(replacement, page) if isinstance(pattern, re.Pattern) else page.replace(pattern, replacement)
    return page


def count_words(page: str) -> int:
    """lm-eval's word count: pieces between whitespace runs of the original (not detokenized) article."""
    return len(re.split(r"\s+", page))


def rolling_requests(tokens: Sequence[int], *, context: int, eot: int = EOT) -> list[Request]:
    """Windows that score every token of a document once, each target seeing at most ``context`` tokens."""
    padded = [eot, *tokens]  # padded[j + 1] is tokens[j]; <|endoftext|> is the first token's only context
    requests = []
    for start in range(0, len(tokens), context):
        end = min(len(tokens), start + context)  # targets tokens[start:end]
        requests.append(Request(padded[max(0, end - context) : end + 1], end - start))
    return requests


@dataclass(frozen=True)
class WikiTextResult:
    word_ppl: float
    """exp(-log-likelihood / words of the original articles): the GPT-2 paper's and lm-eval's headline."""
    byte_ppl: float
    bits_per_byte: float
    token_ppl: float
    documents: int
    words: int
    bytes: int
    tokens: int
    context: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def wikitext(
    model: GPT, pages: Sequence[str], *, encode: Encode, context: int, batch_size: int,
    device: torch.device, dtype: torch.dtype = torch.float32,
) -> WikiTextResult:
    start = time.perf_counter()
    requests, tokens = [], 0
    for page in pages:
        ids = encode(detokenize(page))
        tokens += len(ids)
        requests += rolling_requests(ids, context=context)
    logprob = sum(s.logprob for s in score_requests(model, requests, batch_size=batch_size, device=device,
                                                    dtype=dtype))
    words = sum(count_words(p) for p in pages)
    n_bytes = sum(len(p.encode("utf-8")) for p in pages)
    return WikiTextResult(
        word_ppl=math.exp(-logprob / words), byte_ppl=math.exp(-logprob / n_bytes),
        bits_per_byte=-logprob / n_bytes / math.log(2), token_ppl=math.exp(-logprob / tokens),
        documents=len(pages), words=words, bytes=n_bytes, tokens=tokens, context=context,
        seconds=time.perf_counter() - start,
    )
