"""The "fast" backend: march rays through the depth map's own pixel grid instead of building a BVH.

Why it is exact and fast: a single-view depth mesh is a height field over the image grid. Every triangle
of cell (i, j) projects (through the same K) inside the image square spanned by that cell's four pixel
centres. A ray segment with z > 0 projects to a straight 2-D segment, traversed monotonically in t, so
visiting the cells it crosses in order (2-D DDA) and testing only their two triangles finds the FIRST
hit, with the same Moller-Trumbore test in float64 that a BVH caster would run - no acceleration
structure to build. The 3-D segment is clipped to the mesh's depth range [zmin, zmax] before
projection, and along the projected segment 1/z is affine in the 2-D parameter, so each 8x8-cell tile
whose depth interval the ray cannot reach is skipped in O(1) (a one-level "Hi-Z" min/max pyramid); inside a
tile, a cell whose four vertex depths the ray's depth over that cell cannot reach is skipped before its two
triangle tests (13.4 -> 11.1 ms per HDL-64E scan of a 352x1216 map; the same hits, bit for bit).

Numba: the per-ray loop is branchy (DDA + early exit) and does not vectorise in numpy; compiled, one
core casts a full HDL-64E image sector (~30 k rays) over a 1216x352 grid in a few milliseconds.
"""
from __future__ import annotations

import numba
import numpy as np

from tasks.mesh import SKIP_TILE as TILE
from tasks.mesh import DepthGrid

_EPS_BARY = 1e-9    # barycentric slack: a ray through a shared edge hits whichever cell DDA visits first
_T_MAX = 1.0e5      # metres; bounds rays parallel to the image plane


@numba.njit(cache=True, nogil=True)
def _tile_ranges(d: np.ndarray, ok: np.ndarray, tile: int):
    hc, wc = ok.shape[1], ok.shape[2]
    th = (hc + tile - 1) // tile
    tw = (wc + tile - 1) // tile
    tmin = np.full((th, tw), np.inf)
    tmax = np.full((th, tw), -np.inf)
    for i in range(hc):
        for j in range(wc):
            lo = np.inf
            hi = -np.inf
            if ok[0, i, j]:
                lo = min(lo, min(d[i, j], min(d[i, j + 1], d[i + 1, j])))
                hi = max(hi, max(d[i, j], max(d[i, j + 1], d[i + 1, j])))
            if ok[1, i, j]:
                lo = min(lo, min(d[i + 1, j + 1], min(d[i, j + 1], d[i + 1, j])))
                hi = max(hi, max(d[i + 1, j + 1], max(d[i, j + 1], d[i + 1, j])))
            if lo <= hi:
                ti = i // tile
                tj = j // tile
                tmin[ti, tj] = min(tmin[ti, tj], lo)
                tmax[ti, tj] = max(tmax[ti, tj], hi)
    return tmin, tmax


@numba.njit(inline="always")
def _vertex(d, kinv, stride, i, j):
    z = d[i, j]
    u = j * stride
    v = i * stride
    return (
        z * (kinv[0, 0] * u + kinv[0, 1] * v + kinv[0, 2]),
        z * (kinv[1, 1] * v + kinv[1, 2]),
        z,
    )


@numba.njit(inline="always")
def _hit_triangle(ox, oy, oz, dx, dy, dz, p0, p1, p2):
    # Moller-Trumbore, float64, two-sided. Returns (t, nx, ny, nz); t = inf when missed.
    e1x = p1[0] - p0[0]
    e1y = p1[1] - p0[1]
    e1z = p1[2] - p0[2]
    e2x = p2[0] - p0[0]
    e2y = p2[1] - p0[1]
    e2z = p2[2] - p0[2]
    px = dy * e2z - dz * e2y
    py = dz * e2x - dx * e2z
    pz = dx * e2y - dy * e2x
    det = e1x * px + e1y * py + e1z * pz
    if det == 0.0:
        return np.inf, 0.0, 0.0, 0.0
    inv = 1.0 / det
    sx = ox - p0[0]
    sy = oy - p0[1]
    sz = oz - p0[2]
    u = (sx * px + sy * py + sz * pz) * inv
    if u < -_EPS_BARY or u > 1.0 + _EPS_BARY:
        return np.inf, 0.0, 0.0, 0.0
    qx = sy * e1z - sz * e1y
    qy = sz * e1x - sx * e1z
    qz = sx * e1y - sy * e1x
    v = (dx * qx + dy * qy + dz * qz) * inv
    if v < -_EPS_BARY or u + v > 1.0 + _EPS_BARY:
        return np.inf, 0.0, 0.0, 0.0
    t = (e2x * qx + e2y * qy + e2z * qz) * inv
    if t <= 1e-9:
        return np.inf, 0.0, 0.0, 0.0
    nx = e1y * e2z - e1z * e2y
    ny = e1z * e2x - e1x * e2z
    nz = e1x * e2y - e1y * e2x
    return t, nx, ny, nz


# Relative slack of the per-cell depth test: far above the rounding of the affine inverse depth and of the
# barycentric slack above, far below the depth steps between neighbouring cells.
_CELL_SLACK = 1e-6


@numba.njit(inline="always")
def _cell_reachable(d, i, j, s_in, s_out, iz0, iz1):
    # The ray's inverse depth is affine in the 2-D parameter s (perspective), so over the cell's stretch
    # [s_in, s_out] its depth lies between the values at the ends. A triangle's points have depths between
    # its vertices' (a convex combination), so a ray entirely in front of or behind all four vertex depths
    # of the cell hits neither triangle: the Moller-Trumbore tests are skipped, the result is unchanged.
    ia = (1.0 - s_in) * iz0 + s_in * iz1
    ib = (1.0 - s_out) * iz0 + s_out * iz1
    lo_i = min(ia, ib)
    if lo_i <= 0.0:
        return True
    z_near = 1.0 / max(ia, ib)
    z_far = 1.0 / lo_i
    v00 = d[i, j]
    v01 = d[i, j + 1]
    v10 = d[i + 1, j]
    v11 = d[i + 1, j + 1]
    vmin = min(min(v00, v01), min(v10, v11))
    vmax = max(max(v00, v01), max(v10, v11))
    return not (z_far < vmin * (1.0 - _CELL_SLACK) or z_near > vmax * (1.0 + _CELL_SLACK))


@numba.njit(inline="always")
def _enter_index(g, step, lo, hi):
    # cell index containing coordinate g when moving with sign `step` (a boundary belongs to the cell ahead)
    c = np.floor(g) if step >= 0 else np.ceil(g) - 1.0
    return int(min(max(c, lo), hi))


@numba.njit(cache=True, nogil=True)
def _cast_grid(d, ok, K, kinv, stride, tmin, tmax, tile, origins, dirs, out_t, out_n, cell_test=True):
    hg, wg = d.shape
    hc, wc = hg - 1, wg - 1
    zlo = np.inf
    zhi = -np.inf
    for ti in range(tmin.shape[0]):
        for tj in range(tmin.shape[1]):
            if tmin[ti, tj] <= tmax[ti, tj]:
                zlo = min(zlo, tmin[ti, tj])
                zhi = max(zhi, tmax[ti, tj])
    if not zlo <= zhi:
        return
    # widen by a relative 1e-9 so a fronto-parallel plane (zlo == zhi) still gives a non-empty t-interval
    zlo *= 1.0 - 1e-9
    zhi *= 1.0 + 1e-9
    gxmax = float(wc)
    gymax = float(hc)
    for r in range(origins.shape[0]):
        ox, oy, oz = origins[r, 0], origins[r, 1], origins[r, 2]
        dx, dy, dz = dirs[r, 0], dirs[r, 1], dirs[r, 2]
        # 1) t-interval where the ray's depth lies in the mesh's depth range
        if dz > 1e-12:
            t0 = (zlo - oz) / dz
            t1 = (zhi - oz) / dz
        elif dz < -1e-12:
            t0 = (zhi - oz) / dz
            t1 = (zlo - oz) / dz
        elif zlo <= oz <= zhi:
            t0 = 0.0
            t1 = _T_MAX
        else:
            continue
        t0 = max(t0, 0.0)
        t1 = min(t1, _T_MAX)
        if not t1 > t0:
            continue
        # 2) project the end points to grid coordinates (pixel / stride)
        ax, ay, az = ox + t0 * dx, oy + t0 * dy, oz + t0 * dz
        bx, by, bz = ox + t1 * dx, oy + t1 * dy, oz + t1 * dz
        if az <= 0.0 or bz <= 0.0:
            continue
        gx0 = (K[0, 0] * ax + K[0, 1] * ay + K[0, 2] * az) / az / stride
        gy0 = (K[1, 1] * ay + K[1, 2] * az) / az / stride
        gx1 = (K[0, 0] * bx + K[0, 1] * by + K[0, 2] * bz) / bz / stride
        gy1 = (K[1, 1] * by + K[1, 2] * bz) / bz / stride
        iz0 = 1.0 / az
        iz1 = 1.0 / bz
        ddx = gx1 - gx0
        ddy = gy1 - gy0
        # 3) Liang-Barsky clip of the 2-D segment to the grid [0, wc] x [0, hc]
        sa = 0.0
        sb = 1.0
        inside = True
        for k in range(4):
            if k == 0:
                p, q = -ddx, gx0
            elif k == 1:
                p, q = ddx, gxmax - gx0
            elif k == 2:
                p, q = -ddy, gy0
            else:
                p, q = ddy, gymax - gy0
            if p == 0.0:
                if q < 0.0:
                    inside = False
            else:
                s = q / p
                if p < 0.0:
                    sa = max(sa, s)
                else:
                    sb = min(sb, s)
        if not inside or sa > sb:
            continue
        # 4) DDA over cells with tile skipping
        stx = 1 if ddx > 0 else (-1 if ddx < 0 else 0)
        sty = 1 if ddy > 0 else (-1 if ddy < 0 else 0)
        cj = _enter_index(gx0 + sa * ddx, stx, 0, wc - 1)
        ci = _enter_index(gy0 + sa * ddy, sty, 0, hc - 1)
        tmx = ((cj + (1 if stx > 0 else 0)) - gx0) / ddx if stx != 0 else np.inf
        tmy = ((ci + (1 if sty > 0 else 0)) - gy0) / ddy if sty != 0 else np.inf
        dtx = abs(1.0 / ddx) if stx != 0 else np.inf
        dty = abs(1.0 / ddy) if sty != 0 else np.inf
        s_cur = sa
        cur_ti = -1
        cur_tj = -1
        best = np.inf
        bnx = 0.0
        bny = 0.0
        bnz = 0.0
        for _guard in range(4 * (hc + wc) + 16):
            if cj < 0 or cj >= wc or ci < 0 or ci >= hc or s_cur > sb:
                break
            ti = ci // tile
            tj = cj // tile
            if ti != cur_ti or tj != cur_tj:
                cur_ti = ti
                cur_tj = tj
                # s where the segment leaves this tile
                if stx > 0:
                    sx = (min((tj + 1) * tile, wc) - gx0) / ddx
                elif stx < 0:
                    sx = (tj * tile - gx0) / ddx
                else:
                    sx = np.inf
                if sty > 0:
                    sy = (min((ti + 1) * tile, hc) - gy0) / ddy
                elif sty < 0:
                    sy = (ti * tile - gy0) / ddy
                else:
                    sy = np.inf
                s_exit = min(min(sx, sy), sb)
                ia = (1.0 - s_cur) * iz0 + s_cur * iz1
                ib = (1.0 - s_exit) * iz0 + s_exit * iz1
                z_near = 1.0 / max(ia, ib)
                z_far = 1.0 / min(ia, ib) if min(ia, ib) > 0.0 else np.inf
                if (not tmin[ti, tj] <= tmax[ti, tj]) or z_far < tmin[ti, tj] * (1.0 - 1e-9) or \
                        z_near > tmax[ti, tj] * (1.0 + 1e-9):
                    # skip the whole tile: re-enter the DDA in the next tile
                    if s_exit >= sb:
                        break
                    s_cur = s_exit
                    if sx <= sy:
                        cj = (tj + 1) * tile if stx > 0 else tj * tile - 1
                        tmx = ((cj + (1 if stx > 0 else 0)) - gx0) / ddx
                    else:
                        cj = _enter_index(gx0 + s_exit * ddx, stx, tj * tile, min((tj + 1) * tile, wc) - 1)
                        tmx = ((cj + (1 if stx > 0 else 0)) - gx0) / ddx if stx != 0 else np.inf
                    if sy <= sx:
                        ci = (ti + 1) * tile if sty > 0 else ti * tile - 1
                        tmy = ((ci + (1 if sty > 0 else 0)) - gy0) / ddy
                    else:
                        ci = _enter_index(gy0 + s_exit * ddy, sty, ti * tile, min((ti + 1) * tile, hc) - 1)
                        tmy = ((ci + (1 if sty > 0 else 0)) - gy0) / ddy if sty != 0 else np.inf
                    continue
            # test the two triangles of cell (ci, cj), unless the ray's depth over this cell cannot reach the
            # depths of the cell's vertices (every point of its triangles lies between them)
            if (ok[0, ci, cj] or ok[1, ci, cj]) and (not cell_test or _cell_reachable(
                    d, ci, cj, s_cur, min(min(tmx, tmy), sb), iz0, iz1)):
                pb = _vertex(d, kinv, stride, ci, cj + 1)
                pc = _vertex(d, kinv, stride, ci + 1, cj)
                if ok[0, ci, cj]:
                    pa = _vertex(d, kinv, stride, ci, cj)
                    t, nx, ny, nz = _hit_triangle(ox, oy, oz, dx, dy, dz, pa, pc, pb)
                    if t < best:
                        best, bnx, bny, bnz = t, nx, ny, nz
                if ok[1, ci, cj]:
                    pe = _vertex(d, kinv, stride, ci + 1, cj + 1)
                    t, nx, ny, nz = _hit_triangle(ox, oy, oz, dx, dy, dz, pb, pc, pe)
                    if t < best:
                        best, bnx, bny, bnz = t, nx, ny, nz
                if best < np.inf:
                    break
            # step to the next cell
            if tmx < tmy:
                s_cur = tmx
                cj += stx
                tmx += dtx
            else:
                s_cur = tmy
                ci += sty
                tmy += dty
        if best < out_t[r]:
            norm = np.sqrt(bnx * bnx + bny * bny + bnz * bnz)
            out_t[r] = best
            if norm > 0.0:
                out_n[r, 0] = bnx / norm
                out_n[r, 1] = bny / norm
                out_n[r, 2] = bnz / norm


def cast_grid(grid: DepthGrid, origins: np.ndarray, dirs: np.ndarray,
              out_t: np.ndarray | None = None, out_n: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First-hit distance along unit `dirs` (inf = miss) and unit face normals, updating out_t/out_n in place
    where this grid's hit is nearer (so several layers can be cast into the same buffers)."""
    n = len(origins)
    if out_t is None:
        out_t = np.full(n, np.inf)
    if out_n is None:
        out_n = np.zeros((n, 3))
    if grid.n_faces == 0 or n == 0:
        return out_t, out_n
    if "tiles" not in grid._cache:    # grids built by hand; depth_to_grid fills this in its single pass
        grid._cache["tiles"] = _tile_ranges(grid.depth, grid.tri_ok, TILE)
    tmin, tmax = grid._cache["tiles"]
    _cast_grid(grid.depth, grid.tri_ok, grid.K, np.linalg.inv(grid.K), float(grid.stride), tmin, tmax, TILE,
               origins, dirs, out_t, out_n)
    return out_t, out_n
