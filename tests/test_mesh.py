"""Depth map -> mesh: triangle layout, discontinuity cut, validation, export."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from tasks.errors import GeometryError
from tasks.mesh import MeshOptions, background_layer, depth_to_grid, depth_to_mesh, export_mesh

K = np.array([[100.0, 0.0, 15.5], [0.0, 100.0, 9.5], [0.0, 0.0, 1.0]])


def test_plane_gives_two_triangles_per_block_at_pixel_centres():
    depth = np.full((20, 32), 5.0, dtype=np.float32)
    mesh = depth_to_mesh(depth, K)
    assert len(mesh.faces) == 2 * 19 * 31
    assert len(mesh.vertices) == 20 * 32
    uvw = mesh.vertices @ K.T
    uv = uvw[:, :2] / uvw[:, 2:]
    np.testing.assert_allclose(np.sort(np.unique(np.round(uv[:, 0], 9))), np.arange(32))
    np.testing.assert_allclose(mesh.vertices[:, 2], 5.0)
    assert (mesh.face_normals[:, 2] < 0).all(), "triangles must face the camera"


def test_ratio_cut_removes_silhouette_but_keeps_receding_road():
    depth = np.full((20, 32), 10.0)
    depth[:, 16:] = 30.0                       # object edge: ratio 3
    grid = depth_to_grid(depth, K)
    assert not grid.tri_ok[:, :, 15].any() and grid.tri_ok[:, :, :15].all() and grid.tri_ok[:, :, 16:].all()
    road = np.repeat(np.geomspace(80.0, 5.0, 20)[:, None], 32, axis=1)   # ~16 % per row: under 1.2
    assert depth_to_grid(road, K).tri_ok.all()


def test_sky_far_and_near_vertices_drop_their_triangles():
    depth = np.full((10, 10), 5.0)
    depth[0, 0] = 0.0
    depth[9, 9] = 500.0
    depth[5, 5] = 0.05
    grid = depth_to_grid(depth, K, MeshOptions(max_depth_m=120.0, min_depth_m=0.1))
    # a corner vertex belongs to 1 triangle; an interior vertex to 6
    assert grid.n_faces == 2 * 9 * 9 - 1 - 1 - 6
    assert grid.depth[0, 0] == 0 and grid.depth[9, 9] == 0


def test_stride_and_grid_mesh_agree():
    rng = np.random.default_rng(0)
    depth = rng.uniform(5, 6, (21, 33))
    mesh = depth_to_mesh(depth, K, MeshOptions(stride=2))
    assert len(mesh.faces) == 2 * 10 * 16
    grid = depth_to_grid(depth, K, MeshOptions(stride=2))
    np.testing.assert_array_equal(grid.to_mesh().faces, mesh.faces)


@pytest.mark.parametrize("depth, k, match", [
    (np.array([[1.0, np.nan], [1.0, 1.0]]), K, "non-finite"),
    (np.array([[1.0, -1.0], [1.0, 1.0]]), K, "negative"),
    (np.ones((4, 4)), np.eye(4), "3x3"),
    (np.ones((4, 4)), np.diag([0.0, 1.0, 1.0]), "focal"),
    (np.ones(4), K, "2-D"),
])
def test_bad_input_raises_geometry_error(depth, k, match):
    with pytest.raises(GeometryError, match=match):
        depth_to_mesh(depth, k)


def test_empty_mesh_when_required_raises():
    assert len(depth_to_mesh(np.zeros((8, 8)), K).faces) == 0
    with pytest.raises(GeometryError, match="empty mesh"):
        depth_to_mesh(np.zeros((8, 8)), K, require_nonempty=True)
    with pytest.raises(GeometryError, match="ratio_threshold"):
        depth_to_mesh(np.ones((8, 8)), K, MeshOptions(ratio_threshold=0.5))


def test_background_layer_continues_far_side_behind_the_edge():
    depth = np.full((20, 32), 30.0)
    depth[:, :10] = 10.0                        # foreground on the left
    layer = background_layer(depth_to_grid(depth, K), MeshOptions(), width_px=4)
    assert np.all(layer.depth[:, 6:10] == 30.0) and np.all(layer.depth[:, :6] == 0.0)
    assert layer.n_faces > 0


@pytest.mark.parametrize("suffix", [".ply", ".glb"])
def test_export_roundtrip(tmp_path, suffix):
    mesh = depth_to_mesh(np.full((6, 7), 3.0), K)
    path = export_mesh(mesh, tmp_path / f"m{suffix}")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(mesh.faces)
    with pytest.raises(GeometryError, match=r"\.obj"):
        export_mesh(mesh, tmp_path / "m.obj")


def test_triangle_mask_and_tile_ranges_match_a_numpy_reference():
    """The numba pass (row by row, vectorised) keeps exactly the triangles of the module docstring's rule and records
    each skip tile's depth range over them; checked against a plain numpy statement of the rule on maps with
    sky, out-of-range vertices, edges and sizes that are not multiples of the tile."""
    from tasks.mesh import SKIP_TILE, _triangle_mask

    rng = np.random.default_rng(3)
    for h, w in ((2, 2), (9, 17), (37, 45), (64, 80)):
        d = rng.choice([0.0, 0.05, 5.0, 5.5, 30.0, 130.0], size=(h, w)) * rng.uniform(0.95, 1.05, (h, w))
        ok, tmin, tmax, n = _triangle_mask(d, 0.1, 120.0, 1.2, SKIP_TILE)
        a, b, c, e = d[:-1, :-1], d[:-1, 1:], d[1:, :-1], d[1:, 1:]
        valid = lambda x: (x >= 0.1) & (x <= 120.0)  # noqa: E731
        tris = [(a, c, b), (b, c, e)]
        ref = np.stack([valid(p) & valid(q) & valid(r) & (np.maximum(np.maximum(p, q), r)
                                                          <= 1.2 * np.minimum(np.minimum(p, q), r))
                        for p, q, r in tris])
        np.testing.assert_array_equal(ok, ref)
        assert n == ref.sum()
        lo = np.where(ref, np.stack([np.minimum(np.minimum(p, q), r) for p, q, r in tris]), np.inf)
        hi = np.where(ref, np.stack([np.maximum(np.maximum(p, q), r) for p, q, r in tris]), -np.inf)
        for ti in range(tmin.shape[0]):
            for tj in range(tmin.shape[1]):
                blk = np.s_[:, ti * SKIP_TILE:(ti + 1) * SKIP_TILE, tj * SKIP_TILE:(tj + 1) * SKIP_TILE]
                assert tmin[ti, tj] == lo[blk].min() and tmax[ti, tj] == hi[blk].max()


def test_grid_zeroes_out_of_range_vertices_without_touching_the_input():
    """Vertex depths outside [min_depth_m, max_depth_m] become 0 in the grid; the caller's map keeps its values."""
    K = np.array([[50.0, 0, 15.5], [0, 50.0, 11.5], [0, 0, 1]])
    depth = np.full((24, 32), 10.0)
    depth[3, 4], depth[5, 6], depth[7, 8] = 0.05, 500.0, 0.0  # too near, too far, no surface
    before = depth.copy()
    grid = depth_to_grid(depth, K, MeshOptions(min_depth_m=0.1, max_depth_m=120.0))
    assert grid.depth[3, 4] == 0.0 and grid.depth[5, 6] == 0.0 and grid.depth[7, 8] == 0.0
    assert np.count_nonzero(grid.depth) == depth.size - 3
    np.testing.assert_array_equal(depth, before)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_grid_from_uint16_is_the_grid_of_the_converted_map(stride):
    """The store's uint16 depth (metres x 256) gives, read directly, the very grid of its float64 conversion:
    vertex depths, surviving triangles, face count and the caster's tile ranges (near, far and empty pixels,
    and depth steps that the ratio cut removes, included)."""
    from tasks.mesh import grid_from_uint16

    rng = np.random.default_rng(5)
    u16 = (rng.uniform(0.0, 90.0, (37, 53)) * 256).astype(np.uint16)
    u16[:4] = 0  # sky
    u16[10, 10], u16[11, 12] = 10, 60000  # under min_depth_m, over max_depth_m
    u16[20:, 30:] //= 3  # a foreground block: cut edges
    options = MeshOptions(min_depth_m=0.1, max_depth_m=120.0, ratio_threshold=1.2, stride=stride)
    ref = depth_to_grid(u16 * (1.0 / 256), K, options)
    grid = grid_from_uint16(u16, 1.0 / 256, K, options)
    np.testing.assert_array_equal(grid.depth, ref.depth)
    np.testing.assert_array_equal(grid.tri_ok, ref.tri_ok)
    assert grid.n_faces == ref.n_faces > 0 and grid.image_size == ref.image_size == (37, 53)
    for a, b in zip(grid._cache["tiles"], ref._cache["tiles"]):
        np.testing.assert_array_equal(a, b)


def test_grid_from_uint16_rejects_what_it_cannot_read():
    from tasks.mesh import grid_from_uint16

    with pytest.raises(GeometryError, match="unsigned integer"):
        grid_from_uint16(np.ones((4, 4), np.int16), 1 / 256, K)
    with pytest.raises(GeometryError, match="depth scale"):
        grid_from_uint16(np.ones((4, 4), np.uint16), 0.0, K)
    with pytest.raises(GeometryError, match="K must be 3x3"):
        grid_from_uint16(np.ones((4, 4), np.uint16), 1 / 256, np.eye(2))
