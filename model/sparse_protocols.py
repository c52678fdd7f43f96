"""Sparse LiDAR-like input sampled from semi-dense ground truth: the zero-shot protocols of depth completion.

Two patterns:

- ``"lines"``: the existing row pattern (``tasks.sparsify.sparsify_scanlines``): one GT row per band of rows.
  Easy to interpolate — every kept row is complete and rows are evenly spaced.
- ``"hdl64e"``: the beams of a sensor profile (default ``hdl64e_kitti``) cast from the profile's mount pose
  through the GT depth image. Every valid GT pixel is back-projected to 3-D and expressed in the LiDAR frame;
  a pixel is *hit* when its elevation lies within ``elevation_tol_px`` pixel-angles of a beam's elevation,
  and each firing (beam, azimuth step) keeps the nearest such point (the ray stops at the first surface).
  Then the profile's drops are applied: the random share and the far-range ramp. (Grazing-angle drops need
  surface normals, which semi-dense GT does not give reliably; they are left out and the random share is
  what remains.) The result follows the real scan's geometry: beam rows bend with the mount offset, the
  upper block is denser than the lower one, gaps follow the azimuth step and occlusion, far returns thin out.

Scoring then uses only GT pixels that were NOT given as input (``exclusion_mask``), so a method cannot
score by copying its input.
"""
from __future__ import annotations

import numpy as np

from tasks.errors import InputError

PATTERNS = ("hdl64e", "lines")
DEFAULT_PROFILE = "hdl64e_kitti"
# The sensor frame: x forward, y left, z up; the camera frame (OpenCV): x right, y down, z forward.
_CAM_FROM_SENSOR_AXES = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def _rotation_rpy(roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    r, p, y = np.deg2rad([roll_deg, pitch_deg, yaw_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def mount_pose(profile, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(camera_from_sensor rotation 3x3, sensor origin in the camera frame) from the profile's mount,
    with its uniform jitter drawn from ``rng`` when given."""
    m = profile.mount
    t = np.asarray(m["translation_m"], np.float64)
    rot = np.asarray(m["rotation_deg"], np.float64)
    if rng is not None:
        t = t + rng.uniform(-1.0, 1.0, 3) * m["jitter_translation_m"]
        rot = rot + rng.uniform(-1.0, 1.0, 3) * m["jitter_rotation_deg"]
    return _CAM_FROM_SENSOR_AXES @ _rotation_rpy(*rot), t


def beam_sample_gt(gt: np.ndarray, K: np.ndarray, profile=DEFAULT_PROFILE, *, seed: int = 0,
                   elevation_tol_px: float = 1.0, jitter: bool = True, drops: bool = True) -> np.ndarray:
    """The GT pixels a spinning LiDAR's beams would hit (see the module docstring); float32 metres, 0 = none.

    ``gt``: (H, W) metres, 0 = no data; ``K``: 3x3 intrinsics of ``gt``'s pixel grid; ``profile``: a
    ``tasks.sensors.SensorProfile`` or a profile name/path. Deterministic for a given ``seed``.
    """
    from tasks.sensors import SensorProfile, load_profile

    prof = profile if isinstance(profile, SensorProfile) else load_profile(profile)
    if prof.elevations_deg is None:
        raise InputError(f"{prof.name}: beam sampling needs a spinning sensor profile (elevations_deg)")
    gt = np.asarray(gt, np.float32)
    if gt.ndim != 2:
        raise InputError(f"beam_sample_gt: gt must be (H, W), got shape {gt.shape}")
    K = np.asarray(K, np.float64).reshape(3, 3)
    rng = np.random.default_rng(seed)
    rot, origin = mount_pose(prof, rng if jitter else None)
    out = np.zeros_like(gt)
    v, u = np.nonzero(np.isfinite(gt) & (gt > 0))
    if v.size == 0:
        return out
    z = gt[v, u].astype(np.float64)
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    d = (pts - origin) @ rot  # sensor frame (rot is camera_from_sensor: rows of rot.T = sensor axes)
    rng_m = np.linalg.norm(d, axis=1)
    elev = np.rad2deg(np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1])))
    azim = np.rad2deg(np.arctan2(d[:, 1], d[:, 0]))
    beams = np.sort(np.asarray(prof.elevations_deg, np.float64))
    i = np.clip(np.searchsorted(beams, elev), 1, len(beams) - 1)
    nearest = np.where(np.abs(elev - beams[i - 1]) <= np.abs(elev - beams[i]), i - 1, i)
    # One pixel's angle at this range of the image: a beam's footprint is about a pixel wide in the image.
    tol = elevation_tol_px * np.rad2deg(1.0 / K[1, 1])
    step = float(prof.azimuth_step_deg)
    firing = np.round(azim / step).astype(np.int64)
    keep = (np.abs(elev - beams[nearest]) <= tol) & (rng_m >= prof.min_range_m) & (rng_m <= prof.max_range_m)
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return out
    cell = nearest[idx] * (1 << 20) + (firing[idx] - firing[idx].min())
    order = np.lexsort((rng_m[idx], cell))  # by firing, nearest first: the ray stops at the first surface
    first = np.ones(order.size, bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    hit = idx[order[first]]
    if drops:
        dr = prof.drop
        far = dr["far_max"] * np.clip((rng_m[hit] - dr["far_start_m"]) /
                                      max(prof.max_range_m - dr["far_start_m"], 1e-6), 0.0, 1.0)
        p_drop = 1.0 - (1.0 - dr["random"]) * (1.0 - far)
        hit = hit[rng.random(hit.size) >= p_drop]
    out[v[hit], u[hit]] = gt[v[hit], u[hit]]
    return out


def sparse_from_gt(gt: np.ndarray, K: np.ndarray, pattern: str, *, seed: int = 0,
                   profile=DEFAULT_PROFILE, n_lines: int = 64) -> np.ndarray:
    """Sparse input from GT with one of ``PATTERNS`` (float32 metres, 0 = none)."""
    if pattern == "hdl64e":
        return beam_sample_gt(gt, K, profile, seed=seed)
    if pattern == "lines":
        from tasks.sparsify import sparsify_scanlines

        return sparsify_scanlines(gt, n_lines=n_lines, seed=seed)
    raise InputError(f"unknown sparse pattern {pattern!r}; available: {', '.join(PATTERNS)}")


def exclusion_mask(sparse: np.ndarray) -> np.ndarray:
    """Pixels that may be scored: those NOT given as input (sparse == 0)."""
    return np.asarray(sparse) <= 0
