"""Parity with the reference harness: lm-evaluation-harness 0.4.13 (`--model hf`) on a model exported with
`gptlab export-hf` gives the numbers gptlab computes for the same model, task by task and item by item.

The tasks are lm-eval's own definitions (its lambada_openai, wikitext and hellaswag YAMLs, included as they
ship), pointed at small local files in the pinned files' formats; only the data source changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lm_eval  # a test dependency: the dev extra pins lm_eval[hf]==0.4.13
import numpy as np
import pytest
import torch

from gptlab.core.downstream import hellaswag, lambada, wikitext
from gptlab.core.model import GPT
from gptlab.hf.tasks import hellaswag_items, read_rows
from gptlab.hf.weights import export_hf
from gptlab.settings import ModelConfig

from ..conftest import HELLASWAG_ROWS, LAMBADA_TEXTS, WIKITEXT_PAGES, write_hellaswag_file, write_task_files

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
CONTEXT = 64  # short, so WikiText articles need several rolling windows and one LAMBADA context is cut
# A passage longer than the context (cut from the left by both) and one the model never saw in training.
EXTRA_LAMBADA = [
    " ".join(["The for statement is used to iterate over the elements of a sequence."] * 6) + " It repeats",
    "A dictionary maps keys to values, and a list holds values",
]


def _task_yaml(folder: Path, name: str, include: str, dataset: str, split: str, data: Path, **extra: str) -> None:
    lines = [f"include: {Path(lm_eval.__file__).parent / 'tasks' / include}", f"task: {name}",
             f"dataset_path: {dataset}", "dataset_name: null", "dataset_kwargs:", "  data_files:",
             f"    {split}: {data}", *(f"{k}: {v}" for k, v in extra.items())]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def _train_small_model(encode) -> GPT:
    """A 2-layer GPT fitted for a few seconds to some of the task texts: accuracies that are neither 0 nor 1."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=48, block_size=CONTEXT, vocab_size=50304, dropout=0.0,
                            bias=True))
    texts = [*LAMBADA_TEXTS[:2], *(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()} {r['endings'][0]}"
                                   for r in HELLASWAG_ROWS[:2])]
    rows = [torch.tensor(encode(t)[: CONTEXT + 1]) for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        for row in rows:
            loss = model(row[None, :-1], row[None, 1:]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def test_lm_eval_on_the_exported_model_matches_gptlab(tmp_path: Path, bpe_cache: Path):
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from gptlab.data.tokenizer import get_encoding

    encode = get_encoding("gpt2").encode_ordinary
    lambada_file, wikitext_file = write_task_files(tmp_path / "data")
    with lambada_file.open("a") as f:
        f.write("".join(json.dumps({"text": t}) + "\n" for t in EXTRA_LAMBADA))
    hellaswag_file = write_hellaswag_file(tmp_path / "data")
    model = _train_small_model(encode)
    export_hf(model, tmp_path / "hf")

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _task_yaml(tasks, "parity_lambada", "lambada/lambada_openai.yaml", "json", "test", lambada_file)
    _task_yaml(tasks, "parity_wikitext", "wikitext/wikitext.yaml", "parquet", "test", wikitext_file,
               training_split="null", validation_split="null")
    _task_yaml(tasks, "parity_hellaswag", "hellaswag/hellaswag.yaml", "parquet", "validation", hellaswag_file,
               training_split="null")
    out = simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32", device="cpu", batch_size=4,
        tasks=["parity_lambada", "parity_wikitext", "parity_hellaswag"], num_fewshot=0, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False), log_samples=True,
    )
    theirs = {task: out["results"][task] for task in ("parity_lambada", "parity_wikitext", "parity_hellaswag")}

    texts = [*LAMBADA_TEXTS, *EXTRA_LAMBADA]
    ours_lambada = lambada(model, texts, encode=encode, context=CONTEXT, batch_size=4, device=CPU)
    ours_wikitext = wikitext(model, WIKITEXT_PAGES, encode=encode, context=CONTEXT, batch_size=4, device=CPU)
    items = hellaswag_items(read_rows(hellaswag_file, setting="eval.hellaswag"), where="test")
    ours_hellaswag = hellaswag(model, items, encode=encode, context=CONTEXT, batch_size=4, device=CPU)

    # Item by item: each passage's and each ending's log-likelihood.
    samples = out["samples"]
    lambada_ll = [s["resps"][0][0][0] for s in sorted(samples["parity_lambada"], key=lambda s: s["doc_id"])]
    np.testing.assert_allclose(lambada_ll, ours_lambada.per_item["logprob"], rtol=1e-5)
    endings_ll = [[r[0][0] for r in s["resps"]] for s in sorted(samples["parity_hellaswag"], key=lambda s: s["doc_id"])]
    np.testing.assert_allclose(endings_ll, ours_hellaswag.per_item["logprobs"], rtol=1e-5)
    wiki_ll = [s["resps"][0][0] for s in sorted(samples["parity_wikitext"], key=lambda s: s["doc_id"])]
    np.testing.assert_allclose(wiki_ll, ours_wikitext.per_item["logprob"], rtol=1e-5)
    # Accuracies exactly; perplexities to 1e-5 relative (float32 forwards, different batching).
    assert theirs["parity_lambada"]["acc,none"] == ours_lambada.acc
    assert theirs["parity_lambada"]["perplexity,none"] == pytest.approx(ours_lambada.ppl, rel=1e-5)
    assert theirs["parity_wikitext"]["word_perplexity,none"] == pytest.approx(ours_wikitext.word_ppl, rel=1e-5)
    assert theirs["parity_wikitext"]["byte_perplexity,none"] == pytest.approx(ours_wikitext.byte_ppl, rel=1e-5)
    assert theirs["parity_wikitext"]["bits_per_byte,none"] == pytest.approx(ours_wikitext.bits_per_byte, rel=1e-5)
    assert theirs["parity_hellaswag"]["acc,none"] == ours_hellaswag.acc
    assert theirs["parity_hellaswag"]["acc_norm,none"] == ours_hellaswag.acc_norm
    # Not a vacuous match: the model gets some items right and some wrong.
    assert 0 < ours_lambada.acc < 1 and 0 < ours_hellaswag.acc_norm < 1

    assert math.isfinite(ours_wikitext.word_ppl)
