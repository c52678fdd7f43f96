"""Writing fresh shards to a local store: page cache vs ``O_DIRECT`` (storage/direct_io.py), side by side.

A build writes every shard object once, to a new file. This bench simulates ``--images`` samples once (real
photos, the embedded teacher, HDL-64E), then writes the same arrays as ``--shards`` new shards of a local store,
alternating (ABBA) a buffered writer (``O_DIRECT`` switched off) and the default one. It prints CPU (process
time: user + kernel) and wall time per sample, and checks that both stores hold byte-identical objects.

    python bench/bench_store_write.py [--images 16] [--shards 8] [--compression balanced] [--dir DISK_FOLDER]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth_images import write_images  # noqa: E402


def simulated_shard(images: list[Path], h: int, w: int) -> tuple[dict, list[dict]]:
    import tasks.sample_sim as sim
    from model.teacher import Teacher
    from storage.root import read_uri
    from tasks.build_config import BuildConfig
    from tasks.build_tasks import compact_teacher_output
    from tasks.images import load_fitted
    from tasks.sensors import load_profile
    from tasks.shard_writer import _shard_buffers, teacher_at_canvas

    cfg = BuildConfig(height=h, width=w)
    profile, teacher = load_profile(cfg.sensor), Teacher(None)
    arrays, rows = _shard_buffers(len(images), h, w), []
    for i, p in enumerate(images):
        data = read_uri(str(p))
        pred = teacher.predict(load_fitted(data, name=str(p), canvas=(h, w), size=teacher.input_size(h, w))[None],
                               batch_size=1)[0]
        res = sim.simulate_sample(load_fitted(data, name=str(p), canvas=(h, w)),
                                  teacher_at_canvas(compact_teacher_output(pred, h, w), h, w),
                                  teacher_kind=teacher.output_kind, config=cfg, profile=profile, seed=i)
        for name, a in res.arrays.items():
            arrays[name][i] = a
        rows.append({"sample_id": f"s{i}", "source_uri": str(p), "content_hash": hashlib.sha256(data).hexdigest(),
                     "seed": i, "status": "ok", **res.stats})
    return arrays, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="samples per shard (distinct photos)")
    ap.add_argument("--shards", type=int, default=8, help="new shards written by each writer")
    ap.add_argument("--height", type=int, default=352)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--compression", default="balanced")
    ap.add_argument("--dir", type=Path, default=Path.cwd(),
                    help="where to write (default: here; a tmpfs /tmp would measure memory, not a disk)")
    args = ap.parse_args()

    import storage.direct_io as dio
    import storage.store as st

    work = Path(tempfile.mkdtemp(prefix="bench-store-write-", dir=args.dir))
    images = write_images(work / "photos", args.images)
    arrays, rows = simulated_shard(images, args.height, args.width)
    stores = {}
    for writer in ("buffered", "direct"):
        stores[writer] = st.DatasetStore.create(work / f"{writer}.zarr", height=args.height, width=args.width,
                                                shard_size=args.images, config={}, teacher={}, sensor="hdl64e_kitti",
                                                code_version="bench", compression=args.compression)
        stores[writer].ensure_shards(args.shards)
    cpu, wall = {"buffered": [], "direct": []}, {"buffered": [], "direct": []}
    default_min = dio.MIN_DIRECT_BYTES
    for k in range(args.shards):
        for writer in (("buffered", "direct") if k % 2 == 0 else ("direct", "buffered")):  # ABBA
            dio.MIN_DIRECT_BYTES = default_min if writer == "direct" else float("inf")
            t, tw = time.process_time(), time.perf_counter()
            stores[writer].write_shard(k, arrays, rows)
            cpu[writer].append(1000 * (time.process_time() - t) / args.images)
            wall[writer].append(1000 * (time.perf_counter() - tw) / args.images)
    dio.MIN_DIRECT_BYTES = default_min
    same = all(stores["buffered"].shard_hashes(k) == stores["direct"].shard_hashes(k) for k in range(args.shards))
    print(f"write_shard of {args.shards} new shards x {args.images} samples ({args.height}x{args.width}, "
          f"{args.compression}), ms per sample, medians [all runs]:")
    for writer in ("buffered", "direct"):
        print(f"  {writer:9s} CPU {statistics.median(cpu[writer]):6.2f}  wall {statistics.median(wall[writer]):6.2f}"
              f"   CPU {[round(x, 1) for x in cpu[writer]]}")
    print(f"  CPU buffered / direct: {statistics.median(cpu['buffered']) / statistics.median(cpu['direct']):.2f}x; "
          f"wall {statistics.median(wall['buffered']) / statistics.median(wall['direct']):.2f}x; "
          f"objects byte-identical: {same}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
