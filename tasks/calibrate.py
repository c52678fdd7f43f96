"""Fit a LiDAR sensor profile (tasks.sensors) from one or more real sweeps and a camera calibration.

Pure numpy: points in the LiDAR frame (x, y, z metres) with optional ring ids in, a profile mapping (the
keys of tasks/sensors/*.yaml) and a report out. What is fitted and how:

* **No-return markers and the ego body.** Points nearer than ``no_return_below_m`` are exporters' "no return"
  markers (nuScenes keeps every firing; motion compensation moves its zero points a few decimetres);
  returns nearer than ``body_radius_m`` hit the vehicle itself. Neither enters the fits below; both are
  counted in the report.
* **Beam elevations.** With ring ids: per ring, the clipped mean (median +- 3 robust sigma) of the
  elevation of returns beyond ``min_fit_range_m`` (near returns are bent by the beams' offsets from the
  sensor axis and by motion compensation). Without ring ids: elevations of those returns are clustered
  (histogram peaks, then the same clipped mean per cluster) and each return gets its nearest beam.
* **Azimuth step.** Per beam, the gaps between consecutive return azimuths are whole multiples of the step
  (drops make 2x, 3x gaps); the step is the median of gap / round(gap / first guess), first guess = the
  median gap.
* **Range limits.** Nearest and farthest return beyond the body (min floored, max ceiled to 0.1 m / 1 m).
* **Drops.** Each beam fires on a grid of ``round(360 / step)`` columns. A column whose two neighbours both
  return should return too; the share of such columns that are missing is the drop rate. On smooth
  surfaces (neighbour ranges within ``smooth_ratio``), near (< 30 m) and head-on (< 60 deg) it gives the
  profile's ``random`` share; binned by incidence angle (surface normal from the neighbouring columns and
  beams) a linear rise (``grazing_deg``, ``grazing_max``). The rise with range (``far_start_m``, ``far_max``)
  needs more than single missing columns: far foliage and glass lose *runs* of returns, which a "both
  neighbours return" test never sees. So a missing column counts as a drop on a surface when the beam's
  nearest returns on both sides within ``drop_gap_deg`` agree in range (within ``drop_gap_ratio``): the run
  lies on one surface at about that range. Binned by that range, the missing share gives a linear rise, fitted
  only where the data show one. The report lists it per beam group too (below / at-or-above the sensor's
  horizontal) to show whether the rise depends on the beam; per-beam and per-azimuth missing shares as well.
* **Range noise.** Along a beam, three consecutive returns from a smooth surface have a second difference
  r[i-1] - 2 r[i] + r[i+1] that is pure noise up to curvature: sigma = 1.4826 MAD / sqrt(6), from returns
  nearer than 20 m (where the 2nd-difference of the geometry itself is small).
* **Link budget** (when the sweep has intensities): the received power falls as reflectance / r^2, so at range
  r a return needs a reflectance of at least (r / R)^2 times the median one (tasks.lidar.detection_probability).
  The reflectance distribution is the sensor-reported intensity of returns between ``min_fit_range_m`` and
  ``reflectance_near_m`` (where almost every target returns), divided by its median, as 21 quantiles. From the
  sweep alone, R comes from the lowest intensity / r^2 seen beyond ``reflectance_near_m`` (its 1 % quantile:
  the weakest target detected at each range) and is only reported: a sweep cannot show what it never returned
  (whole tree crowns, glass, far facades lose *every* firing, so no bracketing return tells their range).
  With the photo of the sweep (``fit_detection_range``), R is fitted to the firings that point at a surface the
  camera sees, at the range the (scan-aligned) teacher gives that surface: the Bernoulli maximum-likelihood R
  of "returned or not" over those firings. That profile then carries ``detection`` and no linear far rise.
  The ranges are the aligned teacher's, so R is on the teacher's range scale (which the simulation shares):
  a teacher that places far surfaces too near gives a shorter R than the sensor's own.
* **Mount.** camera_from_lidar from the calibration -> translation and roll/pitch/yaw about the LiDAR's own
  axes, in the convention of tasks.lidar.sensor_pose (the profile then reproduces the calibration exactly).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.errors import GeometryError
from tasks.lidar import CAM_FROM_LIDAR_AXES, detection_probability
from tasks.sensors import DETECTION_LEVELS

NO_RETURN_BELOW_M = 0.5  # nearer points are exporters' "no return" markers (motion compensation moves them)
RANGE_BINS_M = (0.0, 10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 1e9)
INCIDENCE_BINS_DEG = (0.0, 30.0, 45.0, 60.0, 70.0, 80.0, 85.0, 90.0)


@dataclass(frozen=True)
class FitOptions:
    """Thresholds of the fit (see the module docstring)."""

    no_return_below_m: float = NO_RETURN_BELOW_M
    body_radius_m: float = 2.8
    min_fit_range_m: float = 3.0
    smooth_ratio: float = 1.1
    noise_max_range_m: float = 20.0
    min_beam_separation_deg: float = 0.2
    min_points_per_beam: int = 8
    drop_gap_deg: float = 5.0
    drop_gap_ratio: float = 1.3
    reflectance_near_m: float = 20.0
    detection_envelope_quantile: float = 0.01


@dataclass
class SensorFit:
    profile: dict[str, Any]  # a profile mapping, ready for tasks.sensors.parse_profile / YAML
    report: dict[str, Any] = field(default_factory=dict)
    # per sweep: unit directions (M, 3) in the LiDAR frame of every (beam, column) firing and whether it returned
    firings: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    reflectance_quantiles: list[float] | None = None  # normalised by the median; None without intensities


def _clipped_mean(x: np.ndarray) -> float:
    med = float(np.median(x))
    sigma = 1.4826 * float(np.median(np.abs(x - med)))
    keep = np.abs(x - med) <= max(3.0 * sigma, 0.02)
    return float(x[keep].mean())


def mount_from_pose(cam_from_lidar: np.ndarray) -> dict[str, Any]:
    """translation_m and rotation_deg [roll, pitch, yaw] such that tasks.lidar.sensor_pose reproduces the
    pose: R = CAM_FROM_LIDAR_AXES @ Rz(yaw) Ry(pitch) Rx(roll)."""
    T = np.asarray(cam_from_lidar, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise GeometryError(f"camera_from_lidar must be a finite 4x4 matrix, got shape {T.shape}")
    R = CAM_FROM_LIDAR_AXES.T @ T[:3, :3]
    pitch = float(np.degrees(np.arcsin(np.clip(-R[2, 0], -1.0, 1.0))))
    roll = float(np.degrees(np.arctan2(R[2, 1], R[2, 2])))
    yaw = float(np.degrees(np.arctan2(R[1, 0], R[0, 0])))
    return {"translation_m": [round(float(v), 4) for v in T[:3, 3]],
            "rotation_deg": [round(roll, 3), round(pitch, 3), round(yaw, 3)]}


def cluster_elevations(elevation_deg: np.ndarray, *, bin_deg: float = 0.02, smooth_deg: float = 0.05,
                       min_separation_deg: float = 0.2, min_points: int = 8) -> np.ndarray:
    """Beam elevations (sorted ascending) from the elevations of many returns of a ring-less sweep: peaks of
    a Gaussian-smoothed histogram at least `min_separation_deg` apart (real beams are >= 1/3 deg apart;
    near returns smear a beam over a few tenths of a degree), each refined to the clipped mean of the
    returns nearest to it; peaks with fewer than `min_points` returns are dropped."""
    el = np.asarray(elevation_deg, dtype=np.float64)
    if el.size < min_points:
        raise GeometryError(f"too few returns ({el.size}) to cluster beam elevations")
    lo, hi = el.min() - 5 * smooth_deg, el.max() + 5 * smooth_deg
    counts, edges = np.histogram(el, bins=max(3, int(np.ceil((hi - lo) / bin_deg))), range=(lo, hi))
    half = max(1, int(round(3 * smooth_deg / bin_deg)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * bin_deg / smooth_deg) ** 2)
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="same")
    reach = max(1, int(round(min_separation_deg / 2 / bin_deg)))
    padded = np.pad(smooth, reach, constant_values=-1.0)
    window_max = np.max(np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1), axis=1)
    peak = (smooth >= window_max) & (smooth > 0)
    peak &= np.concatenate([[True], ~peak[:-1]])  # flat tops: keep the first bin only
    centres = (edges[:-1] + edges[1:])[peak] / 2
    for _ in range(2):  # refine: assign to the nearest centre, clipped mean per beam, drop thin beams
        idx = np.abs(el[:, None] - centres[None]).argmin(1)
        keep = [k for k in range(len(centres)) if (idx == k).sum() >= min_points]
        centres = np.array([_clipped_mean(el[idx == k]) for k in keep])
    if centres.size == 0:
        raise GeometryError("no beam found among the return elevations")
    return np.sort(centres)


def _spherical(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.linalg.norm(points, axis=1)
    az = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
    el = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    return rng, az, el


def _azimuth_step(az_by_beam: list[np.ndarray]) -> float:
    gaps = []
    for az in az_by_beam:
        if az.size < 3:
            continue
        a = np.sort(az)
        d = np.diff(np.concatenate([a, a[:1] + 360.0]))
        gaps.append(d[d > 1e-3])
    if not gaps:
        raise GeometryError("too few returns per beam to measure the azimuth step")
    d = np.concatenate(gaps)
    first = float(np.median(d))
    d = d[d < 6 * first]
    mult = np.maximum(np.round(d / first), 1.0)
    return float(np.median(d / mult))


def _bracketed(img: np.ndarray, gap_cols: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells of a (beams, columns) range image (NaN = no return) whose nearest returns to the left and to the
    right within `gap_cols` columns agree within `ratio`, and the mean of those two ranges."""
    left = np.full_like(img, np.nan)
    right = np.full_like(img, np.nan)
    for k in range(gap_cols, 0, -1):  # nearest wins: written last
        lk, rk = np.roll(img, k, axis=1), np.roll(img, -k, axis=1)
        left = np.where(np.isfinite(lk), lk, left)
        right = np.where(np.isfinite(rk), rk, right)
    ok = np.isfinite(left) & np.isfinite(right) & (np.fmax(left, right) <= ratio * np.fmin(left, right))
    return ok, (left + right) / 2


def _linear_rise(centres: np.ndarray, rates: np.ndarray, counts: np.ndarray, base: float,
                 end: float) -> tuple[float, float] | None:
    """(start, value at `end`) of a linear rise of the drop rate above `base`, or None when the binned rates
    show none: start = the centre of the last bin at base level before the rates climb; value from a
    least-squares slope through the climbing bins (weighted by count)."""
    ok = counts >= 20
    c, r, n = centres[ok], rates[ok], counts[ok]
    above = r > base + np.maximum(0.05, 2 * np.sqrt(max(base, 0.01) * (1 - base) / np.maximum(n, 1)))
    if not above.any():
        return None
    first = int(np.argmax(above))
    start = float(c[first - 1]) if first > 0 else float(c[0])
    xs, ys, ws = c[first:] - start, (r[first:] - base) / max(1 - base, 1e-6), n[first:]
    slope = float(np.sum(ws * xs * ys) / max(np.sum(ws * xs * xs), 1e-9))
    return start, float(np.clip(slope * (end - start), 0.0, 1.0))


def _reflectance(per_sweep: list[dict], options: FitOptions) -> dict[str, Any] | None:
    """Normalised reflectance quantiles of near returns and the sweep-only link-budget range (module docstring)."""
    if any(s["intensity"] is None for s in per_sweep):
        return None
    rng = np.concatenate([s["rng"] for s in per_sweep])
    inten = np.concatenate([s["intensity"] for s in per_sweep]).astype(np.float64)
    near = (rng >= options.min_fit_range_m) & (rng <= options.reflectance_near_m) & np.isfinite(inten)
    far = (rng > options.reflectance_near_m) & np.isfinite(inten)
    if near.sum() < 100 or far.sum() < 20:
        return None
    med = float(np.median(inten[near]))
    if not med > 0:
        return None
    quantiles = np.quantile(inten[near] / med, DETECTION_LEVELS)
    k = float(np.quantile(inten[far] / rng[far] ** 2, options.detection_envelope_quantile)) / med
    return {"median_intensity": med, "quantiles": [round(float(v), 4) for v in quantiles],
            "sweep_only_range_m": round(float(1.0 / np.sqrt(k)), 1) if k > 0 else None}


def fit_profile(points: list[np.ndarray], rings: list[np.ndarray | None], cam_from_lidar: np.ndarray | None, *,
                name: str, options: FitOptions = FitOptions(), description: str = "",
                intensities: list[np.ndarray | None] | None = None) -> SensorFit:
    """Fit a spinning-LiDAR profile from sweeps (each (N, 3) LiDAR-frame points, with (N,) ring ids or None,
    and optionally (N,) sensor-reported intensities for the link budget).

    cam_from_lidar (4x4) sets the mount; None leaves the mount at the identity axes. Raises GeometryError
    when the sweeps cannot support a fit (too few returns, no beam structure)."""
    if not points:
        raise GeometryError("no sweep given to fit a sensor profile")
    have_rings = all(r is not None for r in rings)
    per_sweep = []
    n_markers = n_body = 0
    nearest_hit = float("inf")
    intensities = intensities if intensities is not None else [None] * len(points)
    for pts, ring, inten in zip(points, rings, intensities):
        pts = np.asarray(pts, dtype=np.float64)
        rng, az, el = _spherical(pts)
        marker = rng < options.no_return_below_m
        body = ~marker & (rng < options.body_radius_m)
        if body.any():  # body hits show how near the sensor can measure
            nearest_hit = min(nearest_hit, float(rng[body].min()))
        n_markers += int(marker.sum())
        n_body += int(body.sum())
        ret = ~marker & ~body
        per_sweep.append({"pts": pts[ret], "rng": rng[ret], "az": az[ret], "el": el[ret],
                          "ring": None if ring is None else np.asarray(ring)[ret].astype(np.int64),
                          "ring_all": None if ring is None else np.asarray(ring).astype(np.int64),
                          "intensity": None if inten is None else np.asarray(inten, dtype=np.float64)[ret],
                          "n": len(pts)})
    n_returns = sum(len(s["rng"]) for s in per_sweep)
    if n_returns < 100:
        raise GeometryError(f"only {n_returns} returns beyond the vehicle body: too few to fit a profile")

    fit_el = np.concatenate([s["el"][s["rng"] >= options.min_fit_range_m] for s in per_sweep])
    if have_rings:
        n_beams = int(max(int(s["ring_all"].max()) for s in per_sweep)) + 1
        elevations = np.full(n_beams, np.nan)
        ring_means = np.full(n_beams, np.nan)
        for b in range(n_beams):
            sel = np.concatenate([s["el"][(s["ring"] == b) & (s["rng"] >= options.min_fit_range_m)] for s in per_sweep])
            if sel.size >= options.min_points_per_beam:
                elevations[b] = _clipped_mean(sel)
                ring_means[b] = float(sel.mean())
        missing = np.nonzero(~np.isfinite(elevations))[0]
        if missing.size:
            raise GeometryError(f"rings {missing.tolist()} have fewer than {options.min_points_per_beam} returns "
                                f"beyond {options.min_fit_range_m} m; cannot fit their elevation")
        beam_of = [s["ring"] for s in per_sweep]
        method = "ring ids"
    else:
        elevations = cluster_elevations(fit_el, min_separation_deg=options.min_beam_separation_deg,
                                        min_points=options.min_points_per_beam)
        ring_means = None
        n_beams = len(elevations)
        beam_of = [np.abs(s["el"][:, None] - elevations[None]).argmin(1) for s in per_sweep]
        method = "elevation clustering"

    step = _azimuth_step([s["az"][b == k] for s, b in zip(per_sweep, beam_of) for k in range(n_beams)])
    n_cols = int(round(360.0 / step))
    if have_rings and len(per_sweep) == 1:
        # An exporter that keeps every firing (no-return markers included) gives the column count exactly.
        fired = np.bincount(per_sweep[0]["ring_all"], minlength=n_beams)
        if (fired == fired[0]).all() and abs(fired[0] - n_cols) <= 0.02 * n_cols:
            n_cols = int(fired[0])
    step = 360.0 / n_cols  # a spinning sensor fires a whole number of columns per turn

    all_rng = np.concatenate([s["rng"] for s in per_sweep])
    min_range = float(np.floor(min(nearest_hit, all_rng.min()) * 10) / 10)
    max_range = float(np.ceil(all_rng.max()))

    # Column grid per beam: range image (beams x columns), NaN = no return.
    cand_range, cand_inc, cand_missing = [], [], []
    both_range, both_missing, both_upper = [], [], []
    gap_cols = max(1, int(round(options.drop_gap_deg / step)))
    noise_d2 = []
    firings = []
    missing_per_beam = np.zeros(n_beams)
    az_bins = np.zeros((n_beams, 36))
    az_fire = np.zeros((n_beams, 36))
    for s, b in zip(per_sweep, beam_of):
        col = np.mod(np.round((s["az"] + 180.0) / step).astype(np.int64), n_cols)
        img = np.full((n_beams, n_cols), np.nan)
        pts = np.full((n_beams, n_cols, 3), np.nan)
        order = np.argsort(-s["rng"])  # several returns in one cell: keep the nearest (written last)
        img[b[order], col[order]] = s["rng"][order]
        pts[b[order], col[order]] = s["pts"][order]
        has = np.isfinite(img)
        missing_per_beam += 1.0 - has.mean(1)
        az_c = np.radians(np.arange(n_cols) * step - 180.0)[None, :]
        el_c = np.radians(elevations)[:, None]
        dirs = np.stack(np.broadcast_arrays(np.cos(el_c) * np.cos(az_c), np.cos(el_c) * np.sin(az_c), np.sin(el_c)), -1)
        firings.append((dirs.reshape(-1, 3), has.reshape(-1)))
        sector = (np.arange(n_cols) * 36) // n_cols
        for k in range(36):
            az_fire[:, k] += (sector == k).sum()
            az_bins[:, k] += (~has[:, sector == k]).sum(1)
        # beams sorted by elevation so "neighbour beam" means the next beam up
        by_el = np.argsort(elevations)
        img_e, pts_e = img[by_el], pts[by_el]
        left, right = np.roll(img_e, 1, axis=1), np.roll(img_e, -1, axis=1)
        smooth = np.isfinite(left) & np.isfinite(right) & (np.fmax(left, right) <= options.smooth_ratio * np.fmin(left, right))
        mid = (left + right) / 2
        # surface normal from the neighbouring columns (tangent along the beam) and beams (across)
        pl, pr = np.roll(pts_e, 1, axis=1), np.roll(pts_e, -1, axis=1)
        pu, pd = np.roll(pts_e, -1, axis=0), np.roll(pts_e, 1, axis=0)
        t1 = pr - pl
        t2 = np.where(np.isfinite(pu), pu, pts_e) - np.where(np.isfinite(pd), pd, pts_e)
        t2 = np.where(np.isfinite(t2).all(-1, keepdims=True), t2, np.nan)
        nrm = np.cross(t1, t2)
        ray = (pl + pr) / 2
        cosang = np.abs(np.einsum("ijk,ijk->ij", nrm, ray)) / (np.linalg.norm(nrm, axis=-1) * np.linalg.norm(ray, axis=-1) + 1e-12)
        inc = np.degrees(np.arccos(np.clip(cosang, 0.0, 1.0)))
        smooth[0], smooth[-1] = False, False  # no wrap across the top/bottom beam
        # range dependence: runs of missing columns bracketed by one surface (module docstring)
        both, both_mid = _bracketed(img_e, gap_cols, options.drop_gap_ratio)
        both_range.append(both_mid[both])
        both_missing.append(~np.isfinite(img_e)[both])
        both_upper.append(np.broadcast_to((elevations[by_el] >= 0.0)[:, None], both.shape)[both])
        cand_range.append(mid[smooth])
        cand_inc.append(np.where(np.isfinite(inc), inc, -1.0)[smooth])
        cand_missing.append(~np.isfinite(img_e)[smooth])
        # range noise: second differences of three consecutive returns on a smooth surface
        c = img_e
        d2 = np.roll(c, 1, axis=1) - 2 * c + np.roll(c, -1, axis=1)
        ok = smooth & np.isfinite(c) & (c < options.noise_max_range_m) & (np.abs(c - mid) < 0.05 * mid)
        noise_d2.append(d2[ok])
    cand_range = np.concatenate(cand_range)
    cand_inc = np.concatenate(cand_inc)
    cand_missing = np.concatenate(cand_missing)
    if cand_missing.size < 50:
        raise GeometryError("too few smooth-surface columns to estimate drops")

    both_range = np.concatenate(both_range)
    both_missing = np.concatenate(both_missing)
    both_upper = np.concatenate(both_upper)

    def binned(values: np.ndarray, edges: tuple[float, ...], sel: np.ndarray,
               missing: np.ndarray = cand_missing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.digitize(values[sel], edges[1:-1])
        counts = np.bincount(idx, minlength=len(edges) - 1).astype(float)
        miss = np.bincount(idx, weights=missing[sel].astype(float), minlength=len(edges) - 1)
        rates = np.divide(miss, counts, out=np.zeros_like(miss), where=counts > 0)
        lo, hi = np.array(edges[:-1]), np.minimum(np.array(edges[1:]), max_range)
        return (lo + hi) / 2, rates, counts

    valid_inc = cand_inc >= 0
    head_on = valid_inc & (cand_inc < 60.0)
    near = cand_range < 30.0
    base_sel = head_on & near if (head_on & near).sum() >= 50 else np.ones_like(cand_missing)
    random_drop = float(cand_missing[base_sel].mean())
    # Range dependence over every column with returns on both sides (rough surfaces such as foliage too:
    # far vegetation is where real sensors lose most returns); incidence needs the smooth-surface normals.
    rc, rr, rn = binned(both_range, RANGE_BINS_M, np.ones_like(both_missing), both_missing)
    ic, ir, in_ = binned(cand_inc, INCIDENCE_BINS_DEG, valid_inc & near)
    drop: dict[str, float] = {"random": round(random_drop, 4)}
    far = _linear_rise(rc, rr, rn, random_drop, max_range)
    if far is not None and far[1] > 0:
        drop.update(far_start_m=round(far[0], 1), far_max=round(far[1], 3))
    graze = _linear_rise(ic, ir, in_, random_drop, 90.0)
    if graze is not None and graze[1] > 0 and graze[0] < 90.0:
        drop.update(grazing_deg=round(graze[0], 1), grazing_max=round(graze[1], 3))

    d2 = np.concatenate(noise_d2)
    noise = float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / np.sqrt(6.0)) if d2.size >= 50 else None

    reflectance = _reflectance(per_sweep, options)

    mount: dict[str, Any] = {"jitter_translation_m": 0.01, "jitter_rotation_deg": 0.2}
    if cam_from_lidar is not None:
        mount = {**mount_from_pose(cam_from_lidar), **mount}
    profile: dict[str, Any] = {
        "name": name,
        "description": description or (f"Fitted by monolidar calibrate-sensor from {len(points)} sweep(s): "
                                       f"{n_beams} beams ({method}), {n_cols} columns per turn."),
        "elevations_deg": [round(float(e), 4) for e in elevations],
        "azimuth_step_deg": round(step, 6),
        "min_range_m": min_range,
        "max_range_m": max_range,
        "range_noise_std_m": round(noise, 4) if noise is not None else 0.02,
        "drop": drop,
        "mount": mount,
    }
    n_fired = sum(s["n"] for s in per_sweep)
    report = {
        "sweeps": len(points),
        "points": int(n_fired),
        "no_return_markers": n_markers,
        "body_returns": n_body,
        "returns": int(n_returns),
        "beams": n_beams,
        "elevation_method": method,
        "columns_per_turn": n_cols,
        "ring_mean_elevations_deg": None if ring_means is None else [round(float(m), 4) for m in ring_means],
        "elevation_minus_ring_mean_deg": None if ring_means is None else
        [round(float(e - m), 4) for e, m in zip(elevations, ring_means)],
        "missing_share_per_beam": [round(float(m / len(points)), 4) for m in missing_per_beam],
        "missing_share_per_azimuth_10deg": [round(float(v), 4) for v in az_bins.sum(0) / np.maximum(az_fire.sum(0), 1)],
        "drop_vs_range": {"bin_centre_m": rc.round(1).tolist(), "rate": rr.round(4).tolist(), "n": rn.astype(int).tolist()},
        "drop_vs_range_by_beam_group": {
            group: {"rate": rates.round(4).tolist(), "n": counts.astype(int).tolist()}
            for group, sel in (("below_horizontal", ~both_upper), ("at_or_above_horizontal", both_upper))
            for _, rates, counts in [binned(both_range, RANGE_BINS_M, sel, both_missing)]},
        "drop_vs_incidence": {"bin_centre_deg": ic.round(1).tolist(), "rate": ir.round(4).tolist(), "n": in_.astype(int).tolist()},
        "smooth_columns": int(cand_missing.size),
        "noise_samples": int(d2.size),
        "range_noise_estimated": noise is not None,
        "reflectance": reflectance,
    }
    return SensorFit(profile=profile, report=report, firings=firings,
                     reflectance_quantiles=None if reflectance is None else reflectance["quantiles"])


DETECTION_BINS_M = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 1e9)


def fit_detection_range(ranges: np.ndarray, returned: np.ndarray, reflectance_quantiles: list[float], *,
                        base_drop: float = 0.0) -> dict[str, Any]:
    """Link-budget range R (tasks.lidar.detection_probability) that best explains which firings returned.

    ranges: (M,) metres to the surface each firing points at (e.g. the scan-aligned teacher's mesh seen from the
    sensor), returned: (M,) bool. Each firing returns with probability (1 - base_drop) * P_det(range; R); R is
    the Bernoulli maximum-likelihood value on a log grid from 5 m to 2 km. Returns {"range_m", "firings",
    "by_range": {"bin_edges_m", "observed", "predicted", "n"}}."""
    r = np.asarray(ranges, dtype=np.float64)
    y = np.asarray(returned, dtype=bool)
    ok = np.isfinite(r) & (r > 0)
    r, y = r[ok], y[ok]
    if r.size < 50:
        raise GeometryError(f"only {r.size} firings point at a surface seen in the photo: too few to fit the link budget")
    grid = np.geomspace(5.0, 2000.0, 400)
    best, best_ll = grid[-1], -np.inf
    for R in grid:
        p = np.clip((1.0 - base_drop) * detection_probability({"range_m": R, "reflectance_quantiles": reflectance_quantiles}, r),
                    1e-4, 1 - 1e-4)
        ll = float(np.sum(np.where(y, np.log(p), np.log1p(-p))))
        if ll > best_ll:
            best, best_ll = float(R), ll
    p = (1.0 - base_drop) * detection_probability({"range_m": best, "reflectance_quantiles": reflectance_quantiles}, r)
    idx = np.digitize(r, DETECTION_BINS_M[1:-1])
    n = np.bincount(idx, minlength=len(DETECTION_BINS_M) - 1)
    obs = np.bincount(idx, weights=y.astype(float), minlength=len(n)) / np.maximum(n, 1)
    pred = np.bincount(idx, weights=p, minlength=len(n)) / np.maximum(n, 1)
    return {"range_m": round(best, 1), "firings": int(r.size),
            "by_range": {"bin_edges_m": list(DETECTION_BINS_M[:-1]), "observed": obs.round(3).tolist(),
                         "predicted": pred.round(3).tolist(), "n": n.tolist()}}


def with_detection(fit: SensorFit, detection_fit: dict[str, Any]) -> SensorFit:
    """The fit with the photo-fitted link budget: profile ``detection`` set, the linear far rise (measured from
    bracketed runs only, which the link budget replaces) removed; the evidence goes into the report."""
    if fit.reflectance_quantiles is None:
        raise GeometryError("the sweep has no intensities: no reflectance distribution for a link budget")
    drop = {k: v for k, v in fit.profile["drop"].items() if k not in ("far_start_m", "far_max")}
    profile = {**fit.profile, "drop": drop,
               "detection": {"range_m": detection_fit["range_m"], "reflectance_quantiles": fit.reflectance_quantiles}}
    report = {**fit.report, "detection_fit": detection_fit, "replaced_far_rise": {
        k: v for k, v in fit.profile["drop"].items() if k in ("far_start_m", "far_max")}}
    return SensorFit(profile=profile, report=report, firings=fit.firings,
                     reflectance_quantiles=fit.reflectance_quantiles)


def firing_ranges_in_photo(firings: tuple[np.ndarray, np.ndarray], depth: np.ndarray, K: np.ndarray,
                           cam_from_lidar: np.ndarray, *, max_depth_m: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    """For the firings of one sweep (``SensorFit.firings[i]``) that point into the photo: the range at which each
    meets the surface of `depth` (z-depth metres of the photo, 0 = none, e.g. the teacher aligned to the scan;
    ray cast from the sensor against its mesh, tasks.mesh / tasks.raycast) and whether it returned. Firings that
    meet no surface (sky, holes at depth cuts) are left out. Returns (ranges (M,), returned (M,) bool)."""
    from tasks.mesh import MeshOptions, depth_to_grid
    from tasks.raycast import cast_hits

    dirs_l, returned = firings
    T = np.asarray(cam_from_lidar, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    h, w = depth.shape
    dirs = np.asarray(dirs_l, dtype=np.float64) @ T[:3, :3].T
    far = T[:3, 3] + 50.0 * dirs  # only firings that can land in the photo are cast
    z = far[:, 2]
    zs = np.where(z > 0, z, 1.0)
    u = K[0, 0] * far[:, 0] / zs + K[0, 1] * far[:, 1] / zs + K[0, 2]
    v = K[1, 1] * far[:, 1] / zs + K[1, 2]
    aim = (z > 0) & (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    if not aim.any():
        raise GeometryError("no firing of the sweep points into the photo: check the calibration")
    grid = depth_to_grid(depth, K, MeshOptions(max_depth_m=max_depth_m))
    if grid.n_faces == 0:
        raise GeometryError("the photo's depth has no surface to cast the sweep's firings against")
    origins = np.broadcast_to(T[:3, 3], (int(aim.sum()), 3)).copy()
    ranges, _ = cast_hits("fast", [grid], origins, dirs[aim])
    hit = np.isfinite(ranges)
    return ranges[hit], np.asarray(returned)[aim][hit]
