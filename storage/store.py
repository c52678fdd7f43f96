"""The dataset store: one Zarr v3 group of sharded arrays + a Parquet manifest, one directory per dataset.

Layout of ``<store>/``::

    zarr.json                      group metadata; attrs hold config, teacher, sensor, code_version, created,
                                   the format block ("monolidar": height, width, shard_size, ...), summary
    rgb/ teacher_output/ depth/ sparse/ K/ lidar_pose/
                                   Zarr v3 arrays sharing sample axis 0; one shard object = shard_size samples
    manifest/shard-00000.parquet   one part per complete shard: the commit marker of that shard
    README.md                      dataset card (written by finalize)
    .build.lock                    present while a build holds the store (see DatasetStore.lock)

Why shards and a manifest part per shard: the shard is the unit one task writes whole (two writers touching
one Zarr shard lose data), and a shard counts as complete only once its manifest part exists. write_shard
deletes the part first, writes the arrays, and publishes the part last (tmp file + os.replace), so a crash
anywhere leaves the shard absent for readers, never half-written.

Array bytes never contain timestamps, so rewriting a shard from the same inputs gives byte-identical files.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from storage import manifest as mf
from storage.codecs import MedPredictorCodec
from storage.pngio import uint16_to_depth
from tasks.errors import StoreError

FORMAT_NAME = "monolidar-store"
FORMAT_VERSION = 1
LOCK_NAME = ".build.lock"
CARD_NAME = "README.md"

# name -> (dtype, per-sample shape given (H, W)). Every array shares sample axis 0.
ARRAYS: dict[str, tuple[np.dtype, Callable[[int, int], tuple[int, ...]]]] = {
    "rgb": (np.dtype(np.uint8), lambda h, w: (h, w, 3)),
    "teacher_output": (np.dtype(np.float16), lambda h, w: (h, w)),  # raw teacher output, untouched
    "depth": (np.dtype(np.float32), lambda h, w: (h, w)),  # metric depth used to build the mesh, metres
    "sparse": (np.dtype(np.uint16), lambda h, w: (h, w)),  # simulated LiDAR, metres*256, 0 = no return
    "K": (np.dtype(np.float32), lambda h, w: (3, 3)),  # pinhole intrinsics of the stored image
    "lidar_pose": (np.dtype(np.float32), lambda h, w: (4, 4)),  # camera_from_lidar rigid transform
}
ARRAY_DOCS = {
    "rgb": "image, uint8 RGB",
    "teacher_output": "raw teacher output (e.g. relative inverse depth), exactly as the ONNX model returned it",
    "depth": "metric depth used to build the mesh, metres",
    "sparse": "simulated LiDAR depth, KITTI convention metres*256, 0 = no return",
    "K": "3x3 pinhole intrinsics (pixels) of the stored image",
    "lidar_pose": "4x4 camera_from_lidar rigid transform (metres)",
}

# Compression, tuned with bench/bench_loader.py (KITTI-like 352x1216 samples): random-access reads must beat
# decoding KITTI PNGs while the bytes stay at or below them. RGB goes planar (C, H, W) and through the
# median-edge-detector predictor (storage/codecs.py) before zstd; depth maps compress well as they are
# (long zero runs of semi-dense/sparse maps, smooth dense maps).
# zstd 19 pays off only on the depth maps (semi-dense/sparse: -15 % vs level 9, ~0.3 s per 352x1216 map);
# rgb after the predictor and the dense teacher output gain little from it and stay at 9 to keep writes quick.
# Level 19 would shave ~15 % off depth/sparse but costs ~0.4 s of CPU per 352x1216 sample on writes (10x
# level 9), which the build pays on its critical path (measured: depth 246 KiB in 37 ms vs 205 KiB in 426 ms).
ZSTD_LEVELS = {"rgb": 9, "teacher_output": 9, "depth": 9, "sparse": 9, "K": 9, "lidar_pose": 9}


def sample_shape(name: str, height: int, width: int) -> tuple[int, ...]:
    """Per-sample shape of array ``name`` in a store of the given image size."""
    return ARRAYS[name][1](height, width)


def _codecs(name: str) -> dict[str, Any]:
    from zarr.codecs import TransposeCodec, ZstdCodec

    if name == "rgb":
        return {
            "filters": [TransposeCodec(order=(0, 3, 1, 2)), MedPredictorCodec()],
            "compressors": [ZstdCodec(level=ZSTD_LEVELS[name])],
        }
    return {"filters": None, "compressors": [ZstdCodec(level=ZSTD_LEVELS[name])]}


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
    """A monolidar dataset on disk. Create with :meth:`create`, open with :meth:`open`.

    Attributes: ``path`` (Path), ``height``, ``width``, ``shard_size``, ``chunk_size``, ``attrs`` (dict copy of
    the group attributes: config, teacher, sensor, code_version, created, monolidar, summary).
    """

    def __init__(self, path: Path, group: Any, mode: str):
        self.path = path
        self._group = group
        self._mode = mode
        fmt = dict(group.attrs).get("monolidar", {})
        self.height = int(fmt["height"])
        self.width = int(fmt["width"])
        self.shard_size = int(fmt["shard_size"])
        self.chunk_size = int(fmt["chunk_size"])
        self._arrays = {name: group[name] for name in ARRAYS}
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
    ) -> "DatasetStore":
        """Create an empty store (0 samples; grow with ensure_shards).

        exist_ok=True opens an existing store instead if its height/width/shard_size match (else StoreError),
        which is what a resumed build wants.
        """
        import zarr

        path = Path(path)
        if height <= 0 or width <= 0:
            raise StoreError(f"{path}: image size must be positive, got {height}x{width}")
        if shard_size <= 0 or chunk_size <= 0 or shard_size % chunk_size:
            raise StoreError(f"{path}: shard_size {shard_size} must be a positive multiple of chunk_size {chunk_size}")
        if (path / "zarr.json").exists():
            if not exist_ok:
                raise StoreError(f"{path}: a store already exists (pass exist_ok or choose another path)")
            store = cls.open(path, mode="r+")
            got = (store.height, store.width, store.shard_size)
            if got != (height, width, shard_size):
                raise StoreError(
                    f"{path}: existing store has height/width/shard_size {got}, requested {(height, width, shard_size)}"
                )
            return store
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(f"{path}: exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        attrs = {
            "monolidar": {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "height": int(height),
                "width": int(width),
                "shard_size": int(shard_size),
                "chunk_size": int(chunk_size),
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
            group = zarr.open_group(str(path), mode="w-", zarr_format=3, attributes=attrs)
            for name, (dtype, shape_fn) in ARRAYS.items():
                sample = shape_fn(height, width)
                group.create_array(
                    name,
                    shape=(0, *sample),
                    dtype=dtype,
                    chunks=(chunk_size, *sample),
                    shards=(shard_size, *sample),
                    fill_value=0,
                    dimension_names=["sample", *[f"d{i}" for i in range(len(sample))]],
                    **_codecs(name),
                )
            (path / mf.MANIFEST_DIR).mkdir(exist_ok=True)
            return cls(path, group, "r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "DatasetStore":
        """Open an existing store; mode "r" (read) or "r+" (write shards, finalize)."""
        import zarr

        path = Path(path)
        if mode not in ("r", "r+"):
            raise StoreError(f"{path}: mode must be 'r' or 'r+', got {mode!r}")
        if not path.exists():
            raise StoreError(f"{path}: no such store")
        if not path.is_dir() or not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a monolidar store (no zarr.json)")
        with _quiet_zarr():
            try:
                # Per-array metadata is the truth (consolidated metadata is a convenience for remote readers
                # and can lag behind a store grown after finalize).
                group = zarr.open_group(str(path), mode=mode, use_consolidated=False)
            except Exception as exc:  # zarr raises several types for unreadable metadata
                raise StoreError(f"{path}: not a monolidar store ({type(exc).__name__}: {exc})") from None
            fmt = dict(group.attrs).get("monolidar")
            if not isinstance(fmt, dict) or fmt.get("format") != FORMAT_NAME:
                raise StoreError(f"{path}: not a monolidar store (zarr group without monolidar attributes)")
            if int(fmt.get("format_version", -1)) > FORMAT_VERSION:
                raise StoreError(
                    f"{path}: store format {fmt.get('format_version')} is newer than this code ({FORMAT_VERSION})"
                )
            missing = [n for n in ARRAYS if n not in group]
            if missing:
                raise StoreError(f"{path}: not a monolidar store (missing arrays {', '.join(missing)})")
            return cls(path, group, mode)

    def __repr__(self) -> str:
        return (f"DatasetStore({str(self.path)!r}, {self.height}x{self.width}, shard_size={self.shard_size}, "
                f"shards={len(self.complete_shards())}/{self.n_shards_allocated})")

    # ------------------------------------------------------------------ attributes
    @property
    def attrs(self) -> dict:
        return json.loads(json.dumps(dict(self._group.attrs)))

    @property
    def n_shards_allocated(self) -> int:
        return int(self._arrays["rgb"].shape[0]) // self.shard_size

    def _require_writable(self) -> None:
        if self._mode == "r":
            raise StoreError(f"{self.path}: store opened read-only (open with mode='r+')")

    def ensure_shards(self, n_shards: int) -> None:
        """Grow every array to ``n_shards * shard_size`` samples (never shrinks). One caller at a time."""
        self._require_writable()
        if n_shards <= self.n_shards_allocated:
            return
        n = int(n_shards) * self.shard_size
        for arr in self._arrays.values():
            arr.resize((n, *arr.shape[1:]))
        if "consolidated_metadata" in json.loads((self.path / "zarr.json").read_text()):
            self._consolidate()

    # ------------------------------------------------------------------ writing
    def _check_arrays(self, shard: int, arrays: dict[str, np.ndarray], n_rows: int) -> dict[str, np.ndarray]:
        unknown = sorted(set(arrays) - set(ARRAYS))
        missing = [n for n in ARRAYS if n not in arrays]
        if unknown or missing:
            raise StoreError(f"{self.path}: shard {shard}: arrays must be exactly {', '.join(ARRAYS)} "
                             f"(missing {missing}, unknown {unknown})")
        out = {}
        for name, (dtype, shape_fn) in ARRAYS.items():
            a = np.asarray(arrays[name])
            want = (n_rows, *shape_fn(self.height, self.width))
            if a.shape != want:
                raise StoreError(f"{self.path}: shard {shard}: array {name} has shape {a.shape}, expected {want}")
            if a.dtype != dtype:
                # float64 -> float32/16 is fine; floats into integer arrays would silently truncate.
                if not np.can_cast(a.dtype, dtype, casting="same_kind"):
                    raise StoreError(f"{self.path}: shard {shard}: array {name} has dtype {a.dtype}, expected {dtype}")
                a = a.astype(dtype)
            out[name] = a
        return out

    def write_shard(self, shard: int, arrays: dict[str, np.ndarray], rows: list[dict]) -> dict:
        """Write one whole shard: arrays (leading dim n_rows <= shard_size) + its n_rows manifest rows.

        Order (crash-safe): delete this shard's manifest part -> write every array's shard region
        [shard*S, (shard+1)*S) in one assignment (rows past n_rows are padding = fill value, so a rewrite
        with fewer rows leaves no stale samples) -> publish the manifest part atomically.
        Same input gives byte-identical files. Returns {"shard", "n_rows", "n_ok", "manifest"}.
        """
        self._require_writable()
        shard = int(shard)
        if not 0 <= shard < self.n_shards_allocated:
            raise StoreError(f"{self.path}: shard {shard} is not allocated "
                             f"({self.n_shards_allocated} shards; call ensure_shards first)")
        n_rows = len(rows)
        if not 1 <= n_rows <= self.shard_size:
            raise StoreError(f"{self.path}: shard {shard}: {n_rows} rows, expected 1..{self.shard_size}")
        checked = self._check_arrays(shard, arrays, n_rows)
        sensor = str(self._group.attrs.get("sensor", ""))
        table = mf.rows_to_table(mf.normalize_rows(rows, shard=shard, shard_size=self.shard_size, sensor=sensor))

        part = self.path / mf.MANIFEST_DIR / mf.part_name(shard)
        part.unlink(missing_ok=True)
        self._parts.pop(shard, None)
        start, stop = shard * self.shard_size, (shard + 1) * self.shard_size
        for name, a in checked.items():
            if n_rows < self.shard_size:
                padded = np.zeros((self.shard_size, *a.shape[1:]), dtype=a.dtype)
                padded[:n_rows] = a
                a = padded
            self._arrays[name][start:stop] = a
        mf.write_part(part, table)
        n_ok = sum(1 for s in table.column("status").to_pylist() if s == "ok")
        return {"shard": shard, "n_rows": n_rows, "n_ok": n_ok, "manifest": str(part)}

    # ------------------------------------------------------------------ reading
    def complete_shards(self) -> list[int]:
        """Shards whose manifest part exists (the commit marker), sorted."""
        d = self.path / mf.MANIFEST_DIR
        if not d.is_dir():
            return []
        shards = (mf.part_shard(p.name) for p in d.iterdir())
        return sorted(s for s in shards if s is not None)

    def _part(self, shard: int) -> pa.Table:
        if shard not in self._parts:
            self._parts[shard] = mf.read_part(self.path / mf.MANIFEST_DIR / mf.part_name(shard))
        return self._parts[shard]

    def manifest(self) -> pa.Table:
        """All rows of complete shards, sorted by index. A corrupt part raises StoreError naming the file."""
        return mf.merge_parts(self._part(s) for s in self.complete_shards())

    def _row(self, index: int) -> dict:
        shard, row = divmod(int(index), self.shard_size)
        if not (self.path / mf.MANIFEST_DIR / mf.part_name(shard)).is_file():
            raise StoreError(f"{self.path}: sample {index} is not in a complete shard (shard {shard})")
        table = self._part(shard)
        if row >= table.num_rows:
            raise StoreError(f"{self.path}: sample {index}: shard {shard} has only {table.num_rows} rows")
        return table.slice(row, 1).to_pylist()[0]

    def read_arrays(self, index: int, names: tuple[str, ...] = tuple(ARRAYS)) -> dict[str, np.ndarray]:
        """Raw stored arrays of one sample (sparse stays uint16), without manifest checks."""
        return {name: self._arrays[name][int(index)] for name in names}

    def read_sample(self, index: int) -> dict:
        """One sample of a complete shard: every array (``sparse`` as float32 metres, 0 = none) + ``row``."""
        row = self._row(index)
        out: dict[str, Any] = self.read_arrays(index)
        out["sparse"] = uint16_to_depth(out["sparse"])
        out["row"] = row
        return out

    # ------------------------------------------------------------------ finishing
    def _consolidate(self) -> None:
        import zarr

        with _quiet_zarr():
            zarr.consolidate_metadata(str(self.path))

    def finalize(self, summary: dict) -> None:
        """Record the build summary, consolidate the Zarr metadata and write the dataset card README.md."""
        self._require_writable()
        self._group.update_attributes({"summary": summary, "finalized": _now_iso()})
        self._consolidate()
        text = render_card(self)
        tmp = self.path / f".{CARD_NAME}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / CARD_NAME)

    @contextlib.contextmanager
    def lock(self, owner: str = "") -> Iterator[Path]:
        """Exclusive build lock: a file created with O_EXCL holding pid, host and owner.

        A second holder gets StoreError; a lock left by a dead process on this host is taken over. Yields the
        lock file path; the file is removed on exit (only if it is still ours).
        """
        lock_path = self.path / LOCK_NAME
        me = {"pid": os.getpid(), "host": socket.gethostname(), "owner": owner, "since": _now_iso()}
        for _attempt in range(3):
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(lock_path)
                if holder is None:
                    continue  # vanished or half-written by a racing taker; try again
                if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    lock_path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise StoreError(
                    f"{self.path} is being built by pid {holder.get('pid')} on {holder.get('host')} "
                    f"(lock {lock_path}); wait for it or remove the lock file if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:
            raise StoreError(f"{self.path}: could not take the build lock {lock_path}")
        try:
            yield lock_path
        finally:
            holder = _read_lock(lock_path)
            if holder is not None and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                lock_path.unlink(missing_ok=True)


def _read_lock(lock_path: Path) -> dict | None:
    try:
        return json.loads(lock_path.read_text())
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
        "path": str(store.path),
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
        f"# monolidar dataset `{store.path.name}`",
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
    for name, (dtype, shape_fn) in ARRAYS.items():
        lines.append(f"| `{name}` | {dtype} | {shape_fn(store.height, store.width)} | {ARRAY_DOCS[name]} |")
    lines += [
        "",
        "## Format",
        "",
        f"Each array is sharded (`shards=({store.shard_size}, ...)`, chunks of {store.chunk_size} sample(s), zstd).",
        f"`{mf.MANIFEST_DIR}/shard-NNNNN.parquet` holds one row per sample of shard NNNNN; a shard without its part",
        "is incomplete and must be ignored. Row `index` = shard * shard_size + row addresses the arrays.",
        "Manifest columns: " + ", ".join(f"`{n}`" for n in mf.SCHEMA.names) + ".",
        "",
        "Read with monolidar (`storage.store.DatasetStore.open`, `storage.dataset.CompletionDataset`) or plainly:",
        "`import storage.codecs` (registers the rgb predictor codec), then `zarr.open_group(path)['rgb'][i]`",
        "and `pyarrow.parquet.read_table(path + '/manifest')`.",
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
