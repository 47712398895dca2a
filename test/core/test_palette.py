import numpy as np
import pytest

from vidseg_ros.classes import SYNTH_PALETTE
from vidseg_ros.palette import blend, colorize, overlay, palette_lut


def test_colorize_maps_ids_and_unknown_ids_to_black():
    lut = palette_lut(SYNTH_PALETTE)
    mask = np.array([[0, 8], [255, 3]], np.uint8)
    out = colorize(mask, lut)
    assert out[0, 0].tolist() == list(SYNTH_PALETTE[0])
    assert out[0, 1].tolist() == list(SYNTH_PALETTE[8])
    assert out[1, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (576, 768)])
def test_colorize_equals_table_indexing(shape):
    rng = np.random.default_rng(2)
    lut = rng.integers(0, 256, (256, 3), dtype=np.uint8)  # every id, every byte value
    mask = rng.integers(0, 256, shape, dtype=np.uint8)
    out = colorize(mask, lut)
    assert out.shape == (*shape, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, lut[mask])
    # Strided masks and other id types give the same colours.
    np.testing.assert_array_equal(colorize(mask[:, ::2], lut), lut[mask[:, ::2]])
    np.testing.assert_array_equal(colorize(mask.astype(np.int64), lut), lut[mask])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_overlay_matches_float_blend_and_the_integer_one_it_replaced(alpha):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    mask = rng.integers(0, len(SYNTH_PALETTE), (6, 9), dtype=np.uint8)
    lut = palette_lut(SYNTH_PALETTE)
    colours = lut[mask]
    expected = (1 - alpha) * rgb + alpha * colours.astype(float)
    out = overlay(rgb, mask, lut, alpha)
    assert out.dtype == np.uint8 and np.abs(out - expected).max() <= 0.5 + 1e-3
    a = int(round(alpha * 256))
    before = (rgb.astype(np.uint16) * (256 - a) + colours.astype(np.uint16) * a + 128) >> 8
    assert np.abs(out.astype(int) - before).max() <= 1
    np.testing.assert_array_equal(blend(rgb, colorize(mask, lut), alpha), out)


def test_overlay_rejects_size_mismatch():
    with pytest.raises(ValueError, match="differ in size"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), palette_lut(SYNTH_PALETTE))
    with pytest.raises(ValueError, match="differ in size"):
        blend(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
