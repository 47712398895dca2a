"""Tests of the DIS reverse-flow wrapper: direction, magnitude and output resolution."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vidseg_ros.motion.flow import DISFlow, FlowError
from vidseg_ros.motion.warp import warp


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture: enough structure everywhere for a patch search."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    big = cv2.resize(small, (w + 16, h + 16), interpolation=cv2.INTER_CUBIC)
    return big


@pytest.mark.parametrize("downscale", [1.0, 2.0])
def test_reverse_flow_direction_and_magnitude(downscale: float) -> None:
    h, w, mx, my = 128, 160, 6, -4
    canvas = _texture(h, w)
    # The scene moves by (mx, my) from t-1 to t: cur[y, x] = prev[y - my, x - mx].
    prev = np.ascontiguousarray(canvas[8 : 8 + h, 8 : 8 + w])
    cur = np.ascontiguousarray(canvas[8 - my : 8 - my + h, 8 - mx : 8 - mx + w])
    np.testing.assert_array_equal(cur[10:-10, 10:-10], prev[10 - my : h - 10 - my, 10 - mx : w - 10 - mx])

    dis = DISFlow(preset="fast", downscale=downscale)
    flow = dis(cur, prev)
    oh, ow = dis.output_size(h, w)
    assert flow.shape == (2, oh, ow) and flow.dtype == np.float32
    # Reverse flow points from a pixel of t to where it was in t-1: (-mx, -my) in full-res pixels.
    inner = flow[:, oh // 4 : 3 * oh // 4, ow // 4 : 3 * ow // 4]
    med = np.median(inner.reshape(2, -1), axis=1)
    np.testing.assert_allclose(med, [-mx / downscale, -my / downscale], atol=0.35)


def test_flow_warps_previous_frame_onto_current() -> None:
    h, w, dx, dy = 96, 128, 3, 2
    canvas = _texture(h, w, seed=1).astype(np.float32)
    prev = canvas[8 : 8 + h, 8 : 8 + w]
    cur = canvas[8 - dy : 8 - dy + h, 8 - dx : 8 - dx + w]
    flow = DISFlow(downscale=2.0)(cur.astype(np.uint8), prev.astype(np.uint8))
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # noqa: E731
    warped = warp(to_t(prev), torch.from_numpy(flow)[None])[0].permute(1, 2, 0).numpy()
    inner = (slice(16, -16), slice(16, -16))
    err_warped = np.abs(warped[inner] - cur[inner]).mean()
    err_static = np.abs(prev[inner] - cur[inner]).mean()
    assert err_warped < 0.25 * err_static


def test_rejects_bad_frames() -> None:
    dis = DISFlow()
    with pytest.raises(FlowError):
        dis(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(FlowError):
        dis(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="preset"):
        DISFlow(preset="slow")
    with pytest.raises(ValueError, match="downscale"):
        DISFlow(downscale=0.5)


def test_accepts_gray_frames() -> None:
    g = _texture(64, 64)[:64, :64, 0].copy()
    assert DISFlow(downscale=4)(g, g).shape == (2, 16, 16)
