import numpy as np
import pytest

from vidseg_ros.classes import IGNORE_INDEX
from vidseg_ros.metrics import SequenceMetrics, boundary_band, confusion, iou_per_class, mean_iou, warp_labels


def test_iou_by_hand():
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    ious = iou_per_class(confusion(pred, gt, 3))
    assert ious[0] == pytest.approx(1 / 2)
    assert ious[1] == pytest.approx(2 / 3)
    assert np.isnan(ious[2])  # absent everywhere: not averaged in
    assert mean_iou(confusion(pred, gt, 3)) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ignore_label_is_skipped():
    gt = np.array([[0, IGNORE_INDEX]], np.uint8)
    pred = np.array([[0, 1]], np.uint8)
    assert mean_iou(confusion(pred, gt, 2)) == 1.0


def test_boundary_band_width():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, 5:] = 1
    band = boundary_band(gt, 2)
    assert band[:, 3:7].all() and not band[:, :3].any() and not band[:, 7:].any()


def test_warp_labels_follows_flow():
    labels = np.zeros((6, 8), np.uint8)
    labels[:, 4:] = 1
    flow = np.zeros((6, 8, 2), np.float32)
    flow[..., 0] = 2  # sample two pixels to the right
    assert (warp_labels(labels, flow)[:, 2:] == 1).all() and (warp_labels(labels, flow)[:, :2] == 0).all()


def test_sequence_metrics_perfect_and_flicker():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    gt = np.zeros((48, 64), np.uint8)
    gt[:, 32:] = 1
    steady, flicker = SequenceMetrics(2), SequenceMetrics(2)
    for t in range(4):
        steady.update(gt, gt, base)
        noisy = gt.copy()
        if t % 2:
            noisy[:, 20:32] = 1  # the prediction flickers on alternate frames
        flicker.update(noisy, gt, base)
    s, f = steady.summary(["a", "b"]), flicker.summary(["a", "b"])
    assert s["miou"] == 1.0 and s["trimap_iou"] == 1.0 and s["tc"] == pytest.approx(1.0)
    assert f["tc"] < 0.9 and f["miou"] < 1.0


def test_per_class_tc_names_the_class_that_flickers():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    gt = np.zeros((48, 64), np.uint8)
    gt[:, 20:40], gt[:, 40:] = 1, 2
    metrics = SequenceMetrics(3)
    for t in range(4):
        pred = gt.copy()
        if t % 2:
            pred[:, 36:44] = 2 if t == 1 else 1  # classes 1 and 2 trade a band; class 0 never changes
        metrics.update(pred, gt, base)
    s = metrics.summary(["a", "b", "c"])
    tc = s["per_class_tc"]
    assert tc["a"] == pytest.approx(1.0) and tc["b"] < 0.9 and tc["c"] < 0.9
    assert np.mean(list(tc.values())) == pytest.approx(s["tc"])
    assert SequenceMetrics(3).summary(["a", "b", "c"])["per_class_tc"] == {"a": None, "b": None, "c": None}
