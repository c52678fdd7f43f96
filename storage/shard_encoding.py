"""One whole Zarr v3 shard object encoded in this thread, with the array's own codecs: the bytes zarr-python
writes for ``array[shard region] = data``, with less CPU.

Why: a build writes every array's shard whole. zarr-python's write path (asyncio tasks, a thread hop per
Blosc call, per-chunk buffer merges and copies) plus a re-read for the manifest hashes made the store write
21.3 ms per 352x1216 sample on one core; encoding here and hashing the bytes in memory makes it 16.1
(``bench/bench_build.py --stages``, side by side), of which ~12.7 ms is the Blosc work itself. The shard
format is small and fixed by the sharding spec: the inner chunks in Morton order, then an index of
(offset, nbytes) uint64 pairs with its own codecs. The inner chunks go through the very objects zarr-python
uses (numcodecs' Blosc configured by the array's ``BloscCodec``, google-crc32c for ``crc32c``), so the bytes
match; ``tests/test_shard_encoding.py`` compares them with zarr-python's own writes.

Only the codec chains this project writes are handled (bytes [+ transpose] + blosc + crc32c inside, bytes +
crc32c for the index); :func:`encode_shard_parts` returns None for anything else and the caller writes through
zarr-python.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np

MAX_UINT64 = np.uint64(2**64 - 1)  # index entry of an absent chunk (sharding spec)


def _inner_steps(codecs: tuple[Any, ...]) -> list | None:
    """The inner codec chain as plain steps, or None when it holds a codec not handled here."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, TransposeCodec

    steps: list = []
    for c in codecs:
        if isinstance(c, TransposeCodec):
            steps.append(("transpose", tuple(c.order)))
        elif isinstance(c, BytesCodec):
            if c.endian is not None and c.endian.value != "little":
                return None
            steps.append(("bytes", None))
        elif isinstance(c, BloscCodec):
            steps.append(("blosc", c._blosc_codec))  # the numcodecs Blosc zarr-python encodes with
        elif isinstance(c, Crc32cCodec):
            steps.append(("crc32c", None))
        else:
            return None
    kinds = [k for k, _ in steps]
    return steps if "bytes" in kinds else None


def _crc32c(data: bytes) -> bytes:
    import google_crc32c

    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


def _with_crc32c(data: bytes) -> bytes:
    return data + _crc32c(data)


def _encode_chunk(chunk: np.ndarray, steps: list) -> list[bytes]:
    """The chunk's encoded bytes, as pieces to concatenate: a trailing checksum stays a piece of its own, so
    the compressed data is copied once, when the whole shard is joined (not once more per chunk)."""
    array: np.ndarray = chunk
    data: Any = b""
    pieces: list[bytes] | None = None
    for kind, arg in steps:
        if pieces is not None:  # a step after the checksum (no chain written here has one): join first
            data, pieces = b"".join(pieces), None
        if kind == "transpose":
            array = array.transpose(arg)
        elif kind == "bytes":  # C order, little endian, as a flat byte view (no copy when already so)
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        elif kind == "blosc":
            data = arg.encode(data)
        else:  # crc32c
            data = bytes(data)
            pieces = [data, _crc32c(data)]
    return pieces if pieces is not None else [bytes(data)]


def _sharding_codec(array: Any) -> Any | None:
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    index = sharding.index_codecs
    if not (len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
            and (index[0].endian is None or index[0].endian.value == "little")):
        return None
    return sharding


_BLOSC_LOCK = threading.Lock()
_blosc_users = 0
_blosc_threads_before: Any = None


@contextlib.contextmanager
def _blosc_single_threaded() -> Iterator[None]:
    """Blosc without its internal threads while any encoder runs, as zarr-python has it (it calls Blosc from
    worker threads, where numcodecs turns them off).

    Why it matters for bytes, not only speed: with several threads Blosc places the compressed blocks in the
    order the threads finish them, so the same chunk encodes to different (equally valid) bytes from one call
    to the next (seen with numcodecs 0.16 from the main thread). Shards must be byte-identical across runs, so
    no encode may see the switch on. numcodecs keeps it in one module-level variable: concurrent encoders
    share the setting, and the last one to leave restores the value the first one found.
    """
    import numcodecs.blosc

    global _blosc_users, _blosc_threads_before
    with _BLOSC_LOCK:
        if _blosc_users == 0:
            _blosc_threads_before = numcodecs.blosc.use_threads
            numcodecs.blosc.use_threads = False
        _blosc_users += 1
    try:
        yield
    finally:
        with _BLOSC_LOCK:
            _blosc_users -= 1
            if _blosc_users == 0:
                numcodecs.blosc.use_threads = _blosc_threads_before


def encode_shard_parts(array: Any, data: np.ndarray, executor: Executor | None = None) -> list[bytes] | None:
    """Encode ``data`` (exactly one shard of zarr ``array``: its shard shape and dtype, every chunk stored, as
    with ``write_empty_chunks``) into the shard object's bytes, as the pieces whose concatenation is the object
    (index and encoded chunks in file order); None if this array's codecs are not handled here. With an
    ``executor`` (threads), the chunks are encoded side by side: Blosc releases the GIL, and each chunk's bytes
    do not depend on which thread encoded it.

    Pieces rather than one joined ``bytes``: a local writer copies them straight into its aligned write buffer
    (storage.direct_io) and the hash is taken piece by piece, so the object (~51 MB for a 64-sample rgb shard,
    in memory the process has never touched before) is not built a second time only to be copied again."""
    from zarr.core.indexing import morton_order_iter

    sharding = _sharding_codec(array)
    if sharding is None or not array.config.write_empty_chunks or array.config.order != "C":
        return None  # zarr-python would skip all-fill-value chunks (or lay them out in F order): not handled here
    steps = _inner_steps(sharding.codecs)
    shard_shape = tuple(array.metadata.chunk_grid.chunk_shape)
    chunk_shape = tuple(sharding.chunk_shape)
    if steps is None or data.shape != shard_shape or data.dtype != array.dtype:
        return None
    per_shard = tuple(s // c for s, c in zip(shard_shape, chunk_shape))
    index = np.full((*per_shard, 2), MAX_UINT64, dtype=np.uint64)
    parts: list[bytes] = []
    offset = 0
    order = list(morton_order_iter(per_shard))

    def encode(coords: tuple[int, ...]) -> list[bytes]:
        return _encode_chunk(data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunk_shape))], steps)

    with _blosc_single_threaded():
        encoded = executor.map(encode, order) if executor is not None else map(encode, order)
        for coords, pieces in zip(order, encoded):
            size = sum(len(p) for p in pieces)
            index[coords] = (offset, size)
            parts.extend(pieces)
            offset += size
    index_bytes = _with_crc32c(index.astype("<u8").tobytes())
    if sharding.index_location.value == "start":
        index[index[..., 0] != MAX_UINT64, 0] += np.uint64(len(index_bytes))
        return [_with_crc32c(index.astype("<u8").tobytes()), *parts]
    return [*parts, index_bytes]


def encode_shard(array: Any, data: np.ndarray) -> bytes | None:
    """:func:`encode_shard_parts` joined into the shard object's bytes."""
    parts = encode_shard_parts(array, data)
    return None if parts is None else b"".join(parts)
