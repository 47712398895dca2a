import pytest
import torch

from vidseg_ros.classes import IGNORE_INDEX
from vidseg_ros.training.losses import class_weights, cross_entropy


def test_class_weights_favour_rare_classes_with_unit_mean():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1 + [IGNORE_INDEX] * 50)
    w = class_weights(labels, 4)
    assert w[2] > w[1] > w[0]
    freq = torch.tensor([0.9, 0.09, 0.01, 0.0])
    assert float((w * freq).sum()) == pytest.approx(1.0, rel=1e-5)
    assert torch.isfinite(w).all()  # an absent class (3) gets a finite weight


def test_weighted_cross_entropy_matches_torch_mean_and_ignores_unlabelled():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0, :] = IGNORE_INDEX
    w = torch.tensor([0.5, 1.0, 3.0])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=w, ignore_index=IGNORE_INDEX)
    got = cross_entropy(logits, labels, w)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    got.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    all_ignored = torch.full((2, 4, 5), IGNORE_INDEX)
    assert float(cross_entropy(logits, all_ignored, w)) == 0.0
