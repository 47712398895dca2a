import numpy as np
import pytest

from vidseg_ros.classes import SYNTH_PALETTE
from vidseg_ros.palette import colorize, overlay, palette_lut


def test_colorize_maps_ids_and_unknown_ids_to_black():
    lut = palette_lut(SYNTH_PALETTE)
    mask = np.array([[0, 8], [255, 3]], np.uint8)
    out = colorize(mask, lut)
    assert out[0, 0].tolist() == list(SYNTH_PALETTE[0])
    assert out[0, 1].tolist() == list(SYNTH_PALETTE[8])
    assert out[1, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_overlay_matches_float_blend(alpha):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    mask = rng.integers(0, len(SYNTH_PALETTE), (6, 9), dtype=np.uint8)
    lut = palette_lut(SYNTH_PALETTE)
    expected = (1 - alpha) * rgb + alpha * lut[mask].astype(float)
    out = overlay(rgb, mask, lut, alpha)
    assert np.abs(out.astype(float) - expected).max() <= 1.0


def test_overlay_rejects_size_mismatch():
    with pytest.raises(ValueError, match="differ in size"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), palette_lut(SYNTH_PALETTE))
