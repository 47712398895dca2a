"""Augmented labelled clips, read from any dataset format as training needs them (DataLoader workers).

A clip is a labelled frame and the frames before it (:meth:`VideoDataset.clips`). Every frame of a clip gets
the same augmentation, so the motion between them stays the motion of the recording:

1. resize to the model's input size, as the node does (:func:`~vidseg_ros.runtime.segmenter.resize_image`);
2. random scale in ``[0.5, 2.0]``, then a random crop of the input size (padded with ignore where the scaled
   frame is smaller);
3. random left-right flip;
4. colour jitter (brightness, contrast, saturation), one draw per clip.

Reverse flow is computed on the augmented frames exactly as :class:`~vidseg_ros.runtime.segmenter.Segmenter`
computes it in the node (DIS at ``input size / flow_downscale``), so a model trains on the inputs it will see.
Each sample is a function of ``(clip, distance, sample seed)`` only, so results do not depend on the number of
workers and a resumed run sees the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from vidseg_ros.classes import IGNORE_INDEX
from vidseg_ros.data.datasets.base import ClipRef, DatasetError, VideoDataset
from vidseg_ros.runtime.segmenter import flow_image, resize_image
from vidseg_ros.runtime.steps import default_flow_hw
from vidseg_ros.training.data import Batch


@dataclass(frozen=True)
class Augment:
    """Augmentation of a clip; :data:`AUGMENTS` names the presets."""

    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    #: Strength of brightness, contrast and saturation jitter (factors drawn in ``1 ± jitter``); 0 = off.
    jitter: float = 0.3


AUGMENTS: dict[str, Augment] = {
    "full": Augment(),
    "flip": Augment(scale=(1.0, 1.0), flip=True, jitter=0.0),
    "none": Augment(scale=(1.0, 1.0), flip=False, jitter=0.0),
}


@dataclass(frozen=True)
class _Draw:
    scale: float
    x: float  # crop position in [0, 1] of the free range
    y: float
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def _draw(aug: Augment, seed: int) -> _Draw:
    rng = np.random.default_rng(seed)
    lo, hi = aug.scale
    j = aug.jitter
    return _Draw(
        scale=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo,
        x=float(rng.random()),
        y=float(rng.random()),
        flip=bool(aug.flip and rng.random() < 0.5),
        brightness=float(rng.uniform(1 - j, 1 + j)),
        contrast=float(rng.uniform(1 - j, 1 + j)),
        saturation=float(rng.uniform(1 - j, 1 + j)),
    )


def _place(src: np.ndarray, size: tuple[int, int], d: _Draw, fill: int) -> np.ndarray:
    """``src`` (already at the scaled size) cropped, or padded with ``fill``, to ``size`` (w, h)."""
    w, h = size
    sh, sw = src.shape[:2]
    out = np.full((h, w, *src.shape[2:]), fill, src.dtype)
    # Where the scaled frame is larger, the crop moves over it; where smaller, the frame moves in the canvas.
    ox, oy = round(d.x * (sw - w)), round(d.y * (sh - h))
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + w, sw), min(oy + h, sh)
    out[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = src[y0:y1, x0:x1]
    return out


def _jitter(rgb: np.ndarray, d: _Draw) -> np.ndarray:
    if d.brightness == d.contrast == d.saturation == 1.0:
        return rgb
    x = rgb.astype(np.float32) * d.brightness
    x = (x - x.mean()) * d.contrast + x.mean()
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey[..., None]) * d.saturation + grey[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment_clip(
    images: Sequence[np.ndarray], labels: np.ndarray | None, size: tuple[int, int], aug: Augment, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The frames of a clip and the last frame's train ids, augmented alike, at ``size`` (w, h).

    Returns ``(frames [h, w, 3] uint8 each, labels [h, w] uint8)``; labels are all ignore when None.
    """
    d = _draw(aug, seed)
    w, h = size
    sw, sh = max(1, round(w * d.scale)), max(1, round(h * d.scale))
    frames = []
    for image in images:
        # The node's resize first (area when shrinking), then the random scale: the same two steps as run time.
        small = resize_image(resize_image(image, size), (sw, sh))
        small = _place(small, size, d, 0)
        frames.append(_jitter(small[:, ::-1] if d.flip else small, d))
    if labels is None:
        out = np.full((h, w), IGNORE_INDEX, np.uint8)
    else:
        ids = cv2.resize(labels, (sw, sh), interpolation=cv2.INTER_NEAREST_EXACT)
        out = _place(ids, size, d, IGNORE_INDEX)
        out = out[:, ::-1] if d.flip else out
    return [np.ascontiguousarray(f) for f in frames], np.ascontiguousarray(out)


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over ``(clip index, distance, seed)`` keys; see :class:`StepSampler`.

    An item is ``{"images": [T, 3, h, w] float, "labels": [T, h, w] int64, "flows": [T, 2, fh, fw] | None}``
    with ``T = distance + 1``; only the last frame is labelled. A :class:`DatasetError` is returned as
    ``{"error": message}`` rather than raised, so the main process reports it in one line (an exception raised
    in a worker comes back wrapped in a multi-line traceback).
    """

    def __init__(
        self,
        dataset: VideoDataset,
        clips: Sequence[ClipRef],
        *,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment,
        flow_downscale: int | None,
    ) -> None:
        self.dataset = dataset
        self.clips = list(clips)
        self.size = size
        self.augment = augment
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std).view(3, 1, 1) * 255.0
        self.flow_size = None if flow_downscale is None else default_flow_hw(size[::-1], flow_downscale)[::-1]
        self._dis = None

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Tensor | None | str]:
        index, distance, seed = key
        clip = self.clips[index]
        seq = self.dataset.sequences[clip.sequence]
        numbers = clip.frames[len(clip.frames) - distance - 1 :]
        try:
            raw = self.dataset.read_frames(seq, numbers)
            labels = self.dataset.read_labels(seq, numbers[-1])
            if labels.shape != raw[-1].shape[:2]:
                raise DatasetError(
                    f"{self.dataset.label_path(seq, numbers[-1])}: labels are {labels.shape[1]}x{labels.shape[0]} "
                    f"but the frame is {raw[-1].shape[1]}x{raw[-1].shape[0]}"
                )
        except DatasetError as e:
            return {"error": str(e)}
        frames, ids = augment_clip(raw, labels, self.size, self.augment, seed)
        images = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() for f in frames])
        target = torch.full((len(frames), *ids.shape), IGNORE_INDEX, dtype=torch.int64)
        target[-1] = torch.from_numpy(ids)
        return {"images": (images - self.mean) / self.std, "labels": target, "flows": self._flows(frames)}

    def _flows(self, frames: Sequence[np.ndarray]) -> Tensor | None:
        if self.flow_size is None:
            return None
        if self._dis is None:  # per worker process: OpenCV objects do not survive fork/pickle
            from vidseg_ros.motion.flow import DISFlow

            self._dis = DISFlow(downscale=1.0)
        greys = [flow_image(f, self.flow_size) for f in frames]
        fw, fh = self.flow_size
        flows = [np.zeros((2, fh, fw), np.float32)]
        flows += [self._dis(greys[t], greys[t - 1]) for t in range(1, len(greys))]
        return torch.from_numpy(np.stack(flows))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_dis"] = None
        return state


class StepSampler(torch.utils.data.Sampler):
    """Batch sampler: step ``s`` draws its distance and clips from a generator seeded by ``(seed, s)``.

    Each rank takes its slice of the same global batch, as :class:`~vidseg_ros.training.data.ClipSampler`.
    """

    def __init__(
        self,
        clips: int,
        *,
        batch: int,
        seed: int,
        start: int,
        stop: int,
        distances: tuple[int, int],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch < world_size or batch % world_size:
            raise ValueError(
                f"batch {batch} must be a positive multiple of the number of processes {world_size}"
            )
        self.clips, self.batch, self.seed = clips, batch, seed
        self.start, self.stop, self.distances = start, stop, distances
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        per_rank = self.batch // self.world_size
        for step in range(self.start, self.stop):
            rng = np.random.default_rng([self.seed, step])
            distance = int(rng.integers(self.distances[0], self.distances[1] + 1))
            picks = rng.integers(0, self.clips, size=self.batch)
            seeds = rng.integers(0, 2**31, size=self.batch)
            part = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
            yield [(int(c), distance, int(s)) for c, s in zip(picks[part], seeds[part], strict=True)]


def collate_clips(items: Sequence[dict[str, Tensor | None | str]]) -> Batch | DatasetError:
    """Stacks items time-first into a :class:`Batch`.

    Runs in the worker, so a dataset error is returned, not raised: the training loop raises it in one line.
    """
    for item in items:
        if "error" in item:
            return DatasetError(str(item["error"]))
    flows = [item["flows"] for item in items]
    return Batch(
        images=torch.stack([item["images"] for item in items], dim=1),  # type: ignore[misc]
        labels=torch.stack([item["labels"] for item in items], dim=1),  # type: ignore[misc]
        flows=None if flows[0] is None else torch.stack(flows, dim=1),  # type: ignore[arg-type]
    )


class StreamingClips:
    """Training batches of augmented clips from a dataset, loaded by ``workers`` processes ahead of the step."""

    def __init__(
        self,
        dataset: VideoDataset,
        *,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment,
        flow_downscale: int | None,
        distances: tuple[int, int],
        batch: int,
        seed: int,
        workers: int,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ) -> None:
        self.clips = ClipDataset(
            dataset,
            dataset.clips(distances[1]),
            size=size,
            mean=mean,
            std=std,
            augment=augment,
            flow_downscale=flow_downscale,
        )
        self.size, self.distances, self.batch, self.seed = size, distances, batch, seed
        self.workers, self.rank, self.world_size, self.pin_memory = workers, rank, world_size, pin_memory

    def __len__(self) -> int:
        return len(self.clips)

    def frames(self) -> int:
        return len(self.clips) * (self.distances[1] + 1)

    def labels(self, limit: int = 400) -> Tensor:
        """Train ids of up to ``limit`` labelled frames (evenly spread) at the training size, for class weights."""
        ds, clips = self.clips.dataset, self.clips.clips
        picks = np.unique(np.linspace(0, len(clips) - 1, min(limit, len(clips))).round().astype(int))
        out = []
        for i in picks:
            seq = ds.sequences[clips[i].sequence]
            ids = ds.read_labels(seq, clips[i].frames[-1])
            out.append(torch.from_numpy(cv2.resize(ids, self.size, interpolation=cv2.INTER_NEAREST_EXACT)))
        return torch.stack(out)

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, Batch]]:
        """``(distance, batch)`` of each step ``start .. stop - 1``."""
        sampler = StepSampler(
            len(self.clips),
            batch=self.batch,
            seed=self.seed,
            start=start,
            stop=stop,
            distances=self.distances,
            rank=self.rank,
            world_size=self.world_size,
        )
        loader = torch.utils.data.DataLoader(
            self.clips,
            batch_sampler=sampler,
            num_workers=self.workers,
            collate_fn=collate_clips,
            pin_memory=self.pin_memory,
            # No worker_init_fn that sets OpenCV or torch thread counts: in a worker forked from a process
            # whose thread pools have run, that call hung for good (the netwarp stage of a Cityscapes run).
        )
        for batch in loader:
            if isinstance(batch, DatasetError):
                raise batch
            yield batch.images.shape[0] - 1, batch
