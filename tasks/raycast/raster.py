"""The "pyrender" backend: rasterise depth from the sensor origin with OpenGL (EGL offscreen), sample rays.

All rays must share one origin (a LiDAR). Rays are grouped by yaw about the camera's y axis into
perspective views at most `MAX_VIEW_DEG` wide; each view is rendered with an intrinsics camera whose
pixel pitch is `pixels_per_degree` at its centre. A ray's range is the view depth at its projection
divided by the cosine to the view axis: inverse depth is interpolated bilinearly (exact on a planar
patch, since 1/z is affine in screen space) when the 4 neighbouring pixels are valid and agree within
2 %, otherwise the nearest pixel is used (at silhouettes). Normals come from the rendered depth.
Rays more than ~78 deg off every view axis are reported as misses.

Rasterisation samples the surface at pixels, not along rays, so this backend is an independent
cross-check of the casters rather than an exact one; pyrender's offscreen target is 4x multisampled
with a 24-bit depth buffer, which bounds its agreement (see bench/bench_lidar.py).
"""
from __future__ import annotations

import threading

import numpy as np
import trimesh

from tasks.errors import GeometryError

MAX_VIEW_DEG = 90.0
# pyrender resolves its 4x multisampled depth buffer by blitting, which keeps ONE sample per pixel, not the
# pixel centre. Measured on Mesa llvmpipe against the embree reference (grid search in 1/8 px): the kept
# sample sits at (+1/8, -3/8) px (columns, rows) from the centre, a position of the standard 4x pattern.
MSAA_SAMPLE_OFFSET = (0.125, -0.375)
_MIN_COS = 0.2          # cos of the largest off-axis angle a view serves (~78 deg)
_LOCK = threading.Lock()  # one GL context at a time per process


def _views(dirs: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Split rays into (yaw centre, ray indices) groups at most MAX_VIEW_DEG wide in yaw."""
    yaw = np.degrees(np.arctan2(dirs[:, 0], dirs[:, 2]))
    order = np.sort(yaw)
    gaps = np.diff(np.concatenate([order, order[:1] + 360.0]))
    k = int(np.argmax(gaps))
    start = order[(k + 1) % len(order)]           # the sector starts after the largest empty gap
    span = 360.0 - gaps[k]
    rel = (yaw - start) % 360.0
    n_views = max(1, int(np.ceil((span + 1e-9) / MAX_VIEW_DEG)))
    width = max(span / n_views, 1e-6)
    which = np.minimum((rel / width).astype(int), n_views - 1)
    out = []
    for v in range(n_views):
        idx = np.nonzero(which == v)[0]
        if len(idx):
            out.append((start + (v + 0.5) * width, idx))
    return out


def _render_depth(mesh: trimesh.Trimesh, origin, right, down, fwd, f, cx, cy, w, h, znear, zfar) -> np.ndarray:
    from tasks.gl import offscreen_renderer  # sets up EGL + the numpy-2 shim before pyrender loads
    import pyrender

    pose = np.eye(4)
    pose[:3, 0] = right
    pose[:3, 1] = -down            # OpenGL camera: +y up, looks along -z
    pose[:3, 2] = -fwd
    pose[:3, 3] = origin
    prim = pyrender.Primitive(positions=mesh.vertices.astype(np.float32),
                              indices=mesh.faces.astype(np.uint32), mode=pyrender.constants.GLTF.TRIANGLES)
    scene = pyrender.Scene(bg_color=(0, 0, 0, 0))
    scene.add(pyrender.Mesh([prim]))
    scene.add(pyrender.IntrinsicsCamera(fx=f, fy=f, cx=cx, cy=cy, znear=znear, zfar=zfar), pose=pose)
    with _LOCK:
        depth = offscreen_renderer(w, h).render(scene, flags=pyrender.RenderFlags.DEPTH_ONLY)
    return np.asarray(depth, dtype=np.float64)


def _sample(depth: np.ndarray, pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
    """View depth at continuous pixel-centre coordinates (0 = no surface)."""
    h, w = depth.shape
    u0 = np.clip(np.floor(pu).astype(int), 0, w - 2)
    v0 = np.clip(np.floor(pv).astype(int), 0, h - 2)
    fu = np.clip(pu - u0, 0.0, 1.0)
    fv = np.clip(pv - v0, 0.0, 1.0)
    q = np.stack([depth[v0, u0], depth[v0, u0 + 1], depth[v0 + 1, u0], depth[v0 + 1, u0 + 1]])
    ok4 = (q > 0).all(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        agree = ok4 & (q.max(axis=0) <= 1.02 * q.min(axis=0))
        inv = 1.0 / np.where(q > 0, q, 1.0)
        wts = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv])
        bil = 1.0 / (wts * inv).sum(axis=0)
    nu = np.clip(np.rint(pu).astype(int), 0, w - 1)
    nv = np.clip(np.rint(pv).astype(int), 0, h - 1)
    return np.where(agree, bil, depth[nv, nu])


def _normals_from_depth(depth: np.ndarray, f: float, cx: float, cy: float, pu, pv) -> np.ndarray:
    """Unit normals (view frame) at the nearest pixels, from central differences of back-projected points."""
    h, w = depth.shape
    u = np.clip(np.rint(pu).astype(int), 1, w - 2)
    v = np.clip(np.rint(pv).astype(int), 1, h - 2)

    def point(vv, uu):
        z = depth[vv, uu]
        return np.stack([(uu + 0.5 - cx) / f * z, (vv + 0.5 - cy) / f * z, z], axis=1)

    # (the sample offset is irrelevant here: a constant shift does not change a difference's direction)

    du = point(v, u + 1) - point(v, u - 1)
    dv = point(v + 1, u) - point(v - 1, u)
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(norm > 0, n / np.where(norm > 0, norm, 1.0), 0.0)


def cast_mesh(mesh: trimesh.Trimesh, origins: np.ndarray, dirs: np.ndarray, *,
              pixels_per_degree: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """(ranges (N,) float64 with inf = miss, unit normals (N, 3)) for unit `dirs` from one common origin."""
    n = len(origins)
    ranges = np.full(n, np.inf)
    normals = np.zeros((n, 3))
    if len(mesh.faces) == 0 or n == 0:
        return ranges, normals
    origin = origins[0]
    if not np.allclose(origins, origin, atol=1e-9, rtol=0):
        raise GeometryError("pyrender backend needs all rays to start at one origin (one sensor position)")
    f = 1.0 / np.tan(np.radians(1.0 / pixels_per_degree))
    rel_vertices = mesh.vertices - origin
    for yaw_c, idx in _views(dirs):
        yc = np.radians(yaw_c)
        fwd = np.array([np.sin(yc), 0.0, np.cos(yc)])
        right = np.array([np.cos(yc), 0.0, -np.sin(yc)])
        down = np.array([0.0, 1.0, 0.0])
        d = dirs[idx]
        zc = d @ fwd
        idx = idx[zc > _MIN_COS]
        if len(idx) == 0:
            continue
        d = dirs[idx]
        zc = d @ fwd
        tx = (d @ right) / zc
        ty = (d @ down) / zc
        pad = 4
        w = int(np.ceil(f * (tx.max() - tx.min()))) + 2 * pad
        h = int(np.ceil(f * (ty.max() - ty.min()))) + 2 * pad
        cx = pad - f * tx.min()
        cy = pad - f * ty.min()
        vz = rel_vertices @ fwd
        front = vz[vz > 1e-6]
        if len(front) == 0:
            continue
        znear = max(1e-3, 0.9 * float(front.min()))
        zfar = 1.1 * float(front.max())
        depth = _render_depth(mesh, origin, right, down, fwd, f, cx, cy, w, h, znear, zfar)
        # pyrender's window coordinate of a point is f * tan + c; pixel k covers [k, k + 1)
        pu = f * tx + cx - 0.5 + MSAA_SAMPLE_OFFSET[0]
        pv = f * ty + cy - 0.5 + MSAA_SAMPLE_OFFSET[1]
        z = _sample(depth, pu, pv)
        hit = z > 0
        ranges[idx[hit]] = z[hit] / zc[hit]
        nv = _normals_from_depth(depth, f, cx, cy, pu[hit], pv[hit])
        normals[idx[hit]] = nv[:, :1] * right + nv[:, 1:2] * down + nv[:, 2:3] * fwd
    return ranges, normals
