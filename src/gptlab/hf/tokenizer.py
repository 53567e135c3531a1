"""GPT-2's tokenizer files (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``)
written from the BPE tiktoken runs, so an exported folder loads with ``AutoTokenizer.from_pretrained`` offline
and encodes exactly as gptlab does.

tiktoken and Hugging Face describe the same byte-level BPE two ways:

- tiktoken: ``rank → token bytes`` (``decode_single_token_bytes``); encoding merges, at each step, the adjacent
  pair whose concatenation has the lowest rank.
- Hugging Face: ``vocab.json`` (token string → id) and ``merges.txt`` (pairs in priority order), over strings
  in which every byte is one printable character (GPT-2's ``bytes_to_unicode``: bytes that are printable
  Latin-1 stand for themselves, the other 68 are moved to U+0100 onwards in byte order).

The id of a token is its rank. Its merge is recovered from the ranks alone: encoding the token's bytes with
only the ranks below its own leaves exactly the two parts whose merge makes it (checked for every token).
"""

from __future__ import annotations

import json
from pathlib import Path

from gptlab.data.tokenizer import EOT, get_encoding
from gptlab.errors import DataError
from gptlab.fileio import atomic_path

EOT_TEXT = "<|endoftext|>"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → character table: printable ``!``–``~``, ``¡``–``¬``, ``®``–``ÿ`` map to themselves; the
    remaining bytes (controls, space, DEL, NBSP, soft hyphen…) to ``chr(256 + k)``, k counting them in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, moved = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + moved)
            moved += 1
    return table


def _parts_below(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """``token``'s bytes merged by BPE using only ranks below ``limit``."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, at = rank, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def vocab_and_merges(name: str = "gpt2") -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The Hugging Face ``vocab`` (with ``<|endoftext|>``) and ``merges`` of tiktoken's ``name`` encoding."""
    enc = get_encoding(name)
    tokens = [enc.decode_single_token_bytes(rank) for rank in range(EOT)]  # every id below EOT is a BPE token
    ranks = {token: rank for rank, token in enumerate(tokens)}
    to_text = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_text[b] for b in token)

    vocab = {text(token): rank for rank, token in enumerate(tokens)}
    vocab[EOT_TEXT] = EOT
    merges = []
    for rank, token in enumerate(tokens):
        if len(token) == 1:
            continue
        parts = _parts_below(token, ranks, rank)
        if len(parts) != 2:
            raise DataError(f"BPE token {rank} ({token!r}) is not one merge of lower-ranked tokens: not GPT-2's BPE")
        merges.append((text(parts[0]), text(parts[1])))
    return vocab, merges


def write_tokenizer_files(out_dir: str | Path, *, model_max_length: int, name: str = "gpt2") -> list[Path]:
    """GPT-2's tokenizer files in ``out_dir`` (``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads them)."""
    out_dir = Path(out_dir)
    vocab, merges = vocab_and_merges(name)
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **special,
        "add_prefix_space": False,  # tiktoken adds none: " Hello" and "Hello" are different tokens
        "add_bos_token": False,  # nor a <|endoftext|> at the start (lm-eval adds its own where it needs one)
        "errors": "replace",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # decode gives back the text, as tiktoken's decode
    }
    contents = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
    written = []
    for filename, content in contents.items():
        with atomic_path(out_dir / filename) as tmp:
            tmp.write_text(content, encoding="utf-8")
        written.append(out_dir / filename)
    return written
