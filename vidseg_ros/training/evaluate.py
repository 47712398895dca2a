"""Online evaluation: a checkpoint runs over bags frame by frame through ``Stream``, exactly as in the node.

Each bag gets a fresh :class:`~vidseg_ros.runtime.stream.Stream` (state carried from frame to frame, the
model's key-frame policy, the node's reset rules), and every frame's mask is scored against the bag's labels
at the image's resolution. Times are the wall time of ``Stream.step`` (preprocessing, flow, model and mask),
split into key and non-key frames.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vidseg_ros.metrics import SequenceMetrics, confusion, iou_per_class, mean_iou
from vidseg_ros.runtime.checkpoint import load_checkpoint, resolve_checkpoint
from vidseg_ros.runtime.segmenter import Segmenter
from vidseg_ros.runtime.stream import Stream

PathLike = str | os.PathLike[str]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _merge(total: SequenceMetrics, part: SequenceMetrics) -> None:
    total.cm += part.cm
    total.cm_trimap += part.cm_trimap
    total.cm_tc += part.cm_tc
    total.frames += part.frames


def _warm_up(segmenter: Segmenter, bag: PathLike) -> None:
    """One key and one non-key step on a throw-away stream, so lazy initialisation is not timed."""
    from vidseg_ros.data.bags import read_frames

    stream = Stream(segmenter, max_gap_s=math.inf)
    for i, frame in enumerate(read_frames(bag)):
        stream.step(frame.image, frame.stamp_ns, frame_id=frame.frame_id)
        if i >= 1:
            break


def evaluate_checkpoint(
    checkpoint: PathLike,
    bags: Sequence[PathLike],
    *,
    device: str | torch.device = "cpu",
    input_size: tuple[int, int] | None = None,
    key_interval: int | None = None,
    key_distance: bool = False,
    flow_downscale: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores one checkpoint on ``bags``; returns a JSON-ready dict (see ``vidseg eval --help``).

    ``key_interval`` overrides a TWNet checkpoint's interval, as the node's ``twnet.key_interval`` does;
    other methods keep their own policy. ``key_distance`` adds mIoU and per-class IoU per distance from the last key frame.
    """
    from vidseg_ros.data.bags import read_frames

    path = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(path, device=device)
    segmenter = Segmenter(
        model, meta, device=device, input_size=input_size or (0, 0), flow_downscale=flow_downscale
    )
    if key_interval and model.method == "twnet":
        segmenter.key_interval = int(key_interval)
    classes = list(meta.classes)
    n = len(classes)
    _warm_up(segmenter, bags[0])

    total = SequenceMetrics(num_classes=n)
    by_distance: dict[int, np.ndarray] = {}
    distance_frames: dict[int, int] = {}
    key_ms: list[float] = []
    nonkey_ms: list[float] = []
    stages: dict[str, float] = {}
    per_bag = []
    for bag in bags:
        stream = Stream(segmenter)
        metrics = SequenceMetrics(num_classes=n)
        distance = 0
        frames = 0
        for frame in tqdm(
            read_frames(bag), desc=f"{path.stem} {Path(bag).name}", unit="frame", disable=not progress
        ):
            t0 = time.perf_counter()
            result = stream.step(frame.image, frame.stamp_ns, frame_id=frame.frame_id)
            elapsed = (time.perf_counter() - t0) * 1e3
            frames += 1
            (key_ms if result.is_key else nonkey_ms).append(elapsed)
            for stage, ms in result.timings_ms.items():
                stages[stage] = stages.get(stage, 0.0) + ms
            distance = 0 if result.is_key else distance + 1
            if frame.labels is None:
                metrics.reset_sequence()  # TC pairs consecutive frames only
                continue
            metrics.update(result.mask, frame.labels, frame.image)
            if key_distance:
                cm = by_distance.setdefault(distance, np.zeros((n, n), np.int64))
                cm += confusion(result.mask, frame.labels, n)
                distance_frames[distance] = distance_frames.get(distance, 0) + 1
        summary = metrics.summary(classes)
        per_bag.append({"bag": str(bag), "frames": frames, "resets": stream.resets, **_scores(summary)})
        _merge(total, metrics)

    all_ms = key_ms + nonkey_ms
    summary = total.summary(classes)
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "name": path.stem,
        "method": meta.method,
        "arch": meta.arch,
        "input_size": list(segmenter.input_size),
        "key_interval": segmenter.key_interval,
        "device": str(segmenter.device),
        "frames": len(all_ms),
        "labelled_frames": total.frames,
        "key_frames": len(key_ms),
        "nonkey_frames": len(nonkey_ms),
        **_scores(summary),
        "per_class_iou": summary["per_class_iou"],
        "ms_per_frame": _mean(all_ms),
        "ms_key": _mean(key_ms),
        "ms_nonkey": _mean(nonkey_ms),
        "ms_p95": float(np.percentile(all_ms, 95)) if all_ms else None,
        "stage_ms": {k: v / max(1, len(all_ms)) for k, v in stages.items()},
        "per_bag": per_bag,
    }
    if key_distance:
        result["key_distance"] = {
            str(d): {
                "miou": mean_iou(by_distance[d]),
                "per_class_iou": dict(zip(classes, iou_per_class(by_distance[d]).tolist(), strict=True)),
                "frames": distance_frames[d],
            }
            for d in sorted(by_distance)
        }
    return json_safe(result)


def _scores(summary: dict[str, Any]) -> dict[str, Any]:
    return {"miou": summary["miou"], "tc": summary["tc"], "trimap_iou": summary["trimap_iou"]}
