from __future__ import annotations

import numpy as np
import pytest

from gptlab.data.shards import HEADER_BYTES, ShardError, ShardWriter, read_shard, verify_shard, write_shard


def test_header_round_trip(tmp_path):
    tokens = np.array([15496, 995, 50256, 0, 65535], dtype=np.uint16)
    digest = write_shard(tmp_path / "a.bin", tokens)
    assert (tmp_path / "a.bin").stat().st_size == HEADER_BYTES + 2 * len(tokens)
    np.testing.assert_array_equal(read_shard(tmp_path / "a.bin"), tokens)
    verify_shard(tmp_path / "a.bin", digest)


def test_streamed_writes_equal_one_write(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 50257, size=n, dtype=np.uint16) for n in (5, 0, 1000, 17)]
    with ShardWriter(tmp_path / "s.bin") as writer:
        for part in parts:
            writer.write(part)
    assert writer.sha256 == write_shard(tmp_path / "one.bin", np.concatenate(parts))
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_shard_is_refused_with_the_fix(tmp_path):
    write_shard(tmp_path / "t.bin", np.arange(100, dtype=np.uint16))
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-10])
    with pytest.raises(ShardError, match=r"truncated\? re-run `gptlab tokenize`"):
        read_shard(tmp_path / "t.bin")


def test_foreign_file_is_refused(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0" * 600)
    with pytest.raises(ShardError, match="not a gptlab token file"):
        read_shard(tmp_path / "x.bin")


def test_silent_corruption_is_caught_by_the_hash(tmp_path):
    digest = write_shard(tmp_path / "c.bin", np.arange(100, dtype=np.uint16))
    raw = bytearray((tmp_path / "c.bin").read_bytes())
    raw[HEADER_BYTES + 3] ^= 0xFF
    (tmp_path / "c.bin").write_bytes(bytes(raw))
    read_shard(tmp_path / "c.bin")  # the size still matches: only the hash can tell
    with pytest.raises(ShardError, match="corrupt"):
        verify_shard(tmp_path / "c.bin", digest)


def test_ids_that_do_not_fit_uint16_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not fit uint16"):
        write_shard(tmp_path / "big.bin", np.array([70000], dtype=np.int64))
    assert not (tmp_path / "big.bin").exists() and not list(tmp_path.iterdir())


def test_an_aborted_writer_leaves_the_old_shard_untouched(tmp_path):
    write_shard(tmp_path / "s.bin", np.arange(10, dtype=np.uint16))
    writer = ShardWriter(tmp_path / "s.bin")
    writer.write(np.arange(5, dtype=np.uint16))
    writer.abort()
    np.testing.assert_array_equal(read_shard(tmp_path / "s.bin"), np.arange(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]


def test_a_token_set_whose_shard_disagrees_with_meta_names_the_fix(tokens_dir):
    from gptlab.data.loader import TokenSet

    meta = TokenSet.open(tokens_dir, verify=True).meta
    shard = tokens_dir / meta["shards"][0]["name"]
    # The same number of tokens, different content: the header passes, only the hash can tell.
    raw = bytearray(shard.read_bytes())
    raw[HEADER_BYTES : HEADER_BYTES + 2] = bytes([raw[HEADER_BYTES] ^ 1, raw[HEADER_BYTES + 1]])
    shard.write_bytes(bytes(raw))
    TokenSet.open(tokens_dir)
    with pytest.raises(ShardError, match=r"corrupt\. re-run `gptlab tokenize` \(or `dvc repro tokenize`"):
        TokenSet.open(tokens_dir, verify=True)
    # A shard cut short by a failed copy is caught by its header, without hashing.
    shard.write_bytes(bytes(raw[:-100]))
    with pytest.raises(ShardError, match=rf"{shard.name} is .* bytes but its header promises .*truncated\?"):
        TokenSet.open(tokens_dir)
    shard.unlink()
    with pytest.raises(ShardError, match=rf"{shard.name} does not exist: re-run `gptlab tokenize`.*`dvc pull`"):
        TokenSet.open(tokens_dir)
