"""Bench: KITTI-like 1216x352 depth -> mesh -> HDL-64E scan -> projection, per ray-cast backend, ONE core.

Run:  python bench/bench_lidar.py [--repeats N]
Prints ms/image (whole simulate_lidar call: mesh/grid build, rays, cast, drops/noise, z-buffer) per
backend measured side by side in one run, the fast/embree speed ratio, and agreement of each backend's
raw ranges with the embree reference (share of common hits within 1 cm; hit/miss agreement).
Depth: the first shared KITTI ground-truth frame, cropped to 1216x352 and densified by nearest valid pixel.
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "LP_NUM_THREADS"):
    os.environ[var] = "1"          # one core; LP_NUM_THREADS bounds Mesa llvmpipe's raster threads
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import distance_transform_edt  # noqa: E402

from tasks.lidar import beam_directions, sensor_pose, simulate_lidar  # noqa: E402
from tasks.mesh import depth_to_grid  # noqa: E402
from tasks.pattern_stats import pattern_stats  # noqa: E402
from tasks.raycast import cast  # noqa: E402

H, W = 352, 1216
KITTI_DEPTH = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_gt" / "depth"


def kitti_depth() -> tuple[np.ndarray, np.ndarray]:
    files = sorted(KITTI_DEPTH.glob("*.png"))
    if not files:
        sys.exit(f"bench_lidar: no KITTI depth PNGs in {KITTI_DEPTH}")
    gt = np.asarray(Image.open(files[0]), dtype=np.float64)[-H:, 13:13 + W] / 256.0
    _, (ii, jj) = distance_transform_edt(gt == 0, return_indices=True)
    dense = gt[ii, jj]
    dense[: np.nonzero((gt > 0).any(axis=1))[0][0]] = 0.0   # above the first GT row: sky / out of range
    K = np.array([[707.0493, 0.0, 604.0814 - 13], [0.0, 707.0493, 180.5066 - 23], [0.0, 0.0, 1.0]])
    return dense.astype(np.float32), K


def time_backend(depth, K, pose, backend: str, repeats: int) -> tuple[float, dict]:
    simulate_lidar(depth, K, "hdl64e_kitti", seed=0, pose=pose, backend=backend)   # warm-up (JIT, EGL)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        scan = simulate_lidar(depth, K, "hdl64e_kitti", seed=0, pose=pose, backend=backend)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)), pattern_stats(scan.sparse, ring=scan.ring)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    numba.set_num_threads(1)
    depth, K = kitti_depth()
    pose = sensor_pose("hdl64e_kitti", seed=0, jitter=False)
    grid = depth_to_grid(depth, K)
    origins, dirs, _ = beam_directions("hdl64e_kitti", pose, K, H, W, seed=0)
    print(f"depth {W}x{H} (KITTI GT densified), mesh {grid.n_faces} triangles, HDL-64E sector {len(dirs)} rays, 1 thread")

    ms = {}
    for backend, reps in (("fast", max(args.repeats * 4, 10)), ("embree", args.repeats), ("pyrender", max(args.repeats // 2, 1))):
        ms[backend], stats = time_backend(depth, K, pose, backend, reps)
        print(f"  {backend:8s} {ms[backend]:8.1f} ms/image   density {stats['density']:.4f}  first_row "
              f"{stats['first_row']} ({stats['first_row_frac']:.2f} of crop)  points {stats['points']}")
    print(f"speed-up fast vs embree (both whole simulate_lidar, embree incl. BVH build): {ms['embree'] / ms['fast']:.1f}x")
    print(f"speed-up fast vs pyrender: {ms['pyrender'] / ms['fast']:.1f}x")

    ref = cast("embree", grid.to_mesh(), origins, dirs)
    for backend, scene in (("fast", grid), ("pyrender", grid.to_mesh())):
        r = cast(backend, scene, origins, dirs)
        same_hit = (np.isfinite(r) == np.isfinite(ref)).mean()
        both = np.isfinite(r) & np.isfinite(ref)
        err = np.abs(r[both] - ref[both])
        print(f"agreement {backend:8s} vs embree: hit/miss identical {100 * same_hit:.3f} %, "
              f"within 1 cm {100 * (err < 0.01).mean():.3f} %, within 1 % of range "
              f"{100 * (err < 0.01 * ref[both]).mean():.3f} %, max |dr| {err.max():.2e} m")


if __name__ == "__main__":
    main()
