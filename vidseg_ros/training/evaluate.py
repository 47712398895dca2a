"""Online evaluation: checkpoints run over a dataset's sequences frame by frame through ``Stream``, as in the node.

Each sequence (a bag, a Cityscapes snippet, a video) gets a fresh :class:`~vidseg_ros.runtime.stream.Stream`
per checkpoint (state carried from frame to frame, the model's key-frame policy, the node's reset rules).
The standard protocol: every labelled frame's mask is scored at the label's resolution into one confusion
matrix over the split; a class with neither ground truth nor prediction is NaN (null in JSON) and left out of
the mean, as cityscapesScripts does. TC pairs every two consecutive frames of a sequence, labelled or not. Times are the wall time of ``Stream.step`` (preprocessing, flow,
model and mask), split into key and non-key frames. Several checkpoints are interleaved frame by frame, so
their times come from the same stretch of the run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vidseg_ros.classes import ClassTable
from vidseg_ros.data.datasets.base import DatasetError, VideoDataset
from vidseg_ros.metrics import SequenceMetrics, confusion, iou_per_class, mean_iou, warp_labels
from vidseg_ros.models.twnet import DEFAULT_KEY_INTERVAL
from vidseg_ros.motion.flow import FlowError
from vidseg_ros.runtime.backends import select_backend
from vidseg_ros.runtime.checkpoint import file_hash, load_checkpoint, resolve_checkpoint
from vidseg_ros.runtime.segmenter import Segmenter, flow_image, resize_image
from vidseg_ros.runtime.steps import default_flow_hw
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


def as_dataset(
    data: VideoDataset | Sequence[PathLike], classes: Sequence[str], palette: Sequence[Sequence[int]]
):
    """``data`` itself, or bags whose labels hold train ids of ``classes``."""
    if isinstance(data, VideoDataset):
        return data
    from vidseg_ros.data.datasets.bag import BagDataset

    return BagDataset(list(data), ClassTable.simple(classes, palette))


def check_classes(dataset: VideoDataset, name: str, classes: Sequence[str]) -> None:
    """Raises DatasetError (one line) when a checkpoint's classes are not the dataset's."""
    if list(classes) != list(dataset.classes.names):
        raise DatasetError(
            f"{name} predicts {len(classes)} classes ({', '.join(classes[:4])}, ...) but {dataset.describe()} "
            f"has {len(dataset.classes)} ({', '.join(dataset.classes.names[:4])}, ...)"
        )


def _warm_up(segmenter: Segmenter, dataset: VideoDataset) -> None:
    """Every step built, then one key step and one non-key step per phase (TDNet: per sub-network) on a
    throw-away stream, so lazy initialisation is not timed.

    Without the build, an onnxruntime TDNet loaded each sub-network's session at its first frame in the timed
    run: TD2's non-key frames averaged 14.9 ms at 320x240, as PyTorch's, against about 5 ms per step.
    """
    segmenter.prepare_backend()
    stream = Stream(segmenter, max_gap_s=math.inf)
    for i, frame in enumerate(dataset.iter_frames(dataset.sequences[0])):
        try:
            stream.step(frame.image, frame.stamp_ns, frame_id=frame.frame_id, motion=frame.motion)
        except FlowError as e:
            w, h = segmenter.input_size
            raise FlowError(f"inference size {w}x{h}: {e}; raise --size or lower --flow-downscale") from e
        if i >= segmenter.model.phases:
            break


def _distance_curve(
    confusions: dict[int, np.ndarray], frames: dict[int, int], classes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``{"d": {"miou", "per_class_iou", "frames"}}`` from one confusion matrix per key distance ``d``."""
    return {
        str(d): {
            "miou": mean_iou(cm),
            "per_class_iou": dict(zip(classes, iou_per_class(cm).tolist(), strict=True)),
            "frames": frames[d],
        }
        for d, cm in sorted(confusions.items())
    }


class _Run:
    """One checkpoint's evaluation: its segmenter, a Stream per bag and the accumulated scores and times."""

    def __init__(
        self,
        checkpoint: PathLike,
        *,
        device: str | torch.device,
        input_size: tuple[int, int] | None,
        key_interval: int | None,
        key_distance: bool,
        flow_downscale: int,
        backend: str | None = None,
        label_backend: bool = False,
    ) -> None:
        self.path = resolve_checkpoint(checkpoint)
        model, self.meta = load_checkpoint(self.path, device=device)
        runner, self.backend_reason = None, ""
        if backend is not None:
            runner, self.backend_reason = select_backend(
                backend, model, threads=torch.get_num_threads(), model_hash=file_hash(self.path)
            )
        self.segmenter = Segmenter(
            model,
            self.meta,
            backend=runner,
            device=device,
            input_size=input_size or (0, 0),
            flow_downscale=flow_downscale,
        )
        self.name = self.path.stem + (f" [{self.segmenter.backend.name}]" if label_backend else "")
        if key_interval and model.method == "twnet":
            self.segmenter.key_interval = int(key_interval)
        self.classes = list(self.meta.classes)
        self.key_distance = key_distance
        self.total = SequenceMetrics(num_classes=len(self.classes))
        self.by_distance: dict[int, np.ndarray] = {}
        self.distance_frames: dict[int, int] = {}
        self.key_ms: list[float] = []
        self.nonkey_ms: list[float] = []
        self.stages: dict[str, float] = {}
        self.per_sequence: list[dict[str, Any]] = []

    def start_sequence(self) -> None:
        self.stream = Stream(self.segmenter)
        self.metrics = SequenceMetrics(num_classes=len(self.classes))
        self.distance = 0
        self.frames = 0

    def step(self, frame: Any) -> None:
        t0 = time.perf_counter()
        result = self.stream.step(frame.image, frame.stamp_ns, frame_id=frame.frame_id, motion=frame.motion)
        # Video input: the decode (done once, shared by all checkpoints) is charged to every method alike.
        elapsed = (time.perf_counter() - t0) * 1e3 + result.timings_ms.get("decode", 0.0)
        self.frames += 1
        (self.key_ms if result.is_key else self.nonkey_ms).append(elapsed)
        for stage, ms in result.timings_ms.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + ms
        self.distance = 0 if result.is_key else self.distance + 1
        self.metrics.update(result.mask, frame.labels, frame.image)
        if self.key_distance and frame.labels is not None:
            n = len(self.classes)
            cm = self.by_distance.setdefault(self.distance, np.zeros((n, n), np.int64))
            cm += confusion(result.mask, frame.labels, n)
            self.distance_frames[self.distance] = self.distance_frames.get(self.distance, 0) + 1

    def end_sequence(self, name: str) -> None:
        summary = self.metrics.summary(self.classes)
        self.per_sequence.append(
            {"sequence": name, "frames": self.frames, "resets": self.stream.resets, **_scores(summary)}
        )
        _merge(self.total, self.metrics)

    def result(self) -> dict[str, Any]:
        all_ms = self.key_ms + self.nonkey_ms
        summary = self.total.summary(self.classes)
        result: dict[str, Any] = {
            "checkpoint": str(self.path),
            "name": self.name,
            "method": self.meta.method,
            "arch": self.meta.arch,
            "input_size": list(self.segmenter.input_size),
            "key_interval": self.segmenter.key_interval,
            "device": str(self.segmenter.device),
            "backend": self.segmenter.backend.name,
            "backend_reason": self.backend_reason,
            "frames": len(all_ms),
            "labelled_frames": self.total.frames,
            "key_frames": len(self.key_ms),
            "nonkey_frames": len(self.nonkey_ms),
            **_scores(summary),
            "per_class_iou": summary["per_class_iou"],
            "per_class_tc": summary["per_class_tc"],
            "ms_per_frame": _mean(all_ms),
            "ms_key": _mean(self.key_ms),
            "ms_nonkey": _mean(self.nonkey_ms),
            "ms_p95": float(np.percentile(all_ms, 95)) if all_ms else None,
            "stage_ms": {k: v / max(1, len(all_ms)) for k, v in self.stages.items()},
            "per_sequence": self.per_sequence,
        }
        if self.key_distance:
            result["key_distance"] = _distance_curve(self.by_distance, self.distance_frames, self.classes)
        return json_safe(result)


def evaluate_checkpoints(
    checkpoints: Sequence[PathLike],
    data: VideoDataset | Sequence[PathLike],
    *,
    device: str | torch.device = "cpu",
    input_size: tuple[int, int] | None = None,
    key_interval: int | None = None,
    key_distance: bool = False,
    flow_downscale: int = 2,
    progress: bool = True,
    backends: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Scores checkpoints on ``data`` (a dataset, or bags labelled with the first checkpoint's classes);
    returns one JSON-ready dict each (see ``vidseg eval --help``).

    The checkpoints run interleaved: each frame goes through every checkpoint's stream before the next frame
    is read, so a machine that slows down or speeds up during the run affects all of them alike and their
    times compare (the ratios of one run). Each checkpoint's stream sees exactly the frames it would alone.

    ``backends`` (:data:`~vidseg_ros.runtime.backends.REQUESTS`) runs every checkpoint on each of them, as
    separate interleaved runs named ``<stem> [<backend>]``; by default each runs once on PyTorch on ``device``.

    ``key_interval`` overrides a TWNet checkpoint's interval, as the node's ``twnet.key_interval`` does;
    other methods keep their own policy. ``key_distance`` adds mIoU and per-class IoU per distance from the
    last key frame.

    Raises:
        DatasetError: A checkpoint whose classes are not the data's, or unreadable data.
    """
    runs = [
        _Run(
            checkpoint,
            device=device,
            input_size=input_size,
            key_interval=key_interval,
            key_distance=key_distance,
            flow_downscale=flow_downscale,
            backend=backend,
            label_backend=len(backends or ()) > 1,
        )
        for checkpoint in checkpoints
        for backend in (backends or [None])
    ]
    dataset = as_dataset(data, runs[0].meta.classes, runs[0].meta.palette)
    for run in runs:
        check_classes(dataset, str(run.path), run.classes)
    for run in runs:
        _warm_up(run.segmenter, dataset)
    sequences = dataset.sequences
    many = len(sequences) > 3  # one bar for the split rather than one per Cityscapes snippet
    outer = tqdm(sequences, desc=f"eval {dataset.format} {len(runs)} checkpoint(s)", unit="sequence",
                 disable=not (progress and many))  # fmt: skip
    for seq in outer:
        for run in runs:
            run.start_sequence()
        desc = f"eval {Path(seq.name).name} ({len(runs)} checkpoint{'s' * (len(runs) > 1)})"
        for frame in tqdm(dataset.iter_frames(seq), desc=desc, unit="frame", disable=not progress or many):
            for run in runs:
                run.step(frame)
        for run in runs:
            run.end_sequence(seq.name)
    return [run.result() for run in runs]


def evaluate_checkpoint(
    checkpoint: PathLike, data: VideoDataset | Sequence[PathLike], **options: Any
) -> dict[str, Any]:
    """:func:`evaluate_checkpoints` for one checkpoint."""
    return evaluate_checkpoints([checkpoint], data, **options)[0]


def propagate_labels(
    data: VideoDataset | Sequence[PathLike],
    *,
    input_size: tuple[int, int],
    classes: Sequence[str],
    key_interval: int = DEFAULT_KEY_INTERVAL,
    flow_downscale: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """How well the motion alone carries the ground truth, per class: no model involved.

    Every ``key_interval`` frames the bag's labels are taken as they are; on the frames between, the labels
    carried so far are warped along the node's DIS reverse flow (the same resize, flow size and preset as
    :class:`Segmenter`; nearest neighbour, border clamp) and scored against the frame's own labels at
    ``input_size`` (w, h). Per-class IoU against the distance from the key frame shows which classes the flow
    itself fails on, which is what the correction of a warping model has to make up for.
    """
    from vidseg_ros.motion.flow import DISFlow
    from vidseg_ros.training.data import resize_labels

    w, h = input_size
    flow_size = default_flow_hw((h, w), flow_downscale)[::-1]
    scale = np.array([w / flow_size[0], h / flow_size[1]], np.float32)
    n = len(classes)
    by_distance: dict[int, np.ndarray] = {}
    frames: dict[int, int] = {}
    dataset = as_dataset(data, classes, [[0, 0, 0]] * len(classes))
    for seq in dataset.sequences:
        dis = DISFlow(downscale=1.0)
        gray = carried = None
        for i, frame in enumerate(
            tqdm(dataset.iter_frames(seq), desc=f"propagate {Path(seq.name).name}", disable=not progress)
        ):
            previous, gray = gray, flow_image(resize_image(frame.image, input_size), flow_size)
            labels = resize_labels(frame.labels, input_size)
            distance = i % key_interval
            if distance == 0 or carried is None or previous is None:
                carried = labels
                continue
            flow = cv2.resize(dis(gray, previous).transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_LINEAR)
            carried = warp_labels(carried, flow * scale)
            if frame.labels is not None:
                by_distance.setdefault(distance, np.zeros((n, n), np.int64))
                by_distance[distance] += confusion(carried, labels, n)
                frames[distance] = frames.get(distance, 0) + 1
    return json_safe(
        {
            "input_size": [w, h],
            "key_interval": key_interval,
            "flow_downscale": flow_downscale,
            "key_distance": _distance_curve(by_distance, frames, classes),
        }
    )


def _scores(summary: dict[str, Any]) -> dict[str, Any]:
    return {"miou": summary["miou"], "tc": summary["tc"], "trimap_iou": summary["trimap_iou"]}
