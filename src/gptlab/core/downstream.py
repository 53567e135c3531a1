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
- **HellaSwag** (lm-eval task ``hellaswag``, ``multiple_choice``): the query ``activity_label: ctx_a
  Ctx_b`` and each of the four endings cleaned by lm-eval's ``preprocess``; each ending is scored as the
  continuation ``" " + ending`` of the query. ``acc``: the ending with the highest log-likelihood is the gold
  one; ``acc_norm``: the same with each log-likelihood divided by its ending's length in characters.

Every result carries ``per_item``: the score of each passage, article or question in file order (see
:data:`PER_ITEM`), so intervals and paired tests can be computed from the same scores the means came from.

Sequences are right-padded into batches: with causal attention, padding after a sequence cannot change it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from gptlab.core.evaluate import target_logprobs
from gptlab.core.hardware import autocast
from gptlab.core.model import GPT
from gptlab.data.tokenizer import EOT
from gptlab.errors import DataError

Encode = Callable[[str], list[int]]

# The arrays of each result's ``per_item``, one entry per item of the task's file, in file order.
PER_ITEM = {
    "lambada": {"acc": "uint8: 1 if every token of the last word is the greedy prediction",
                "logprob": "float64: log-likelihood of the last word (nats)",
                "tokens": "int64: BPE tokens of the last word (the scored continuation)"},
    "wikitext": {"logprob": "float64: log-likelihood of the whole article (nats)",
                 "tokens": "int64: BPE tokens of the detokenized article",
                 "bytes": "int64: UTF-8 bytes of the original article",
                 "words": "int64: words of the original article (lm-eval's count)"},
    "hellaswag": {"acc": "uint8: 1 if the most likely ending is the gold one",
                  "acc_norm": "uint8: the same with log-likelihoods divided by the endings' lengths in characters",
                  "gold": "int64: index of the gold ending",
                  "logprobs": "float64 (items, choices): log-likelihood of each ending (nats)",
                  "chars": "int64 (items, choices): length of each ending in characters"},
}


@dataclass(frozen=True)
class TaskResult:
    """The numbers of one task (``to_dict``: what metrics files hold) and its per-item scores."""

    per_item: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    """Arrays named in :data:`PER_ITEM`, one entry per item in file order."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_item"}


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


def pair_request(context_ids: list[int], continuation_ids: list[int], *, context: int) -> Request:
    """The continuation scored after its context; a context longer than the model's is cut from the left, as
    lm-eval does (``(context + continuation)[-(max_length + 1):]``)."""
    tokens = (context_ids + continuation_ids)[-(context + 1) :]
    return Request(tokens, min(len(continuation_ids), len(tokens) - 1))


def lambada_requests(texts: Sequence[str], encode: Encode, *, context: int, eot: int = EOT) -> list[Request]:
    """One request per passage; a context longer than the model's is cut from the left (as lm-eval does)."""
    requests = []
    for text in texts:
        ctx, cont = encode_pair(encode, *split_last_word(text), eot=eot)
        if not cont:
            raise DataError(f"LAMBADA passage without a last word: {text[-60:]!r}")
        requests.append(pair_request(ctx, cont, context=context))
    return requests


@dataclass(frozen=True)
class LambadaResult(TaskResult):
    acc: float
    """Share of passages whose last word the model predicts greedily, every token of it."""
    ppl: float
    """exp(-mean log-likelihood of the last word)."""
    examples: int
    context: int
    seconds: float


def lambada(
    model: GPT, texts: Sequence[str], *, encode: Encode, context: int, batch_size: int,
    device: torch.device, dtype: torch.dtype = torch.float32,
) -> LambadaResult:
    start = time.perf_counter()
    requests = lambada_requests(texts, encode, context=context)
    scores = score_requests(model, requests, batch_size=batch_size, device=device, dtype=dtype)
    acc = np.array([s.greedy for s in scores], dtype=np.uint8)
    logprob = np.array([s.logprob for s in scores], dtype=np.float64)
    return LambadaResult(
        acc=float(acc.mean()), ppl=math.exp(-float(logprob.mean())), examples=len(scores),
        context=context, seconds=time.perf_counter() - start,
        per_item={"acc": acc, "logprob": logprob, "tokens": np.array([r.scored for r in requests], dtype=np.int64)},
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
class WikiTextResult(TaskResult):
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


def wikitext(
    model: GPT, pages: Sequence[str], *, encode: Encode, context: int, batch_size: int,
    device: torch.device, dtype: torch.dtype = torch.float32,
) -> WikiTextResult:
    start = time.perf_counter()
    requests, owner, tokens = [], [], []
    for i, page in enumerate(pages):
        ids = encode(detokenize(page))
        tokens.append(len(ids))
        windows = rolling_requests(ids, context=context)
        requests += windows
        owner += [i] * len(windows)
    scores = score_requests(model, requests, batch_size=batch_size, device=device, dtype=dtype)
    per_page = np.zeros(len(pages), dtype=np.float64)
    np.add.at(per_page, np.array(owner, dtype=np.int64), np.array([s.logprob for s in scores], dtype=np.float64))
    words = np.array([count_words(p) for p in pages], dtype=np.int64)
    n_bytes = np.array([len(p.encode("utf-8")) for p in pages], dtype=np.int64)
    logprob = float(per_page.sum())
    return WikiTextResult(
        word_ppl=math.exp(-logprob / words.sum()), byte_ppl=math.exp(-logprob / n_bytes.sum()),
        bits_per_byte=-logprob / n_bytes.sum() / math.log(2), token_ppl=math.exp(-logprob / sum(tokens)),
        documents=len(pages), words=int(words.sum()), bytes=int(n_bytes.sum()), tokens=sum(tokens),
        context=context, seconds=time.perf_counter() - start,
        per_item={"logprob": per_page, "tokens": np.array(tokens, dtype=np.int64), "bytes": n_bytes, "words": words},
    )


# ----------------------------------------------------------------------------------------- HellaSwag


@dataclass(frozen=True)
class MultipleChoice:
    query: str
    """The context every choice continues."""
    choices: tuple[str, ...]
    gold: int
    """Index of the right choice."""


def clean_hellaswag(text: str) -> str:
    """lm-eval's ``hellaswag`` ``preprocess``: strip, WikiHow's `` [title]`` becomes ``". "``, other bracketed
    artifacts (``[header]``, ``[step]``) go, then each pair of spaces becomes one (one pass: three leave two)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(row: Mapping[str, Any]) -> MultipleChoice:
    """One HellaSwag row (``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label``) as lm-eval's
    ``process_docs`` prompts it: ``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()``, cleaned."""
    query = clean_hellaswag(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    return MultipleChoice(query, tuple(clean_hellaswag(e) for e in row["endings"]), int(row["label"]))


def choice_requests(items: Sequence[MultipleChoice], encode: Encode, *, context: int, eot: int = EOT
                    ) -> list[Request]:
    """One request per choice (items in order, choices in order): ``" " + choice`` continues the query, and a
    context longer than the model's is cut from the left, as for LAMBADA."""
    requests = []
    for item in items:
        for choice in item.choices:
            ctx, cont = encode_pair(encode, item.query, " " + choice, eot=eot)
            requests.append(pair_request(ctx, cont, context=context))
    return requests


@dataclass(frozen=True)
class HellaSwagResult(TaskResult):
    acc: float
    """Share of items whose most likely ending (summed log-likelihood) is the gold one."""
    acc_norm: float
    """The same with each ending's log-likelihood divided by its length in characters (lm-eval's ``acc_norm``)."""
    examples: int
    context: int
    seconds: float


def hellaswag(
    model: GPT, items: Sequence[MultipleChoice], *, encode: Encode, context: int, batch_size: int,
    device: torch.device, dtype: torch.dtype = torch.float32,
) -> HellaSwagResult:
    start = time.perf_counter()
    n_choices = {len(item.choices) for item in items}
    if len(n_choices) != 1 or 0 in n_choices:
        raise DataError(f"HellaSwag items must all have the same number (> 0) of endings, got {sorted(n_choices)}")
    k = n_choices.pop()
    scores = score_requests(model, choice_requests(items, encode, context=context), batch_size=batch_size,
                            device=device, dtype=dtype)
    logprobs = np.array([s.logprob for s in scores], dtype=np.float64).reshape(len(items), k)
    chars = np.array([[len(c) for c in item.choices] for item in items], dtype=np.int64)
    gold = np.array([item.gold for item in items], dtype=np.int64)
    # np.argmax takes the first of equal maxima, as lm-eval's does.
    acc = (logprobs.argmax(axis=1) == gold).astype(np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty ending: lm-eval divides by 0 as well
        acc_norm = ((logprobs / chars).argmax(axis=1) == gold).astype(np.uint8)
    return HellaSwagResult(
        acc=float(acc.mean()), acc_norm=float(acc_norm.mean()), examples=len(items), context=context,
        seconds=time.perf_counter() - start,
        per_item={"acc": acc, "acc_norm": acc_norm, "gold": gold, "logprobs": logprobs, "chars": chars},
    )
