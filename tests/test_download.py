from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptlab.config import DataConfig
from gptlab.data.download import download, iter_raw
from gptlab.data.sources import SourceError, demo_documents


def _docs(raw_dir) -> list[str]:
    return [doc for batch in iter_raw(raw_dir) for doc in batch]


def test_demo_corpus_is_real_english_from_the_standard_library(tmp_path):
    result = download(DataConfig(source="demo", text_field="text", max_docs=None), tmp_path / "raw")
    docs = _docs(tmp_path / "raw")
    assert result.documents == len(docs) == len(demo_documents()) > 50
    assert sum(map(len, docs)) > 300_000 and "statement" in docs[0] + docs[1]
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["documents"] == len(docs) and len(manifest["text_sha256"]) == 64


def test_local_txt_jsonl_and_parquet_with_a_text_field(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("first document")
    (corpus / "b.jsonl").write_text(json.dumps({"body": "second"}) + "\n\n" + json.dumps({"body": "third"}) + "\n")
    pq.write_table(pa.table({"body": ["fourth", "", None]}), corpus / "c.parquet")
    result = download(DataConfig(source=f"local:{corpus}", text_field="body", max_docs=None), tmp_path / "raw")
    assert _docs(tmp_path / "raw") == ["first document", "second", "third", "fourth"]
    assert result.skipped_empty == 2


def test_max_docs_keeps_the_first_documents(tmp_path):
    download(DataConfig(source="demo", text_field="text", max_docs=5), tmp_path / "raw")
    assert _docs(tmp_path / "raw") == demo_documents()[:5]


def test_a_missing_text_field_names_the_file_and_the_setting(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    with pytest.raises(SourceError, match=r"x.jsonl, line 1: no 'text' key; set data.text_field"):
        download(DataConfig(source=f"local:{tmp_path}/*.jsonl", text_field="text", max_docs=None), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # nothing that looks complete is left behind


def test_an_empty_glob_is_explained(tmp_path):
    with pytest.raises(SourceError, match="matches no .txt, .jsonl or .parquet file"):
        download(DataConfig(source=f"local:{tmp_path}/nothing*", text_field="text", max_docs=None), tmp_path / "raw")
