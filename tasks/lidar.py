"""Simulated LiDAR scan of a depth map (or any mesh), projected into the camera as KITTI-style sparse depth.

Frames: camera = OpenCV (x right, y down, z forward); LiDAR = Velodyne (x forward, y left, z up).
`pose` is camera_from_lidar (4x4): X_cam = pose @ X_lidar. Output sparse depth is z-depth in the camera
(float32 metres, 0 = no return), like KITTI's velodyne_raw before its uint16 * 256 quantisation.

Pipeline: depth -> DepthGrid/mesh -> beam directions from the sensor (only the azimuth/elevation sector
that can land in the image) -> first hits (tasks.raycast backend) -> range limits, drops (random,
grazing incidence, far range, the link budget of fitted profiles; seeded) and Gaussian range noise (seeded) -> points in the camera frame ->
projection with a z-buffer (nearest return wins per pixel).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import trimesh

from tasks.errors import GeometryError
from tasks.mesh import DepthGrid, MeshOptions, background_layer, grid_from_valid, validate_depth_and_K
from tasks.provenance import derive_seed
from tasks.raycast import BACKENDS, cast_hits
from tasks.sensors import DETECTION_LEVELS, SensorProfile, load_profile

# LiDAR axes expressed in the camera frame: x_l (forward) = z_c, y_l (left) = -x_c, z_l (up) = -y_c.
CAM_FROM_LIDAR_AXES = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
SECTOR_MARGIN_DEG = 1.0


@dataclass
class LidarScan:
    """One simulated scan. sparse: (H, W) float32 z-depth metres, 0 = no return; pose: (4, 4) float32
    camera_from_lidar; points_cam: (N, 3) float32 returns in the camera frame after noise and drops
    (including those outside the image); ring: (N,) int16 beam / laser index; stats: JSON-able counts."""

    sparse: np.ndarray
    pose: np.ndarray
    points_cam: np.ndarray
    ring: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def _profile(profile: SensorProfile | str | Path) -> SensorProfile:
    return profile if isinstance(profile, SensorProfile) else load_profile(profile)


def _rotation_xyz(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll), angles in degrees, right-handed about the LiDAR's own axes."""
    r, p, y = np.radians([roll, pitch, yaw])
    rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sensor_pose(profile: SensorProfile | str | Path, *, seed: int, jitter: bool = True) -> np.ndarray:
    """camera_from_lidar (4x4 float32) from the profile's mount, with seeded uniform jitter when asked."""
    profile = _profile(profile)
    mount = profile.mount
    t = np.asarray(mount["translation_m"], dtype=np.float64)
    rot = np.asarray(mount["rotation_deg"], dtype=np.float64)
    if jitter:
        rng = np.random.default_rng(derive_seed(seed, "lidar-mount"))
        t = t + rng.uniform(-1.0, 1.0, 3) * mount["jitter_translation_m"]
        rot = rot + rng.uniform(-1.0, 1.0, 3) * mount["jitter_rotation_deg"]
    pose = np.eye(4)
    pose[:3, :3] = CAM_FROM_LIDAR_AXES @ _rotation_xyz(*rot)
    pose[:3, 3] = t
    return pose.astype(np.float32)


def _check_pose(pose: np.ndarray) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise GeometryError(f"pose must be a finite 4x4 camera_from_lidar matrix, got shape {pose.shape}")
    rot = pose[:3, :3]
    # np.allclose's tolerance (|a - b| <= atol + rtol |b|, rtol 1e-5) written out: the same test without its
    # NaN/inf handling (the pose is finite here), ~10x cheaper on a 3x3, and it runs once per simulated sample
    eye, last = np.eye(3), np.array([0.0, 0.0, 0.0, 1.0])
    if not ((np.abs(rot @ rot.T - eye) <= 1e-4 + 1e-5 * eye).all()
            and (np.abs(pose[3] - last) <= 1e-8 + 1e-5 * last).all()):
        raise GeometryError("pose must be a rigid transform (orthonormal rotation, last row 0 0 0 1)")
    return pose


def _border_points(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame points on the image border at 1 m .. 1 km depth, (340, 3): what _image_sector looks at."""
    n = 17
    us = np.linspace(-0.5, width - 0.5, n)
    vs = np.linspace(-0.5, height - 0.5, n)
    border = np.concatenate([np.stack([us, np.full(n, vs[0])], 1), np.stack([us, np.full(n, vs[-1])], 1),
                             np.stack([np.full(n, us[0]), vs], 1), np.stack([np.full(n, us[-1]), vs], 1)])
    rays = np.concatenate([border, np.ones((len(border), 1))], 1) @ np.linalg.inv(K).T
    depths = np.array([1.0, 3.0, 10.0, 100.0, 1000.0])
    return (rays[None] * depths[:, None, None]).reshape(-1, 3)


def _image_sector(pose: np.ndarray, pts: np.ndarray) -> tuple[float, float, float, float]:
    """(azimuth centre, azimuth half-width, min elevation, max elevation) in degrees, LiDAR frame, of the
    directions from the LiDAR origin to the image-border points ``pts`` (_border_points)."""
    rot, t = pose[:3, :3], pose[:3, 3]
    pl = (pts - t) @ rot                       # LiDAR-frame coordinates
    centre_l = (np.array([0.0, 0.0, 10.0]) - t) @ rot
    az_c = np.degrees(np.arctan2(centre_l[1], centre_l[0]))
    az = np.degrees(np.arctan2(pl[:, 1], pl[:, 0]))
    rel = (az - az_c + 180.0) % 360.0 - 180.0
    el = np.degrees(np.arctan2(pl[:, 2], np.hypot(pl[:, 0], pl[:, 1])))
    return float(az_c), float(np.abs(rel).max()), float(el.min()), float(el.max())


def _rosette(pattern: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-repetitive rosette (Risley-prism pair): the deflection is a weighted sum of counter-rotating unit
    circles; incommensurate rates never close the curve, and a seeded start time makes frames differ."""
    lasers = pattern["lasers"]
    per = int(np.ceil(pattern["points_per_frame"] / lasers))
    t = rng.uniform(0.0, 1.0e4) + np.arange(per) * (pattern["frame_time_s"] / per)
    az, el, ring = [], [], []
    for laser in range(lasers):
        x = np.zeros(per)
        y = np.zeros(per)
        for k, (rate, w) in enumerate(zip(pattern["prism_rates_hz"], pattern["prism_weights"])):
            phase = 2 * np.pi * rate * t + (2 * np.pi * laser / lasers if k == 0 else 0.0)
            x += w * np.cos(phase)
            y += w * np.sin(phase)
        az.append(x * pattern["fov_deg"][0] / 2)
        el.append(y * pattern["fov_deg"][1] / 2)
        ring.append(np.full(per, laser))
    return np.concatenate(az), np.concatenate(el), np.concatenate(ring)


def beam_directions(profile: SensorProfile | str | Path, pose: np.ndarray, K: np.ndarray, height: int,
                    width: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays of one scan that can land in the image: (origins (N,3), unit dirs (N,3)) float64 in the camera
    frame and ring (N,) int16. Spinning sensors fire every azimuth_step_deg from a seeded phase; only the
    azimuth/elevation sector seen by the image (plus a margin) is kept."""
    profile = _profile(profile)
    pose = _check_pose(pose)
    K = np.asarray(K, dtype=np.float64)
    rng = np.random.default_rng(derive_seed(seed, "lidar-rays"))
    border = _border_points(K, int(height), int(width))
    az_c, half, el_lo, el_hi = _image_sector(pose, border)
    if profile.vertical_offsets_m is not None:
        # a beam origin above or below the sensor origin sees the image under other elevations: widen the
        # window to cover the lowest and the highest origin (elevation is monotonic in origin height)
        for off in (profile.vertical_offsets_m.min(), profile.vertical_offsets_m.max()):
            shifted = pose.copy()
            shifted[:3, 3] += off * pose[:3, 2]
            _, _, lo, hi = _image_sector(shifted, border)
            el_lo, el_hi = min(el_lo, lo), max(el_hi, hi)
    if profile.pattern is not None:
        az, el, ring = _rosette(profile.pattern, rng)
        margin = SECTOR_MARGIN_DEG
    else:
        step = profile.azimuth_step_deg
        margin = SECTOR_MARGIN_DEG + 2 * step
        phase = rng.uniform(0.0, step)
        if half + margin >= 180.0:
            k = np.arange(int(np.floor(360.0 / step)))
        else:
            k = np.arange(np.ceil((az_c - half - margin - phase) / step), np.floor((az_c + half + margin - phase) / step) + 1)
        cols = phase + k * step
        cols = cols[np.abs((cols - az_c + 180.0) % 360.0 - 180.0) <= half + margin]
        beams = np.nonzero((profile.elevations_deg >= el_lo - margin) & (profile.elevations_deg <= el_hi + margin))[0]
        # A spinning sensor's firings are the grid beams x columns, and the sector test is separable: the
        # trigonometry runs once per beam and once per column, and the products give (beam-major) the same
        # floats as evaluating cos/sin on every firing (4 transcendental calls x ~70 k firings before).
        az_r, el_r = np.radians(cols), np.radians(profile.elevations_deg[beams])
        cos_el, sin_el = np.cos(el_r), np.sin(el_r)
        d_lidar = np.empty((len(beams), len(cols), 3))
        np.multiply(cos_el[:, None], np.cos(az_r)[None, :], out=d_lidar[..., 0])
        np.multiply(cos_el[:, None], np.sin(az_r)[None, :], out=d_lidar[..., 1])
        d_lidar[..., 2] = sin_el[:, None]
        dirs = d_lidar.reshape(-1, 3) @ pose[:3, :3].T
        origins = np.broadcast_to(pose[:3, 3], (len(beams), 3))
        if profile.vertical_offsets_m is not None:  # stacked lasers: each beam leaves the head at its own height
            origins = pose[:3, 3] + profile.vertical_offsets_m[beams][:, None] * pose[:3, 2][None, :]
        # one origin per beam, repeated for its columns (beam-major, as dirs): the same rows as computing one per
        # firing, without a gather over ~30-70 k firings
        return np.repeat(origins, len(cols), axis=0), dirs, np.repeat(beams, len(cols)).astype(np.int16)
    rel = (az - az_c + 180.0) % 360.0 - 180.0
    keep = (np.abs(rel) <= half + margin) & (el >= el_lo - margin) & (el <= el_hi + margin)
    az, el, ring = np.radians(az[keep]), np.radians(el[keep]), ring[keep]
    d_lidar = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    dirs = d_lidar @ pose[:3, :3].T  # a pattern has one origin (vertical offsets are for spinning heads only)
    return np.broadcast_to(pose[:3, 3], dirs.shape).copy(), dirs, ring.astype(np.int16)


def detection_probability(detection: dict, ranges: np.ndarray) -> np.ndarray:
    """Link budget of a profile's `detection` (tasks.sensors): the received power falls as reflectance / r^2, so
    at range r only targets with reflectance >= (r / range_m)^2 x the median one are detected; the probability
    is the share of the fitted reflectance distribution above that level (piecewise linear between quantiles)."""
    q = np.asarray(detection["reflectance_quantiles"], dtype=np.float64)
    q = q + np.arange(len(q)) * 1e-9  # equal quantiles (integer intensities): keep the curve strictly increasing
    need = (np.asarray(ranges, dtype=np.float64) / detection["range_m"]) ** 2
    return 1.0 - np.interp(need, q, DETECTION_LEVELS, left=0.0, right=1.0)


def _drop_params(profile: SensorProfile) -> np.ndarray:
    """[random, grazing start deg, grazing max, far start m, far max, max range m, link budget 1/0] with the
    grazing and far terms switched off (max 0) where the profile leaves them out: the scalars of
    :func:`_drop_kernel`."""
    drop = profile.drop
    g, g_max = float(drop["grazing_deg"]), float(drop["grazing_max"])
    f0, f_max = float(drop["far_start_m"]), float(drop["far_max"])
    if not (g < 90.0 and g_max > 0):
        g_max = 0.0
    if not (f0 < profile.max_range_m and f_max > 0):
        f_max = 0.0
    budget = 1.0 if profile.detection is not None else 0.0
    return np.array([float(drop["random"]), g, g_max, f0, f_max, float(profile.max_range_m), budget])


@numba.njit(inline="always")
def _drop_kernel(r: float, cos_inc: float, detect: float, params: np.ndarray) -> float:
    # Independent losses: random, grazing incidence (linear in the incidence angle above g degrees), the
    # linear far-range rise and the link budget (detect = its detection probability). Each term is applied
    # only when the profile has it, in this order: 1 - (1 - p) is not always p in floating point.
    p_random, g, g_max, f0, f_max, max_range = params[0], params[1], params[2], params[3], params[4], params[5]
    p = p_random
    if g_max > 0.0:
        inc = np.arccos(min(max(cos_inc, 0.0), 1.0)) * (180.0 / np.pi)
        p = 1.0 - (1.0 - p) * (1.0 - g_max * min(max((inc - g) / (90.0 - g), 0.0), 1.0))
    if f_max > 0.0:
        p = 1.0 - (1.0 - p) * (1.0 - f_max * min(max((r - f0) / (max_range - f0), 0.0), 1.0))
    if params[6] > 0.0:
        p = 1.0 - (1.0 - p) * detect
    return p


@numba.njit(cache=True, nogil=True)
def _drop_probability_kernel(ranges, cos_inc, detect, params, out):
    for i in range(ranges.shape[0]):
        out[i] = _drop_kernel(ranges[i], cos_inc[i], detect[i], params)


def _detection_or_one(profile: SensorProfile, ranges: np.ndarray) -> np.ndarray:
    # the link budget's detection probability per ray (a miss, range inf, gets 0: it is gated out before its
    # drop is drawn anyway); ones, unused, for a profile without one
    if profile.detection is None:
        return np.ones(len(ranges))
    return detection_probability(profile.detection, ranges)


def _drop_probability(profile: SensorProfile, ranges: np.ndarray, cos_inc: np.ndarray) -> np.ndarray:
    """Independent losses: random, grazing incidence, the linear far-range rise and the link budget (per ray;
    the same kernel the scan applies inside :func:`_returns`)."""
    ranges = np.ascontiguousarray(ranges, dtype=np.float64)
    out = np.empty(len(ranges))
    _drop_probability_kernel(ranges, np.ascontiguousarray(cos_inc, dtype=np.float64),
                             _detection_or_one(profile, ranges), _drop_params(profile), out)
    return out


@numba.njit(cache=True, nogil=True)
def _returns(ranges, normals, origins, dirs, noise, u, detect, min_r, max_r, noise_std, params, points, index):
    # One pass over the rays: range gate, seeded drop (u >= p keeps), range noise, return point
    # origin + r * dir; the kept rays' indices and points are packed at the front of `index` / `points`.
    # Returns (hits, in range, kept, returns with r > 0).
    n_hit = 0
    n_in = 0
    n_kept = 0
    k = 0
    for i in range(ranges.shape[0]):
        t = ranges[i]
        if not np.isfinite(t):
            continue
        n_hit += 1
        if not (t >= min_r and t <= max_r):
            continue
        n_in += 1
        cos_inc = abs(normals[i, 0] * dirs[i, 0] + normals[i, 1] * dirs[i, 1] + normals[i, 2] * dirs[i, 2])
        p = _drop_kernel(t, cos_inc, detect[i], params)
        if not u[i] >= p:
            continue
        n_kept += 1
        r = t + noise[i] * noise_std
        if not r > 0.0:
            continue
        index[k] = i
        points[k, 0] = origins[i, 0] + r * dirs[i, 0]
        points[k, 1] = origins[i, 1] + r * dirs[i, 1]
        points[k, 2] = origins[i, 2] + r * dirs[i, 2]
        k += 1
    return n_hit, n_in, n_kept, k


def project_points(points_cam: np.ndarray, K: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int]:
    """Z-buffered projection (nearest z wins per pixel) -> ((H, W) float32 sparse depth, points in image)."""
    sparse, n_in, _ = _projected(points_cam, K, height, width)
    return sparse, n_in


def _projected(points_cam: np.ndarray, K: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int, int]:
    # project_points, plus the number of pixels that got a return (counted in the kernel, not by a pass over
    # the image afterwards)
    sparse = np.zeros((height, width), dtype=np.float32)
    K = np.asarray(K, dtype=np.float64)
    pts = np.ascontiguousarray(points_cam, dtype=np.float64)
    n_in, n_pixels = _project_zbuffer(pts, K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2], int(height), int(width),
                                      sparse.reshape(-1))
    return sparse, int(n_in), int(n_pixels)


@numba.njit(cache=True, nogil=True)
def _project_zbuffer(p: np.ndarray, fx: float, skew: float, cx: float, fy: float, cy: float, height: int,
                     width: int, out: np.ndarray) -> tuple[int, int]:
    # One pass to find each point's pixel (the numpy form's expressions, operation for operation), one to keep
    # the nearest z per pixel, with no full-image temporary (a float64 z-buffer of the image cost more in page
    # faults than the loop itself). The minimum is taken on float32 values: rounding to float32 is monotonic,
    # so min(float32(z)) == float32(min(z)) and the result is the same bits as a float64 z-buffer; equal values
    # are equal whichever point came first, so the order of the points does not matter. `out` starts at 0; every
    # depth written is > 1e-6 (> 0 as float32), so the pixels marked the first time are the nonzero ones after.
    n = p.shape[0]
    lin = np.empty(n, np.int64)
    n_in = 0
    n_pixels = 0
    for i in range(n):
        z = p[i, 2]
        lin[i] = -1
        if z > 1e-6:
            u = np.rint((fx * p[i, 0] + skew * p[i, 1]) / z + cx)
            v = np.rint(fy * p[i, 1] / z + cy)
            if u >= 0 and u < width and v >= 0 and v < height:
                k = np.int64(v) * width + np.int64(u)
                lin[i] = k
                if out[k] == 0.0:
                    n_pixels += 1
                out[k] = np.inf
                n_in += 1
    for i in range(n):
        k = lin[i]
        if k >= 0:
            z32 = np.float32(p[i, 2])
            if z32 < out[k]:
                out[k] = z32
    return n_in, n_pixels


def _scan(scene, backend: str, K: np.ndarray, height: int, width: int, profile: SensorProfile,
          pose: np.ndarray, seed: int, extra_stats: dict[str, Any]) -> LidarScan:
    origins, dirs, ring = beam_directions(profile, pose, K, height, width, seed=seed)
    ranges, normals = cast_hits(backend, scene, origins, dirs)
    rng = np.random.default_rng(derive_seed(seed, "lidar-returns"))
    noise = rng.normal(0.0, 1.0, len(ranges))  # one draw per ray, hit or not: a ray's draws do not depend on others
    u = rng.uniform(0.0, 1.0, len(ranges))
    points = np.empty((len(ranges), 3))
    kept_idx = np.empty(len(ranges), np.int64)
    n_hit, n_in, n_kept, n_ret = _returns(
        np.ascontiguousarray(ranges, dtype=np.float64), np.ascontiguousarray(normals, dtype=np.float64),
        np.ascontiguousarray(origins, dtype=np.float64), np.ascontiguousarray(dirs, dtype=np.float64), noise, u,
        _detection_or_one(profile, ranges), float(profile.min_range_m), float(profile.max_range_m),
        float(profile.range_noise_std_m), _drop_params(profile), points, kept_idx)
    points, kept_idx = points[:n_ret], kept_idx[:n_ret]
    sparse, in_image, n_valid = _projected(points, K, height, width)
    stats = {
        "backend": backend,
        "sensor": profile.name,
        "rays": int(len(ranges)),
        "hits": int(n_hit),
        "in_range": int(n_in),
        "dropped": int(n_in - n_kept),
        "returns": int(n_ret),
        "in_image": in_image,
        "pixels": n_valid,
        "density": n_valid / float(height * width),
        **extra_stats,
    }
    return LidarScan(sparse=sparse, pose=pose.astype(np.float32), points_cam=points.astype(np.float32),
                     ring=ring[kept_idx].astype(np.int16), stats=stats)


def simulate_lidar(depth: np.ndarray, K: np.ndarray, profile: SensorProfile | str | Path, *, seed: int,
                   backend: str = "fast", mesh_options: MeshOptions = MeshOptions(), see_through: bool = False,
                   pose: np.ndarray | None = None, see_through_px: int = 32) -> LidarScan:
    """Scan the surface of a z-depth map (0 = sky/invalid) with a LiDAR profile and project into the image.

    seed drives the mount jitter (when `pose` is None), the azimuth phase / rosette start, drops and noise.
    backend: "fast" (grid marching, default), "embree" (BVH reference) or "pyrender" (rasterised).

    see_through=False: the single-view mesh is the only geometry. The camera cannot see the background
    behind a foreground object, so the cut at its silhouette leaves a hole; a LiDAR ray from the sensor's
    other viewpoint that passes through the hole finds nothing there.
    see_through=True: a second, hidden surface continues the background behind every cut silhouette for
    up to `see_through_px` grid cells, at the depth of the nearest background vertex
    (tasks.mesh.background_layer). Rays through the hole now return from that hidden background, and
    those returns, projected into the camera, land on the foreground object's pixels wherever no
    foreground return took that pixel in the z-buffer - the "see-through" points of real KITTI
    velodyne_raw, which come from the LiDAR being mounted above and behind the camera.
    """
    profile = _profile(profile)
    depth, K = validate_depth_and_K(depth, K)
    _check_backend(backend)
    grid = grid_from_valid(depth, K, mesh_options)  # depth and K were validated just above
    return scan_grid(grid, profile, seed=seed, backend=backend, mesh_options=mesh_options, see_through=see_through,
                     pose=pose, see_through_px=see_through_px)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise GeometryError(f"unknown ray-cast backend {backend!r}; known: {', '.join(BACKENDS)}")


def scan_grid(grid: DepthGrid, profile: SensorProfile | str | Path, *, seed: int, backend: str = "fast",
              mesh_options: MeshOptions = MeshOptions(), see_through: bool = False, pose: np.ndarray | None = None,
              see_through_px: int = 32) -> LidarScan:
    """:func:`simulate_lidar` of a surface grid already built (tasks.mesh: ``grid_from_valid`` or, from the
    store's uint16 depth, ``grid_from_uint16``); ``mesh_options`` must be those the grid was built with."""
    profile = _profile(profile)
    _check_backend(backend)
    pose = sensor_pose(profile, seed=seed, jitter=True) if pose is None else _check_pose(pose)
    pose = np.asarray(pose, dtype=np.float64)
    if grid.n_faces == 0:
        raise GeometryError(
            f"depth map of shape {grid.image_size} has no surface to scan (no triangle with depth in "
            f"[{mesh_options.min_depth_m}, {mesh_options.max_depth_m}] m passing the discontinuity cut)"
        )
    K = grid.K
    height, width = grid.image_size
    layers: list[DepthGrid] = [grid]
    if see_through:
        layers.append(background_layer(grid, mesh_options, int(see_through_px)))
    scene = layers if backend == "fast" else [g.to_mesh() for g in layers]
    extra = {"mesh_faces": grid.n_faces, "see_through": bool(see_through)}
    return _scan(scene, backend, K, height, width, profile, pose, seed, extra)


def simulate_lidar_on_mesh(mesh: trimesh.Trimesh, K: np.ndarray, height: int, width: int,
                           profile: SensorProfile | str | Path, *, seed: int, backend: str = "embree",
                           pose: np.ndarray | None = None) -> LidarScan:
    """The same scan on any mesh given in the camera frame (e.g. a procedural scene's true geometry)."""
    profile = _profile(profile)
    K = np.asarray(K, dtype=np.float64)
    _, K = validate_depth_and_K(np.zeros((2, 2)), K)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise GeometryError("simulate_lidar_on_mesh needs a non-empty trimesh.Trimesh")
    if backend == "fast":
        raise GeometryError("the 'fast' backend needs a depth grid; use 'embree' or 'pyrender' for a mesh")
    if backend not in BACKENDS:
        raise GeometryError(f"unknown ray-cast backend {backend!r}; known: {', '.join(BACKENDS)}")
    if int(height) < 1 or int(width) < 1:
        raise GeometryError(f"image size must be positive, got {height}x{width}")
    pose = sensor_pose(profile, seed=seed, jitter=True) if pose is None else _check_pose(pose)
    pose = np.asarray(pose, dtype=np.float64)
    return _scan(mesh, backend, K, int(height), int(width), profile, pose, seed, {"mesh_faces": int(len(mesh.faces))})


def sample_gt_with_profile(gt_depth: np.ndarray, K: np.ndarray, profile: SensorProfile | str | Path, *, seed: int,
                           pose: np.ndarray | None = None, tolerance_px: float = 1.0,
                           apply_drops: bool = True) -> np.ndarray:
    """Sparse input sampled from (semi-)dense ground truth with a spinning profile's beam pattern.

    Every GT pixel (z-depth metres, 0 = none) is placed in the LiDAR frame (the profile's mount, jittered by
    `seed`, or `pose`) and given to the firing nearest to it: the beam of closest elevation (from that beam's
    own origin when the profile has vertical offsets) and the column of closest azimuth on the seeded phase.
    A pixel is kept only when it lies within `tolerance_px` pixels (as an angle, 1/fx per pixel) of its
    firing's direction, and each firing keeps its nearest pixel (the first return). The profile's random
    and far-range drops apply when `apply_drops`; values are the GT's own (no added noise). Returns (H, W)
    float32, 0 = no return. Like the KITTI zero-shot protocol, but with the sensor's real beam geometry.
    """
    profile = _profile(profile)
    if profile.elevations_deg is None:
        raise GeometryError(f"sample_gt_with_profile needs a spinning profile (beam elevations); {profile.name} is a pattern")
    gt = np.asarray(gt_depth, dtype=np.float64)
    gt, K = validate_depth_and_K(np.where(np.isfinite(gt), gt, 0.0), K)
    pose = sensor_pose(profile, seed=seed, jitter=True) if pose is None else _check_pose(pose)
    pose = np.asarray(pose, dtype=np.float64)
    h, w = gt.shape
    v, u = np.nonzero(gt > 0)
    z = gt[v, u]
    cam = np.stack([(u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1)
    pts = (cam - pose[:3, 3]) @ pose[:3, :3]  # LiDAR frame
    el_beams = profile.elevations_deg
    offsets = profile.vertical_offsets_m if profile.vertical_offsets_m is not None else np.zeros(len(el_beams))
    horiz = np.hypot(pts[:, 0], pts[:, 1])
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    # elevation of every point as seen from every beam's origin; the nearest beam wins
    el_all = np.degrees(np.arctan2(pts[:, 2:3] - offsets[None, :], horiz[:, None]))
    beam = np.abs(el_all - el_beams[None, :]).argmin(1)
    d_el = np.abs(el_all[np.arange(len(beam)), beam] - el_beams[beam])
    step = profile.azimuth_step_deg
    phase = np.random.default_rng(derive_seed(seed, "lidar-rays")).uniform(0.0, step)
    col = np.round((az - phase) / step)
    d_az = np.abs(az - (phase + col * step)) * np.cos(np.radians(el_beams[beam]))
    tol = np.degrees(tolerance_px / K[0, 0])
    rng3 = np.linalg.norm(pts - np.stack([np.zeros_like(z), np.zeros_like(z), offsets[beam]], 1), axis=1)
    ok = (d_el <= tol) & (d_az <= tol) & (rng3 >= profile.min_range_m) & (rng3 <= profile.max_range_m)
    idx = np.nonzero(ok)[0]
    key = beam[idx].astype(np.int64) * 10_000_000 + (col[idx].astype(np.int64) + 5_000_000)
    order = np.lexsort((rng3[idx], key))  # per firing, nearest first
    idx, key = idx[order], key[order]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    idx = idx[first]
    if apply_drops and len(idx):
        u01 = np.random.default_rng(derive_seed(seed, "gt-drops")).uniform(0.0, 1.0, len(idx))
        p = _drop_probability(profile, rng3[idx], np.ones(len(idx)))  # incidence unknown from GT: head-on
        idx = idx[u01 >= p]
    out = np.zeros((h, w), dtype=np.float32)
    out[v[idx], u[idx]] = gt[v[idx], u[idx]]
    return out
