"""KITTI-DC I/O: depth PNG codec, scan-line sparsification, both layouts, store -> KITTI -> back."""
from __future__ import annotations

import numpy as np
import pytest

from storage.kitti import (
    KittiItem,
    find_kitti_dc,
    kitti_dc_from_gt_dir,
    load_kitti_item,
    read_depth_png,
    read_intrinsics_txt,
    write_depth_png,
    write_kitti_dc,
)
from storage.pngio import write_rgb_png
from tasks.errors import InputError
from tasks.sparsify import sparsify_scanlines

K_GT = np.array([[707.0493, 0, 604.0814], [0, 707.0493, 180.5066], [0, 0, 1]], np.float32)


def test_depth_png_round_trip_to_the_uint16_quantum(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 120, (7, 9)).astype(np.float32)
    depth[0, 0] = 0
    depth[0, 1] = np.nan
    depth[0, 2] = 300.0  # beyond uint16 range: clipped, not wrapped
    write_depth_png(tmp_path / "d.png", depth)
    back = read_depth_png(tmp_path / "d.png")
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert back[0, 0] == 0 and back[0, 1] == 0 and back[0, 2] == pytest.approx(65535 / 256)
    np.testing.assert_allclose(back.ravel()[3:], depth.ravel()[3:], atol=0.5 / 256 + 1e-6)
    with pytest.raises(InputError, match="missing.png: depth PNG not found"):
        read_depth_png(tmp_path / "missing.png")


def test_sparsify_keeps_one_row_per_band():
    rng = np.random.default_rng(1)
    gt = np.where(rng.random((352, 1216)) < 0.2, rng.uniform(5, 80, (352, 1216)), 0).astype(np.float32)
    gt[:100] = 0  # KITTI GT has no returns near the top of the crop
    sparse = sparsify_scanlines(gt, n_lines=64)
    rows = np.flatnonzero((sparse > 0).any(axis=1))
    assert len(rows) == 64 and rows.min() >= 100
    kept = sparse > 0
    np.testing.assert_array_equal(sparse[kept], gt[kept])
    np.testing.assert_array_equal(kept[rows], gt[rows] > 0)  # a kept row keeps every valid pixel
    thinned = sparsify_scanlines(gt, n_lines=64, keep=0.5, seed=3)
    assert 0.4 < (thinned > 0).sum() / kept.sum() < 0.6
    np.testing.assert_array_equal(thinned, sparsify_scanlines(gt, n_lines=64, keep=0.5, seed=3))
    assert not sparsify_scanlines(np.zeros((4, 4))).any()
    with pytest.raises(InputError, match="keep must be in"):
        sparsify_scanlines(gt, keep=0)


@pytest.fixture(scope="module")
def kitti_val(kitti_gt_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kitti") / "val_selection_cropped"
    return kitti_dc_from_gt_dir(kitti_gt_dir / "rgb", kitti_gt_dir / "depth", out, K_GT, seed=5)


def test_gt_dir_to_val_selection_layout(kitti_val, kitti_gt_dir):
    items = find_kitti_dc(kitti_val)
    assert [it.name for it in items] == ["0000000005_image_02", "0000000050_image_02"]
    assert items[0].sparse_path.name == "0000000005_velodyne_raw_02.png"
    sample = load_kitti_item(items[1])
    assert sample["rgb"].shape == (352, 1216, 3) and sample["gt"].shape == (352, 1216)
    full_gt = read_depth_png(kitti_gt_dir / "depth/0000000050.png")
    x0 = (full_gt.shape[1] - 1216) // 2
    np.testing.assert_array_equal(sample["gt"], full_gt[-352:, x0:x0 + 1216])
    np.testing.assert_allclose(sample["K"][:2, 2], [604.0814 - x0, 180.5066 - (full_gt.shape[0] - 352)], atol=1e-3)
    density = (sample["sparse"] > 0).mean()
    assert 0.02 < density < 0.08, density  # KITTI's 64-beam input covers about 5 % of the crop
    kept = sample["sparse"] > 0
    np.testing.assert_array_equal(sample["sparse"][kept], sample["gt"][kept])
    # the depth_selection/val_selection_cropped nesting is found from its root too
    assert [it.name for it in find_kitti_dc(kitti_val.parent)] == [it.name for it in items]


def test_store_export_then_import_reproduces_depth(kitti_val, tmp_path, capsys):
    from flows.cli import main
    from storage.store import DatasetStore

    samples = [load_kitti_item(it) for it in find_kitti_dc(kitti_val)]
    store = DatasetStore.create(tmp_path / "ds", height=352, width=1216, shard_size=2, config={}, teacher={"sha256": "t"},
                                sensor="hdl64", code_version="test")
    store.ensure_shards(1)
    n = len(samples)
    # dense float depth (not on the 1/256 grid) to check the quantisation bound of the export
    dense = np.stack([np.where(s["gt"] > 0, s["gt"], 30.0) + 0.001 for s in samples]).astype(np.float32)
    store.write_shard(0, {
        "rgb": np.stack([s["rgb"] for s in samples]),
        "teacher_output": (1 / dense).astype(np.float16),
        "depth": dense,
        "sparse": np.stack([np.rint(s["sparse"] * 256) for s in samples]).astype(np.uint16),
        "K": np.stack([s["K"] for s in samples]),
        "lidar_pose": np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
    }, [{"sample_id": s["name"], "source_uri": str(kitti_val), "content_hash": "h", "seed": 0, "status": "ok"}
        for s in samples])

    assert main(["export-kitti", str(tmp_path / "ds"), str(tmp_path / "out")]) == 0
    assert f"exported {n} samples" in capsys.readouterr().out
    back = [load_kitti_item(it) for it in find_kitti_dc(tmp_path / "out")]
    assert [b["name"] for b in back] == [f"{s['name']}_image_{i:010d}_image_02" for i, s in enumerate(samples)]
    for s, b, d in zip(samples, back, dense):
        np.testing.assert_array_equal(b["rgb"], s["rgb"])
        np.testing.assert_array_equal(b["sparse"], s["sparse"])
        np.testing.assert_allclose(b["gt"], d, atol=0.5 / 256 + 1e-5)
        np.testing.assert_allclose(b["K"], s["K"], rtol=1e-7)


def _png_set(tmp_path, h=6, w=8):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = np.where(rng.random((h, w)) < 0.5, rng.uniform(1, 50, (h, w)), 0).astype(np.float32)
    return rgb, depth


def test_drive_layout_with_split_and_raw_date_folders(tmp_path):
    rgb, depth = _png_set(tmp_path)
    root = tmp_path / "kitti"
    drive = "2011_09_26_drive_0002_sync"
    for frame in ("0000000005", "0000000006"):
        write_depth_png(root / "val" / drive / "proj_depth/velodyne_raw/image_02" / f"{frame}.png", depth)
        write_depth_png(root / "val" / drive / "proj_depth/groundtruth/image_02" / f"{frame}.png", depth)
        write_rgb_png(root / "2011_09_26" / drive / "image_02/data" / f"{frame}.png", rgb)
    (root / "2011_09_26/calib_cam_to_cam.txt").write_text(
        "calib_time: x\nP_rect_02: 7.215377e+02 0 6.095593e+02 4.485728e+01 0 7.215377e+02 1.728540e+02 "
        "2.163791e-01 0 0 1 2.745884e-03\n")
    items = find_kitti_dc(root)
    assert [it.name for it in items] == [f"{drive}_image_{f}_image_02" for f in ("0000000005", "0000000006")]
    np.testing.assert_allclose(items[0].K, [[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]], rtol=1e-6)
    sample = load_kitti_item(items[0])
    np.testing.assert_array_equal(sample["rgb"], rgb)
    np.testing.assert_allclose(sample["sparse"], depth, atol=0.5 / 256 + 1e-6)
    # rewriting a drive-layout set keeps KITTI's val_selection names
    write_kitti_dc(tmp_path / "val", [sample])
    assert (tmp_path / f"val/velodyne_raw/{drive}_velodyne_raw_0000000005_image_02.png").is_file()
    assert (tmp_path / f"val/groundtruth_depth/{drive}_groundtruth_depth_0000000005_image_02.png").is_file()
    np.testing.assert_allclose(read_intrinsics_txt(tmp_path / f"val/intrinsics/{drive}_image_0000000005_image_02.txt"),
                               items[0].K)

    # missing RGB for a frame names the expected path
    (root / "2011_09_26" / drive / "image_02/data/0000000006.png").unlink()
    with pytest.raises(InputError, match=r"image_02/data/0000000006.png: missing RGB image"):
        find_kitti_dc(root)


def test_bad_kitti_dirs_name_the_path(tmp_path):
    rgb, depth = _png_set(tmp_path)
    write_kitti_dc(tmp_path / "val", [{"name": "a", "rgb": rgb, "sparse": depth, "gt": depth, "K": K_GT}])
    (tmp_path / "val/velodyne_raw/a_velodyne_raw_02.png").unlink()
    with pytest.raises(InputError, match=r"a_velodyne_raw_02.png: missing velodyne_raw file for a_image_02.png"):
        find_kitti_dc(tmp_path / "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no KITTI depth-completion data found .accepted layouts"):
        find_kitti_dc(tmp_path / "empty")
    with pytest.raises(InputError, match="nowhere: no such directory"):
        find_kitti_dc(tmp_path / "nowhere")
    write_depth_png(tmp_path / "small.png", depth[:3])
    item = KittiItem("x", tmp_path / "val/image/a_image_02.png", tmp_path / "small.png", None, None)
    with pytest.raises(InputError, match=r"small.png: size 3x8 differs from .*a_image_02.png 6x8"):
        load_kitti_item(item)
    with pytest.raises(InputError, match="gt/K present for some samples but not others"):
        write_kitti_dc(tmp_path / "mixed", [{"name": "a", "rgb": rgb, "sparse": depth, "gt": depth},
                                            {"name": "b", "rgb": rgb, "sparse": depth}])
