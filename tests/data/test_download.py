from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptlab.data import download as download_module
from gptlab.data.download import download, iter_raw, iter_raw_batches, read_manifest
from gptlab.data.sources import SourceError, demo_documents
from gptlab.settings import DataConfig

COMMIT = "79d93d786212f7344586290adb811d4ae6a1762c"


def _cfg(source: str, **changes) -> DataConfig:
    values = {"source": source, "text_field": "text", "max_docs": None, "expected_docs": None,
              "max_doc_chars": 1_000_000, "num_proc": 2} | changes
    return DataConfig(**values)


def _docs(raw_dir: Path) -> list[str]:
    return [doc for batch in iter_raw(raw_dir) for doc in batch]


def _rows(raw_dir: Path) -> list[int]:
    return [int(r) for rows, _ in iter_raw_batches(raw_dir) for r in rows]


def _nothing_left(parent: Path, name: str = "raw") -> bool:
    return not (parent / name).exists() and not (parent / f".{name}.partial").exists()


def test_demo_corpus_is_real_english_from_the_standard_library(tmp_path):
    result = download(_cfg("demo"), tmp_path / "raw")
    docs = _docs(tmp_path / "raw")
    assert result.documents == len(docs) == len(demo_documents()) > 50
    assert sum(map(len, docs)) > 300_000 and "statement" in docs[0] + docs[1]
    manifest = read_manifest(tmp_path / "raw")
    assert manifest["documents"] == manifest["rows"] == len(docs) and len(manifest["text_sha256"]) == 64
    assert _rows(tmp_path / "raw") == list(range(len(docs)))


def test_local_txt_jsonl_and_parquet_with_a_text_field(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("first document")
    (corpus / "b.jsonl").write_text(json.dumps({"body": "second"}) + "\n\n" + json.dumps({"body": "third"}) + "\n")
    pq.write_table(pa.table({"body": ["fourth", "", None]}), corpus / "sub" / "c.parquet")
    (corpus / "notes.md").write_text("not a corpus file: a folder source ignores it")
    result = download(_cfg(f"local:{corpus}", text_field="body"), tmp_path / "raw")
    assert _docs(tmp_path / "raw") == ["first document", "second", "third", "fourth"]
    assert _rows(tmp_path / "raw") == [0, 1, 2, 3]  # rows 4 and 5 (empty, null) are skipped
    assert result.rows == 6 and result.skipped_empty == 2
    # One file and a glob name the same kind of source.
    download(_cfg(f"local:{corpus}/b.jsonl", text_field="body"), tmp_path / "one")
    assert _docs(tmp_path / "one") == ["second", "third"]
    download(_cfg(f"local:{corpus}/**/*.parquet", text_field="body"), tmp_path / "glob")
    assert _docs(tmp_path / "glob") == ["fourth"]


def test_max_docs_keeps_the_first_documents(tmp_path):
    download(_cfg("demo", max_docs=5), tmp_path / "raw")
    assert _docs(tmp_path / "raw") == demo_documents()[:5]


def test_bad_records_are_skipped_counted_and_located(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(b"caf\xe9 is Latin-1, not UTF-8")  # row 0
    (corpus / "b.txt").write_text("   \n\t ")  # row 1: whitespace only
    lines = [
        json.dumps({"text": "good one"}).encode(),  # row 2
        b'{"text": "bad byte \xff here"}',  # row 3
        b'{"text": "lone surrogate \\ud800"}',  # row 4: valid JSON, not encodable as UTF-8
        json.dumps({"text": "x" * 200}).encode(),  # row 5: longer than max_doc_chars
        json.dumps({"text": None}).encode(),  # row 6
        json.dumps({"text": "good two"}).encode(),  # row 7
    ]
    (corpus / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    column = pa.array([b"good three", b"bad \xfe", b"y" * 300, b"good four"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": column}), corpus / "d.parquet")  # rows 8..11
    result = download(_cfg(f"local:{corpus}", max_doc_chars=100), tmp_path / "raw")

    assert _docs(tmp_path / "raw") == ["good one", "good two", "good three", "good four"]
    assert _rows(tmp_path / "raw") == [2, 7, 8, 11]
    manifest = read_manifest(tmp_path / "raw")
    assert manifest["skipped"] == {"empty": 2, "invalid_utf8": 4, "too_large": 2}
    assert result.skipped == {"empty": 2, "invalid_utf8": 4, "too_large": 2} and result.rows == 12
    where = {(e["where"].replace(str(corpus) + "/", ""), e["reason"]) for e in manifest["skipped_examples"]}
    assert where == {
        ("a.txt", "invalid_utf8"), ("b.txt", "empty"), ("c.jsonl, line 2", "invalid_utf8"),
        ("c.jsonl, line 3", "invalid_utf8"), ("c.jsonl, line 4", "too_large"), ("c.jsonl, line 5", "empty"),
        ("d.parquet, row 1", "invalid_utf8"), ("d.parquet, row 2", "too_large"),
    }


def test_an_enormous_txt_file_is_skipped_without_reading_it(tmp_path, monkeypatch):
    (tmp_path / "huge.txt").write_bytes(b"z" * 5000)  # > 4 bytes x max_doc_chars: cannot fit
    (tmp_path / "small.txt").write_text("fits")
    read, read_bytes = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or read_bytes(self))
    result = download(_cfg(f"local:{tmp_path}/*.txt", max_doc_chars=1000), tmp_path / "raw")
    assert read == ["small.txt"] and result.skipped["too_large"] == 1
    assert _docs(tmp_path / "raw") == ["fits"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.jsonl", json.dumps({"content": "hi"}) + "\n", r"x.jsonl, line 1: no 'text' key \(found: content\); set data.text_field"),
        ("x.jsonl", '{"text": "ok"}\n{"text": "unterminated\n', r"x.jsonl, line 2: not JSON .*fix or delete the line"),
        ("x.jsonl", json.dumps({"text": 42}) + "\n", r"x.jsonl, line 1: 'text' holds a int, not text"),
        ("x.parquet", None, r"x.parquet: no column 'text' \(columns: body\); set data.text_field"),
    ],
)
def test_a_source_with_the_wrong_structure_names_file_row_and_fix(tmp_path, name, content, message):
    if content is None:
        pq.write_table(pa.table({"body": ["hello"]}), tmp_path / name)
    else:
        (tmp_path / name).write_text(content)
    with pytest.raises(SourceError, match=message):
        download(_cfg(f"local:{tmp_path / name}"), tmp_path / "raw")
    assert _nothing_left(tmp_path)  # nothing that looks complete is left behind


def test_an_empty_glob_is_explained(tmp_path):
    with pytest.raises(SourceError, match="matches no .txt, .jsonl or .parquet file"):
        download(_cfg(f"local:{tmp_path}/nothing*"), tmp_path / "raw")


def test_a_wrong_document_count_is_refused_and_the_old_download_survives(tmp_path):
    download(_cfg("demo"), tmp_path / "raw")
    before = read_manifest(tmp_path / "raw")
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "three.parquet")
    with pytest.raises(SourceError, match=r"holds 3 rows but data.expected_docs is 4.*Nothing was written"):
        download(_cfg(f"local:{tmp_path}/three.parquet", expected_docs=4), tmp_path / "raw")
    (tmp_path / "three.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in "abc"))
    with pytest.raises(SourceError, match="holds 3 rows but data.expected_docs is 4"):  # counted while reading
        download(_cfg(f"local:{tmp_path}/three.jsonl", expected_docs=4), tmp_path / "raw")
    assert read_manifest(tmp_path / "raw") == before and not (tmp_path / ".raw.partial").exists()
    download(_cfg(f"local:{tmp_path}/three.jsonl", expected_docs=3), tmp_path / "raw")
    assert _docs(tmp_path / "raw") == ["a", "b", "c"]


def test_leftovers_of_a_killed_download_are_discarded(tmp_path):
    stale = tmp_path / ".raw.partial"
    stale.mkdir()
    (stale / "docs-00000.parquet").write_bytes(b"half a file")
    download(_cfg("demo", max_docs=3), tmp_path / "raw")
    assert not stale.exists() and [f.name for f in (tmp_path / "raw").iterdir()] != []
    assert sorted(f.name for f in (tmp_path / "raw").iterdir()) == ["docs-00000.parquet", "manifest.json"]


def test_raw_files_split_at_the_configured_size_and_read_back_from_any_document(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "DOCS_PER_FILE", 10)
    download(_cfg("demo"), tmp_path / "raw")
    manifest = read_manifest(tmp_path / "raw")
    n = len(demo_documents())
    assert [f["documents"] for f in manifest["files"]] == [10] * (n // 10) + ([n % 10] if n % 10 else [])
    for start in (0, 9, 10, 35, n - 1, n):
        texts = [t for _, batch in iter_raw_batches(tmp_path / "raw", start=start, batch_size=4) for t in batch]
        assert texts == demo_documents()[start:]


# ------------------------------------------------------------------------------------------ the hub


def _hub_dataset(cache: Path, repo: str, files: dict[str, list[str]]) -> None:
    """A dataset as huggingface_hub's cache holds it after a download (snapshots/<commit>/<path>)."""
    root = cache / f"datasets--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    for name, texts in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".parquet"):
            pq.write_table(pa.table({"text": texts}), snapshot / name)
        else:
            (snapshot / name).write_text("\n".join(texts))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: tests never reach the network
    return cache


def test_hub_train_parquet_files_at_the_pinned_commit_are_read_in_order(tmp_path, hub_cache):
    _hub_dataset(hub_cache, "owner/corpus", {
        "README.md": ["a dataset card"],
        "plain_text/train-00001-of-00002.parquet": ["three", "four"],
        "plain_text/train-00000-of-00002.parquet": ["one", "", "two"],
        "plain_text/test-00000-of-00001.parquet": ["held-out, not part of the train split"],
    })
    result = download(_cfg(f"hf:owner/corpus@{COMMIT}", expected_docs=5), tmp_path / "raw")
    assert _docs(tmp_path / "raw") == ["one", "two", "three", "four"]
    assert _rows(tmp_path / "raw") == [0, 2, 3, 4] and result.skipped_empty == 1
    manifest = read_manifest(tmp_path / "raw")
    assert manifest["revision"] == COMMIT
    assert manifest["source_files"] == ["plain_text/train-00000-of-00002.parquet",
                                        "plain_text/train-00001-of-00002.parquet"]
    with pytest.raises(SourceError, match=r"holds 5 rows but data.expected_docs is 8,013,769"):
        download(_cfg(f"hf:owner/corpus@{COMMIT}", expected_docs=8_013_769), tmp_path / "raw")


def test_a_hub_subset_reads_only_the_files_it_needs(tmp_path, hub_cache):
    _hub_dataset(hub_cache, "owner/corpus", {"data/train-00000-of-00002.parquet": ["one", "two", "three"]})
    # The second file was never downloaded: a max_docs subset must not need it.
    snapshot = hub_cache / "datasets--owner--corpus" / "snapshots" / COMMIT / "data"
    (snapshot / "train-00001-of-00002.parquet").write_bytes(b"not downloaded yet")  # unreadable if opened
    download(_cfg(f"hf:owner/corpus@{COMMIT}", max_docs=2, expected_docs=99), tmp_path / "raw")
    assert _docs(tmp_path / "raw") == ["one", "two"]


def test_a_commit_missing_from_the_offline_cache_says_how_to_get_it(tmp_path, hub_cache):
    with pytest.raises(SourceError, match=r"hf:owner/absent@79d93d7.* is not \(completely\) in the hub cache .*HF_HUB_OFFLINE"):
        download(_cfg(f"hf:owner/absent@{COMMIT}"), tmp_path / "raw")
    assert _nothing_left(tmp_path)


def test_a_hub_dataset_without_parquet_is_explained(tmp_path, hub_cache):
    _hub_dataset(hub_cache, "owner/scripted", {"scripted.py": ["# a loading script"], "data.tar": ["..."]})
    with pytest.raises(SourceError, match=r"holds no parquet files \(files: data.tar, scripted.py\)"):
        download(_cfg(f"hf:owner/scripted@{COMMIT}"), tmp_path / "raw")
