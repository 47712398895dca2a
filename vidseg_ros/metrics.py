"""Segmentation metrics: mIoU, per-class IoU, trimap IoU and temporal consistency (TC).

Everything accumulates confusion matrices, so a metric over a sequence is the IoU of the summed counts (the
standard definition), not a mean of per-frame IoUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from vidseg_ros.classes import IGNORE_INDEX


def confusion(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """``[C, C]`` counts, rows = ground truth, columns = prediction; ignore-label pixels are skipped."""
    keep = gt != IGNORE_INDEX
    if valid is not None:
        keep &= valid
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    inside = (g < num_classes) & (p < num_classes)
    return np.bincount(g[inside] * num_classes + p[inside], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both ground truth and prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    ious = iou_per_class(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def boundary_band(gt: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` px of a label boundary (the trimap band)."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(gt, kernel) != cv2.erode(gt, kernel)


def forward_flow(gray_t: np.ndarray, gray_next: np.ndarray) -> np.ndarray:
    """``[H, W, 2]`` flow with ``gray_t(x) ~ gray_next(x + f(x))`` (DIS, medium preset for accuracy)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(gray_t, gray_next, None)


def warp_labels(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``labels`` at ``x + flow(x)`` with nearest neighbour (ids must not be interpolated)."""
    h, w = labels.shape
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        labels,
        grid_x + flow[..., 0],
        grid_y + flow[..., 1],
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REPLICATE,
    )


@dataclass
class SequenceMetrics:
    """Accumulates metrics over frames given in order; call :meth:`reset_sequence` between sequences."""

    num_classes: int
    trimap_width: int = 2
    temporal: bool = True
    #: TC's flow runs on frames at most this wide (Cityscapes' 2048x1024 would cost ~0.3 s a frame); masks are
    #: shrunk to the same size by nearest neighbour.
    tc_max_width: int = 1024
    cm: np.ndarray = field(init=False)
    cm_trimap: np.ndarray = field(init=False)
    cm_tc: np.ndarray = field(init=False)
    frames: int = 0
    _prev: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        shape = (self.num_classes, self.num_classes)
        self.cm, self.cm_trimap, self.cm_tc = (
            np.zeros(shape, np.int64),
            np.zeros(shape, np.int64),
            np.zeros(shape, np.int64),
        )

    def reset_sequence(self) -> None:
        self._prev = None

    def update(self, pred: np.ndarray, gt: np.ndarray | None, rgb: np.ndarray | None = None) -> None:
        """Add one frame; ``gt`` None for an unlabelled frame (TC only); ``rgb`` is needed for TC."""
        if gt is not None:
            if pred.shape != gt.shape:
                raise ValueError(f"prediction {pred.shape} and labels {gt.shape} differ in size")
            self.frames += 1
            self.cm += confusion(pred, gt, self.num_classes)
            self.cm_trimap += confusion(pred, gt, self.num_classes, boundary_band(gt, self.trimap_width))
        if self.temporal and rgb is not None:
            h, w = rgb.shape[:2]
            if w > self.tc_max_width:
                size = (self.tc_max_width, max(1, round(h * self.tc_max_width / w)))
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                pred = cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST_EXACT)
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            if self._prev is not None:
                prev_pred, prev_gray = self._prev
                # TC: the prediction at t+1 warped back to t, compared with the prediction at t.
                warped = warp_labels(pred, forward_flow(prev_gray, gray))
                self.cm_tc += confusion(warped, prev_pred, self.num_classes)
            self._prev = (pred, gray)

    def summary(self, class_names: Sequence[str]) -> dict[str, object]:
        """Scores, plus per class (name -> value, None for a class absent from both sides): the IoU, and the
        TC, whose mean is ``tc``; it shows which classes flicker."""

        def by_class(cm: np.ndarray) -> dict[str, float | None]:
            values = iou_per_class(cm)
            return {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, values, strict=False)}

        return {
            "frames": self.frames,
            "miou": mean_iou(self.cm),
            "trimap_iou": mean_iou(self.cm_trimap),
            "tc": mean_iou(self.cm_tc) if self.cm_tc.any() else float("nan"),
            "per_class_iou": by_class(self.cm),
            "per_class_tc": by_class(self.cm_tc) if self.cm_tc.any() else dict.fromkeys(class_names),
        }
