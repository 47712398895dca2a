"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def frames() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image_t, image_{t-1}, reverse flow at half resolution) for a batch of 2 at 64x96."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 64, 96, generator=g)
    prev = torch.randn(2, 3, 64, 96, generator=g)
    flow = torch.randn(2, 2, 32, 48, generator=g) * 2.0
    return image, prev, flow
