"""Hashes, seeds and code version: the identities that caching and determinism rest on."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE_VERSION = "0.1.0"
_SOURCE_DIRS = ("tasks", "model", "storage")
_REPO = Path(__file__).resolve().parent.parent


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order (config hashes, cache keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def derive_seed(global_seed: int, *parts: Any) -> int:
    """Per-sample seed = hash(global seed, sample id, ...): independent of worker, order and runner."""
    blob = json.dumps([int(global_seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + hash of the domain source (tasks/, model/, storage/ *.py).

    Part of every shard cache key, so editing the simulation invalidates cached shards.
    """
    h = hashlib.sha256(PACKAGE_VERSION.encode())
    for d in _SOURCE_DIRS:
        for p in sorted((_REPO / d).rglob("*.py")):
            h.update(p.relative_to(_REPO).as_posix().encode())
            h.update(p.read_bytes())
    return f"{PACKAGE_VERSION}+{h.hexdigest()[:12]}"
