"""Per-stream temporal state: the previous frame, the model's state, and the key-frame policy.

A :class:`Stream` turns a sequence of frames into masks exactly as the node does, so ``vidseg eval`` and the
node share one code path. It resets itself when the history can no longer be trusted: the stamp goes
backwards (a bag loop), the gap to the previous frame is too long, or the size, encoding or frame_id change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from vidseg_ros.models.base import State
from vidseg_ros.motion.codec import CodecFrame
from vidseg_ros.runtime.segmenter import FrameTensors, Segmenter


@dataclass
class StepResult:
    """A mask at the input's resolution, whether it came from a key step, and stage times in ms."""

    mask: np.ndarray
    is_key: bool
    timings_ms: dict[str, float]
    #: Why the state was reset before this frame, or None.
    reset_reason: str | None = None


@dataclass
class _History:
    stamp_ns: int
    shape: tuple[int, int]
    encoding: str
    frame_id: str
    frame: FrameTensors
    state: State
    since_key: int = 0


@dataclass
class Stream:
    """Temporal state of one input stream.

    Args:
        segmenter: The loaded model; several streams may share one.
        max_gap_s: A longer gap between stamps resets the state.
    """

    segmenter: Segmenter
    max_gap_s: float = 1.0
    resets: int = 0
    _history: _History | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Forget the history; the next frame is a key frame."""
        self._history = None

    def reset_reason(self, stamp_ns: int, shape: tuple[int, int], encoding: str, frame_id: str) -> str | None:
        """Why a frame with these properties cannot continue the current history, or None if it can."""
        h = self._history
        if h is None:
            return None
        if stamp_ns < h.stamp_ns:
            return f"stamp went backwards by {(h.stamp_ns - stamp_ns) / 1e9:.3f} s"
        gap = (stamp_ns - h.stamp_ns) / 1e9
        if gap > self.max_gap_s:
            return f"gap of {gap:.3f} s exceeds temporal.max_gap_s={self.max_gap_s:g}"
        if shape != h.shape:
            return f"size changed from {h.shape[1]}x{h.shape[0]} to {shape[1]}x{shape[0]}"
        if encoding != h.encoding:
            return f"encoding changed from {h.encoding} to {encoding}"
        if frame_id != h.frame_id:
            return f"frame_id changed from '{h.frame_id}' to '{frame_id}'"
        return None

    def _is_key(self, motion: CodecFrame | None) -> bool:
        h = self._history
        if h is None:
            return True
        if motion is not None and self.segmenter.uses_motion:  # codec motion: the I-frames are the key frames
            return motion.intra
        if h.frame.gray is None and self.segmenter.uses_motion:  # after codec frames: no image for DIS
            return True
        interval = self.segmenter.key_interval
        if interval == 1:
            return True
        return interval > 1 and h.since_key + 1 >= interval

    def step(
        self,
        rgb: np.ndarray,
        stamp_ns: int,
        *,
        encoding: str = "rgb8",
        frame_id: str = "",
        motion: CodecFrame | None = None,
    ) -> StepResult:
        """Segment one ``[H, W, 3]`` uint8 RGB frame, continuing (or resetting) the temporal state.

        ``motion`` is the frame as a video decoder gave it (``rgb`` is its image): the key frames are then its
        I-frames (and any frame after a reset), non-key frames take its codec flow instead of DIS, and its
        decode time is the ``decode`` stage.
        """
        shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        reason = self.reset_reason(stamp_ns, shape, encoding, frame_id)
        if reason is not None:
            self.reset()
            self.resets += 1
        seg = self.segmenter
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        frame = seg.prepare(rgb, for_flow=motion is None)
        tp = time.perf_counter()
        is_key = self._is_key(motion)
        flow = None
        h = self._history
        if not is_key and h is not None and seg.uses_motion:
            flow = seg.motion(frame, h.frame) if motion is None else seg.codec_motion(motion.flow)
        t1 = time.perf_counter()
        if is_key or h is None:
            logits, state = seg.key_step(frame)
            since_key = 0
        else:
            logits, state = seg.nonkey_step(frame, h.frame, flow, h.state)
            since_key = h.since_key + 1
        seg.synchronize()
        t2 = time.perf_counter()
        mask = seg.to_mask(logits, shape)
        t3 = time.perf_counter()

        if motion is not None:
            timings["decode"] = motion.decode_ms
        timings["preprocess"] = (tp - t0) * 1e3
        timings["motion"] = (t1 - tp) * 1e3
        timings["inference"] = (t2 - t1) * 1e3
        timings["postprocess"] = (t3 - t2) * 1e3
        self._history = _History(stamp_ns, shape, encoding, frame_id, frame, state, since_key)
        return StepResult(mask=mask, is_key=is_key, timings_ms=timings, reset_reason=reason)
