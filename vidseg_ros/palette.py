"""Class-id masks to colour images and overlays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def palette_lut(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """A 256-entry RGB lookup table; ids beyond the palette (e.g. the ignore label) map to black."""
    lut = np.zeros((256, 3), np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(colours) > 256:
        raise ValueError(f"a mono8 mask holds at most 256 classes, the palette has {len(colours)}")
    lut[: len(colours)] = colours
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``[H, W]`` uint8 class ids -> ``[H, W, 3]`` uint8 RGB, using a table from :func:`palette_lut`."""
    return lut[mask]


def overlay(rgb: np.ndarray, mask: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours over the image: ``(1 - alpha) * image + alpha * colour``."""
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"image {rgb.shape[:2]} and mask {mask.shape} differ in size")
    colours = lut[mask].astype(np.uint16)
    a = int(round(alpha * 256))
    # Integer blend: about 3x faster than float32 at 640x480 and within 1 LSB of it.
    return ((rgb.astype(np.uint16) * (256 - a) + colours * a + 128) >> 8).astype(np.uint8)
