"""Class ids of upsampled scores without upsampling them all: the same ids as PyTorch's bilinear upsampling
followed by the arg-max, on smooth and noisy scores, ties, odd ratios and NaNs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidseg_ros.runtime.class_ids import upsample_ids


def _reference(scores: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's ids of the upsampled scores, and the margin between each pixel's two best classes."""
    up = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    top2 = up.topk(2, dim=0).values
    return up.argmax(dim=0).to(torch.uint8), top2[0] - top2[1]


def _regions(classes: int, h: int, w: int, seed: int, noise: float) -> torch.Tensor:
    """Scores with regions, as a segmenter's logits have: coarse random fields enlarged, plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, max(1, h // 6), max(1, w // 6), generator=g) * 4
    fields = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return fields + noise * torch.randn(classes, h, w, generator=g)


@pytest.mark.parametrize(
    ("classes", "low", "factor", "noise"),
    [
        (9, (30, 40), 4, 0.3),
        (19, (17, 23), 4, 0.0),
        (4, (8, 8), 2, 1.0),
        (9, (12, 20), 8, 0.3),
        (9, (6, 9), 4, 10),
    ],
)
def test_the_ids_are_those_of_the_upsampled_scores(classes: int, low, factor: int, noise: float) -> None:
    for seed in range(3):
        scores = _regions(classes, *low, seed, noise)
        size = (low[0] * factor, low[1] * factor)
        ids = upsample_ids(scores, size)
        want, margin = _reference(scores, size)
        assert ids.dtype == np.uint8 and ids.shape == size
        differ = torch.from_numpy(ids) != want
        # Float rounding may only decide pixels whose two best classes are all but tied.
        assert not differ.any() or margin[differ].max() < 1e-5, (seed, int(differ.sum()))


def test_ties_go_to_the_first_class_as_in_an_arg_max() -> None:
    scores = torch.zeros(5, 6, 8)
    scores[2:, :3] = 1.0  # classes 2..4 tied in the top half: class 2
    ids = upsample_ids(scores, (24, 32))
    want, _ = _reference(scores, (24, 32))
    assert (torch.from_numpy(ids) == want).all()
    assert ids[0, 0] == 2 and ids[-1, -1] == 0


@pytest.mark.parametrize(("low", "size"), [((10, 10), (25, 25)), ((8, 6), (24, 18)), ((7, 9), (7, 9))])
def test_other_ratios_take_the_full_upsampling(low, size) -> None:
    """Non-integer (2.5), odd (3) and unit ratios: every score is upsampled (or none), with the same ids."""
    scores = _regions(6, *low, seed=5, noise=0.5)
    want, _ = _reference(scores, size)
    assert (torch.from_numpy(upsample_ids(scores, size)) == want).all()


def test_nan_scores_still_give_class_ids() -> None:
    scores = _regions(3, 6, 8, seed=1, noise=0.1)
    scores[:, 2:4, 3:5] = float("nan")
    ids = upsample_ids(scores, (24, 32))
    assert ids.shape == (24, 32) and ids.max() <= 2
