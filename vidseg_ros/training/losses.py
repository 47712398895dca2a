"""Losses of the three training stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vidseg_ros.classes import IGNORE_INDEX


def cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean pixel cross-entropy over labelled pixels, optionally class-weighted (normalised by the weights of
    the labelled pixels); 0 (with a gradient path) when none are labelled.

    ``F.cross_entropy(..., reduction="mean")`` would return NaN for an all-ignore batch and poison the step.
    """
    total = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = labels != IGNORE_INDEX
    norm = valid.sum() if weight is None else weight[labels[valid]].sum()
    return total / norm.clamp(min=1)


def class_weights(labels: Tensor, num_classes: int, c: float = 1.02) -> Tensor:
    """ENet-style weights ``1 / ln(c + frequency)``, scaled to a pixel-weighted mean of 1.

    Thin and small classes (poles, signs, people) cover a few per cent of the pixels; unweighted, a short
    CPU training budget never gets to them.
    """
    counts = torch.bincount(labels[labels != IGNORE_INDEX].reshape(-1).long(), minlength=num_classes)[
        :num_classes
    ]
    freq = counts.double() / counts.sum().clamp(min=1)
    w = 1.0 / torch.log(c + freq)
    w = w / (w * freq).sum().clamp(min=1e-12)
    return w.float()


def consistency(features: Tensor, target: Tensor) -> Tensor:
    """TWNet's L2 consistency: mean squared difference to the key-frame CNN's features (no gradient into it)."""
    return F.mse_loss(features, target.detach())
