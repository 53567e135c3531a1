"""Token files: a 256-byte header (magic, version, token count) followed by little-endian uint16 ids.

The header lets a reader reject a truncated or foreign file before training on garbage (as llm.c does).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from types import TracebackType

import numpy as np

from gptlab.errors import DataError

MAGIC = b"GPTLABTK"
VERSION = 1
HEADER_BYTES = 256
DTYPE = np.dtype("<u2")  # GPT-2 ids are < 50257 < 2**16
_HEADER = struct.Struct("<8sIIQ")  # magic, version, bytes per token, token count
FIX = "re-run `gptlab tokenize` (or `dvc repro tokenize`, or `dvc pull` to restore it)"


class ShardError(DataError):
    """A token file that is missing, truncated, foreign or corrupt; the message names the file and the fix."""


def _header(count: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, DTYPE.itemsize, count).ljust(HEADER_BYTES, b"\0")


class ShardWriter:
    """Streams token chunks to ``path`` through a temp file; the shard appears complete or not at all.

    >>> with ShardWriter(path) as w:
    ...     w.write(np.array([15496, 995], dtype=np.uint16))
    >>> w.sha256, w.count
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.count = 0
        self.sha256 = ""
        self._hash = hashlib.sha256()
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed by finish() or abort()
        self._file.write(_header(0))

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.dtype != DTYPE and tokens.size and (int(tokens.max()) >= 1 << 16 or int(tokens.min()) < 0):
            bad = int(tokens.max()) if int(tokens.max()) >= 1 << 16 else int(tokens.min())
            raise DataError(f"token id {bad} does not fit uint16; the tokenizer has too many ids")
        data = memoryview(np.ascontiguousarray(tokens, dtype=DTYPE)).cast("B")
        self._file.write(data)
        self._hash.update(data)
        self.count += tokens.size

    def finish(self) -> None:
        """Write the final header, fsync and rename the temp file to ``path``: the shard is complete."""
        self._file.seek(0)
        self._file.write(_header(self.count))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.sha256 = self._hash.hexdigest()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temp file; ``path`` is left as it was."""
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def _payload_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: str | Path, tokens: np.ndarray) -> str:
    """Write one complete shard; returns the sha256 of its token payload."""
    with ShardWriter(path) as writer:
        writer.write(tokens)
    return writer.sha256


def read_header(path: str | Path) -> int:
    """Validate the header and file size; return the token count."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path} does not exist: {FIX}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path} is {size} bytes, shorter than its header: {FIX}")
    with open(path, "rb") as f:
        magic, version, itemsize, count = _HEADER.unpack(f.read(_HEADER.size))
    if magic != MAGIC:
        raise ShardError(f"{path} is not a gptlab token file (magic {magic!r}, expected {MAGIC!r}): {FIX}")
    if version != VERSION or itemsize != DTYPE.itemsize:
        raise ShardError(f"{path} has format version {version}/{itemsize}B, expected {VERSION}/2B: {FIX}")
    expected = HEADER_BYTES + count * DTYPE.itemsize
    if size != expected:
        raise ShardError(f"{path} is {size} bytes but its header promises {expected} ({count} tokens): truncated? {FIX}")
    return count


def read_shard(path: str | Path) -> np.memmap:
    """Memory-map a shard's tokens (read-only) after checking its header."""
    count = read_header(path)
    return np.memmap(path, dtype=DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


def verify_shard(path: str | Path, sha256: str) -> None:
    """Header check plus the payload's sha256 against ``meta.json``: catches silent corruption."""
    read_header(path)
    actual = _payload_sha256(Path(path))
    if actual != sha256:
        raise ShardError(f"{path} has sha256 {actual[:12]}…, meta.json records {sha256[:12]}…: corrupt. {FIX}")
