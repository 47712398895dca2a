"""Rolling statistics for the node's diagnostics: rates, drops, latency percentiles and stage means.

Pure Python, so the health rules (when the node reports WARN) are tested without ROS.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN = "OK", "WARN"


@dataclass
class HealthReport:
    level: str
    message: str
    values: dict[str, str]


@dataclass
class NodeStats:
    """Counts events over a sliding window of ``window_s`` seconds, plus totals since start.

    All times are monotonic seconds supplied by the caller, which keeps the class deterministic in tests.
    Every container is bounded: a window holds at most ``max_samples`` events.
    """

    window_s: float = 5.0
    max_samples: int = 2048
    inputs: int = 0
    outputs: int = 0
    dropped: int = 0
    skipped: int = 0
    resets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _in_times: deque[float] = field(default_factory=deque, repr=False)
    _out: deque[tuple[float, float, float, dict[str, float]]] = field(default_factory=deque, repr=False)
    _drop_times: deque[float] = field(default_factory=deque, repr=False)
    _stamps: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        self._in_times = deque(maxlen=self.max_samples)
        self._out = deque(maxlen=self.max_samples)
        self._drop_times = deque(maxlen=self.max_samples)
        self._stamps = deque(maxlen=self.max_samples)

    def on_input(self, now: float, stamp_ns: int | None = None) -> None:
        """A frame arrived at ``now``; its header stamp feeds the estimate of frames lost before the node."""
        with self._lock:
            self.inputs += 1
            self._in_times.append(now)
            if stamp_ns is not None:
                self._stamps.append((now, int(stamp_ns)))

    def on_drop(self, now: float) -> None:
        with self._lock:
            self.dropped += 1
            self._drop_times.append(now)

    def on_skip(self) -> None:
        with self._lock:
            self.skipped += 1

    def on_reset(self) -> None:
        with self._lock:
            self.resets += 1

    def on_output(
        self, now: float, latency_ms: float, node_latency_ms: float, stages_ms: dict[str, float]
    ) -> None:
        """``latency_ms`` runs from the header stamp, ``node_latency_ms`` from the frame's arrival."""
        with self._lock:
            self.outputs += 1
            self._out.append((now, latency_ms, node_latency_ms, dict(stages_ms)))

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        for q in (self._in_times, self._drop_times):
            while q and q[0] < start:
                q.popleft()
        while self._stamps and self._stamps[0][0] < start:
            self._stamps.popleft()
        while self._out and self._out[0][0] < start:
            self._out.popleft()

    def report(
        self, now: float, *, expected_rate: float, drop_warn_ratio: float, pause_s: float = 1.0
    ) -> HealthReport:
        """Summarise the window; WARN when the output rate is under ``expected_rate``, or when the frames
        dropped by the node, or those estimated lost before it (:func:`upstream_loss`), exceed
        ``drop_warn_ratio``. Stamp gaps over ``pause_s`` count as pauses, not loss."""
        with self._lock:
            self._trim(now)
            lost, period_s = upstream_loss([s for _, s in self._stamps], pause_s=pause_s)
            arrived = len(self._stamps)
            span = self.window_s
            in_rate = len(self._in_times) / span
            out_rate = len(self._out) / span
            window_drops = len(self._drop_times)
            lat = np.array([o[1] for o in self._out]) if self._out else np.zeros(0)
            node_lat = np.array([o[2] for o in self._out]) if self._out else np.zeros(0)
            stage_sums: dict[str, list[float]] = {}
            for _, _, _, stages in self._out:
                for k, v in stages.items():
                    stage_sums.setdefault(k, []).append(v)
            totals = (self.inputs, self.outputs, self.dropped, self.skipped, self.resets)

        values = {
            "input_rate_hz": f"{in_rate:.2f}",
            "output_rate_hz": f"{out_rate:.2f}",
            "frames_in": str(totals[0]),
            "frames_out": str(totals[1]),
            "dropped_frames": str(totals[2]),
            "dropped_in_window": str(window_drops),
            "skipped_bad_frames": str(totals[3]),
            "state_resets": str(totals[4]),
            "upstream_lost_in_window": str(lost),
            "upstream_loss_ratio": f"{lost / (lost + arrived):.3f}" if arrived else "nan",
            "stamp_period_ms": f"{period_s * 1e3:.2f}" if period_s else "nan",
        }
        for name, arr in (("latency", lat), ("node_latency", node_lat)):
            for label, q in (("p50", 50), ("p95", 95), ("max", 100)):
                values[f"{name}_{label}_ms"] = f"{np.percentile(arr, q):.2f}" if arr.size else "nan"
        for k, v in sorted(stage_sums.items()):
            values[f"mean_{k}_ms"] = f"{float(np.mean(v)):.2f}"

        problems = []
        if out_rate < expected_rate:
            problems.append(
                f"output rate {out_rate:.1f} Hz below expected {expected_rate:g} Hz"
                + (" (no input)" if in_rate == 0 else "")
            )
        received = window_drops + len(lat)
        if received and window_drops / received > drop_warn_ratio:
            problems.append(f"dropping {window_drops}/{received} frames in the last {span:g} s")
        if arrived and lost / (lost + arrived) > drop_warn_ratio:
            problems.append(
                f"an estimated {lost}/{lost + arrived} frames lost before the node in the last {span:g} s "
                "(gaps in header stamps; a best_effort subscription loses large images, see qos.reliability)"
            )
        if problems:
            return HealthReport(WARN, "; ".join(problems), values)
        return HealthReport(OK, f"segmenting at {out_rate:.1f} Hz", values)


def upstream_loss(
    stamps_ns: list[int], *, pause_s: float = 1.0, min_gaps: int = 4, min_share: float = 0.05
) -> tuple[int, float]:
    """Frames missing from a stream of header stamps: ``(estimated lost frames, period in s)``.

    The period is the shortest gap that recurs: at least 3 gaps, and ``min_share`` of them, within 20% of
    it, with most gaps (80%) near a whole multiple of it. Not the median gap: best-effort DDS over loopback
    lost about every other 640x480 frame here, so the median gap was two periods; the few frames that did
    arrive back to back still showed the camera's period. A gap of ``k`` periods means ``k - 1`` frames never
    arrived (``round`` absorbs jitter). Gaps that are not forward steps (a bag loop, a repeated stamp) and
    gaps over ``pause_s`` (a paused camera; the node resets its state there too) are not counted. Fewer than
    ``min_gaps`` usable gaps give ``(0, 0.0)``: no estimate yet. A loss so regular that no two frames ever
    arrive back to back reads as a slower camera: the stamps alone cannot tell them apart.
    """
    gaps = np.diff(np.asarray(stamps_ns, np.int64)) / 1e9 if len(stamps_ns) > 1 else np.zeros(0)
    gaps = gaps[(gaps > 0) & (gaps <= pause_s)]
    if gaps.size < min_gaps:
        return 0, 0.0
    ordered = np.sort(gaps)
    near = np.searchsorted(ordered, ordered * 1.2, side="right") - np.searchsorted(ordered, ordered * 0.8)
    period = float(np.median(gaps))
    for i in np.flatnonzero(near >= max(3, min_share * gaps.size)):
        candidate = float(np.median(gaps[np.abs(gaps - ordered[i]) <= 0.2 * ordered[i]]))
        multiples = gaps / candidate
        if np.mean(np.abs(multiples - np.rint(multiples)) <= 0.25) >= 0.8:
            period = candidate
            break
    missing = np.maximum(np.rint(gaps / period) - 1, 0)
    return int(missing.sum()), period
