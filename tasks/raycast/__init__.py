"""Ray casting against a depth surface: one entry point, three interchangeable backends.

- "embree":  reference. trimesh + embreex BVH over any mesh; first hit, distance solved in float64.
- "fast":    marches each ray through the depth map's pixel grid (tasks.raycast.fast); needs a DepthGrid
             (the depth map itself), no BVH build. Same triangles, same float64 test as "embree".
- "pyrender": rasterises depth from the (single) ray origin with OpenGL/EGL and samples it.

`scene` is a trimesh.Trimesh, a tasks.mesh.DepthGrid, or a sequence of them (layers, e.g. the
see-through background layer); the nearest hit over all layers wins. Directions need not be unit;
ranges are distances along the normalised direction (metres). Nothing here raises on odd geometry:
an empty scene gives only misses; malformed arrays raise GeometryError.
"""
from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import trimesh

from tasks.errors import GeometryError
from tasks.mesh import DepthGrid

BACKENDS = ("embree", "fast", "pyrender")

Scene = trimesh.Trimesh | DepthGrid | Sequence[trimesh.Trimesh | DepthGrid]


def _layers(scene: Scene) -> list[trimesh.Trimesh | DepthGrid]:
    items = list(scene) if isinstance(scene, (list, tuple)) else [scene]
    for item in items:
        if not isinstance(item, (trimesh.Trimesh, DepthGrid)):
            raise GeometryError(f"ray-cast scene must be a Trimesh or DepthGrid, got {type(item).__name__}")
    return items


def _as_mesh(items: list[trimesh.Trimesh | DepthGrid]) -> trimesh.Trimesh:
    meshes = [m.to_mesh() if isinstance(m, DepthGrid) else m for m in items]
    meshes = [m for m in meshes if len(m.faces)]
    if not meshes:
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64), process=False)
    return meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)


def _check_rays(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    origins = np.ascontiguousarray(origins, dtype=np.float64)
    dirs = np.ascontiguousarray(dirs, dtype=np.float64)
    if origins.ndim != 2 or origins.shape[1] != 3 or origins.shape != dirs.shape:
        raise GeometryError(f"rays need origins and dirs of equal shape (N, 3), got {origins.shape} and {dirs.shape}")
    unit, n_nonfinite, n_zero = _unit_directions(origins, dirs)
    if n_nonfinite:
        raise GeometryError("ray origins/directions contain non-finite values")
    if n_zero:
        raise GeometryError(f"{n_zero} ray directions have zero length")
    return origins, unit


@numba.njit(cache=True, nogil=True)
def _unit_directions(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, int, int]:
    # One pass instead of numpy's five over the (N, 3) arrays (finite checks, norm, division): the same values as
    # dirs / np.linalg.norm(dirs, axis=1)[:, None], whose norm sums the squares left to right (tested).
    unit = np.empty_like(dirs)
    n_nonfinite = 0
    n_zero = 0
    for i in range(dirs.shape[0]):
        x, y, z = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z) and np.isfinite(origins[i, 0])
                and np.isfinite(origins[i, 1]) and np.isfinite(origins[i, 2])):
            n_nonfinite += 1
            continue
        norm = np.sqrt((x * x + y * y) + z * z)
        if norm <= 0.0:
            n_zero += 1
            continue
        unit[i, 0] = x / norm
        unit[i, 1] = y / norm
        unit[i, 2] = z / norm
    return unit, n_nonfinite, n_zero


def cast_hits(backend: str, scene: Scene, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hits: (ranges (N,) float64, inf = miss; unit surface normals (N, 3), zeros for misses)."""
    if backend not in BACKENDS:
        raise GeometryError(f"unknown ray-cast backend {backend!r}; known: {', '.join(BACKENDS)}")
    origins, dirs = _check_rays(origins, dirs)
    items = _layers(scene)
    if backend == "fast":
        from tasks.raycast.fast import cast_grid

        if any(isinstance(m, trimesh.Trimesh) for m in items):
            raise GeometryError("the 'fast' backend marches a depth grid; use 'embree' for arbitrary meshes")
        ranges = np.full(len(origins), np.inf)
        normals = np.zeros((len(origins), 3))
        for grid in items:
            cast_grid(grid, origins, dirs, ranges, normals)
        return ranges, normals
    mesh = _as_mesh(items)
    if backend == "embree":
        from tasks.raycast.embree import cast_mesh
    else:
        from tasks.raycast.raster import cast_mesh
    return cast_mesh(mesh, origins, dirs)


def cast(backend: str, mesh_or_grid: Scene, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """First-hit range along each ray (N,) float64 metres; inf = miss."""
    return cast_hits(backend, mesh_or_grid, origins, dirs)[0]


def render_depth(backend: str, scene: Scene, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) float32 z-depth image of `scene` seen by a pinhole camera K at the origin (0 = miss): one ray
    through every pixel centre. Turns a procedural mesh into the depth map a perfect teacher would give."""
    K = np.asarray(K, dtype=np.float64)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1) @ np.linalg.inv(K).T
    dirs = rays / np.linalg.norm(rays, axis=1, keepdims=True)
    ranges = cast(backend, scene, np.zeros_like(dirs), dirs)
    z = np.where(np.isfinite(ranges), ranges * dirs[:, 2], 0.0)
    return z.reshape(height, width).astype(np.float32)
