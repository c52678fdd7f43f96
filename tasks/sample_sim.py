"""One training sample from a canvas and its teacher output: depth policy -> mesh -> LiDAR -> arrays.

Pure: numpy in, numpy out, seeded. The build's shard task calls it once per planned sample; a failure
raises, and the caller records the sample as ``failed`` with the message.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.kitti import KITTI_CROP
from storage.pngio import DEPTH_SCALE, depth_to_uint16
from tasks.build_config import BuildConfig
from tasks.depth_policy import DepthPolicy, disparity_to_depth
from tasks.images import intrinsics_for_canvas
from tasks.lidar import scan_grid
from tasks.mesh import MeshOptions, grid_from_uint16
from tasks.pattern_stats import pattern_stats
from tasks.sensors import SensorProfile


@dataclass
class SimulatedSample:
    arrays: dict[str, np.ndarray]  # rgb, teacher_output, depth, sparse, K, lidar_pose (store layout)
    stats: dict  # manifest statistics


def simulate_sample(
    canvas: np.ndarray | None,
    teacher_output: np.ndarray,
    *,
    teacher_kind: str,
    config: BuildConfig,
    profile: SensorProfile,
    seed: int,
) -> SimulatedSample:
    """The sample's store arrays and manifest statistics. The canvas (the photo at the dataset's size) is only
    stored, never read by the simulation: ``canvas=None`` (the build, whose teacher stage writes the images)
    leaves "rgb" out of the arrays."""
    h, w = config.height, config.width
    if (canvas is not None and canvas.shape != (h, w, 3)) or teacher_output.shape != (h, w):
        raise ValueError(f"canvas {None if canvas is None else canvas.shape} / teacher output "
                         f"{teacher_output.shape} do not match the dataset's {h}x{w}")
    K = intrinsics_for_canvas(h, w, fx=config.focal)
    policy = DepthPolicy(near_m=config.near_m, far_m=config.far_m, max_depth_m=config.max_depth_m)
    depth, policy_info = disparity_to_depth(teacher_output, kind=teacher_kind, seed=seed, policy=policy)
    # The store keeps depth in the KITTI uint16 form (metres x 256, <= 2 mm rounding); the mesh is built from
    # exactly those values, so the stored depth reproduces the scan.
    depth_u16 = depth_to_uint16(depth)
    # The mesh is built straight from the uint16 map (u16 / 256 is exact in float64: the values
    # uint16_to_depth gives), without a float64 copy of the whole map first.
    mesh_options = MeshOptions(max_depth_m=config.max_depth_m, ratio_threshold=config.mesh_ratio_threshold)
    scan = scan_grid(
        grid_from_uint16(depth_u16, 1.0 / DEPTH_SCALE, K, mesh_options),
        profile,
        seed=seed,
        backend=config.backend,
        mesh_options=mesh_options,
        see_through=config.see_through,
    )
    sparse = depth_to_uint16(scan.sparse)  # the store keeps KITTI uint16 (metres x 256); 0 = no return stays 0
    crop = (min(h, KITTI_CROP[0]), min(w, KITTI_CROP[1]))
    pstats = pattern_stats(sparse, crop=crop)  # uses only "has a return" (> 0), the same in uint16
    top = int(depth_u16.max())
    stats = {
        "lidar_points": int(pstats["points"]),  # pixels with a return in the whole image
        "lidar_density": float(pstats["density"]),
        "first_row": int(pstats["first_row"]),
        "depth_min": float(np.min(depth_u16, where=depth_u16 > 0, initial=top)) / DEPTH_SCALE,
        "depth_max": top / DEPTH_SCALE,
        "depth_scale": float(policy_info.get("scale", np.nan)),
        "depth_shift": float(policy_info.get("shift", np.nan)),
    }
    arrays = {
        **({"rgb": canvas} if canvas is not None else {}),
        "teacher_output": np.asarray(teacher_output, dtype=np.float16),  # no copy when already float16
        "depth": depth_u16,
        "sparse": sparse,
        "K": K.astype(np.float32),
        "lidar_pose": scan.pose.astype(np.float32),
    }
    return SimulatedSample(arrays=arrays, stats=stats)


def empty_arrays(height: int, width: int) -> dict[str, np.ndarray]:
    """Row content for quarantined / failed samples (zeros, which the store's fill value also is)."""
    return {
        "rgb": np.zeros((height, width, 3), np.uint8),
        "teacher_output": np.zeros((height, width), np.float16),
        "depth": np.zeros((height, width), np.uint16),
        "sparse": np.zeros((height, width), np.uint16),
        "K": np.zeros((3, 3), np.float32),
        "lidar_pose": np.zeros((4, 4), np.float32),
    }
