"""GPT-2's byte-level BPE through tiktoken, loadable offline.

tiktoken's ``gpt2`` and ``r50k_base`` encodings are the same BPE: identical 50,256 mergeable ranks, the same
split regex and ``<|endoftext|>`` = 50256. We load the single-file ``r50k_base`` form because it is one file
with a published sha256 that tiktoken checks, so an offline machine can be seeded from a registry package
(``gptlab seed-tokenizer``; the ``openai-whisper`` sdist on PyPI ships the identical file as
``whisper/assets/gpt2.tiktoken``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

from gptlab.errors import DataError, GptlabError, MissingInputError

R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = 50256
_TIKTOKEN_NAMES = {"gpt2": "r50k_base"}


class TokenizerUnavailable(GptlabError, RuntimeError):
    """The BPE files can be neither read from the cache nor downloaded."""


def cache_dir() -> Path:
    """Where tiktoken looks for cached BPE files (its own rule: TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR, tmp)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def get_encoding(name: str = "gpt2") -> tiktoken.Encoding:
    """The tokenizer named in ``tokenize.tokenizer``."""
    if name not in _TIKTOKEN_NAMES:
        raise DataError(f"tokenizer {name!r} is not supported; use one of {sorted(_TIKTOKEN_NAMES)}")
    try:
        return tiktoken.get_encoding(_TIKTOKEN_NAMES[name])
    except Exception as e:  # tiktoken raises requests/urllib/blobfile errors when offline
        raise TokenizerUnavailable(
            f"the {name} BPE is not in tiktoken's cache ({cache_dir()}) and could not be downloaded ({e}). "
            "Offline, seed the cache from PyPI: `make tokenizer`, or "
            "`pip download --no-deps --no-binary :all: openai-whisper==20250625 -d /tmp/w && "
            "gptlab seed-tokenizer /tmp/w/openai_whisper-20250625.tar.gz`"
        ) from e


def ranks_file(name: str = "gpt2") -> Path:
    """The cached BPE ranks file behind ``name`` (after :func:`get_encoding` succeeded once)."""
    get_encoding(name)
    return cache_dir() / hashlib.sha1(R50K_URL.encode()).hexdigest()


def token_byte_lengths(enc: tiktoken.Encoding) -> np.ndarray:
    """``lengths[id]``: UTF-8 bytes token ``id`` decodes to (special tokens such as ``<|endoftext|>``: 0).

    GPT-2's BPE is byte-level and lossless, so the bytes of a token sequence are the sum of its tokens' bytes:
    bits per byte need no decoding of the text.
    """
    special = set(enc.special_tokens_set)
    lengths = np.zeros(enc.n_vocab, dtype=np.int64)
    for i in range(enc.n_vocab):
        try:
            token = enc.decode_single_token_bytes(i)
        except KeyError:  # an id with no token (gaps in some vocabularies)
            continue
        if token.decode("utf-8", "replace") not in special:
            lengths[i] = len(token)
    return lengths


def encoding_from_file(path: str | Path) -> tiktoken.Encoding:
    """Build the GPT-2 encoding from a ranks file (used by logged models, which carry their own copy)."""
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != R50K_SHA256:
        raise DataError(f"{path} is not GPT-2's BPE ranks file (sha256 mismatch); re-log the model")
    # The .tiktoken format: one "base64(token) rank" pair per line (as tiktoken.load reads it).
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=EOT + 1,
    )


def _read_ranks(source: Path) -> bytes:
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            for member in tar.getmembers():
                if member.name.endswith(("/gpt2.tiktoken", "/r50k_base.tiktoken")):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        return handle.read()
        raise DataError(f"{source} holds no gpt2.tiktoken; expected the openai-whisper sdist (20250625)")
    return source.read_bytes()


def seed_cache(source: str | Path) -> Path:
    """Copy GPT-2's BPE ranks (a ``.tiktoken`` file, or an sdist that contains one) into tiktoken's cache."""
    source = Path(source)
    if not source.is_file():
        raise MissingInputError(f"{source} does not exist")
    data = _read_ranks(source)
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise DataError(f"{source}: sha256 {digest} is not GPT-2's BPE ({R50K_SHA256}); nothing was written")
    target = cache_dir() / hashlib.sha1(R50K_URL.encode()).hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target
