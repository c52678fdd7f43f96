"""storage.direct_io: large local writes past the page cache, exact bytes, and the buffered fallback."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from storage import direct_io
from storage.root import StoreRoot


def _takes_o_direct(folder) -> bool:
    """Whether this filesystem accepts O_DIRECT, probed independently of the module under test."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(folder / "probe")
    return True


def test_exact_bytes_for_unaligned_sizes_and_a_reused_buffer(tmp_path):
    rng = np.random.default_rng(0)
    direct = _takes_o_direct(tmp_path)
    # Largest first, so the later writes reuse a buffer holding stale bytes past their end; the first one
    # goes through the buffer in three pieces.
    for i, n in enumerate([2 * direct_io._CHUNK + 12345, 3 * 2**20 + 123, 2**20, 2**20 + 1, 2**20 + 4095]):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        path = tmp_path / f"f{i}"
        assert direct_io.write_direct(path, data) is direct
        if direct:
            assert path.read_bytes() == data  # exact length: the padding of the last block was cut off
            assert len(direct_io._local.buffer) <= direct_io._CHUNK  # bounded by the piece, not the file


def test_small_files_are_left_to_the_page_cache(tmp_path):
    assert direct_io.write_direct(tmp_path / "small", b"x" * (direct_io.MIN_DIRECT_BYTES - 1)) is False
    assert not (tmp_path / "small").exists()


def test_store_root_falls_back_when_the_filesystem_refuses(tmp_path, monkeypatch):
    """A filesystem that refuses O_DIRECT (EINVAL at open, as FUSE or network mounts may) gets a buffered write
    with the same content, and is not asked again."""
    real_open = os.open
    refused = []

    def refusing_open(path, flags, *a, **k):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(direct_io, "_refused_devices", set())
    root = StoreRoot(tmp_path / "store")
    data = np.random.default_rng(1).integers(0, 256, 2 * 2**20 + 7, dtype=np.uint8).tobytes()
    for name in ("a.bin", "b.bin"):
        root.write_bytes(name, data, durable=False)
        assert (tmp_path / "store" / name).read_bytes() == data
    assert len(refused) == (1 if hasattr(os, "O_DIRECT") else 0)  # the second write did not try again
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["a.bin", "b.bin"]  # no temporaries left


@pytest.mark.parametrize("durable", [False, True])
def test_store_root_large_write_is_whole_and_replaces(tmp_path, durable):
    root = StoreRoot(tmp_path / "store")
    rng = np.random.default_rng(2)
    first = rng.integers(0, 256, 5 * 2**20 + 3, dtype=np.uint8).tobytes()
    second = rng.integers(0, 256, 2**20 + 9, dtype=np.uint8).tobytes()
    root.write_bytes("c/0", first, durable=durable)
    root.write_bytes("c/0", second, durable=durable)  # a shorter file replaces a longer one whole
    assert (tmp_path / "store" / "c" / "0").read_bytes() == second
    assert [p.name for p in (tmp_path / "store" / "c").iterdir()] == ["0"]


def test_pieces_are_written_as_their_concatenation(tmp_path):
    """A file given as pieces (what the shard encoder hands over: index and encoded chunks) is their
    concatenation, byte for byte, when pieces straddle the buffer's 8 MiB boundary, are empty, or are smaller
    than a block; through O_DIRECT where the filesystem takes it, buffered where it does not (tmpfs), and
    joined for one PUT on an object store."""
    rng = np.random.default_rng(3)
    sizes = [5, 0, direct_io._CHUNK - 3, 7, 4096, direct_io._CHUNK + 1, 1, 3 * 2**20 + 17]
    pieces = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    whole = b"".join(pieces)
    assert direct_io.write_direct(tmp_path / "direct", pieces) is _takes_o_direct(tmp_path)
    if _takes_o_direct(tmp_path):
        assert (tmp_path / "direct").read_bytes() == whole
    root = StoreRoot(tmp_path / "store")
    for durable in (False, True):
        root.write_bytes("obj", tuple(pieces) if durable else pieces, durable=durable)
        assert (tmp_path / "store" / "obj").read_bytes() == whole
    small = [b"ab", b"", b"cd"]  # under MIN_DIRECT_BYTES: the buffered path writes the pieces
    root.write_bytes("small", small)
    assert (tmp_path / "store" / "small").read_bytes() == b"abcd"
    array = np.arange(2**20, dtype=np.uint16)  # any other buffer is one piece, as before (not its rows)
    root.write_bytes("array", array)
    assert (tmp_path / "store" / "array").read_bytes() == array.tobytes()
