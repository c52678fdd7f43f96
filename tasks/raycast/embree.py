"""The "embree" reference backend: trimesh + embreex BVH, first hit, distance recomputed in float64.

Embree traverses in float32; it is used only to pick the first triangle. The distance is then the
exact float64 ray/plane intersection with that triangle, so agreement tests compare geometry, not
float32 rounding (at 80 m float32 alone is ~5 um, but the plane solve keeps it at ~1e-12 m).
"""
from __future__ import annotations

import numpy as np
import trimesh
from trimesh.ray.ray_pyembree import RayMeshIntersector


def cast_mesh(mesh: trimesh.Trimesh, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranges (N,) float64 with inf = miss, unit face normals (N, 3)) for unit `dirs`."""
    n = len(origins)
    ranges = np.full(n, np.inf)
    normals = np.zeros((n, 3))
    if len(mesh.faces) == 0 or n == 0:
        return ranges, normals
    tri = RayMeshIntersector(mesh).intersects_first(origins, dirs)
    hit = np.nonzero(tri >= 0)[0]
    if len(hit) == 0:
        return ranges, normals
    corners = mesh.vertices[mesh.faces[tri[hit]]]
    nrm = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    denom = np.einsum("ij,ij->i", dirs[hit], nrm)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.einsum("ij,ij->i", corners[:, 0] - origins[hit], nrm) / denom
    good = np.isfinite(t) & (t > 0)
    ranges[hit[good]] = t[good]
    normals[hit[good]] = nrm[good]
    return ranges, normals
