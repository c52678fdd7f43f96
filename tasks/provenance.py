"""Hashes, seeds and code version: the identities that caching and determinism rest on."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE_VERSION = "0.1.0"
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


# The code that decides a shard's bytes, named by its entry points: the shard writer (simulation, store
# encoding) and the teacher runtime (preprocessing changes the teacher output kept in the shard). The code
# version hashes these modules and every project module they import, directly or not (found by reading
# their imports, so a new helper the simulation starts to use is covered without editing a list). Training
# code, flows, the CLI and benches are not reachable from here, so editing them invalidates nothing.
SHARD_CODE_ROOTS = ("tasks.build_tasks", "tasks.sample_sim", "model.teacher")
# Bump when shard bytes change for a reason no module source shows (a data file read by the simulation,
# a dependency upgrade that changes results). Part of the code version.
SIMULATION_VERSION = 1
_PROJECT_PACKAGES = ("tasks", "model", "storage")
# Imported by shard code for things that do not decide shard bytes; not followed (nor their imports), so
# editing the KITTI exporter or the cache layout leaves stores valid.
NOT_SHARD_CODE = {
    "storage.kitti": "KITTI-DC reader/writer; shard code takes only the KITTI_CROP constant from it",
    "storage.cache": "where intermediates are kept, not what they contain (cache keys cover their content)",
}


def _module_file(name: str, repo: Path) -> Path | None:
    """Source file of a project module name (a package's __init__.py), or None outside the project."""
    if name.split(".")[0] not in _PROJECT_PACKAGES:
        return None
    base = repo.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imported_modules(path: Path, name: str) -> set[str]:
    import ast

    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):  # also imports inside functions (lazy imports are still shard code)
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            # "from pkg import sub" may name a submodule
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def shard_code_modules(roots: tuple[str, ...] = SHARD_CODE_ROOTS, repo: Path = _REPO) -> dict[str, Path]:
    """{module name: source file} of the shard-producing code: the roots and their project imports, read
    from the source tree at ``repo``."""
    found: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = None if name in NOT_SHARD_CODE else _module_file(name, Path(repo))
        if path is None:
            continue
        found[name] = path
        todo.extend(_imported_modules(path, name))
    return dict(sorted(found.items()))


@lru_cache(maxsize=4)
def code_version(repo: Path = _REPO) -> str:
    """Package version + SIMULATION_VERSION + hash of the shard-producing modules (shard_code_modules).

    Part of every shard key: editing the simulation, the store encoding or the teacher runtime makes shards
    stale; editing losses, training, flows or the CLI does not.
    """
    h = hashlib.sha256(f"{PACKAGE_VERSION}|sim{SIMULATION_VERSION}".encode())
    for name, path in shard_code_modules(repo=Path(repo)).items():
        h.update(name.encode())
        h.update(path.read_bytes())
    return f"{PACKAGE_VERSION}+{h.hexdigest()[:12]}"


def sensor_profile_digest(name_or_path: str) -> str:
    """sha256 of the sensor profile file's bytes (a built-in name resolves to its file in tasks/sensors/).

    Read fresh from disk on every call, never from the profile loader's cache, so an edited profile is seen.
    A name that resolves to no file hashes the name itself (the build refuses unknown profiles earlier).
    """
    from tasks.sensors import PROFILE_DIR

    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.is_file():
        path = PROFILE_DIR / f"{text}.yaml"
    try:
        return sha256_bytes(path.read_bytes())
    except OSError:
        return sha256_bytes(f"unresolved:{text}".encode())

