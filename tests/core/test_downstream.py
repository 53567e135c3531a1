"""LAMBADA, WikiText and HellaSwag with lm-evaluation-harness's definitions: hand-worked cases and brute-force
references, and the per-item scores behind every mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptlab.core.downstream import (
    PER_ITEM,
    MultipleChoice,
    Request,
    choice_requests,
    clean_hellaswag,
    count_words,
    detokenize,
    encode_pair,
    hellaswag,
    hellaswag_item,
    lambada,
    lambada_requests,
    rolling_requests,
    score_requests,
    split_last_word,
    wikitext,
)
from gptlab.core.model import GPT, ForwardOutput
from gptlab.settings import ModelConfig

from .test_model import SMALL

CPU = torch.device("cpu")
ALPHABET = "abcdefg "  # a toy tokenizer: one token per character, ' ' = 7


def encode(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text]


class NextLetter(torch.nn.Module):
    """A model whose answer is known by hand: it gives logit 2 to (previous token + 1) mod 8 and 0 to the rest,
    whatever came before. So log p(predicted) = 2 - L and log p(anything else) = -L, with L = log(e^2 + 7)."""

    def __init__(self, block_size: int = 64):
        super().__init__()
        self.config = ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=block_size, vocab_size=8, dropout=0.0,
                                  bias=False)

    def forward(self, idx: torch.Tensor) -> ForwardOutput:
        return ForwardOutput(2.0 * torch.nn.functional.one_hot((idx + 1) % 8, 8).float(), None)


L = math.log(math.exp(2) + 7)
HIT, MISS = 2 - L, -L


def test_lambada_splits_at_the_last_space_and_scores_the_word_with_its_space():
    assert split_last_word("the cat sat on the mat") == ("the cat sat on the", " mat")
    assert encode_pair(encode, "ab", " cd") == ([0, 1], [7, 2, 3])
    # Trailing spaces of the context belong to the continuation (lm-eval's encode_pair).
    assert encode_pair(encode, "ab ", "cd") == ([0, 1], [7, 2, 3])
    assert encode_pair(encode, "", "ab", eot=99) == ([99], [0, 1])


def test_lambada_continuation_is_what_encoding_both_adds_after_the_context(bpe_cache):
    from gptlab.data.tokenizer import get_encoding

    enc = get_encoding("gpt2")
    context, continuation = split_last_word("He looked at the clock. It was midnight")
    ctx, cont = encode_pair(enc.encode_ordinary, context, continuation)
    assert ctx == enc.encode_ordinary(context)
    assert ctx + cont == enc.encode_ordinary(context + continuation)
    assert enc.decode(cont) == " midnight"


def test_lambada_accuracy_needs_every_token_of_the_last_word():
    # "fg ab": after g(6) comes ' '(7), after ' ' comes a(0), after a comes b(1): all three predicted greedily.
    # "fg ac": the last token c(2) is not the predicted b(1): the passage is a miss, though 2 of 3 tokens hit.
    result = lambada(NextLetter(), ["fg ab", "fg ac"], encode=encode, context=64, batch_size=2, device=CPU)
    assert result.acc == 0.5 and result.examples == 2
    mean_logprob = (3 * HIT + (2 * HIT + MISS)) / 2
    assert result.ppl == pytest.approx(math.exp(-mean_logprob))
    # Per passage, in file order: what intervals and paired tests are computed from.
    assert set(result.per_item) == set(PER_ITEM["lambada"]) and "per_item" not in result.to_dict()
    assert result.per_item["acc"].tolist() == [1, 0] and result.per_item["tokens"].tolist() == [3, 3]
    np.testing.assert_allclose(result.per_item["logprob"], [3 * HIT, 2 * HIT + MISS], rtol=1e-6)


def test_lambada_cuts_a_long_context_from_the_left():
    # "abcdefga" + " bc" is 11 tokens; with context 5 the model sees the last 5 inputs: f g a ' ' b, target c.
    [request] = lambada_requests(["abcdefga bc"], encode, context=5)
    assert request == Request([5, 6, 0, 7, 1, 2], 3)
    [request] = lambada_requests(["abcdefga bc"], encode, context=2)
    assert request == Request([7, 1, 2], 2)  # the word's first token ' ' is an input now: only b, c are scored


def test_rolling_windows_score_every_token_once_as_lm_eval_does():
    # 7 tokens, context 3, <|endoftext|> = 99:
    #   window 1: input [99 10 11]  → scores 10 11 12 (the first token's only context is <|endoftext|>)
    #   window 2: input [12 13 14]  → scores 13 14 15 (one token of the previous window as context)
    #   window 3: input [13 14 15]  → scores 16 only (a short last window gets a full context)
    requests = rolling_requests(list(range(10, 17)), context=3, eot=99)
    assert requests == [Request([99, 10, 11, 12], 3), Request([12, 13, 14, 15], 3), Request([13, 14, 15, 16], 1)]


@pytest.mark.parametrize("n, context", [(1, 4), (4, 4), (5, 4), (9, 4), (17, 5), (30, 1)])
def test_rolling_windows_cover_each_target_once_within_the_context(n, context):
    tokens = list(range(100, 100 + n))
    scored = []
    for r in rolling_requests(tokens, context=context, eot=1):
        assert len(r.tokens) - 1 <= context
        targets = r.tokens[1:]
        scored += targets[len(targets) - r.scored :]
    assert scored == tokens


def test_wikitext_word_byte_and_token_perplexity_by_hand():
    # One article "ab cd": 2 words, 5 bytes, 5 tokens [0 1 7 2 3]. NextLetter predicts from the previous token
    # only: after <|endoftext|> (50256, next 50257 % 8 = 1) a(0) is a miss; b hit; ' ' miss; c miss; d hit.
    for context in (64, 2):  # the windows change, the previous tokens do not
        result = wikitext(NextLetter(), ["ab cd"], encode=encode, context=context, batch_size=4, device=CPU)
        logprob = 2 * HIT + 3 * MISS
        assert (result.words, result.bytes, result.tokens, result.documents) == (2, 5, 5, 1)
        assert result.word_ppl == pytest.approx(math.exp(-logprob / 2))
        assert result.byte_ppl == pytest.approx(math.exp(-logprob / 5))
        assert result.token_ppl == pytest.approx(math.exp(-logprob / 5))
        assert result.bits_per_byte == pytest.approx(-logprob / 5 / math.log(2))


def test_wikitext_per_article_scores_add_up_to_the_totals():
    # Context 2 splits "ab cd" (5 tokens) into 3 windows and "gg" (2 tokens) into 1: the article sums gather them.
    result = wikitext(NextLetter(), ["ab cd", "gg"], encode=encode, context=2, batch_size=3, device=CPU)
    items = result.per_item
    assert set(items) == set(PER_ITEM["wikitext"])
    assert items["tokens"].tolist() == [5, 2] and items["bytes"].tolist() == [5, 2] and items["words"].tolist() == [2, 1]
    # "gg": after <|endoftext|> (predicts 1) g(6) misses; after g (predicts 7) g misses.
    np.testing.assert_allclose(items["logprob"], [2 * HIT + 3 * MISS, 2 * MISS], rtol=1e-6)
    assert result.word_ppl == pytest.approx(math.exp(-items["logprob"].sum() / items["words"].sum()))
    assert (result.tokens, result.bytes, result.words) == (7, 7, 3)


def test_wikitext_counts_words_of_the_original_article():
    assert count_words("a  b\nc") == 3
    assert count_words(" = Title = \n") == 5  # lm-eval's count: leading/trailing whitespace make empty pieces


def test_detokenizer_undoes_wikitext_tokenization():
    assert detokenize("1 @,@ 000 and 2 @.@ 5 and well @-@ known") == "1,000 and 2.5 and well-known"
    assert detokenize(" = = History = = \n") == " == History ==\n"
    assert detokenize(" = = = Early life = = = \n") == " === Early life ===\n"
    assert detokenize("he said , it 's the players ' ball ( mostly ) .") == "he said, it's the players' ball (mostly) ."
    assert detokenize('a " quoted " word') == 'a "quoted" word'
    assert detokenize("over N miles") == "over 1 miles"


def test_batched_scoring_equals_scoring_each_request_alone():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    gen = torch.Generator().manual_seed(1)
    requests = []
    for length in (17, 3, 9, 17, 2, 12, 5):
        tokens = torch.randint(0, SMALL.vocab_size, (length,), generator=gen).tolist()
        requests.append(Request(tokens, scored=max(1, length // 3)))
    batched = score_requests(model, requests, batch_size=3, device=CPU, dtype=torch.float32)
    for r, got in zip(requests, batched, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([r.tokens[:-1]])).logits[0], dim=-1)  # (T, V)
        targets = r.tokens[1:]
        positions = range(len(targets) - r.scored, len(targets))
        assert got.logprob == pytest.approx(sum(logp[i, targets[i]].item() for i in positions), rel=1e-5)
        assert got.greedy == all(int(logp[i].argmax()) == targets[i] for i in positions)


def test_a_request_longer_than_the_model_is_refused():
    with pytest.raises(ValueError, match="does not fit the model"):
        score_requests(NextLetter(block_size=4), [Request([1] * 6, 2)], batch_size=1, device=CPU, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ HellaSwag


def test_hellaswag_prompt_is_lm_evals_preprocessing():
    # lm-eval's hellaswag utils.preprocess: strip; " [title]" → ". "; drop [...]; each double space → one.
    assert clean_hellaswag(" [header] How to x [title] Do y. ") == " How to x. Do y."
    assert clean_hellaswag("[step] Pour  water [substeps] slowly.") == " Pour water slowly."
    assert clean_hellaswag("a   b") == "a  b"  # one pass, as lm-eval's str.replace
    item = hellaswag_item({"activity_label": "Running", "ctx_a": "A man ties his shoes.", "ctx_b": "then he",
                           "endings": ["runs.", " [step] flies."], "label": "1"})
    # query = activity_label + ": " + ctx_a + " " + ctx_b.capitalize(); the strip comes before the brackets go,
    # so "[step] flies." keeps a leading space (and is scored as "  flies.", as lm-eval scores it).
    assert item == MultipleChoice("Running: A man ties his shoes. Then he", ("runs.", " flies."), 1)


def test_hellaswag_scores_each_ending_as_the_continuation_of_the_query():
    [first, second] = choice_requests([MultipleChoice("ab", ("cd", "e"), 0)], encode, context=64)
    assert first == Request([0, 1, 7, 2, 3], 3) and second == Request([0, 1, 7, 4], 2)  # " cd", " e"
    [cut] = choice_requests([MultipleChoice("abcdef", ("g",), 0)], encode, context=3)
    assert cut == Request([4, 5, 7, 6], 2)  # a context longer than the model's is cut from the left


def test_hellaswag_acc_sums_and_acc_norm_divides_by_characters():
    # Query "f"; NextLetter predicts g after f, ' ' after g, a after ' ', b after a ...
    #   " ga":      ' ' miss (after f comes g), g miss (after ' ' comes a), a miss → 3 MISS,       2 characters
    #   " a":       ' ' miss, a hit                                              → MISS + HIT,   1 character
    #   " abcdefg": ' ' miss, then seven hits                                    → MISS + 7 HIT, 7 characters
    # Summed, " a" is the most likely (fewest tokens); per character, " abcdefg" is.
    choices = ("ga", "a", "abcdefg")
    items = [MultipleChoice("f", choices, 1), MultipleChoice("f", choices, 2)]
    result = hellaswag(NextLetter(), items, encode=encode, context=64, batch_size=4, device=CPU)
    np.testing.assert_allclose(result.per_item["logprobs"][0], [3 * MISS, MISS + HIT, MISS + 7 * HIT], rtol=1e-6)
    assert result.per_item["chars"].tolist() == [[2, 1, 7], [2, 1, 7]]
    assert result.per_item["acc"].tolist() == [1, 0] and result.per_item["acc_norm"].tolist() == [0, 1]
    assert result.per_item["gold"].tolist() == [1, 2] and set(result.per_item) == set(PER_ITEM["hellaswag"])
    assert (result.acc, result.acc_norm, result.examples) == (0.5, 0.5, 2)
