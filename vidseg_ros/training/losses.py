"""Losses of the three training stages."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vidseg_ros.classes import IGNORE_INDEX


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean pixel cross-entropy over labelled pixels; 0 (with a gradient path) when none are labelled.

    ``F.cross_entropy(..., reduction="mean")`` would return NaN for an all-ignore batch and poison the step.
    """
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / valid


def consistency(features: Tensor, target: Tensor) -> Tensor:
    """TWNet's L2 consistency: mean squared difference to the key-frame CNN's features (no gradient into it)."""
    return F.mse_loss(features, target.detach())
