"""IP-Basic baseline on synthetic scans and on a real KITTI frame."""
from __future__ import annotations

import numpy as np
from PIL import Image

from model.ipbasic import ipbasic_complete
from model.metrics import depth_metrics


def _plane_scan(h=64, w=96, every=4):
    yy = np.arange(h, dtype=np.float32)[:, None]
    dense = np.broadcast_to(5.0 + 0.3 * yy, (h, w)).astype(np.float32)
    sparse = np.zeros_like(dense)
    sparse[h // 3::every, ::2] = dense[h // 3::every, ::2]  # scan lines only in the lower part
    return dense, sparse


def test_fills_holes_extends_upward_and_keeps_scale():
    dense, sparse = _plane_scan()
    out = ipbasic_complete(sparse)
    assert out.shape == sparse.shape and out.dtype == np.float32
    assert (out > 0).all()  # top extension + large fills leave no holes here
    lower = slice(dense.shape[0] // 3, None)
    err = np.abs(out[lower] - dense[lower])
    assert err.mean() < 0.6  # within about one scan-line spacing of a smooth plane
    # above the top scan line the first row's value is copied upward
    top = dense.shape[0] // 3
    assert np.allclose(out[:top - 3], out[top - 3][None], atol=0.3)


def test_near_points_win_over_far_ones():
    sparse = np.zeros((21, 21), np.float32)
    sparse[10, 9] = 5.0   # near
    sparse[10, 11] = 50.0  # far
    out = ipbasic_complete(sparse, blur=False, extrapolate=False)
    assert out[10, 10] == 5.0  # the inverted-depth dilation prefers the near return


def test_empty_input_stays_empty():
    assert not ipbasic_complete(np.zeros((16, 16), np.float32)).any()


def test_kitti_frame_reasonable(kitti_gt_dir):
    gt = np.asarray(Image.open(kitti_gt_dir / "depth" / "0000000005.png"), dtype=np.float32) / 256.0
    sparse = np.zeros_like(gt)
    rows = np.flatnonzero((gt > 0).any(1))
    keep = rows[::4]  # every 4th GT row as "scan lines"
    sparse[keep] = gt[keep]
    out = ipbasic_complete(sparse)
    m = depth_metrics(out, gt, sparse <= 0)
    assert m["n_pixels"] > 10_000
    assert m["mae_mm"] < 2000 and m["delta1"] > 0.85
