"""Dense reverse optical flow from OpenCV's DIS (Dense Inverse Search).

The models consume *reverse* flow: for a pixel ``x`` of frame t, ``x + flow(x)`` is where that pixel was in
frame t-1. :class:`DISFlow` computes it on down-scaled grayscale frames, which is where DIS is fast (a few
milliseconds at VGA), and returns it in pixels of the down-scaled resolution;
:func:`vidseg_ros.motion.warp.warp` rescales it to whatever map it warps.
"""

from __future__ import annotations

import cv2
import numpy as np

PRESETS: dict[str, int] = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class FlowError(ValueError):
    """Raised for frames the flow source cannot handle (wrong shape, dtype or mismatched sizes)."""


class DISFlow:
    """Reverse DIS optical flow between consecutive RGB frames.

    One instance holds an OpenCV DIS object, which is not thread-safe: use one instance per stream/thread.

    Args:
        preset: ``"ultrafast"`` (default), ``"fast"`` or ``"medium"``.
        downscale: Factor by which frames are shrunk before computing flow (>= 1). The output size is
            ``(round(H / downscale), round(W / downscale))``, see :meth:`output_size`.
    """

    def __init__(self, preset: str = "ultrafast", downscale: float = 2.0) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; expected one of {sorted(PRESETS)}")
        if not downscale >= 1.0:
            raise ValueError(f"downscale must be >= 1, got {downscale}")
        self.preset = preset
        self.downscale = float(downscale)
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Size (h, w) of the flow returned for frames of ``height`` x ``width``."""
        return max(1, round(height / self.downscale)), max(1, round(width / self.downscale))

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype != np.uint8:
            raise FlowError(f"frames must be uint8, got {frame.dtype}")
        if frame.ndim == 3 and frame.shape[2] == 3:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        elif frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
            gray = frame.reshape(frame.shape[0], frame.shape[1])
        else:
            raise FlowError(f"frames must be HxWx3 RGB or HxW gray, got shape {frame.shape}")
        h, w = self.output_size(*gray.shape)
        if (h, w) != gray.shape:
            # INTER_AREA averages, which avoids aliasing that would mislead the patch search.
            gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(gray)

    def __call__(self, frame: np.ndarray, prev_frame: np.ndarray) -> np.ndarray:
        """Computes reverse flow from ``frame`` (t) to ``prev_frame`` (t-1).

        Args:
            frame: Current frame, ``uint8`` ``[H, W, 3]`` RGB (or ``[H, W]`` gray).
            prev_frame: Previous frame, same shape.

        Returns:
            ``float32`` array ``[2, h, w]`` (dx, dy) in pixels of the down-scaled resolution ``(h, w)``,
            such that ``frame[x] ~ prev_frame[x + flow(x)]``.
        """
        if frame.shape != prev_frame.shape:
            raise FlowError(f"frame shapes differ: {frame.shape} vs {prev_frame.shape}")
        # DIS.calc(I0, I1) returns f with I0(x) ~ I1(x + f(x)); I0 = current frame gives reverse flow.
        current, previous = self._gray(frame), self._gray(prev_frame)
        try:
            flow = self._dis.calc(current, previous, None)
        except cv2.error as e:  # DIS refuses frames smaller than its patches (about 12x12)
            h, w = current.shape
            raise FlowError(f"DIS cannot compute flow on {w}x{h} frames (too small)") from e
        return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)
