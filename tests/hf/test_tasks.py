"""Where LAMBADA and WikiText come from: pinned hub files (checked), local copies, and "not measured" offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptlab.hf.tasks import (
    KNOWN_SHA256,
    TaskDataUnavailable,
    TaskSource,
    fetch,
    load_hellaswag,
    load_texts,
    read_field,
)
from gptlab.pipeline.comparison import load_tasks
from gptlab.settings import replace

from ..conftest import HELLASWAG_ROWS, LAMBADA_TEXTS, WIKITEXT_PAGES, write_hellaswag_file, write_task_files

PINNED = "hf:EleutherAI/lambada_openai@879e19a2c9bb7ef03f9cf962089cf7d008f91e27/data/lambada_test.jsonl"


def test_sources_parse_and_print_back():
    source = TaskSource.parse(PINNED)
    assert (source.repo, source.revision, source.path) == (
        "EleutherAI/lambada_openai", "879e19a2c9bb7ef03f9cf962089cf7d008f91e27", "data/lambada_test.jsonl")
    assert str(source) == PINNED
    assert TaskSource.parse("local:/x/y.jsonl").path == "/x/y.jsonl" and str(TaskSource.parse("none")) == "none"
    with pytest.raises(ValueError, match="not hf:OWNER/NAME@REVISION/FILE"):
        TaskSource.parse("hf:EleutherAI/lambada_openai/data.jsonl")


def test_the_seed_pins_the_files_whose_checksums_gptlab_knows(tiny_cfg):
    for key in ("lambada", "wikitext", "hellaswag"):
        source = TaskSource.parse(getattr(tiny_cfg.eval, key))
        assert (source.repo, source.revision, source.path) in KNOWN_SHA256


def test_local_copies_read_in_file_order(tmp_path: Path):
    lambada, wikitext = write_task_files(tmp_path)
    assert load_texts(f"local:{lambada}", "text", setting="eval.lambada")[0] == LAMBADA_TEXTS
    rows, provenance = load_texts(f"local:{wikitext}", "page", setting="eval.wikitext")
    assert rows == WIKITEXT_PAGES and provenance["source"] == f"local:{wikitext}" and len(provenance["sha256"]) == 64


def test_a_file_without_the_field_names_file_line_and_field(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"passage": "no"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2 \(`eval.lambada`\): no string 'text' key"):
        read_field(bad, "text", setting="eval.lambada")
    with pytest.raises(FileNotFoundError, match="`eval.lambada` is local:/nope.jsonl, which is not a file"):
        fetch(TaskSource.parse("local:/nope.jsonl"), setting="eval.lambada")


def test_offline_a_hub_file_is_not_measured_and_the_fix_is_named():
    with pytest.raises(TaskDataUnavailable, match=r"HF_HUB_OFFLINE=1.*`eval.lambada: local:PATH`"):
        fetch(TaskSource.parse(PINNED), setting="eval.lambada")


def test_a_cached_file_that_is_not_the_pinned_one_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from huggingface_hub import constants

    source = TaskSource.parse(PINNED)
    snapshot = Path(constants.HF_HUB_CACHE) / "datasets--EleutherAI--lambada_openai" / "snapshots" / source.revision
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "data" / "lambada_test.jsonl").write_text(json.dumps({"text": "not the real file"}) + "\n")
    try:
        with pytest.raises(ValueError, match="the pinned file has 4aa8d02cd17c…: delete it from the Hugging Face cache"):
            fetch(source, setting="eval.lambada")
    finally:
        import shutil

        shutil.rmtree(snapshot.parents[1])


def test_unavailable_and_disabled_tasks_are_reported_with_the_reason(tiny_cfg, tmp_path: Path):
    lambada, _ = write_task_files(tmp_path)
    tasks = load_tasks(replace(tiny_cfg, eval={"lambada": f"local:{lambada}", "wikitext": "none"}).eval)
    assert tasks.texts["lambada"] == LAMBADA_TEXTS
    assert tasks.unavailable["wikitext"] == "`eval.wikitext` is none"
    # The seed's pinned HellaSwag file is not in the (empty, offline) hub cache: not measured, and why.
    assert "`eval.hellaswag: local:PATH`" in tasks.unavailable["hellaswag"] and set(tasks.unavailable) == {
        "wikitext", "hellaswag"}


def test_hellaswag_reads_lm_evals_prompt_from_a_local_copy(tmp_path: Path):
    items, provenance = load_hellaswag(f"local:{write_hellaswag_file(tmp_path)}", setting="eval.hellaswag")
    assert len(items) == len(HELLASWAG_ROWS) and len(provenance["sha256"]) == 64
    # "[header] How to water a plant [title] Check the soil." + " " + "".capitalize(), cleaned as lm-eval does
    assert items[1].query == "Home and Garden: How to water a plant. Check the soil."
    assert items[1].choices[0] == " Pour water slowly around the base." and items[0].gold == 0


def test_a_hellaswag_row_with_a_wrong_label_names_the_row(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**HELLASWAG_ROWS[0], "label": "4"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl \(`eval.hellaswag`\), row 1: label '4' is not an index of its 4"):
        load_hellaswag(f"local:{bad}", setting="eval.hellaswag")
    bad.write_text(json.dumps({"ctx": "no fields"}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: a HellaSwag row needs strings activity_label, ctx_a, ctx_b"):
        load_hellaswag(f"local:{bad}", setting="eval.hellaswag")
