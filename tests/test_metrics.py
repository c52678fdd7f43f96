"""KITTI-devkit metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.metrics import METRIC_KEYS, MIN_PRED_M, aggregate_metrics, depth_metrics


def test_hand_computed_values():
    gt = np.array([[10.0, 20.0], [0.0, 40.0]], dtype=np.float32)  # one invalid pixel
    pred = np.array([[11.0, 18.0], [99.0, 40.0]], dtype=np.float32)
    m = depth_metrics(pred, gt)
    # errors on valid pixels: +1 m, -2 m, 0 m
    assert m["n_pixels"] == 3
    assert m["rmse_mm"] == pytest.approx(math.sqrt((1000**2 + 2000**2) / 3))
    assert m["mae_mm"] == pytest.approx(1000.0)
    # inverse depth errors in 1/km: 1000/11 - 100, 1000/18 - 50, 0
    e = [1000 / 11 - 100, 1000 / 18 - 50, 0.0]
    assert m["irmse_1km"] == pytest.approx(math.sqrt(sum(x * x for x in e) / 3))
    assert m["imae_1km"] == pytest.approx(sum(abs(x) for x in e) / 3)
    assert m["absrel"] == pytest.approx((1 / 10 + 2 / 20 + 0) / 3)
    assert m["delta1"] == pytest.approx(1.0)


def test_delta1_and_mask():
    gt = np.full((1, 4), 10.0)
    pred = np.array([[10.0, 12.4, 12.6, 7.0]])  # ratios 1, 1.24, 1.26, 1.43
    assert depth_metrics(pred, gt)["delta1"] == pytest.approx(0.5)
    only_first = np.array([[True, False, False, False]])
    m = depth_metrics(pred, gt, only_first)
    assert m["n_pixels"] == 1 and m["rmse_mm"] == 0.0 and m["delta1"] == 1.0


def test_nonpositive_prediction_is_clamped_not_inf():
    m = depth_metrics(np.array([[0.0]]), np.array([[2.0]]))
    assert m["imae_1km"] == pytest.approx(1000 / MIN_PRED_M - 500)
    assert all(np.isfinite(m[k]) for k in METRIC_KEYS)


def test_score_is_mean_over_images_not_pixels():
    a = depth_metrics(np.array([[11.0]]), np.array([[10.0]]))           # 1 px, 1000 mm
    b = depth_metrics(np.full((1, 3), 10.0), np.full((1, 3), 10.0))    # 3 px, 0 mm
    empty = depth_metrics(np.ones((2, 2)), np.zeros((2, 2)))
    agg = aggregate_metrics([a, b, empty])
    assert empty["n_pixels"] == 0 and math.isnan(empty["rmse_mm"])
    assert agg["n_images"] == 2
    assert agg["rmse_mm"] == pytest.approx(500.0) and agg["mae_mm"] == pytest.approx(500.0)
    assert agg["n_pixels"] == 4


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(np.ones((2, 3)), np.ones((3, 2)))
