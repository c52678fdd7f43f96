"""How real does the simulated LiDAR look? A real sweep projected into a photo vs. the simulation on it.

Pure numpy. The real sweep (LiDAR frame) is projected into the camera with its calibration (z-buffered,
like the simulation); the simulation runs the normal data path on the same photo - teacher output ->
depth policy (seeded) -> mesh -> LiDAR profile (mount jitter, phase, drops and noise seeded) - once per seed,
and the statistics are averaged over seeds. Statistics of a sparse map (``pattern_summary``):

* ``density`` / ``density_kitti_crop``: share of pixels with a return, whole image / KITTI benchmark crop
  (bottom 352 rows, central 1216 columns, clipped to the image);
* ``first_row`` (topmost image row with a return, whole image) and ``rows_covered`` (rows with >= 1 return);
* ``row_histogram``: returns per band of ``ROW_BANDS`` equal row bands, top to bottom;
* ``see_through``: share of returns that lie behind a nearer return within ``SEE_THROUGH_RADIUS_PX`` pixels
  by more than ``SEE_THROUGH_RATIO`` (the LiDAR saw past an edge the camera sees);
* ``depth_quantiles_m`` of the returns' z-depth.

Teacher scale: the teacher's disparity has an unknown scale and shift, which a dataset build draws per image
(tasks.depth_policy). That draw moves every statistic (a nearer scene returns more, higher in the image), so
a comparison with one real scan would partly measure the draw. ``fit_disparity_alignment`` fixes scale and
shift from the real scan itself, as depth-evaluation protocols do: least squares ``scale * disp + shift ~=
1 / z_real`` over the pixels the scan hits, trimmed of the worst ``ALIGN_TRIM`` residuals a few times
(edges, see-through returns and glass disagree with any single map). With it the comparison measures the
sensor pattern on the photo's true-scale scene; without it, the seeded policy draws as a build would.

``compare`` adds the 1-Wasserstein distance between the real and the (seed-pooled) simulated depth
distributions, and the relative error of each headline statistic with a pass/fail against ``tolerance``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.ndimage import minimum_filter
from scipy.stats import wasserstein_distance

from tasks.calibrate import NO_RETURN_BELOW_M
from tasks.depth_policy import DepthPolicy, disparity_to_depth
from tasks.errors import GeometryError
from tasks.lidar import project_points, simulate_lidar
from tasks.mesh import MeshOptions
from tasks.pattern_stats import bottom_centre_crop
from tasks.sensors import SensorProfile

KITTI_CROP = (352, 1216)
ROW_BANDS = 24
SEE_THROUGH_RADIUS_PX = 3
SEE_THROUGH_RATIO = 1.3
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HEADLINE = ("density", "density_kitti_crop", "first_row", "rows_covered")
ALIGN_TRIM = 0.10
ALIGN_ITERATIONS = 3
ALIGN_MIN_PIXELS = 20


def fit_disparity_alignment(teacher_disp: np.ndarray, real: np.ndarray, *, trim: float = ALIGN_TRIM,
                            iterations: int = ALIGN_ITERATIONS) -> dict[str, float]:
    """(scale, shift) with ``scale * disp + shift ~= 1 / z_real`` on the pixels where the real sparse map has a
    return (module docstring). Returns {"scale", "shift", "pixels", "median_abs_rel"} (median |z - z_real| /
    z_real of the aligned depth over the pixels kept). Raises GeometryError when the scan hits too few
    pixels with a finite teacher value or the fit says "farther = larger disparity"."""
    disp = np.asarray(teacher_disp, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    if disp.shape != real.shape:
        raise GeometryError(f"teacher output {disp.shape} and real map {real.shape} differ in shape")
    m = (real > 0) & np.isfinite(disp)
    if int(m.sum()) < ALIGN_MIN_PIXELS:
        raise GeometryError(f"only {int(m.sum())} real returns on finite teacher pixels: too few to align the teacher")
    A = np.stack([disp[m], np.ones(int(m.sum()))], axis=1)
    y = 1.0 / real[m]
    keep = np.ones(len(y), dtype=bool)
    for k in range(iterations + 1):
        scale, shift = np.linalg.lstsq(A[keep], y[keep], rcond=None)[0]
        if k < iterations:
            res = np.abs(A @ (scale, shift) - y)
            keep = res <= np.quantile(res, 1.0 - trim)
    if not scale > 0:
        raise GeometryError(f"teacher alignment to the real scan gave scale {scale:.3g} <= 0 (farther = larger disparity)")
    inv = A[keep] @ (scale, shift)
    ok = inv > 0
    rel = np.abs(1.0 / inv[ok] - real[m][keep][ok]) / real[m][keep][ok]
    return {"scale": float(scale), "shift": float(shift), "pixels": int(keep.sum()),
            "median_abs_rel": round(float(np.median(rel)), 4) if rel.size else float("nan")}


def project_sweep(points_lidar: np.ndarray, cam_from_lidar: np.ndarray, K: np.ndarray, height: int,
                  width: int) -> np.ndarray:
    """(H, W) float32 z-depth of a real sweep in the camera (nearest return per pixel, 0 = none)."""
    pts = np.asarray(points_lidar, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise GeometryError(f"points must be (N, 3), got shape {pts.shape}")
    pts = pts[np.linalg.norm(pts, axis=1) >= NO_RETURN_BELOW_M]  # drop no-return markers
    T = np.asarray(cam_from_lidar, dtype=np.float64)
    cam = pts @ T[:3, :3].T + T[:3, 3]
    sparse, _ = project_points(cam, np.asarray(K, dtype=np.float64), int(height), int(width))
    return sparse


def see_through_share(sparse: np.ndarray, *, radius: int = SEE_THROUGH_RADIUS_PX,
                      ratio: float = SEE_THROUGH_RATIO) -> float:
    """Share of returns with a return nearer by more than `ratio` within `radius` pixels."""
    valid = sparse > 0
    if not valid.any():
        return 0.0
    z = np.where(valid, sparse, np.inf)
    nearest = minimum_filter(z, size=2 * radius + 1, mode="constant", cval=np.inf)
    return float((z[valid] > ratio * nearest[valid]).mean())


def pattern_summary(sparse: np.ndarray, *, crop: tuple[int, int] = KITTI_CROP, bands: int = ROW_BANDS) -> dict[str, Any]:
    """Statistics of one sparse depth map (see the module docstring)."""
    sparse = np.asarray(sparse, dtype=np.float32)
    if sparse.ndim != 2 or sparse.size == 0:
        raise GeometryError(f"sparse depth must be a non-empty 2-D map, got shape {sparse.shape}")
    valid = sparse > 0
    per_row = valid.sum(axis=1)
    rows = np.nonzero(per_row)[0]
    edges = np.linspace(0, sparse.shape[0], bands + 1).round().astype(int)
    depths = sparse[valid]
    return {
        "points": int(valid.sum()),
        "density": float(valid.mean()),
        "density_kitti_crop": float((bottom_centre_crop(sparse, crop) > 0).mean()),
        "first_row": int(rows[0]) if rows.size else -1,
        "rows_covered": int(rows.size),
        "row_histogram": [int(per_row[a:b].sum()) for a, b in zip(edges[:-1], edges[1:])],
        "see_through": see_through_share(sparse),
        "depth_quantiles_m": [round(float(q), 3) for q in np.quantile(depths, QUANTILES)] if depths.size else [],
    }


def simulate_on_photo(teacher_output: np.ndarray, K: np.ndarray, profile: SensorProfile, *, seeds: Sequence[int],
                      teacher_kind: str = "disparity", policy: DepthPolicy = DepthPolicy(),
                      mesh_options: MeshOptions | None = None, backend: str = "fast",
                      see_through: bool = False, rgb: np.ndarray | None = None,
                      alignment: dict[str, float] | None = None) -> list[np.ndarray]:
    """One simulated sparse map per seed, as a dataset build makes it at this resolution; `rgb` (the photo)
    lets the depth policy refine the sky (tasks.depth_policy). `alignment` ({"scale", "shift"} from
    ``fit_disparity_alignment``, for a disparity teacher) replaces the seeded scale draw; the seeds then
    vary only the sensor (mount jitter, phase, drops, noise)."""
    if not seeds:
        raise GeometryError("simulate_on_photo needs at least one seed")
    options = mesh_options or MeshOptions(max_depth_m=policy.max_depth_m)
    out = []
    for seed in seeds:
        affine = None if alignment is None else (alignment["scale"], alignment["shift"])
        depth, _ = disparity_to_depth(teacher_output, kind=teacher_kind, seed=int(seed), policy=policy, rgb=rgb,
                                      affine=affine)
        scan = simulate_lidar(depth, K, profile, seed=int(seed), backend=backend, mesh_options=options,
                              see_through=see_through)
        out.append(scan.sparse)
    return out


def _rel(sim: float, real: float) -> float | None:
    if real == 0:
        return 0.0 if sim == 0 else None  # undefined against a zero reference (e.g. first row 0)
    return (sim - real) / abs(real)


def compare(real: np.ndarray, simulated: Sequence[np.ndarray], *, tolerance: float = 0.10,
            crop: tuple[int, int] = KITTI_CROP, real_is_proxy: bool = False) -> dict[str, Any]:
    """Real vs simulated pattern: per-statistic real value, seed mean and std, relative error, pass flag;
    row histograms; depth quantiles; Wasserstein-1 distance of the depth distributions (metres).

    real_is_proxy: the "real" map is a stand-in (e.g. accumulated ground truth), so its density is not a
    scan's density; only first_row and rows_covered are judged then."""
    if not simulated:
        raise GeometryError("compare needs at least one simulated map")
    if any(s.shape != real.shape for s in simulated):
        raise GeometryError(f"simulated maps must match the real map's shape {real.shape}")
    r = pattern_summary(real, crop=crop)
    sims = [pattern_summary(s, crop=crop) for s in simulated]
    judged = ("first_row", "rows_covered") if real_is_proxy else HEADLINE
    stats: dict[str, Any] = {}
    for key in ("points",) + HEADLINE + ("see_through",):
        values = np.array([s[key] for s in sims], dtype=np.float64)
        mean = float(values.mean())
        rel = _rel(mean, float(r[key]))
        stats[key] = {"real": r[key], "sim_mean": round(mean, 6), "sim_std": round(float(values.std()), 6),
                      "rel_error": None if rel is None else round(rel, 4)}
        if key in judged:
            stats[key]["within_tolerance"] = rel is not None and abs(rel) <= tolerance
    real_depth = real[real > 0].astype(np.float64)
    sim_depth = np.concatenate([s[s > 0] for s in simulated]).astype(np.float64)
    w1 = float(wasserstein_distance(real_depth, sim_depth)) if real_depth.size and sim_depth.size else None
    hist_sim = np.mean([s["row_histogram"] for s in sims], axis=0)
    return {
        "image_size": [int(real.shape[0]), int(real.shape[1])],
        "seeds": len(simulated),
        "tolerance": tolerance,
        "real_is_proxy": bool(real_is_proxy),
        "stats": stats,
        "row_histogram": {"bands": ROW_BANDS, "real": r["row_histogram"], "sim_mean": hist_sim.round(1).tolist()},
        "depth_quantiles_m": {"q": list(QUANTILES), "real": r["depth_quantiles_m"],
                              "sim": [round(float(q), 3) for q in np.quantile(sim_depth, QUANTILES)] if sim_depth.size else []},
        "wasserstein_m": None if w1 is None else round(w1, 4),
        "passed": all(v.get("within_tolerance", True) for v in stats.values()),
    }


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's headline statistics as rows (for a printed table or a Prefect table artifact)."""
    rows = []
    for key, v in report["stats"].items():
        rows.append({"statistic": key, "real": v["real"], "simulated (seed mean)": v["sim_mean"],
                     "std": v["sim_std"], "rel. error": v["rel_error"],
                     "within ±{:.0%}".format(report["tolerance"]): v.get("within_tolerance", "")})
    rows.append({"statistic": "wasserstein_m", "real": "", "simulated (seed mean)": report["wasserstein_m"],
                 "std": "", "rel. error": "", "within ±{:.0%}".format(report["tolerance"]): ""})
    return rows


def side_by_side(rgb: np.ndarray, real: np.ndarray, simulated: np.ndarray, *, labels: tuple[str, str] = ("real", "simulated"),
                 radius: int = 2) -> np.ndarray:
    """uint8 (H, 2W + gap, 3): real | simulated returns over the darkened photo, coloured by depth on one
    shared scale (near = bright), each panel labelled."""
    from PIL import Image, ImageDraw

    from tasks.images import colorize

    both = np.concatenate([real[real > 0], simulated[simulated > 0]])
    lo, hi = (float(1.0 / np.quantile(both, 0.98)), float(1.0 / np.quantile(both, 0.02))) if both.size else (0.0, 1.0)

    def panel(sparse: np.ndarray, label: str) -> np.ndarray:
        out = (rgb.astype(np.float32) * 0.4).astype(np.uint8)
        ys, xs = np.nonzero(sparse > 0)
        if ys.size:
            colors = colorize((1.0 / sparse[ys, xs])[None, :], lo=lo, hi=hi)[0]
            h, w = sparse.shape
            for dy in range(-radius + 1, radius):
                for dx in range(-radius + 1, radius):
                    out[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] = colors
        im = Image.fromarray(out)
        draw = ImageDraw.Draw(im)
        size = max(12, rgb.shape[0] // 25)
        try:
            from PIL import ImageFont
            font = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # older Pillow: fixed-size bitmap font
            font = None
        draw.text((10, 8), label, fill=(255, 255, 255), font=font)
        return np.asarray(im)

    gap = np.full((rgb.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([panel(real, labels[0]), gap, panel(simulated, labels[1])], axis=1)
