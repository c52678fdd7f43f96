"""`monolidar export-kitti STORE OUT --layout train`: the KITTI training layout BP-Net / DMD3C loaders read."""
from __future__ import annotations

import glob
import os

import numpy as np
from PIL import Image

from flows.cli import main
from storage.kitti import disparity_to_uint8
from storage.pngio import read_depth_png, read_rgb
from storage.store import DatasetStore

H, W = 24, 40


def _store(path):
    rng = np.random.default_rng(5)
    store = DatasetStore.create(path, height=H, width=W, shard_size=2, config={}, sensor="hdl64", code_version="t",
                                teacher={"sha256": "t", "output_kind": "disparity"})
    store.ensure_shards(2)
    K = np.array([[30, 0, W / 2], [0, 30, H / 2], [0, 0, 1]], np.float32)
    written = {}
    for shard, statuses in ((0, ["ok", "quarantined"]), (1, ["ok", "ok"])):
        n = len(statuses)
        depth = np.rint(rng.uniform(2, 60, (n, H, W)) * 256).astype(np.float32) / 256  # on the PNG grid
        sparse = np.where(rng.random((n, H, W)) < 0.1, np.rint(depth * 256), 0).astype(np.uint16)
        arrays = {"rgb": rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8), "teacher_output": (1 / depth).astype(np.float16),
                  "depth": depth, "sparse": sparse, "K": np.tile(K, (n, 1, 1)),
                  "lidar_pose": np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))}
        for row, st in enumerate(statuses):
            if st != "ok":
                for a in arrays.values():
                    a[row] = 0
        store.write_shard(shard, arrays, [{"sample_id": f"s{shard}{r}", "source_uri": "x", "content_hash": "h",
                                           "seed": 0, "status": st, "reason": "" if st == "ok" else "bad image"}
                                          for r, st in enumerate(statuses)])
        for row, st in enumerate(statuses):
            if st == "ok":
                written[(shard, row)] = {k: v[row] for k, v in arrays.items()}
    return K, written


def _calib(path):
    out = {}
    for line in open(path):
        key, value = line.split(":", 1)
        try:
            out[key] = np.array([float(x) for x in value.split()])
        except ValueError:
            pass
    return out


def test_train_layout_follows_the_bpnet_dmd3c_conventions(tmp_path, capsys):
    K, written = _store(tmp_path / "ds")
    out = tmp_path / "kitti"
    assert main(["export-kitti", str(tmp_path / "ds"), str(out), "--layout", "train"]) == 0
    assert "exported 3 samples" in capsys.readouterr().out  # the quarantined row is skipped

    # Walk it the way those loaders do: sorted recursive globs of both depth trees, paths derived from names.
    depths = sorted(glob.glob(str(out / "data_depth_annotated" / "train") + "/**/*.png", recursive=True))
    lidars = sorted(glob.glob(str(out / "data_depth_velodyne" / "train") + "/**/*.png", recursive=True))
    assert len(depths) == len(lidars) == 3
    assert [os.path.basename(p) for p in depths] == [os.path.basename(p) for p in lidars]
    for gt_path, lidar_path in zip(depths, lidars):
        parts = gt_path.split("/")
        drive, camera, frame = parts[-5], parts[-2], parts[-1]
        assert parts[-4:-1] == ["proj_depth", "groundtruth", "image_02"] and camera == "image_02"
        assert lidar_path.split("/")[-4:-1] == ["proj_depth", "velodyne_raw", "image_02"]
        date = drive.split("_drive")[0]
        shard, row = int(drive.split("_drive_")[1].split("_")[0]), int(frame[:-4])
        src = written[(shard, row)]
        raw = out / "raw" / date / drive / camera
        np.testing.assert_array_equal(read_rgb(raw / "data" / frame), src["rgb"])
        disp = np.array(Image.open(raw / "disp" / frame).convert("L"), dtype=np.uint8)
        np.testing.assert_array_equal(disp, disparity_to_uint8(src["teacher_output"], "disparity"))
        assert disp.max() == 255 and disp.min() == 0
        np.testing.assert_array_equal(read_depth_png(gt_path), src["depth"])
        assert np.array(Image.open(gt_path)).max() > 255  # those loaders assert it
        np.testing.assert_array_equal(read_depth_png(lidar_path), src["sparse"].astype(np.float32) / 256)
        calib = _calib(out / "raw" / date / "calib_cam_to_cam.txt")
        np.testing.assert_allclose(calib["P_rect_02"].reshape(3, 4)[:, :3], K, rtol=1e-7)
        assert calib["P_rect_03"].shape == (12,)


def test_disparity_png_inverts_metric_depth():
    depth = np.array([[1.0, 2.0], [4.0, 0.0]], np.float32)
    np.testing.assert_array_equal(disparity_to_uint8(depth, "depth"), [[255, 128], [64, 0]])
    assert not disparity_to_uint8(np.full((2, 2), 3.0), "disparity").any()
