"""The dataset store: one Zarr v3 group of sharded arrays + a Parquet manifest, one directory (or object-store
prefix, e.g. ``s3://bucket/ds.zarr``) per dataset.

Layout of ``<store>/``::

    zarr.json                      group metadata; attrs hold config, teacher, sensor, code_version, created,
                                   the format block ("monolidar": height, width, shard_size, ...), summary
    rgb/ teacher_output/ depth/ sparse/ K/ lidar_pose/
                                   Zarr v3 arrays sharing sample axis 0; one shard object = shard_size samples
    manifest/shard-00000.parquet   one part per complete shard: the commit marker of that shard; its Parquet
                                   metadata holds the sha256 of each array's shard object (see storage.manifest)
    plan.parquet                   the build plan (storage.plan)
    README.md                      dataset card (written by finalize)
    .build.lock                    present while a build holds the store (see DatasetStore.lock)

Why shards and a manifest part per shard: the shard is the unit one task writes whole (two writers touching
one Zarr shard lose data), and a shard counts as complete only once its manifest part exists. write_shard
deletes the part first, writes the arrays (one object per array and shard), and publishes the part last (one
whole-file write: tmp + os.replace locally, one PUT on object storage), so a crash anywhere leaves the shard
absent for readers, never half-written.

Only standard Zarr v3 codecs are used (bytes, blosc, crc32c, sharding_indexed): zarr-python, tensorstore and
zarr.js read a store without this project. Every chunk inside a shard carries a crc32c, and so does each
shard index.

Array bytes never contain timestamps, so rewriting a shard from the same inputs gives byte-identical files.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from storage import manifest as mf
from storage.compression import COMPRESSION, DEFAULT_COMPRESSION
from storage.pngio import depth_metres, depth_to_uint16, uint16_to_depth
from storage.root import StoreRoot
from storage.shard_encoding import encode_shard_parts
from tasks.errors import StoreError

FORMAT_NAME = "monolidar-store"
FORMAT_VERSION = 3  # 2: standard codecs only (blosc + crc32c), shard hashes in the manifest parts;
#                    3: depth as KITTI uint16 (metres*256) like sparse; K and lidar_pose one chunk per shard
LOCK_NAME = ".build.lock"
CARD_NAME = "README.md"

# name -> (dtype, per-sample shape given (H, W)). Every array shares sample axis 0.
ARRAYS: dict[str, tuple[np.dtype, Callable[[int, int], tuple[int, ...]]]] = {
    "rgb": (np.dtype(np.uint8), lambda h, w: (h, w, 3)),
    "teacher_output": (np.dtype(np.float16), lambda h, w: (h, w)),  # raw teacher output, untouched
    "depth": (np.dtype(np.uint16), lambda h, w: (h, w)),  # metric depth that built the mesh, metres*256, 0 = none
    "sparse": (np.dtype(np.uint16), lambda h, w: (h, w)),  # simulated LiDAR, metres*256, 0 = no return
    "K": (np.dtype(np.float32), lambda h, w: (3, 3)),  # pinhole intrinsics of the stored image
    "lidar_pose": (np.dtype(np.float32), lambda h, w: (4, 4)),  # camera_from_lidar rigid transform
}
# Arrays of a few numbers per sample are one chunk per shard: zarr-python spends ~0.5 ms per chunk written, far
# more than 9 or 16 floats cost to encode (format 3; format 2 stores keep one chunk per sample, as written).
WHOLE_SHARD_CHUNKS = ("K", "lidar_pose")
ARRAY_DOCS = {
    "rgb": "image, uint8 RGB",
    "teacher_output": "raw teacher output (e.g. relative inverse depth), exactly as the ONNX model returned it",
    "depth": "dense metric depth that built the mesh, KITTI convention metres*256 (<= 2 mm rounding), 0 = none",
    "sparse": "simulated LiDAR depth, KITTI convention metres*256, 0 = no return",
    "K": "3x3 pinhole intrinsics (pixels) of the stored image",
    "lidar_pose": "4x4 camera_from_lidar rigid transform (metres)",
}
FORMAT_2_DOCS = {"depth": "dense metric depth that built the mesh, float32 metres, 0 = none"}  # stores before format 3



# The process in which tensorstore first read (see DatasetStore._fast_readers); None until then.
_TENSORSTORE_PID: int | None = None
_REMOTE_READS: Any = None  # thread pool for a remote store's per-array reads (created on first use, per process)
_REMOTE_READS_PID: int | None = None


def _remote_read_pool():
    """Threads that read a remote store's arrays side by side (one per array); a fresh pool in a forked child
    (a DataLoader worker), whose copy of the parent's pool has no threads."""
    global _REMOTE_READS, _REMOTE_READS_PID
    if _REMOTE_READS is None or _REMOTE_READS_PID != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _REMOTE_READS = ThreadPoolExecutor(len(ARRAYS), thread_name_prefix="monolidar-remote-read")
        _REMOTE_READS_PID = os.getpid()
    return _REMOTE_READS


def sample_shape(name: str, height: int, width: int) -> tuple[int, ...]:
    """Per-sample shape of array ``name`` in a store of the given image size."""
    return ARRAYS[name][1](height, width)


def _codecs(name: str, compression: str = DEFAULT_COMPRESSION) -> dict[str, Any]:
    from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec

    order, cname, clevel, shuffle, blocksize = COMPRESSION[compression][name]
    dtype = ARRAYS[name][0]
    return {
        "filters": [TransposeCodec(order=order)] if order else None,
        "compressors": [
            BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle, typesize=dtype.itemsize, blocksize=blocksize),
            Crc32cCodec(),  # checksum of each compressed chunk, checked on every read
        ],
    }


def shard_object_key(name: str, shard: int, ndim: int) -> str:
    """Relative key of array ``name``'s object for ``shard`` (Zarr v3 default chunk key encoding)."""
    return "/".join([name, "c", str(int(shard))] + ["0"] * (ndim - 1))


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    # zarr warns, when consolidating, that manifest/, README.md and the lock are no Zarr nodes (ours, on purpose) and that
    # consolidated metadata is not in the v3 spec yet (we ask for it: remote readers list one file).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .+ is not recognized as a component")
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DatasetStore:
    """A monolidar dataset. Create with :meth:`create`, open with :meth:`open`; local path or URL.

    Attributes: ``root`` (StoreRoot), ``path`` (Path for a local store, else the URL string), ``url``,
    ``height``, ``width``, ``shard_size``, ``chunk_size``, ``attrs`` (dict copy of the group attributes:
    config, teacher, sensor, code_version, created, monolidar, summary).
    """

    def __init__(self, root: StoreRoot, group: Any, mode: str):
        self.root = root
        self.path: Path | str = root.path if root.path is not None else root.url
        self.url = root.url
        self._group = group
        self._mode = mode
        fmt = dict(group.attrs).get("monolidar", {})
        self.height = int(fmt["height"])
        self.width = int(fmt["width"])
        self.shard_size = int(fmt["shard_size"])
        self.chunk_size = int(fmt["chunk_size"])
        # Store every chunk, also all-zero ones (quarantined rows, padding): a shard then always holds all its
        # chunks, so a missing chunk or object is damage, never "empty". Set on each array object, not through
        # zarr's process-global config: a global setting entered and left by concurrent writers (threads of one
        # build) could be restored to False under another thread's open and silently drop its zero chunks.
        self._arrays = {name: group[name].with_config({"write_empty_chunks": True}) for name in ARRAYS}
        # dtypes as this store was written: format 2 kept depth as float32 metres
        self._dtypes = {name: dtype for name, (dtype, _) in ARRAYS.items()}
        if int(fmt.get("format_version", FORMAT_VERSION)) < 3:
            self._dtypes["depth"] = np.dtype(np.float32)
        self._parts: dict[int, pa.Table] = {}  # manifest parts read so far (dropped when a shard is rewritten)

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        height: int,
        width: int,
        shard_size: int,
        config: dict,
        teacher: dict,
        sensor: str,
        code_version: str,
        chunk_size: int = 1,
        exist_ok: bool = False,
        storage_options: dict | None = None,
        compression: str = DEFAULT_COMPRESSION,
    ) -> "DatasetStore":
        """Create an empty store (0 samples; grow with ensure_shards). ``path`` may be a URL (s3://…).

        exist_ok=True opens an existing store instead if its height/width/shard_size match (else StoreError),
        which is what a resumed build wants. ``compression``: a COMPRESSION profile (balanced | small).
        """
        import zarr

        root = StoreRoot(path, storage_options)
        where = root.url
        if compression not in COMPRESSION:
            raise StoreError(f"{where}: unknown compression {compression!r}; expected one of {', '.join(COMPRESSION)}")
        if height <= 0 or width <= 0:
            raise StoreError(f"{where}: image size must be positive, got {height}x{width}")
        if shard_size <= 0 or chunk_size <= 0 or shard_size % chunk_size:
            raise StoreError(f"{where}: shard_size {shard_size} must be a positive multiple of chunk_size {chunk_size}")
        if root.exists("zarr.json"):
            if not exist_ok:
                raise StoreError(f"{where}: a store already exists (pass exist_ok or choose another path)")
            store = cls.open(path, mode="r+", storage_options=storage_options)
            got = (store.height, store.width, store.shard_size)
            if got != (height, width, shard_size):
                raise StoreError(
                    f"{where}: existing store has height/width/shard_size {got}, requested {(height, width, shard_size)}"
                )
            return store
        if root.path is not None and root.path.exists() and not root.path.is_dir():
            raise StoreError(f"{where}: exists and is not an empty directory")
        if not root.is_empty():
            raise StoreError(f"{where}: exists and is not an empty directory")
        root.mkdir()
        attrs = {
            "monolidar": {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "height": int(height),
                "width": int(width),
                "shard_size": int(shard_size),
                "chunk_size": int(chunk_size),
                "compression": compression,
                "arrays": {n: {"dtype": str(d), "sample_shape": list(f(height, width)), "doc": ARRAY_DOCS[n]}
                           for n, (d, f) in ARRAYS.items()},
                "manifest": f"{mf.MANIFEST_DIR}/shard-NNNNN.parquet",
            },
            "config": config,
            "teacher": teacher,
            "sensor": sensor,
            "code_version": code_version,
            "created": _now_iso(),
        }
        with _quiet_zarr():
            group = zarr.open_group(root.zarr_store(), mode="w-", zarr_format=3, attributes=attrs)
            for name, (dtype, shape_fn) in ARRAYS.items():
                sample = shape_fn(height, width)
                group.create_array(
                    name,
                    shape=(0, *sample),
                    dtype=dtype,
                    chunks=(shard_size if name in WHOLE_SHARD_CHUNKS else chunk_size, *sample),
                    shards=(shard_size, *sample),
                    fill_value=0,
                    dimension_names=["sample", *[f"d{i}" for i in range(len(sample))]],
                    **_codecs(name, compression),
                )
            if root.path is not None:
                (root.path / mf.MANIFEST_DIR).mkdir(exist_ok=True)
            return cls(root, group, "r+")

    @classmethod
    def open(cls, path: "str | os.PathLike | DatasetStore", mode: str = "r",
             storage_options: dict | None = None) -> "DatasetStore":
        """Open an existing store (local path or URL); mode "r" (read) or "r+" (write shards, finalize)."""
        import zarr

        if isinstance(path, DatasetStore):
            path = path.url
        root = StoreRoot(path, storage_options)
        where = root.url
        if mode not in ("r", "r+"):
            raise StoreError(f"{where}: mode must be 'r' or 'r+', got {mode!r}")
        if root.path is not None and not root.path.exists():
            raise StoreError(f"{where}: no such store")
        if root.path is not None and not root.path.is_dir():
            raise StoreError(f"{where}: not a monolidar store (no zarr.json)")
        if not root.exists("zarr.json"):
            # A local directory exists here (checked above); a remote prefix with nothing under it is absent.
            absent = root.path is None and root.is_empty()
            raise StoreError(f"{where}: no such store" if absent else f"{where}: not a monolidar store (no zarr.json)")
        with _quiet_zarr():
            try:
                # Per-array metadata is the truth (consolidated metadata is a convenience for remote readers
                # and can lag behind a store grown after finalize).
                group = zarr.open_group(root.zarr_store(read_only=mode == "r"), mode=mode, use_consolidated=False)
            except Exception as exc:  # zarr raises several types for unreadable metadata
                raise StoreError(f"{where}: not a monolidar store ({type(exc).__name__}: {exc})") from None
            fmt = dict(group.attrs).get("monolidar")
            if not isinstance(fmt, dict) or fmt.get("format") != FORMAT_NAME:
                raise StoreError(f"{where}: not a monolidar store (zarr group without monolidar attributes)")
            version = int(fmt.get("format_version", -1))
            if version > FORMAT_VERSION:
                raise StoreError(f"{where}: store format {version} is newer than this code ({FORMAT_VERSION})")
            if version < 2:
                raise StoreError(f"{where}: store format {version} used a custom rgb codec that format 2 dropped; "
                                 "rebuild the dataset (monolidar build --overwrite)")
            missing = [n for n in ARRAYS if n not in group]
            if missing:
                raise StoreError(f"{where}: not a monolidar store (missing arrays {', '.join(missing)})")
            return cls(root, group, mode)

    def __repr__(self) -> str:
        return (f"DatasetStore({self.url!r}, {self.height}x{self.width}, shard_size={self.shard_size}, "
                f"shards={len(self.complete_shards())}/{self.n_shards_allocated})")

    # ------------------------------------------------------------------ attributes
    @property
    def attrs(self) -> dict:
        return json.loads(json.dumps(dict(self._group.attrs)))

    @property
    def compression(self) -> str:
        """The COMPRESSION profile the store was created with (stores before profiles existed: balanced)."""
        return str(self.attrs.get("monolidar", {}).get("compression", DEFAULT_COMPRESSION))

    @property
    def n_shards_allocated(self) -> int:
        return int(self._arrays["rgb"].shape[0]) // self.shard_size

    def _require_writable(self) -> None:
        if self._mode == "r":
            raise StoreError(f"{self.url}: store opened read-only (open with mode='r+')")

    def ensure_shards(self, n_shards: int) -> None:
        """Grow every array to ``n_shards * shard_size`` samples (never shrinks). One caller at a time."""
        self._require_writable()
        if n_shards <= self.n_shards_allocated:
            return
        n = int(n_shards) * self.shard_size
        for arr in self._arrays.values():
            arr.resize((n, *arr.shape[1:]))
        if "consolidated_metadata" in json.loads(self.root.read_bytes("zarr.json")):
            self._consolidate()

    # ------------------------------------------------------------------ writing
    def _check_arrays(self, shard: int, arrays: dict[str, np.ndarray], n_rows: int,
                      written: Mapping[str, str]) -> dict[str, np.ndarray]:
        unknown = sorted(set(arrays) - set(ARRAYS))
        missing = [n for n in ARRAYS if n not in arrays and n not in written]
        twice = sorted(set(arrays) & set(written))
        if unknown or missing or twice:
            raise StoreError(f"{self.url}: shard {shard}: arrays must be exactly {', '.join(ARRAYS)}, each given or "
                             f"written before (missing {missing}, unknown {unknown}, both {twice})")
        return {name: self._check_array(shard, name, arrays[name], n_rows) for name in ARRAYS if name in arrays}

    def _check_array(self, shard: int, name: str, array: np.ndarray, n_rows: int) -> np.ndarray:
        a = np.asarray(array)
        want = (n_rows, *sample_shape(name, self.height, self.width))
        if a.shape != want:
            raise StoreError(f"{self.url}: shard {shard}: array {name} has shape {a.shape}, expected {want}")
        dtype = self._dtypes[name]
        # depth: metres <-> the KITTI uint16 form, whichever this store holds (uint16 / 256 is exact in float32)
        if name == "depth" and dtype == np.uint16 and a.dtype != dtype:
            a = depth_to_uint16(a)
        elif name == "depth" and a.dtype == np.uint16 and dtype != np.uint16:
            a = uint16_to_depth(a)
        if a.dtype != dtype:
            # float64 -> float32/16 is fine; floats into integer arrays would silently truncate.
            if not np.can_cast(a.dtype, dtype, casting="same_kind"):
                raise StoreError(f"{self.url}: shard {shard}: array {name} has dtype {a.dtype}, expected {dtype}")
            a = a.astype(dtype)
        return a

    def _check_shard(self, shard: int, n_rows: int) -> int:
        self._require_writable()
        shard = int(shard)
        if not 0 <= shard < self.n_shards_allocated:
            raise StoreError(f"{self.url}: shard {shard} is not allocated "
                             f"({self.n_shards_allocated} shards; call ensure_shards first)")
        if not 1 <= n_rows <= self.shard_size:
            raise StoreError(f"{self.url}: shard {shard}: {n_rows} rows, expected 1..{self.shard_size}")
        return shard

    def shard_object(self, name: str, shard: int) -> str:
        """Relative key of the object holding ``shard`` of array ``name``."""
        return shard_object_key(name, shard, len(self._arrays[name].shape))

    def shard_hashes(self, shard: int) -> dict[str, str]:
        """sha256 of each array's stored object for ``shard`` (FileNotFoundError if one is missing)."""
        return self.shard_hashes_of(ARRAYS, shard)

    def shard_hashes_of(self, names: Iterable[str], shard: int) -> dict[str, str]:
        """sha256 of the stored objects of arrays ``names`` for ``shard`` (FileNotFoundError if one is missing)."""
        return {name: hashlib.sha256(self.root.read_bytes(self.shard_object(name, shard))).hexdigest()
                for name in names}

    def write_shard(self, shard: int, arrays: dict[str, np.ndarray], rows: list[dict], *,
                    written: Mapping[str, str] | None = None) -> dict:
        """Write one whole shard: arrays (leading dim n_rows <= shard_size) + its n_rows manifest rows.

        Order (crash-safe): delete this shard's manifest part -> write every array's shard region
        [shard*S, (shard+1)*S) as one whole object replacing the old one (rows past n_rows are padding = fill
        value, so a rewrite with fewer rows leaves no stale samples) -> hash the written shard objects -> publish
        the manifest part (rows + hashes + this shard's plan rows) in one whole-file write.
        ``written`` = {name: sha256} for arrays already written by :meth:`write_array` since the shard was
        uncommitted (the build writes rgb where it decodes the photos); they are left out of ``arrays``.
        Same input gives byte-identical files. Returns {"shard", "n_rows", "n_ok", "manifest"}.
        """
        from storage.plan import plan_rows_for_shard

        n_rows = len(rows)
        shard = self._check_shard(shard, n_rows)
        written = dict(written or {})
        checked = self._check_arrays(shard, arrays, n_rows, written)
        for name in written:
            if not self.root.exists(self.shard_object(name, shard)):
                raise StoreError(f"{self.root.full(self.shard_object(name, shard))}: shard object written before "
                                 "this shard's write is missing")
        sensor = str(self._group.attrs.get("sensor", ""))
        table = mf.rows_to_table(mf.normalize_rows(rows, shard=shard, shard_size=self.shard_size, sensor=sensor))

        part = f"{mf.MANIFEST_DIR}/{mf.part_name(shard)}"
        self.root.delete(part)
        self._parts.pop(shard, None)
        hashes = dict(written)
        encoded_shards: dict[str, bytes] = {}
        through_zarr = False
        for name, a in checked.items():
            digest = self._put_array(shard, name, a, encoded_shards if self.root.remote else None)
            if digest is None:
                through_zarr = True
            else:
                hashes[name] = digest
        self.root.write_many(encoded_shards, durable=False)  # before the manifest part that commits them
        if through_zarr:  # some went through zarr-python: hash what it stored
            hashes = {**self.shard_hashes(shard), **hashes}
        table = mf.with_integrity(table, shard_sha256=hashes, plan=plan_rows_for_shard(self.root, shard))
        mf.write_part(self.root.full(part), table)
        n_ok = sum(1 for s in table.column("status").to_pylist() if s == "ok")
        return {"shard": shard, "n_rows": n_rows, "n_ok": n_ok, "manifest": self.root.full(part)}

    def write_array(self, shard: int, name: str, data: np.ndarray, *, executor: Executor | None = None) -> str:
        """Write one array's object of ``shard`` ahead of :meth:`write_shard` (which then takes the returned sha256
        in ``written``); ``data`` holds the shard's first n_rows samples. The shard is uncommitted first, so a
        reader never pairs this object with an older manifest part. ``executor`` (threads) encodes the chunks
        side by side. Why: the build decodes each photo once, where the teacher's input is made, and writes the
        image there instead of decoding it again in the simulation process."""
        shard = self._check_shard(shard, len(data))
        a = self._check_array(shard, name, data, len(data))
        self.uncommit_shard(shard)
        batch: dict[str, bytes] | None = {} if self.root.remote else None
        digest = self._put_array(shard, name, a, batch, executor)
        if batch:
            self.root.write_many(batch, durable=False)
        return digest if digest is not None else self.shard_hashes_of([name], shard)[name]

    def _put_array(self, shard: int, name: str, a: np.ndarray, batch: dict[str, bytes] | None,
                   executor: Executor | None = None) -> str | None:
        """Write array ``name``'s object of ``shard`` whole (padded to shard_size with the fill value); return its
        sha256, or None when zarr-python wrote it (a codec chain storage.shard_encoding does not handle). With a
        ``batch`` (object storage) the object is added to it instead, for one write_many of the shard's objects."""
        if len(a) < self.shard_size:
            padded = np.zeros((self.shard_size, *a.shape[1:]), dtype=a.dtype)
            padded[:len(a)] = a
            a = padded
        # The shard object encoded here (zarr-python's bytes with ~5 ms/sample less CPU: storage.shard_encoding)
        # and published whole; zarr-python writes only the codec chains that module does not handle.
        encoded = encode_shard_parts(self._arrays[name], a, executor)
        if encoded is None:
            # The shard is rewritten whole: drop the old object first, so zarr never merges with (or trips
            # over) what was there, e.g. a damaged shard that verify marked for repair. (An encoded object
            # needs no delete: it replaces the old one whole, a rename locally, one PUT on object storage.)
            self.root.delete(self.shard_object(name, shard))
            start = shard * self.shard_size
            with _quiet_zarr():
                self._arrays[name][start:start + self.shard_size] = a
            return None
        digest = hashlib.sha256()
        for piece in encoded:
            digest.update(piece)
        # Not fsynced: the part's sha256 catches a lost write. On object storage the objects are PUT together
        # (one round trip of latency, not one per array); locally each is written at once (less memory),
        # straight from the encoded pieces (no joined copy of the object first).
        if batch is not None:
            batch[self.shard_object(name, shard)] = b"".join(encoded)
        else:
            self.root.write_bytes(self.shard_object(name, shard), encoded, durable=False)
        return digest.hexdigest()

    def uncommit_shard(self, shard: int) -> None:
        """Remove a shard's manifest part: readers stop seeing it and repair rebuilds it."""
        self._require_writable()
        self.root.delete(f"{mf.MANIFEST_DIR}/{mf.part_name(int(shard))}")
        self._parts.pop(int(shard), None)

    # ------------------------------------------------------------------ reading
    def complete_shards(self) -> list[int]:
        """Shards whose manifest part exists (the commit marker), sorted."""
        shards = (mf.part_shard(n) for n in self.root.listdir(mf.MANIFEST_DIR))
        return sorted(s for s in shards if s is not None)

    # Manifest parts fetched per request when a remote store's whole manifest is read: a million samples are
    # ~16k parts, and one round trip each (~50 ms on a cloud object store) kept a reader waiting for minutes.
    _PART_BATCH = 1024

    def _load_parts(self, shards: list[int]) -> None:
        """Read the parts of ``shards`` not cached yet; on object storage in concurrent batches."""
        todo = [s for s in shards if s not in self._parts]
        if not self.root.remote:
            return  # local parts are read as they are used (_part)
        for i in range(0, len(todo), self._PART_BATCH):
            rels = {f"{mf.MANIFEST_DIR}/{mf.part_name(s)}": s for s in todo[i:i + self._PART_BATCH]}
            for rel, data in self.root.read_many(list(rels)).items():
                if isinstance(data, FileNotFoundError):
                    raise StoreError(f"{self.root.full(rel)}: manifest part missing")
                self._parts[rels[rel]] = mf.read_part_bytes(data, self.root.full(rel))

    def _part(self, shard: int) -> pa.Table:
        if shard not in self._parts:
            rel = f"{mf.MANIFEST_DIR}/{mf.part_name(shard)}"
            try:
                data = self.root.read_bytes(rel)
            except FileNotFoundError:
                raise StoreError(f"{self.root.full(rel)}: manifest part missing") from None
            self._parts[shard] = mf.read_part_bytes(data, self.root.full(rel))
        return self._parts[shard]

    def manifest_part(self, shard: int) -> pa.Table:
        """The manifest part of one complete shard as stored now (with its integrity metadata); StoreError if
        missing or unreadable."""
        self._parts.pop(int(shard), None)
        return self._part(int(shard))

    def manifest(self) -> pa.Table:
        """All rows of complete shards, sorted by index, read afresh (other writers may have replaced parts
        since this handle cached them). A corrupt part raises StoreError naming the file."""
        self._parts.clear()
        shards = self.complete_shards()
        self._load_parts(shards)
        return mf.merge_parts(self._part(s) for s in shards)

    def _row(self, index: int) -> dict:
        shard, row = divmod(int(index), self.shard_size)
        if not self.root.exists(f"{mf.MANIFEST_DIR}/{mf.part_name(shard)}"):
            raise StoreError(f"{self.url}: sample {index} is not in a complete shard (shard {shard})")
        table = self._part(shard)
        if row >= table.num_rows:
            raise StoreError(f"{self.url}: sample {index}: shard {shard} has only {table.num_rows} rows")
        return table.slice(row, 1).to_pylist()[0]

    def read_arrays(self, index: int, names: tuple[str, ...] = tuple(ARRAYS)) -> dict[str, np.ndarray]:
        """Raw stored arrays of one sample (sparse and, from format 3, depth stay KITTI uint16), without manifest
        checks. Every chunk's crc32c is checked on the way (a mismatch raises StoreError naming the shard object)."""
        fast = self._fast_readers()
        if fast is None and self.root.remote:
            # zarr-python, one thread per array: each read of a sharded array is two round trips (the shard's
            # index, then the chunk), and one array after another a sample paid them all in a row
            # (bench/bench_s3_writes.py: 12 round trips per sample before, 2 now)
            pool = _remote_read_pool()
            futures = {name: pool.submit(self._arrays[name].__getitem__, int(index)) for name in names}
            return {name: fut.result() for name, fut in futures.items()}
        if fast is None:
            return {name: self._arrays[name][int(index)] for name in names}
        futures = {name: fast[name][int(index)].read() for name in names}  # the arrays decode in parallel
        out = {}
        for name, fut in futures.items():
            try:
                out[name] = fut.result()
            except ValueError as exc:  # tensorstore reports DATA_LOSS (checksum, truncation) as ValueError
                raise StoreError(f"{self.url}: sample {index}: {name}: {str(exc).splitlines()[0]}") from None
        return out

    def _fast_readers(self) -> dict[str, Any] | None:
        """tensorstore handles on the arrays of a read-only local store, opened on first use (None for a
        writable or remote store, or without tensorstore: zarr-python reads then). Why: random access is what
        training does, and tensorstore's C++ pipeline decodes a sample ~2x faster than zarr-python's
        (bench/bench_loader.py); it reads the same standard codecs and verifies the same crc32c. It keeps no
        chunk cache, so it never serves bytes older than the files."""
        global _TENSORSTORE_PID
        if self._mode != "r" or self.root.path is None:
            return None
        if _TENSORSTORE_PID not in (None, os.getpid()):
            # A child forked after tensorstore ran here (a fork-based DataLoader worker): tensorstore aborts
            # the process on use after fork, so this process reads through zarr-python.
            return None
        if getattr(self, "_ts_arrays", None) is None:
            try:
                import tensorstore as ts
            except ImportError:
                self._ts_arrays = {}
                return None
            _TENSORSTORE_PID = os.getpid()
            self._ts_arrays = {
                name: ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(self.root.path / name)}},
                              read=True).result()
                for name in ARRAYS}
        return self._ts_arrays or None

    def read_shard_arrays(self, shard: int, names: tuple[str, ...] = tuple(ARRAYS)) -> dict[str, np.ndarray]:
        """Every row of one shard (shard_size rows), decoded: every chunk's crc32c is checked on the way."""
        start = int(shard) * self.shard_size
        return {name: self._arrays[name][start:start + self.shard_size] for name in names}

    def read_sample(self, index: int) -> dict:
        """One sample of a complete shard: every array (``sparse`` and ``depth`` as float32 metres, 0 = none)
        + ``row``."""
        row = self._row(index)
        out: dict[str, Any] = self.read_arrays(index)
        out["sparse"] = uint16_to_depth(out["sparse"])
        out["depth"] = depth_metres(out["depth"])
        out["row"] = row
        return out

    # ------------------------------------------------------------------ finishing
    def _consolidate(self) -> None:
        import zarr

        with _quiet_zarr():
            zarr.consolidate_metadata(self.root.zarr_store())

    def finalize(self, summary: dict) -> None:
        """Record the build summary, consolidate the Zarr metadata and write the dataset card README.md."""
        self._require_writable()
        self._group.update_attributes({"summary": summary, "finalized": _now_iso()})
        self._consolidate()
        self.root.write_bytes(CARD_NAME, render_card(self).encode())

    @contextlib.contextmanager
    def lock(self, owner: str = "") -> Iterator[Path | str]:
        """Exclusive build lock: a file created only if absent (O_EXCL locally, a conditional PUT on object
        storage: no renames) holding pid, host and owner.

        A second holder gets StoreError; a lock left by a dead process on this host is taken over. Yields the
        lock's path/URL; the file is removed on exit (only if it is still ours).
        """
        me = {"pid": os.getpid(), "host": socket.gethostname(), "owner": owner, "since": _now_iso()}
        where = self.root.full(LOCK_NAME)
        for _attempt in range(3):
            if self.root.create_exclusive(LOCK_NAME, json.dumps(me).encode()):
                break
            holder = _read_lock(self.root)
            if holder is None:
                continue  # vanished or half-written by a racing taker; try again
            if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
                self.root.delete(LOCK_NAME)  # stale: its process is gone
                continue
            raise StoreError(
                f"{self.url} is being built by pid {holder.get('pid')} on {holder.get('host')} "
                f"(lock {where}); wait for it or remove the lock file if that process is gone"
            ) from None
        else:
            raise StoreError(f"{self.url}: could not take the build lock {where}")
        try:
            yield self.root.path / LOCK_NAME if self.root.path is not None else where
        finally:
            holder = _read_lock(self.root)
            if holder is not None and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                self.root.delete(LOCK_NAME)


def _read_lock(root: StoreRoot) -> dict | None:
    try:
        return json.loads(root.read_bytes(LOCK_NAME))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def store_summary(store: DatasetStore) -> dict:
    """Counts and provenance of a store (what `monolidar inspect --json` prints)."""
    table = store.manifest()
    statuses = table.column("status").to_pylist() if table.num_rows else []
    ok = [i for i, s in enumerate(statuses) if s == "ok"]
    density = table.column("lidar_density").to_pylist() if table.num_rows else []
    ok_density = [density[i] for i in ok if density[i] is not None]
    attrs = store.attrs
    complete = store.complete_shards()
    return {
        "path": str(store.url),
        "samples": table.num_rows,
        "shards": len(complete),
        "shards_complete": complete,
        "shards_allocated": store.n_shards_allocated,
        "status": {s: statuses.count(s) for s in mf.STATUSES},
        "lidar_density_mean": float(np.mean(ok_density)) if ok_density else None,
        "height": store.height,
        "width": store.width,
        "shard_size": store.shard_size,
        "teacher": attrs.get("teacher"),
        "sensor": attrs.get("sensor"),
        "code_version": attrs.get("code_version"),
        "created": attrs.get("created"),
    }


def render_card(store: DatasetStore) -> str:
    """The dataset card: what the store is, where it came from, what is in it, how to read it."""
    s = store_summary(store)
    attrs = store.attrs
    lines = [
        f"# monolidar dataset `{store.root.name}`",
        "",
        "Depth-completion training data made from photos (DMD3C recipe): a monocular depth teacher's output,",
        "the metric depth derived from it, and a simulated LiDAR scan ray-cast against a mesh of that depth.",
        "",
        "## Contents",
        "",
        f"- samples: {s['samples']} in {s['shards']} complete shards of {s['shard_size']} "
        f"(status: {', '.join(f'{k} {v}' for k, v in s['status'].items())})",
        f"- image size: {s['height']} x {s['width']}",
        f"- mean LiDAR density (ok samples): {s['lidar_density_mean']}",
        f"- sensor: {s['sensor']}",
        f"- code version: {s['code_version']}; created {s['created']}",
        "",
        "## Arrays (Zarr v3, sample axis 0)",
        "",
        "| name | dtype | per-sample shape | meaning |",
        "|---|---|---|---|",
    ]
    docs = {**ARRAY_DOCS, **(FORMAT_2_DOCS if store._dtypes["depth"] == np.float32 else {})}
    for name, (_, shape_fn) in ARRAYS.items():
        lines.append(f"| `{name}` | {store._dtypes[name]} | {shape_fn(store.height, store.width)} | {docs[name]} |")
    lines += [
        "",
        "## Format (readable without monolidar)",
        "",
        "A standard Zarr v3 group: every array uses only the spec's codecs (`sharding_indexed`, `bytes`, `blosc`,",
        f"`crc32c`{', `transpose`' if attrs.get('monolidar', {}).get('compression') == 'small' else ''}), so "
        "zarr-python, tensorstore or zarr.js open it as it is:",
        "",
        "```python",
        "import zarr, pyarrow.parquet as pq",
        f"g = zarr.open_group('{store.url}', mode='r')      # s3:// URLs work too (zarr's fsspec store)",
        "rgb = g['rgb'][i]                                    # uint8 H x W x 3",
        "sparse_m = g['sparse'][i] / 256.0                    # metres, 0 = no return",
        "depth_m = g['depth'][i] / 256.0                      # metres, 0 = none (format 3; format 2: float32 metres)",
        f"rows = pq.read_table('{store.url}/manifest')     # one row per sample",
        "```",
        "",
        f"Each array is sharded along the sample axis: one shard object holds {store.shard_size} samples "
        f"(`<array>/c/<shard>/0/...`), chunks of {store.chunk_size} sample(s) inside it, each chunk blosc-compressed "
        f"(profile `{attrs.get('monolidar', {}).get('compression', DEFAULT_COMPRESSION)}`) and followed by its crc32c.",
        f"`{mf.MANIFEST_DIR}/shard-NNNNN.parquet` holds one row per sample of shard NNNNN and is written after the",
        "shard's arrays: a shard without its part is incomplete and must be ignored, and rows past a part's length are",
        "padding (zeros). Row `index` = shard * shard_size + row addresses the arrays; only rows with `status` `ok`",
        "hold data (`quarantined`/`failed` rows are zeros and carry a `reason`).",
        "Manifest columns: " + ", ".join(f"`{n}`" for n in mf.SCHEMA.names) + " (+ extra statistics).",
        "Each part's Parquet metadata records the sha256 of every array's shard object (`monolidar.shard_sha256`),",
        "a digest of its rows and the shard's build-plan rows; `monolidar verify` checks them all.",
        "`plan.parquet` lists which input went to which shard and row, with its seed.",
        "",
        "## Teacher",
        "",
        "```json",
        json.dumps(attrs.get("teacher"), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(attrs.get("config"), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Summary",
        "",
        "```json",
        json.dumps(attrs.get("summary"), indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)
