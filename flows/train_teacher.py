"""Train the embedded default teacher: render procedural scenes -> train DepthNetSmall -> export ONNX.

A Prefect flow with three tasks; each task passes paths, never arrays. Renders are cached one ``.npz`` per
scene (rgb uint8 at the network input size, true z-depth float32, 0 = sky) under a cache folder keyed by the
scene seed, the input size and the hash of tasks/scenes.py, so a retrain with the same settings re-renders
nothing. Training and export are ``model.embedded_teacher.train_network`` and
``model.export.export_teacher_onnx``; checkpoints are weights-only (``model.checkpoint``).

The result goes to a NEW file by default (``DEFAULT_OUT``): the shipped model's sha256 keys every store's
caches, so replacing it would make existing stores refuse to rebuild. Writing over the shipped file takes
``replace_shipped=True`` (``--replace-shipped``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import InputError
from tasks.provenance import derive_seed, sha256_file, stable_hash

DEFAULT_SHORT_SIDE = 196
SHIPPED_TEACHER = Path(__file__).resolve().parent.parent / "model" / "weights" / "monolidar_teacher_small.onnx"
DEFAULT_OUT = Path("monolidar-teacher") / "monolidar_teacher_small.onnx"  # relative to the working directory


def resolve_out(out: str | Path | None, replace_shipped: bool) -> Path:
    """Where train-teacher writes: ``out`` or ``DEFAULT_OUT``; InputError if that is the shipped model and
    ``replace_shipped`` is not set."""
    path = Path(out) if out else DEFAULT_OUT
    if path.resolve() == SHIPPED_TEACHER.resolve() and not replace_shipped:
        raise InputError(f"{path}: refusing to replace the shipped teacher (its sha256 keys every store's caches, "
                         f"so existing stores would refuse to rebuild); write elsewhere with --out, or pass "
                         f"--replace-shipped to do it on purpose")
    return path
STREET_SHARE = 0.7  # KITTI-like driving scenes are the main use; indoor scenes teach walls, floors, furniture


def default_render_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "monolidar" / "teacher-renders"


def scene_spec(seed: int, index: int) -> tuple[int, str]:
    """(scene seed, kind) of training scene ``index``: independent of how many scenes are rendered."""
    scene_seed = derive_seed(seed, "teacher-scene", index)
    # The kind draw has its own seed: drawn from scene_seed it would repeat the scene's first random number.
    kind = "street" if np.random.default_rng(derive_seed(seed, "teacher-kind", index)).random() < STREET_SHARE \
        else "indoor"
    return scene_seed, kind


def render_one(scene_seed: int, kind: str, short_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene directly at the teacher's input size for its camera (as Teacher would resize it)."""
    from model.teacher import network_size
    from tasks.scenes import generate_scene, render, resized

    scene = generate_scene(scene_seed, kind)
    h, w = network_size(scene.height, scene.width, short_side)
    return render(resized(scene, h, w))


@task(cache_policy=NO_CACHE)
def render_training_set(n_scenes: int, seed: int, short_side: int, cache_dir: str) -> list[str]:
    """Render (or reuse) ``n_scenes`` scenes; returns the .npz paths in index order."""
    import tasks.scenes

    key = stable_hash({"short_side": short_side, "scenes_py": sha256_file(tasks.scenes.__file__)})
    folder = Path(cache_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    paths, start, made = [], time.monotonic(), 0
    for i in range(n_scenes):
        scene_seed, kind = scene_spec(seed, i)
        path = folder / f"{kind}_{scene_seed:019d}.npz"
        if not path.exists():
            rgb, depth = render_one(scene_seed, kind, short_side)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, rgb=rgb, depth=depth)
            tmp.replace(path)
            made += 1
        paths.append(str(path))
        if (i + 1) % 200 == 0:
            print(f"render: {i + 1}/{n_scenes} scenes ({made} new, {time.monotonic() - start:.0f}s)", flush=True)
    print(f"render: {n_scenes} scenes ready in {folder} ({made} new, {time.monotonic() - start:.0f}s)", flush=True)
    return paths


def load_training_groups(paths: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stack cached renders into same-shape groups of (rgb (N,H,W,3) uint8, disparity (N,H,W) float32)."""
    by_shape: dict[tuple[int, int], tuple[list, list]] = {}
    for p in paths:
        with np.load(p) as z:
            rgb, depth = z["rgb"], z["depth"]
        disp = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-3), 0.0).astype(np.float32)
        lists = by_shape.setdefault(depth.shape, ([], []))
        lists[0].append(rgb)
        lists[1].append(disp)
    return [(np.stack(r), np.stack(d)) for _, (r, d) in sorted(by_shape.items())]


@task(cache_policy=NO_CACHE)
def train_task(paths: list[str], checkpoint: str, steps: int, seed: int, minutes: float | None,
               batch: int, threads: int, lr: float = 3e-3, init_checkpoint: str | None = None,
               log_depth_weight: float = 0.0) -> str:
    from model.checkpoint import save_teacher_checkpoint
    from model.embedded_teacher import initial_state, train_network

    groups = load_training_groups(paths)
    print("training groups: " + ", ".join(f"{g[0].shape[0]}x{g[0].shape[1]}x{g[0].shape[2]}" for g in groups),
          flush=True)
    init = initial_state(init_checkpoint, groups) if init_checkpoint else None
    model, info = train_network(groups, steps=steps, seed=seed, minutes=minutes, batch=batch, threads=threads,
                                lr=lr, init_state=init, log=lambda m: print(m, flush=True),
                                log_depth_weight=log_depth_weight)
    info["init_checkpoint"] = init_checkpoint
    save_teacher_checkpoint(checkpoint, model.state_dict(), info)
    return checkpoint


@task(cache_policy=NO_CACHE)
def export_task(checkpoint: str, out: str, short_side: int, extra_metadata: dict[str, str]) -> dict:
    from model.checkpoint import load_teacher_checkpoint
    from model.embedded_teacher import DepthNetSmall
    from model.export import export_teacher_onnx

    state = load_teacher_checkpoint(checkpoint)
    model = DepthNetSmall()
    model.load_state_dict(state["state_dict"])
    meta = dict(extra_metadata)
    meta["monolidar.train_steps"] = str(state["info"]["steps"])
    meta["monolidar.train_seconds"] = f"{state['info']['seconds']:.0f}"
    return export_teacher_onnx(model, out, short_side=short_side, extra_metadata=meta)


@flow(name="train-teacher", log_prints=True)
def train_teacher(out: Path | None = None, *, replace_shipped: bool = False, n_scenes: int = 1200,
                  epochs: float = 14.0, seed: int = 0, minutes: float | None = 25.0,
                  short_side: int = DEFAULT_SHORT_SIDE, batch: int = 8, threads: int = 2,
                  cache_dir: Path | None = None, lr: float = 3e-3, init_checkpoint: Path | None = None,
                  log_depth_weight: float = 0.0) -> dict:
    """Render ``n_scenes`` procedural scenes, train for ``epochs`` passes (in steps of ``batch`` crops) or
    until ``minutes`` of training wall time (None = no limit), and write the ONNX teacher to ``out``
    (default ``DEFAULT_OUT``; the shipped model only with ``replace_shipped``).

    ``init_checkpoint`` (a .pt written by an earlier run, or an exported .onnx teacher) warm-starts the
    network; ``lr`` is the peak rate; ``log_depth_weight`` weighs the evaluation-protocol loss term.
    Returns a summary (paths, steps, seconds, ORT check); also written as JSON beside the checkpoint.
    """
    if n_scenes < 1 or epochs <= 0 or short_side % 14:
        raise ValueError(f"train-teacher: need n_scenes >= 1, epochs > 0, short_side % 14 == 0 "
                         f"(got {n_scenes}, {epochs}, {short_side})")
    start = time.monotonic()
    out = resolve_out(out, replace_shipped)
    cache = Path(cache_dir) if cache_dir else default_render_cache()
    paths = render_training_set(n_scenes, seed, short_side, str(cache))
    render_s = time.monotonic() - start
    steps = max(1, int(round(epochs * n_scenes / batch)))
    init = str(init_checkpoint) if init_checkpoint else None
    init_key = sha256_file(init)[:16] if init else None
    # The weight joins the key only when set, so runs without it keep the checkpoint names they had.
    key = [n_scenes, epochs, seed, short_side, batch, lr, init_key] + ([log_depth_weight] if log_depth_weight else [])
    checkpoint = str(cache / f"teacher_{stable_hash(key)}.pt")
    train_task(paths, checkpoint, steps, seed, minutes, batch, threads, lr, init, log_depth_weight)
    meta = {"monolidar.train_scenes": str(n_scenes), "monolidar.train_seed": str(seed),
            "monolidar.train_log_depth_weight": str(log_depth_weight)}
    if init_key:
        meta["monolidar.init_checkpoint_sha256"] = init_key
    summary = export_task(checkpoint, str(out), short_side, meta)
    summary.update({"render_seconds": round(render_s, 1), "total_seconds": round(time.monotonic() - start, 1),
                    "n_scenes": n_scenes, "epochs": epochs, "seed": seed, "minutes": minutes, "lr": lr,
                    "log_depth_weight": log_depth_weight,
                    "checkpoint": checkpoint})
    Path(checkpoint).with_suffix(".json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(f"train-teacher: wrote {out} ({summary['bytes'] / 1e6:.1f} MB) in {summary['total_seconds']:.0f}s",
          flush=True)
    return summary
