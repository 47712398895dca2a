"""Raw image buffers (as carried by sensor_msgs/Image) to numpy arrays and back, without ROS.

Decoding validates every field a publisher can get wrong (size, step, encoding) and raises
:class:`ImageDecodeError` with a reason, so callers can log it and skip the frame.
"""

from __future__ import annotations

import numpy as np

#: Encoding -> (channels, index order that turns the pixel into RGB, or None for mono).
_LAYOUTS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)


class ImageDecodeError(ValueError):
    """A buffer that cannot be an image of the stated size and encoding."""


def decode_image(
    encoding: str, width: int, height: int, step: int, data: bytes | memoryview | np.ndarray
) -> np.ndarray:
    """Return the image as a ``[height, width, 3]`` uint8 RGB array.

    ``step`` is honoured (rows may be padded). All supported encodings have 8-bit channels, so
    ``is_bigendian`` does not change their byte layout. The result may be a view of ``data``; copy it
    before the buffer is reused.

    Raises:
        ImageDecodeError: unknown encoding, zero size, a step smaller than a row, or a data size other
            than ``step * height``.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(
            f"unsupported encoding '{encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    channels, order = layout
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"zero-size image ({width}x{height})")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is smaller than a row of {width} {encoding} pixels ({row_bytes} bytes)"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    needed = step * height
    if buf.size != needed:
        # sensor_msgs/Image requires len(data) == step * height; anything else means a field lies.
        what = "truncated data" if buf.size < needed else "data larger than step * height"
        raise ImageDecodeError(
            f"{what}: {buf.size} bytes for {width}x{height} {encoding} with step {step} (expected {needed})"
        )
    rows = buf.reshape(height, step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if order is None:
        return pixels
    return pixels[:, :, order]


def encode_image(array: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """Pack an RGB ``[H, W, 3]`` (or mono ``[H, W]``) uint8 array as ``encoding``; returns ``(data, step)``."""
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(f"unsupported encoding '{encoding}'")
    channels, order = layout
    if array.dtype != np.uint8:
        raise ImageDecodeError(f"expected uint8 pixels, got {array.dtype}")
    if channels == 1:
        mono = array if array.ndim == 2 else array[:, :, 0]
        out = mono
    else:
        rgb = array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2)
        if channels == 4:
            alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
            out = np.concatenate([rgb, alpha], axis=2)
            if order == (2, 1, 0):
                out = out[:, :, (2, 1, 0, 3)]
        else:
            out = rgb if order is None else rgb[:, :, order]
    out = np.ascontiguousarray(out)
    return out.tobytes(), out.shape[1] * channels
