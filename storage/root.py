"""Where a store's files live: a local directory or an object-store / fsspec URL (``s3://bucket/ds.zarr``).

Every file operation of the store goes through :class:`StoreRoot`, so the commit rules hold on both:

* ``write_bytes`` publishes a whole file at once: locally through a temporary file + fsync + ``os.replace``;
  on an object store one PUT is already all-or-nothing (no renames there: they are copies, not atomic).
* ``create_exclusive`` creates a file only if it does not exist: ``O_EXCL`` locally, a conditional PUT
  (``If-None-Match: *``) on S3. The build lock rests on it.

Remote credentials and endpoints come from the usual environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible servers), or from ``storage_options``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from storage.direct_io import write_direct
from tasks.errors import StoreError


def is_remote(url: str | os.PathLike) -> bool:
    s = str(url)
    return "://" in s and not s.startswith("file://")


def _local(url: str | os.PathLike) -> Path:
    s = str(url)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def read_uri(uri: str) -> bytes:
    """Whole content of a local path, file:// URL or fsspec URL (FileNotFoundError if absent)."""
    if is_remote(uri):
        import fsspec

        with fsspec.open(uri, "rb") as f:
            return f.read()
    return _local(uri).read_bytes()


_GLOB_CHARS = frozenset("*?[")
Missing = FileNotFoundError | IsADirectoryError  # what read_uris reports per input instead of raising


def _read_or_missing(uri: str) -> bytes | Missing:
    try:
        return read_uri(uri)
    except (FileNotFoundError, IsADirectoryError) as exc:
        return exc


def read_uris(uris: Iterable[str]) -> dict[str, bytes | Missing]:
    """Whole contents of several inputs (local paths, file:// or fsspec URLs), keyed by URI.

    Remote inputs are fetched together through fsspec's batched ``cat``: one GET per object, issued
    concurrently by async filesystems (s3fs, gcsfs, http). Why: a cloud object store answers each request
    after ~30-100 ms, and read one by one (``open`` = a metadata request, then the GET) a shard of 64 photos
    kept a stage waiting for seconds while a GPU teacher would have needed a fraction of one
    (``bench/bench_remote_inputs.py``). Local files are read in turn. An input that does not exist (or is a
    directory) maps to its ``FileNotFoundError`` / ``IsADirectoryError``, for the caller to quarantine; any
    other error is raised, so the calling task's retries apply.
    """
    order = list(dict.fromkeys(uris))
    out: dict[str, bytes | Missing] = {}
    batches: dict[int, tuple[Any, dict[str, str]]] = {}
    for uri in order:
        if not is_remote(uri) or _GLOB_CHARS & set(uri):  # a "[" in a name would be read as a glob by cat
            out[uri] = _read_or_missing(uri)
            continue
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)  # instances are cached per protocol + options: one batch each
        batches.setdefault(id(fs), (fs, {}))[1][path] = uri
    for fs, paths in batches.values():
        got = _cat_each(fs, paths, _read_or_missing)
        for path, uri in paths.items():
            value = got[path]
            if isinstance(value, (FileNotFoundError, IsADirectoryError)):
                out[uri] = value
            elif isinstance(value, BaseException):
                raise value
            else:
                out[uri] = bytes(value)
    return {uri: out[uri] for uri in order}


def _cat_each(fs: Any, paths: dict[str, str], read_alone: Callable[[str], Any]) -> dict[str, Any]:
    """fsspec's batched ``cat`` of ``paths`` (fs path -> the caller's key), errors returned per path instead of
    raised; a path missing from the answer (a filesystem that keys it another way) is read alone with
    ``read_alone(key)``, which returns bytes or an exception, so it is never taken for a missing file."""
    got = fs.cat(list(paths), on_error="return")
    return {path: got[path] if path in got else read_alone(key) for path, key in paths.items()}


def input_reader(uris: Iterable[str]) -> Callable[[str], bytes | Missing]:
    """A reader of the inputs ``uris`` for a loop over them: the remote ones are fetched now, in one concurrent
    batch (read_uris), the local ones when asked for, so a shard of large local photos is never all in memory
    at once. The reader returns an input's bytes, or its FileNotFoundError / IsADirectoryError."""
    fetched = read_uris(u for u in uris if is_remote(u))
    return lambda uri: fetched[uri] if uri in fetched else _read_or_missing(uri)


class StoreRoot:
    """A directory-like root, local or remote. Paths given to its methods are relative, '/'-separated."""

    def __init__(self, url: str | os.PathLike, storage_options: dict | None = None):
        self.remote = is_remote(url)
        self.storage_options = dict(storage_options or {})
        if self.remote:
            import fsspec

            self.url = str(url).rstrip("/")
            self.protocol = self.url.split("://", 1)[0]
            # No listings cache: several writers share a bucket, and a stale listing would hide a fresh part.
            opts = {"use_listings_cache": False, **self.storage_options}
            self.fs, self.base = fsspec.core.url_to_fs(self.url, **opts)
            self.path: Path | None = None
        else:
            self.path = _local(url)
            self.url = str(self.path)
            self.fs, self.base = None, str(self.path)

    def __repr__(self) -> str:
        return f"StoreRoot({self.url!r})"

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def full(self, rel: str = "") -> str:
        """Absolute path (local) or URL (remote) of ``rel``."""
        if not rel:
            return self.url
        return str(self.path / rel) if self.path is not None else f"{self.url}/{rel}"

    def _fs_path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    # ---------------------------------------------------------------- queries
    def exists(self, rel: str = "") -> bool:
        if self.path is not None:
            return (self.path / rel).exists()
        return bool(self.fs.exists(self._fs_path(rel)))

    def is_empty(self) -> bool:
        """True when nothing is stored under the root (absent counts as empty)."""
        if self.path is not None:
            return not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))
        try:
            return not self.fs.ls(self.base, detail=False)
        except FileNotFoundError:
            return True

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly under ``rel``; [] if it does not exist."""
        if self.path is not None:
            d = self.path / rel
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        try:
            self.fs.invalidate_cache(self._fs_path(rel))
            entries = self.fs.ls(self._fs_path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def size(self, rel: str) -> int:
        if self.path is not None:
            return (self.path / rel).stat().st_size
        return int(self.fs.size(self._fs_path(rel)))

    # ---------------------------------------------------------------- bytes
    def read_bytes(self, rel: str) -> bytes:
        """Whole file; FileNotFoundError if absent."""
        if self.path is not None:
            return (self.path / rel).read_bytes()
        try:
            return self.fs.cat_file(self._fs_path(rel))
        except FileNotFoundError:
            raise
        except OSError as exc:  # s3fs maps NoSuchKey to FileNotFoundError; anything else is a real error
            raise OSError(f"{self.full(rel)}: {exc}") from exc

    def read_many(self, rels: list[str]) -> dict[str, bytes | FileNotFoundError]:
        """Whole contents of several files, keyed by ``rel`` (an absent one maps to its FileNotFoundError); on
        an object store fetched concurrently (fsspec's batched ``cat``) instead of one round trip each."""
        if self.path is not None or len(rels) < 2:
            return {rel: self._read_or_missing(rel) for rel in rels}
        paths = {self._fs_path(rel): rel for rel in rels}
        got = _cat_each(self.fs, paths, self._read_or_missing)
        out = {}
        for path, rel in paths.items():
            value = got[path]
            if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                raise OSError(f"{self.full(rel)}: {value}") from value
            out[rel] = value
        return out

    def _read_or_missing(self, rel: str) -> bytes | FileNotFoundError:
        try:
            return self.read_bytes(rel)
        except FileNotFoundError as exc:
            return exc

    def write_bytes(self, rel: str, data: bytes | Sequence[bytes], *, durable: bool = True) -> None:
        """Publish a whole file: readers see the old file, no file, or the complete new one. ``data`` is the
        file's bytes, or a list / tuple of pieces whose concatenation is the file (a local file is written
        from them as they are; an object store gets them joined, in one PUT).

        ``durable=False`` skips the local fsync (a process kill still leaves the old or the new file; a power
        loss may not): for files whose loss a later commit record detects, such as shard objects, whose sha256
        the manifest part holds (``verify`` finds them, ``repair`` rewrites them)."""
        if self.path is not None:
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                # Large files (shard objects) go past the page cache when the filesystem allows it
                # (storage.direct_io: no kernel copy into fresh cache pages, no cache pollution at scale).
                if not write_direct(tmp, data):
                    with open(tmp, "wb") as f:
                        if isinstance(data, (list, tuple)):
                            f.writelines(data)
                        else:
                            f.write(data)
                if durable:
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())  # durable before it becomes visible under the real name
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            return
        if isinstance(data, (list, tuple)):
            data = b"".join(data)
        self.fs.pipe_file(self._fs_path(rel), data)  # one PUT: atomic on object stores

    def write_many(self, files: dict[str, bytes], *, durable: bool = True) -> None:
        """``write_bytes`` for several files; on an object store their PUTs are issued together (fsspec's
        batched ``pipe``: one round trip of latency for all of them, not one each). Each file is published
        whole, in no particular order among them: callers order what must come after (a commit record) with
        a separate call."""
        if self.path is not None or len(files) < 2:
            for rel, data in files.items():
                self.write_bytes(rel, data, durable=durable)
            return
        self.fs.pipe({self._fs_path(rel): data for rel, data in files.items()})

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` only if it does not exist; False if it does (someone else holds it)."""
        if self.path is not None:
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        try:
            # Conditional PUT (If-None-Match: *): the server refuses it when the key exists, no race window.
            self.fs.pipe_file(self._fs_path(rel), data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            # s3fs reports a refused conditional PUT (HTTP 412 PreconditionFailed) as EINVAL with that message.
            text = str(exc).lower()
            if any(k in text for k in ("precondition", "pre-condition", "412")):
                return False
            raise
        return True

    def delete(self, rel: str) -> None:
        """Remove a file; absent is fine."""
        if self.path is not None:
            (self.path / rel).unlink(missing_ok=True)
            return
        try:
            self.fs.rm_file(self._fs_path(rel))
        except FileNotFoundError:
            pass

    def mkdir(self) -> None:
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
        elif self.protocol in ("s3", "s3a"):
            bucket = self.base.split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise StoreError(f"{self.url}: bucket {bucket!r} does not exist")

    def remove_tree(self) -> None:
        if self.path is not None:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
        elif self.fs.exists(self.base):
            self.fs.rm(self.base, recursive=True)

    # ---------------------------------------------------------------- zarr
    def zarr_store(self, read_only: bool = False) -> Any:
        """The zarr-python store over this root (LocalStore, or FsspecStore for URLs)."""
        import zarr.storage

        if self.path is not None:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options or None,
                                                 read_only=read_only)
