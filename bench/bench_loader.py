"""Random-access read speed and bytes on disk: the Zarr store vs the same samples as KITTI PNG files.

Builds ~64 KITTI-like samples (352x1216; crops/flips/gain jitter of the shared KITTI frames when present,
else synthetic street-like content), writes them both as a store and as a KITTI val_selection_cropped
directory, then reads the same arrays (rgb + sparse + depth -> uint8 RGB and float32 metres) in the same
random order from both, alternating which goes first in each pass. Prints rates, the speed ratio, and bytes
(like-for-like: the three arrays the PNG set also holds; and the whole store incl. teacher output, K, pose,
manifest). Readers: the project's own path (``DatasetStore.read_arrays``: tensorstore on a local store), plain
zarr-python as a reader without monolidar opens the store, and, with the ``zarrs`` package installed, plain
zarr-python through zarrs' Rust codec pipeline (``zarr.config codec_pipeline.path``), in the same alternating
passes.

    python bench/bench_loader.py [--samples 64] [--passes 3] [--workdir DIR] [--profiles balanced small]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from storage.kitti import KITTI_CROP, find_kitti_dc, write_kitti_dc  # noqa: E402
from storage.pngio import depth_to_uint16, read_depth_png, read_rgb, uint16_to_depth  # noqa: E402
from storage.compression import COMPRESSION  # noqa: E402
from storage.store import DatasetStore  # noqa: E402
from tasks.sparsify import sparsify_scanlines  # noqa: E402

KITTI_GT = REPO.parent / "shared" / "data" / "kitti_gt"
K_GT = np.array([[707.0493, 0, 604.0814], [0, 707.0493, 180.5066], [0, 0, 1]], np.float32)


def _frames() -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-size (rgb, gt metres) frames: the shared KITTI frames, else synthetic street-like ones."""
    if KITTI_GT.is_dir():
        return [(read_rgb(p), read_depth_png(KITTI_GT / "depth" / p.name)) for p in sorted((KITTI_GT / "rgb").glob("*.png"))]
    rng = np.random.default_rng(0)
    h, w = 375, 1242
    v = np.arange(h, dtype=np.float32)[:, None]
    depth = np.where(v > 180, 1.65 * 707 / np.maximum(v - 180, 1), 80).repeat(w, 1).astype(np.float32)
    frames = []
    for _ in range(2):
        base = np.clip(255 * (0.3 + 0.4 * np.sin(np.arange(w) / 37.0)[None, :] * np.cos(v / 23.0)), 0, 255)
        noise = rng.normal(0, 6, (h, w, 3))
        rgb = np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)
        gt = np.where(rng.random((h, w)) < 0.2, np.minimum(depth, 85), 0).astype(np.float32)
        gt = uint16_to_depth(depth_to_uint16(gt))
        frames.append((rgb, gt))
    return frames


def make_samples(n: int, seed: int = 0) -> list[dict]:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    frames = _frames()
    ch, cw = KITTI_CROP
    samples = []
    for i in range(n):
        rgb_full, gt_full = frames[i % len(frames)]
        h, w = gt_full.shape
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        rgb = rgb_full[y0:y0 + ch, x0:x0 + cw]
        gt = gt_full[y0:y0 + ch, x0:x0 + cw]
        K = K_GT.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        if rng.random() < 0.5:
            rgb, gt = rgb[:, ::-1], gt[:, ::-1]
            K[0, 2] = cw - 1 - K[0, 2]
        rgb = np.clip(rgb.astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
        gt = np.ascontiguousarray(gt)
        # A smooth dense "teacher disparity": nearest-filled GT, blurred, inverted (what a teacher outputs).
        idx = ndimage.distance_transform_edt(gt <= 0, return_distances=False, return_indices=True)
        dense = gt[idx[0], idx[1]] if (gt > 0).any() else np.full_like(gt, 30.0)
        teacher = (1.0 / ndimage.gaussian_filter(np.where(dense > 0, dense, 80.0), 3)).astype(np.float16)
        samples.append({
            "name": f"bench{i:03d}", "rgb": np.ascontiguousarray(rgb), "gt": gt,
            "sparse": sparsify_scanlines(gt, n_lines=64, seed=i), "teacher": teacher, "K": K,
        })
    return samples


def write_store(path: Path, samples: list[dict], shard_size: int, compression: str = "balanced") -> DatasetStore:
    store = DatasetStore.create(path, height=KITTI_CROP[0], width=KITTI_CROP[1], shard_size=shard_size,
                                config={"bench": True}, teacher={"sha256": "synthetic"}, sensor="hdl64",
                                code_version="bench", compression=compression)
    n_shards = -(-len(samples) // shard_size)
    store.ensure_shards(n_shards)
    for shard in range(n_shards):
        part = samples[shard * shard_size:(shard + 1) * shard_size]
        store.write_shard(shard, {
            "rgb": np.stack([s["rgb"] for s in part]),
            "teacher_output": np.stack([s["teacher"] for s in part]),
            "depth": np.stack([s["gt"] for s in part]),
            "sparse": np.stack([depth_to_uint16(s["sparse"]) for s in part]),
            "K": np.stack([s["K"] for s in part]),
            "lidar_pose": np.tile(np.eye(4, dtype=np.float32), (len(part), 1, 1)),
        }, [{"sample_id": s["name"], "source_uri": "bench", "content_hash": s["name"], "seed": 0, "status": "ok"}
            for s in part])
    return store


def du(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--profiles", nargs="+", choices=list(COMPRESSION), default=list(COMPRESSION),
                    help="compression profiles to measure (the first is also read through zarrs)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_loader_", dir=args.workdir))
    try:
        t = time.perf_counter()
        samples = make_samples(args.samples)
        source = "shared KITTI frames" if KITTI_GT.is_dir() else "synthetic frames"
        print(f"samples: {len(samples)} x {KITTI_CROP[0]}x{KITTI_CROP[1]} from {source} ({time.perf_counter() - t:.1f} s)")

        profiles = list(args.profiles)
        t_write = {}
        for prof in profiles:
            t = time.perf_counter()
            write_store(work / prof, samples, args.shard_size, prof)
            t_write[prof] = time.perf_counter() - t
        t = time.perf_counter()
        write_kitti_dc(work / "kitti", ({"name": s["name"], "rgb": s["rgb"], "sparse": s["sparse"], "gt": s["gt"],
                                         "K": s["K"]} for s in samples))
        t_write["png"] = time.perf_counter() - t
        print("write: " + ", ".join(f"{k} {v:.2f} s" for k, v in t_write.items()))

        items = find_kitti_dc(work / "kitti")
        by_name = {it.name: it for it in items}
        png_items = [by_name[f"{s['name']}_image_02"] for s in samples]

        def store_reader(store: DatasetStore):
            def read(i: int):
                a = store.read_arrays(i, ("rgb", "sparse", "depth"))
                return a["rgb"], uint16_to_depth(a["sparse"]), uint16_to_depth(a["depth"])  # format 3: uint16
            return read

        def read_png(i: int):
            it = png_items[i]
            return read_rgb(it.rgb_path), read_depth_png(it.sparse_path), read_depth_png(it.gt_path)

        # store[p]: the project's read path (DatasetStore.read_arrays: tensorstore on a local store);
        # zarr-python: the same arrays through plain zarr, as a reader without monolidar would open them.
        readers = [(f"store[{p}]", store_reader(DatasetStore.open(work / p))) for p in profiles]
        readers.append(("png", read_png))
        import zarr

        def zarr_reader(pipeline: str | None):
            conf = {"codec_pipeline.path": pipeline} if pipeline else {}
            with zarr.config.set(conf):
                group = zarr.open_group(str(work / profiles[0]), mode="r")
                arrays = [group[n] for n in ("rgb", "sparse", "depth")]
                for a in arrays:
                    a[0]  # the pipeline is bound when an array is first used

            def read(i: int):
                with zarr.config.set(conf):
                    rgb, sparse, depth = (a[i] for a in arrays)
                return rgb, uint16_to_depth(sparse), uint16_to_depth(depth)
            return read

        readers.append((f"zarr-python[{profiles[0]}]", zarr_reader(None)))
        try:
            import zarrs  # noqa: F401

            readers.append((f"zarr-python+zarrs[{profiles[0]}]", zarr_reader("zarrs.ZarrsCodecPipeline")))
        except ImportError:
            print("(zarrs not installed: its codec pipeline is not measured)")

        # same content from all (depth is on the 1/256 m grid, so PNG holds it exactly)
        for i in (0, len(samples) - 1):
            ref = read_png(i)
            for _name, fn in readers:
                for a, b in zip(fn(i), ref):
                    np.testing.assert_array_equal(a, b)

        rng = np.random.default_rng(1)
        times = {name: 0.0 for name, _ in readers}
        reads = 0
        for p in range(args.passes):
            order = rng.permutation(len(samples))
            for name, fn in (readers if p % 2 == 0 else readers[::-1]):
                t = time.perf_counter()
                for i in order:
                    fn(int(i))
                times[name] += time.perf_counter() - t
            reads += len(order)
        rate = {k: reads / v for k, v in times.items()}
        print(f"random access ({args.passes} passes x {len(samples)}, rgb+sparse+depth, alternating):")
        print("  " + "   ".join(f"{k} {v:.1f}/s" for k, v in rate.items()))
        for k in rate:
            if k != "png":
                print(f"  speed ratio {k}/png {rate[k] / rate['png']:.2f}x")

        png3 = du(*(work / "kitti" / n for n in ("image", "velodyne_raw", "groundtruth_depth")))
        png_all = du(work / "kitti")
        print(f"bytes: png set {png_all / 2**20:.2f} MiB (rgb+sparse+depth {png3 / 2**20:.2f} MiB, + intrinsics)")
        for n, d in (("rgb", "image"), ("sparse", "velodyne_raw"), ("depth", "groundtruth_depth")):
            print(f"  {n:7s} png {du(work / 'kitti' / d) / len(samples) / 1024:7.1f} KiB/sample   " + "   ".join(
                f"{p} {du(work / p / n) / len(samples) / 1024:7.1f}" for p in profiles))
        print("  teacher_output (store only)   " + "   ".join(
            f"{p} {du(work / p / 'teacher_output') / len(samples) / 1024:7.1f}" for p in profiles))
        for p in profiles:
            arrays3 = du(*(work / p / n for n in ("rgb", "sparse", "depth")))
            store_all = du(work / p)
            print(f"  store[{p}]: rgb+sparse+depth {arrays3 / 2**20:.2f} MiB = {arrays3 / png3:.3f}x png; "
                  f"whole store {store_all / 2**20:.2f} MiB = {store_all / png_all:.3f}x the png set")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
