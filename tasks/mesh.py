"""Depth map -> triangle mesh (single-view "2.5D" surface), camera frame (OpenCV: x right, y down, z forward).

A depth map seen from one camera is a height field over the image grid: vertex (i, j) is pixel centre
(u = j * stride, v = i * stride) back-projected to its z-depth. Each 2x2 block of vertices gives two
triangles sharing the top-right/bottom-left diagonal:

    a=(i,j) ---- b=(i,j+1)        triangle 0: (a, c, b)
      |        /    |             triangle 1: (b, c, e)
    c=(i+1,j) -- e=(i+1,j+1)      both wound so their normals face the camera.

A triangle is kept only when all three vertices are valid (min_depth_m <= z <= max_depth_m; 0 = sky /
invalid) and max(z) / min(z) <= ratio_threshold. The ratio rule cuts foreground/background
discontinuities without deleting a far, steeply receding road (an absolute depth-gradient threshold
would, since the road's depth step between rows grows with distance squared).

`DepthGrid` is the canonical form; `depth_to_mesh` turns it into a `trimesh.Trimesh` with exactly the
same triangles, so the grid-marching ray caster ("fast") and the BVH casters ("embree", "pyrender") see
the same surface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import trimesh

from tasks.errors import GeometryError


@dataclass(frozen=True)
class MeshOptions:
    """How a depth map becomes a mesh.

    max_depth_m: vertices farther than this are invalid (sky / far clutter the teacher cannot place).
    ratio_threshold: a triangle whose vertex depths satisfy max/min > ratio_threshold spans a depth
        discontinuity (object edge) and is cut. 1.2 keeps a road receding to 80 m at KITTI resolution
        (adjacent rows differ by < 10 % there) while cutting car/pole silhouettes.
    stride: use every stride-th pixel as a vertex (1 = full resolution).
    min_depth_m: vertices nearer than this are invalid (must be > 0 so the ratio test is defined).
    """

    max_depth_m: float = 120.0
    ratio_threshold: float = 1.2
    stride: int = 1
    min_depth_m: float = 0.1

    def validate(self) -> None:
        if not (np.isfinite(self.min_depth_m) and self.min_depth_m > 0):
            raise GeometryError(f"MeshOptions.min_depth_m must be > 0, got {self.min_depth_m}")
        if not (np.isfinite(self.max_depth_m) and self.max_depth_m > self.min_depth_m):
            raise GeometryError(
                f"MeshOptions.max_depth_m must be > min_depth_m ({self.min_depth_m}), got {self.max_depth_m}"
            )
        if not (np.isfinite(self.ratio_threshold) and self.ratio_threshold >= 1.0):
            raise GeometryError(f"MeshOptions.ratio_threshold must be >= 1, got {self.ratio_threshold}")
        if int(self.stride) != self.stride or self.stride < 1:
            raise GeometryError(f"MeshOptions.stride must be a positive integer, got {self.stride}")


@dataclass(frozen=True, eq=False)
class DepthGrid:
    """Vertex depths on a regular pixel grid plus which of its triangles survive.

    depth: (Hg, Wg) float64 z-depth of each vertex (0 where invalid).
    tri_ok: (2, Hg-1, Wg-1) bool, triangle 0 / 1 of each cell (see module docstring).
    K: (3, 3) float64 intrinsics of the image the grid was built from; stride: pixel step between vertices.
    image_size: (height, width) of that image.
    """

    depth: np.ndarray
    tri_ok: np.ndarray
    K: np.ndarray
    stride: int
    image_size: tuple[int, int]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_faces(self) -> int:
        if "n_faces" not in self._cache:
            self._cache["n_faces"] = int(np.count_nonzero(self.tri_ok))
        return self._cache["n_faces"]

    def vertices(self) -> np.ndarray:
        """(Hg*Wg, 3) float64 back-projected vertices, row-major over the grid (invalid ones at z=0)."""
        hg, wg = self.depth.shape
        v, u = np.mgrid[0:hg, 0:wg].astype(np.float64) * self.stride
        rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(self.K).T
        return (rays * self.depth[..., None]).reshape(-1, 3)

    def faces(self) -> np.ndarray:
        """(F, 3) int64 vertex indices of the surviving triangles, triangle 0 of every cell first."""
        wg = self.depth.shape[1]
        out = []
        for kind in (0, 1):
            i, j = np.nonzero(self.tri_ok[kind])
            a = i * wg + j
            b, c, e = a + 1, a + wg, a + wg + 1
            out.append(np.stack([a, c, b], axis=1) if kind == 0 else np.stack([b, c, e], axis=1))
        return np.concatenate(out).astype(np.int64)

    def to_mesh(self) -> trimesh.Trimesh:
        """The same triangles as a Trimesh, unreferenced vertices removed (process=False keeps order)."""
        faces = self.faces()
        verts = self.vertices()
        used = np.zeros(len(verts), dtype=bool)
        used[faces.ravel()] = True
        remap = np.cumsum(used) - 1
        return trimesh.Trimesh(vertices=verts[used], faces=remap[faces], process=False)


def validate_depth_and_K(depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (depth float64 2-D, K float64 3x3) or raise GeometryError saying what is wrong."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.shape[0] < 2 or depth.shape[1] < 2:
        raise GeometryError(f"depth must be a 2-D array of at least 2x2, got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.number):
        raise GeometryError(f"depth must be numeric, got dtype {depth.dtype}")
    depth = depth.astype(np.float64, copy=False)
    # Two reductions and no temporaries on the common (valid) path: NaN propagates through min/max, and
    # +-inf shows up in one of them. The element counts for the message are computed only on failure.
    lo, hi = depth.min(), depth.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise GeometryError(f"depth has {int((~np.isfinite(depth)).sum())} non-finite values (NaN/inf)")
    if lo < 0:
        raise GeometryError(f"depth has {int((depth < 0).sum())} negative values (use 0 for no surface)")
    return depth, validate_K(K)


def validate_K(K: np.ndarray) -> np.ndarray:
    """Return K as float64 3x3 or raise GeometryError saying what is wrong."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise GeometryError(f"K must be 3x3, got shape {K.shape}")
    if not np.isfinite(K).all():
        raise GeometryError("K has non-finite entries")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise GeometryError(f"K must have positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
    if K[1, 0] != 0 or not np.allclose(K[2], (0.0, 0.0, 1.0)):
        raise GeometryError(f"K must be a pinhole matrix [[fx,s,cx],[0,fy,cy],[0,0,1]], got {K.tolist()}")
    return K


SKIP_TILE = 8   # cells per side of the depth-range tiles the "fast" ray caster skips with


@numba.njit(cache=True, nogil=True)
def _row_of_cells(d: np.ndarray, i: int, zmin: float, zmax: float, ratio: float, ok: np.ndarray,
                  band_lo: np.ndarray, band_hi: np.ndarray) -> int:
    # The cells of grid row i: both triangle flags into ok, and each cell's depth range over its surviving
    # triangles folded into column j of band_lo/band_hi (the band of rows one tile high); returns how many
    # triangles survive. No branches and no value carried from one cell to the next, so LLVM vectorises it.
    n = 0
    for j in range(d.shape[1] - 1):
        a = d[i, j]  # a=(i,j) b=(i,j+1) c=(i+1,j) e=(i+1,j+1), see the module docstring
        b = d[i, j + 1]
        c = d[i + 1, j]
        e = d[i + 1, j + 1]
        vbc = (zmin <= b) & (b <= zmax) & (zmin <= c) & (c <= zmax)
        lo_bc = min(b, c)
        hi_bc = max(b, c)
        lo0 = min(a, lo_bc)
        hi0 = max(a, hi_bc)
        lo1 = min(e, lo_bc)
        hi1 = max(e, hi_bc)
        k0 = vbc & (zmin <= a) & (a <= zmax) & (hi0 <= ratio * lo0)
        k1 = vbc & (zmin <= e) & (e <= zmax) & (hi1 <= ratio * lo1)
        ok[0, i, j] = k0
        ok[1, i, j] = k1
        n += np.int64(k0) + np.int64(k1)
        band_lo[j] = min(band_lo[j], min(lo0 if k0 else np.inf, lo1 if k1 else np.inf))
        band_hi[j] = max(band_hi[j], max(hi0 if k0 else -np.inf, hi1 if k1 else -np.inf))
    return n


@numba.njit(cache=True, nogil=True)
def _triangle_mask(d: np.ndarray, zmin: float, zmax: float, ratio: float, tile: int):
    # One pass over the cells; numba because the numpy version needs ~20 full-image temporaries and
    # this runs once per simulated scan inside the 30 ms budget. The same pass records each tile's depth
    # range over its surviving triangles (for the fast caster's skip test) and counts the triangles.
    # Row by row (vectorised, _row_of_cells), the cell ranges folded column-wise over a band of `tile` rows
    # as they are computed, then each band reduced per tile of columns: 2.6 -> 0.85 ms for a 352x1216 map against the earlier
    # tile-by-tile scalar walk, the same outputs (bench/bench_build.py --stages, "mesh").
    hg, wg = d.shape
    hc, wc = hg - 1, wg - 1
    ok = np.zeros((2, hc, wc), dtype=np.bool_)
    th = (hc + tile - 1) // tile
    tw = (wc + tile - 1) // tile
    tmin = np.full((th, tw), np.inf)
    tmax = np.full((th, tw), -np.inf)
    band_lo = np.empty(wc)
    band_hi = np.empty(wc)
    n = 0
    for ti in range(th):
        band_lo[:] = np.inf
        band_hi[:] = -np.inf
        for i in range(ti * tile, min(hc, (ti + 1) * tile)):
            n += _row_of_cells(d, i, zmin, zmax, ratio, ok, band_lo, band_hi)
        for tj in range(tw):
            lo = np.inf
            hi = -np.inf
            for j in range(tj * tile, min(wc, (tj + 1) * tile)):
                lo = min(lo, band_lo[j])
                hi = max(hi, band_hi[j])
            tmin[ti, tj] = lo
            tmax[ti, tj] = hi
    return ok, tmin, tmax, n


@numba.njit(cache=True, nogil=True)
def _zero_outside(d: np.ndarray, scale: float, zmin: float, zmax: float) -> np.ndarray:
    # d * scale as float64 vertex depths, zeroed outside [zmin, zmax], in one pass and one output array (the
    # numpy form makes three full-size temporaries). Scale 1 for metres (exact); 1/256 for the store's uint16
    # depth, read as it is, with no float64 copy of the whole map first.
    out = np.empty(d.shape, dtype=np.float64)
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            v = np.float64(d[i, j]) * scale
            out[i, j] = v if zmin <= v <= zmax else 0.0
    return out


def _strided_grid(depth: np.ndarray, scale: float, K: np.ndarray, options: MeshOptions) -> DepthGrid:
    """The grid of ``depth * scale`` for checked depth, K and options."""
    s = int(options.stride)
    d = depth[::s, ::s]
    if d.shape[0] < 2 or d.shape[1] < 2:
        raise GeometryError(f"stride {s} leaves fewer than 2x2 vertices for depth of shape {depth.shape}")
    # vertex depths outside the valid range are never referenced; zero them so the grid says so
    d = _zero_outside(d, float(scale), float(options.min_depth_m), float(options.max_depth_m))
    return _grid(d, K, s, (int(depth.shape[0]), int(depth.shape[1])), options)


def _grid(d: np.ndarray, K: np.ndarray, stride: int, image_size: tuple[int, int], options: MeshOptions) -> DepthGrid:
    ok, tmin, tmax, n = _triangle_mask(d, float(options.min_depth_m), float(options.max_depth_m),
                                       float(options.ratio_threshold), SKIP_TILE)
    return DepthGrid(depth=d, tri_ok=ok, K=K, stride=stride, image_size=image_size,
                     _cache={"n_faces": int(n), "tiles": (tmin, tmax)})


def depth_to_grid(depth: np.ndarray, K: np.ndarray, options: MeshOptions = MeshOptions()) -> DepthGrid:
    """Validate inputs and decide which triangles of the depth map's grid survive (see module docstring)."""
    depth, K = validate_depth_and_K(depth, K)
    return grid_from_valid(depth, K, options)


def grid_from_valid(depth: np.ndarray, K: np.ndarray, options: MeshOptions = MeshOptions()) -> DepthGrid:
    """:func:`depth_to_grid` for depth and K that :func:`validate_depth_and_K` returned (float64, checked):
    callers that validated them already skip a second pass over the map."""
    options.validate()
    return _strided_grid(depth, 1.0, K, options)


def grid_from_uint16(depth: np.ndarray, scale: float, K: np.ndarray, options: MeshOptions = MeshOptions()) -> DepthGrid:
    """:func:`depth_to_grid` of ``depth * scale`` for an integer depth map (the store's KITTI uint16 form:
    metres x 256, 0 = none, so ``scale`` = 1/256): the same grid, bit for bit, without the float64 map that
    converting first makes (3.4 MB per 352x1216 sample, plus its validation pass: ~2 ms of the build's CPU
    per sample, most of it page faults). Unsigned integers need no finiteness or sign check."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.shape[0] < 2 or depth.shape[1] < 2:
        raise GeometryError(f"depth must be a 2-D array of at least 2x2, got shape {depth.shape}")
    if depth.dtype.kind != "u":
        raise GeometryError(f"grid_from_uint16 needs an unsigned integer depth map, got dtype {depth.dtype}")
    if not (np.isfinite(scale) and scale > 0):
        raise GeometryError(f"depth scale must be a positive number, got {scale}")
    K = validate_K(K)
    options.validate()
    return _strided_grid(depth, scale, K, options)


def depth_to_mesh(
    depth: np.ndarray, K: np.ndarray, options: MeshOptions = MeshOptions(), *, require_nonempty: bool = False
) -> trimesh.Trimesh:
    """Back-project pixel centres, two triangles per 2x2 block, cut invalid/far/discontinuous triangles.

    Raises GeometryError on non-finite/negative depth, bad K, bad options, or (require_nonempty) no triangle.
    """
    grid = depth_to_grid(depth, K, options)
    if require_nonempty and grid.n_faces == 0:
        raise GeometryError(
            f"depth map of shape {np.shape(depth)} gives an empty mesh (no valid surface in "
            f"[{options.min_depth_m}, {options.max_depth_m}] m)"
        )
    return grid.to_mesh()


def background_layer(grid: DepthGrid, options: MeshOptions, width_px: int) -> DepthGrid:
    """A second surface that continues the background up to `width_px` grid cells behind foreground edges.

    Seeds are the far-side vertices of every cut edge (4-neighbours both valid, depth ratio above the
    threshold). Each valid vertex within `width_px` of a seed that lies in front of it (seed depth >
    ratio * own depth) gets the seed's depth: the background is extended at constant depth under the
    foreground silhouette. Seeds keep their own depth so the layer joins the visible background. The layer
    is triangulated with the same rules; it is hidden from the camera by construction, but a sensor at
    another viewpoint (the LiDAR above and behind the camera) can see it through the cut.
    """
    from scipy.ndimage import distance_transform_edt

    d = grid.depth
    r = options.ratio_threshold
    valid = d > 0
    seeds = np.zeros_like(valid)
    for ax in (0, 1):
        n = d.shape[ax] - 1
        p = np.take(d, np.arange(n), axis=ax)
        q = np.take(d, np.arange(1, n + 1), axis=ax)
        both = (p > 0) & (q > 0)
        cut_far_q = both & (q > r * p)
        cut_far_p = both & (p > r * q)
        if ax == 0:
            seeds[1:][cut_far_q] = True
            seeds[:-1][cut_far_p] = True
        else:
            seeds[:, 1:][cut_far_q] = True
            seeds[:, :-1][cut_far_p] = True
    layer = np.zeros_like(d)
    if seeds.any():
        dist, (ii, jj) = distance_transform_edt(~seeds, return_indices=True)
        bg = d[ii, jj]
        extend = valid & (dist <= width_px) & (bg > r * d)
        layer = np.where(extend | seeds, np.where(seeds, d, bg), 0.0)
    return _grid(layer, grid.K, grid.stride, grid.image_size, options)


def export_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write the mesh as .ply (binary) or .glb, chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ply", ".glb"):
        raise GeometryError(f"{path}: mesh export supports .ply and .glb, not {suffix or 'no suffix'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path, file_type=suffix[1:])
    return path
