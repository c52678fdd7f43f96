"""Procedural scenes: determinism, render depth == Embree ray-cast depth, camera conventions."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.scenes import (SCENE_KINDS, TEXTURE_KINDS, generate_scene, make_texture, pixel_rays, raycast_depth,
                          render, resized, true_lidar_scan)


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_same_seed_gives_identical_bytes(kind):
    a = resized(generate_scene(7, kind), 120, 160)
    b = resized(generate_scene(7, kind), 120, 160)
    rgb_a, depth_a = render(a)
    rgb_b, depth_b = render(b)
    assert rgb_a.tobytes() == rgb_b.tobytes()
    assert depth_a.tobytes() == depth_b.tobytes()
    rgb_c, _ = render(resized(generate_scene(8, kind), 120, 160))
    assert rgb_c.tobytes() != rgb_a.tobytes()


@pytest.mark.parametrize("seed,kind,camera", [(3, "street", "kitti"), (4, "street", "phone"), (5, "indoor", None)])
def test_render_depth_matches_embree_raycast(seed, kind, camera):
    scene = generate_scene(seed, kind, camera=camera)
    rgb, depth = render(scene)
    truth = raycast_depth(scene)
    assert rgb.shape == (scene.height, scene.width, 3) and rgb.dtype == np.uint8
    assert depth.shape == truth.shape == (scene.height, scene.width) and depth.dtype == np.float32
    # Sky / no-hit pixels agree except on a few silhouette pixels.
    assert np.mean((depth > 0) != (truth > 0)) < 0.002
    both = (depth > 0) & (truth > 0)
    diff = np.abs(depth[both] - truth[both])
    assert np.median(diff) < 0.01
    assert np.mean(diff / truth[both] < 0.02) > 0.99
    if kind == "indoor":
        assert (depth > 0).all()  # a closed room: no sky


def test_street_scene_is_plausible_kitti_view():
    scene = generate_scene(11, "street", camera="kitti")
    assert (scene.height, scene.width) == (375, 1242)
    assert 700 <= scene.K[0, 0] <= 730
    depth = raycast_depth(resized(scene, 94, 310))
    # Sky at the top, road at the bottom: bottom rows near, more sky above the middle than below.
    assert (depth[-1] > 0).all() and np.median(depth[-1]) < 10
    assert (depth[:10] == 0).mean() > (depth[-10:] == 0).mean()


def test_resized_scene_keeps_rays_through_pixel_edges():
    scene = generate_scene(2, "indoor", camera="phone")
    small = resized(scene, scene.height // 4, scene.width // 4)
    # The ray through the centre of small pixel (0, 0) is the ray through the centre of the 4x4 block.
    ray_small = pixel_rays(small.K, small.height, small.width)[0]
    ray_big = pixel_rays(scene.K, scene.height, scene.width).reshape(scene.height, scene.width, 3)
    np.testing.assert_allclose(ray_small, ray_big[:4, :4].mean((0, 1)), rtol=1e-9, atol=1e-12)


def test_textures_cover_every_kind_and_are_seeded():
    for kind in TEXTURE_KINDS:
        a = make_texture(np.random.default_rng(1), kind, [120, 100, 80])
        b = make_texture(np.random.default_rng(1), kind, [120, 100, 80])
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and a.tobytes() == b.tobytes()
        assert a.std() > 1.0  # a pattern, not a flat colour
    with pytest.raises(InputError, match="texture kind"):
        make_texture(np.random.default_rng(0), "marble", [1, 2, 3])


def test_unknown_scene_or_camera_kind_is_rejected():
    with pytest.raises(InputError, match="scene kind 'forest'"):
        generate_scene(0, "forest")
    with pytest.raises(InputError, match="camera kind 'fisheye'"):
        generate_scene(0, "street", camera="fisheye")


def test_true_lidar_scan_hits_the_scene_geometry():
    scene = resized(generate_scene(3, "street", camera="kitti"), 188, 621)
    scan = true_lidar_scan(scene, "hdl64e_kitti", seed=1)
    truth = raycast_depth(scene)
    hit = scan.sparse > 0
    assert hit.sum() > 500
    # Returns come from the same surfaces the camera sees (noise ~2 cm, see-through at edges allowed).
    rel = np.abs(scan.sparse[hit] - truth[hit]) / np.maximum(truth[hit], 1e-3)
    assert np.median(rel) < 0.02
