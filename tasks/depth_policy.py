"""Teacher output -> the metric depth that places the mesh (DESIGN.md §4 "Disparity -> depth").

A relative-disparity teacher (Depth Anything V2 convention) predicts ``disp = s / depth + t`` with unknown
scale ``s > 0`` and shift ``t``; larger = nearer, and sky / "infinitely far" comes out at (about) zero.
Stage 1 only needs a *plausible* metric scene, so the policy picks one per image from a seeded range:

1. Robust anchors over the finite pixels: ``d_near`` = the ``near_quantile`` of disparity (the nearest
   surfaces, ignoring a few outliers).
2. Sky: pixels with ``disp <= sky_ratio * d_near`` are "no surface" (depth 0). With zero-shifted
   disparity this means "more than 1/sky_ratio times farther than the near surfaces" (100x by default:
   beyond 200-500 m for the default near range, past any LiDAR). This is the one place the policy
   relies on the DA convention that zero disparity = infinity; a teacher with a large positive shift
   simply yields no sky, and its far pixels end at the ``max_depth_m`` clamp.
3. ``d_far`` = the ``far_quantile`` of the non-sky disparity (the far end of the real scene).
4. Sample ``near_m ~ U(near_m range)`` and ``far_m ~ U(far_m range)`` from ``default_rng(seed)`` and fit
   the affine map in inverse depth ``1/depth = scale * disp + shift`` through (d_near -> 1/near_m) and
   (d_far -> 1/far_m). An affine map of an affine disparity is again affine in 1/depth, so the result is
   the true scene up to the inverse-depth affinity the two anchors fix: quantile anchors make it
   invariant to the teacher's own scale and shift.
5. Pixels that map to ``1/depth <= 0`` (beyond infinity) are sky too. Pixels beyond ``max_depth_m`` are
   "no surface" as well (``beyond_max="none"``, the default): nothing that far returns a LiDAR pulse, and a
   clamp would build a fake wall at ``max_depth_m`` that does (``beyond_max="clamp"`` keeps the old wall).
   Non-finite teacher pixels are 0.

Sky with the photo (``rgb`` given): teachers often give bright clouds and haze a small non-zero disparity,
just above the sky rule, so the simulation scans a surface in the sky. With the photo, the sky is grown
from the pixels of rule 2 (and the top image row) into neighbouring pixels that are far
(``disp <= sky_soft_ratio * d_near``) *and* smooth in the photo (local luminance standard deviation in a 7x7
window <= ``sky_max_texture``). Trees, poles and facades are textured or nearer, so they stay surfaces;
a smooth far region that does not touch the sky (a plain wall at the end of a street) stays too.

A constant (or near-constant) disparity has no depth structure: the image becomes a fronto-parallel
wall at ``far_m``. kind "metric" passes depth through (clamped, invalid -> 0); no sampling.
The teacher output itself is stored untouched beside the depth this returns.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np
from scipy import ndimage

from tasks.errors import GeometryError
from tasks.float16 import F32_OF_F16_BITS, float16_to_float32

DEPTH_KINDS = ("disparity", "metric")


@dataclass(frozen=True)
class DepthPolicy:
    """How a relative disparity becomes metric depth; see the module docstring for the rule.

    near_m / far_m: ranges (metres) the near / far anchors are drawn from, per image, uniformly.
        Defaults fit street scenes seen from a car (DMD3C's target): nearest surfaces 2-5 m, far end of
        the scene 40-80 m, inside the HDL-64E's ~120 m range.
    max_depth_m: clamp; nothing is placed beyond it (default = the HDL-64E range).
    near_quantile / far_quantile: disparity quantiles used as the near / far anchors (robust to a few
        outlier pixels; far is computed over non-sky pixels).
    sky_ratio: disparity at or below ``sky_ratio * d_near`` is sky (no surface, depth 0).
    sky_soft_ratio / sky_max_texture: with the photo, smooth pixels up to ``sky_soft_ratio * d_near``
        connected to the sky are sky too (see the module docstring).
    beyond_max: "none" (pixels beyond max_depth_m have no surface) or "clamp" (they sit at max_depth_m).
    """

    near_m: tuple[float, float] = (2.0, 5.0)
    far_m: tuple[float, float] = (40.0, 80.0)
    max_depth_m: float = 120.0
    near_quantile: float = 0.98
    far_quantile: float = 0.02
    sky_ratio: float = 0.01
    sky_soft_ratio: float = 0.05
    sky_max_texture: float = 0.02
    beyond_max: str = "none"

    def __post_init__(self) -> None:
        (n0, n1), (f0, f1) = self.near_m, self.far_m
        if not (0 < n0 <= n1 < f0 <= f1 <= self.max_depth_m):
            raise GeometryError(
                f"depth policy needs 0 < near {self.near_m} < far {self.far_m} <= max_depth_m {self.max_depth_m}"
            )
        if not (0.0 <= self.far_quantile < self.near_quantile <= 1.0):
            raise GeometryError(
                f"depth policy quantiles must satisfy 0 <= far ({self.far_quantile}) < near ({self.near_quantile}) <= 1"
            )
        if not (0.0 <= self.sky_ratio <= self.sky_soft_ratio < 1.0):
            raise GeometryError(f"depth policy needs 0 <= sky_ratio ({self.sky_ratio}) <= sky_soft_ratio "
                                f"({self.sky_soft_ratio}) < 1")
        if self.beyond_max not in ("none", "clamp"):
            raise GeometryError(f"depth policy beyond_max must be 'none' or 'clamp', got {self.beyond_max!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _metric(depth: np.ndarray, policy: DepthPolicy) -> tuple[np.ndarray, dict]:
    valid = np.isfinite(depth) & (depth > 0)
    if policy.beyond_max == "none":
        valid &= depth <= policy.max_depth_m
    out = np.where(valid, np.minimum(depth, policy.max_depth_m), 0.0).astype(np.float32)
    vals = out[valid]
    near = float(np.quantile(vals, 1.0 - policy.near_quantile)) if vals.size else 0.0
    far = float(np.quantile(vals, 1.0 - policy.far_quantile)) if vals.size else 0.0
    info = {"scale": 1.0, "shift": 0.0, "near_m": near, "far_m": far,
            "sky_fraction": float(1.0 - valid.mean()) if depth.size else 0.0}
    return out, info


def disparity_to_depth(
    teacher_output: np.ndarray,
    *,
    kind: str = "disparity",
    seed: int,
    policy: DepthPolicy = DepthPolicy(),
    rgb: np.ndarray | None = None,
    affine: tuple[float, float] | None = None,
) -> tuple[np.ndarray, dict]:
    """Metric depth (float32 metres, 0 = no surface) from one raw teacher map (H, W).

    ``affine=(scale, shift)`` replaces the seeded anchors by a known map ``1/depth = scale * disp + shift``
    (e.g. fitted to a real scan of the same photo, tasks.fidelity); sky and ``max_depth_m`` rules still apply.

    Returns ``(depth, info)`` with info = {"scale", "shift", "near_m", "far_m", "sky_fraction"}: for
    disparity, ``1/depth = scale * disp + shift`` on the surface pixels; for metric, the identity map and
    the measured near/far quantile depths. ``rgb`` (uint8 (H, W, 3), the photo the teacher saw) refines the
    sky of a disparity map (module docstring); without it the disparity rule alone decides.
    """
    disp = np.asarray(teacher_output)
    if disp.ndim != 2 or disp.size == 0:
        raise GeometryError(f"teacher output must be a non-empty (H, W) map, got shape {disp.shape}")
    if kind not in DEPTH_KINDS:
        raise GeometryError(f"unknown teacher output kind {kind!r}; expected one of {DEPTH_KINDS}")
    if kind == "metric":
        return _metric(disp.astype(np.float64), policy)
    if disp.dtype == np.float16 and rgb is None:
        return _disparity_to_depth_f16(disp, seed=seed, policy=policy, affine=affine)
    # float16/float32 maps stay float32 (every value is exact there, and partitions and masks of the smaller
    # array are faster); each comparison and the affine map below still run in float64 (np.float64 scalars
    # promote), so the result is the same as computing on a float64 copy.
    if disp.dtype == np.float16:
        disp = float16_to_float32(disp)
    else:
        disp = disp.astype(np.float32 if disp.dtype == np.float32 else np.float64, copy=False)

    # The seeded draw happens first and unconditionally, so the same seed always means the same range.
    rng = np.random.default_rng(seed)
    near_m = float(rng.uniform(*policy.near_m))
    far_m = float(rng.uniform(*policy.far_m))

    finite = np.isfinite(disp)
    depth = np.zeros(disp.shape, dtype=np.float32)
    info = {"scale": 0.0, "shift": 0.0, "near_m": near_m, "far_m": far_m, "sky_fraction": 1.0}
    if not finite.any():
        return depth, info
    d_near = quantile_linear(disp[finite], policy.near_quantile)  # the masked copy is ours to reorder
    if d_near <= 0.0:  # nothing nearer than "infinity": all sky
        return depth, info
    surface = finite & (disp > np.float64(policy.sky_ratio * d_near))
    if rgb is not None:
        surface &= ~_smooth_far_sky(disp, ~surface, rgb, np.float64(policy.sky_soft_ratio * d_near),
                                    policy.sky_max_texture)
    if not surface.any():
        return depth, info
    d_far = quantile_linear(disp[surface], policy.far_quantile)

    scale, shift = _inverse_depth_map(d_near, d_far, near_m, far_m, affine)
    n_surface = _affine_inverse_depth(disp, surface, float(scale), float(shift), float(policy.max_depth_m),
                                      policy.beyond_max == "none", depth)
    info.update(scale=float(scale), shift=float(shift), sky_fraction=float(1.0 - n_surface / depth.size))
    return depth, info


def _inverse_depth_map(d_near: float, d_far: float, near_m: float, far_m: float,
                       affine: tuple[float, float] | None) -> tuple[float, float]:
    """(scale, shift) of ``1/depth = scale * disp + shift``: the given ``affine``, or the map through the two
    anchors (d_near -> 1/near_m, d_far -> 1/far_m)."""
    if affine is not None:
        return float(affine[0]), float(affine[1])
    if d_near - d_far <= 1e-6 * d_near:  # no depth structure to preserve: a wall at the far anchor
        return 0.0, 1.0 / far_m
    scale = (1.0 / near_m - 1.0 / far_m) / (d_near - d_far)
    return scale, 1.0 / far_m - scale * d_far


def _disparity_to_depth_f16(disp: np.ndarray, *, seed: int, policy: DepthPolicy,
                            affine: tuple[float, float] | None) -> tuple[np.ndarray, dict]:
    """The disparity rule for a float16 map (the build's case: the stored teacher output) without sorting.

    A float16 map has at most 65536 distinct values, so one counting pass over the bit patterns gives every
    order statistic exactly: the anchors are the same two order statistics and the same interpolation as
    :func:`quantile_linear` on ``disp[finite]`` and ``disp[surface]`` (the surface is a suffix of the sorted
    values), and the affine pass reads the values through numpy's float16 -> float32 table, so the depth and
    the info are bit for bit those of the float32 path (tests/test_sim_fast_paths.py).
    """
    bits = np.ascontiguousarray(disp).view(np.uint16)
    rng = np.random.default_rng(seed)  # drawn first and unconditionally, as in disparity_to_depth
    near_m = float(rng.uniform(*policy.near_m))
    far_m = float(rng.uniform(*policy.far_m))
    depth = np.zeros(disp.shape, dtype=np.float32)
    info = {"scale": 0.0, "shift": 0.0, "near_m": near_m, "far_m": far_m, "sky_fraction": 1.0}
    counts = _f16_order_counts(bits.reshape(-1))
    values = _F32_BY_ORDER_KEY
    n_finite = int(counts.sum())
    if n_finite == 0:
        return depth, info
    d_near = _quantile_from_counts(counts, 0, n_finite, policy.near_quantile, values)
    if d_near <= 0.0:
        return depth, info
    threshold = np.float64(policy.sky_ratio * d_near)
    # First order key whose value is above the sky threshold: the surface is every finite value from there on.
    first = int(np.searchsorted(values.astype(np.float64), threshold, side="right"))
    n_surface_values = int(counts[first:].sum())
    if n_surface_values == 0:
        return depth, info
    d_far = _quantile_from_counts(counts, first, n_surface_values, policy.far_quantile, values)
    scale, shift = _inverse_depth_map(d_near, d_far, near_m, far_m, affine)
    n_surface = _affine_inverse_depth_f16(bits, F32_OF_F16_BITS, float(threshold), float(scale), float(shift),
                                          float(policy.max_depth_m), policy.beyond_max == "none", depth)
    info.update(scale=float(scale), shift=float(shift), sky_fraction=float(1.0 - n_surface / depth.size))
    return depth, info


def _values_by_order_key() -> np.ndarray:
    # Order key of a float16 bit pattern: sorting keys sorts values (negatives reversed below the positives).
    # values[key] = the float32 value of the pattern with that key; NaN/inf patterns are never counted, and get
    # -inf / +inf (below / above every finite key) so the table stays sorted for searchsorted.
    bits = np.arange(1 << 16, dtype=np.uint32)
    keys = np.where(bits & 0x8000, 0xFFFF - bits, bits | 0x8000)
    by_key = np.empty(1 << 16, np.float32)
    by_key[keys] = F32_OF_F16_BITS
    nonfinite = ~np.isfinite(by_key)
    by_key[nonfinite] = np.where(np.arange(1 << 16) < 0x8000, -np.inf, np.inf)[nonfinite]
    return by_key


_F32_BY_ORDER_KEY = _values_by_order_key()


@numba.njit(cache=True, nogil=True)
def _f16_order_counts(bits: np.ndarray) -> np.ndarray:
    counts = np.zeros(1 << 16, np.int64)
    for i in range(bits.size):
        b = np.int64(bits[i])
        if (b & 0x7C00) != 0x7C00:  # finite (exponent not all ones)
            counts[(0xFFFF - b) if b & 0x8000 else (b | 0x8000)] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _kth_key(counts: np.ndarray, start: int, k: int) -> int:
    # Order key of the k-th smallest (0-based) of the values counted from key ``start`` on.
    seen = 0
    for key in range(start, counts.size):
        seen += counts[key]
        if seen > k:
            return key
    return counts.size - 1


def _quantile_from_counts(counts: np.ndarray, start: int, n: int, q: float, values: np.ndarray) -> float:
    """quantile_linear of the n values counted from order key ``start`` on (same order statistics, same lerp)."""
    virtual = (n - 1) * float(q)
    k = int(np.floor(virtual))
    gamma = virtual - k
    a = float(values[_kth_key(counts, start, k)])
    b = float(values[_kth_key(counts, start, k + 1)]) if k + 1 < n else a
    return _numpy_lerp(a, b, gamma)


@numba.njit(cache=True, nogil=True)
def _affine_inverse_depth_f16(bits, table, threshold, scale, shift, max_depth, drop_beyond, out):
    # _affine_inverse_depth with the surface test inline: finite and value > threshold (in float64).
    n = 0
    for i in range(bits.shape[0]):
        for j in range(bits.shape[1]):
            b = bits[i, j]
            if (b & 0x7C00) != 0x7C00:
                v = table[b]
                if v > threshold:
                    inv = scale * v + shift
                    if inv > 0.0 and not (drop_beyond and inv < 1.0 / max_depth):
                        out[i, j] = min(1.0 / inv, max_depth)
                        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _affine_inverse_depth(disp, surface, scale, shift, max_depth, drop_beyond, out):
    # One pass for what numpy did in five full-size temporaries: inv = scale * disp + shift on the surface,
    # "beyond infinity" (inv <= 0) and (drop_beyond) beyond max_depth are no surface, else min(1/inv, max),
    # computed in float64 and stored as float32 (the same IEEE operations, so the same values as before).
    n = 0
    for i in range(disp.shape[0]):
        for j in range(disp.shape[1]):
            if surface[i, j]:
                inv = scale * disp[i, j] + shift
                if inv > 0.0 and not (drop_beyond and inv < 1.0 / max_depth):
                    out[i, j] = min(1.0 / inv, max_depth)
                    n += 1
    return n


def quantile_linear(values: np.ndarray, q: float) -> float:
    """``np.quantile(values.astype(np.float64), q)`` (method "linear") of a 1-D array of finite numbers, bit
    for bit, several times faster at image sizes: one in-place partition in the array's own dtype finds the
    two order statistics numpy interpolates (float32 values are exact in float64), and the interpolation
    repeats numpy's (its ``(n - 1) * q`` index and its two-sided lerp). ``values`` is reordered in place."""
    n = values.size
    if n == 0:
        raise ValueError("quantile of an empty array")
    virtual = (n - 1) * float(q)
    k = int(np.floor(virtual))
    gamma = virtual - k
    values.partition(k)
    a = float(values[k])
    b = float(values[k + 1:].min()) if k + 1 < n else a
    return _numpy_lerp(a, b, gamma)


def _numpy_lerp(a: float, b: float, gamma: float) -> float:
    """numpy's quantile interpolation (its _lerp): a + (b - a) * t, replaced by b - (b - a) * (1 - t) where
    t >= 0.5."""
    diff = b - a
    return b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma


def _smooth_far_sky(disp: np.ndarray, sky: np.ndarray, rgb: np.ndarray, far_level: float, max_texture: float) -> np.ndarray:
    """Sky grown from `sky` (and the top row) through far (disp <= far_level), smooth photo pixels."""
    rgb = np.asarray(rgb)
    if rgb.shape[:2] != disp.shape or rgb.ndim != 3:
        raise GeometryError(f"rgb {rgb.shape} does not match the teacher output {disp.shape}")
    lum = rgb.astype(np.float32).mean(axis=2) / 255.0
    mean = ndimage.uniform_filter(lum, 7)
    texture = np.sqrt(np.maximum(ndimage.uniform_filter(lum * lum, 7) - mean * mean, 0.0))
    grow = sky | (np.isfinite(disp) & (disp <= far_level) & (texture <= max_texture))
    labels, _ = ndimage.label(grow)
    seeds = np.unique(np.concatenate([labels[sky], labels[0][grow[0]]]))
    return np.isin(labels, seeds[seeds > 0]) | sky
