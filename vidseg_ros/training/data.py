"""In-memory training data: every frame of the given bags, preprocessed once exactly as at run time.

This is the fast path for small recorded data without scale augmentation (``--augment flip``, the shipped
models' recipe); :mod:`vidseg_ros.training.clips` streams augmented clips of any dataset format.

Images go through :meth:`Segmenter.prepare` (the node's resize and normalisation) and flows through
:meth:`Segmenter.motion` (the node's DIS reverse flow at ``input_size / flow_downscale``), so a model is
trained on the very inputs it will see in the node. Flows are computed once per consecutive pair and kept.

Samples are *clips*: a start frame and ``distance`` following frames of one bag, in order (a clip never
crosses bags). Stage 1 uses clips of one frame; NetWarp and TWNet use the first frame as key frame and the
rest as non-key frames. Which clips form the batch of a step depends only on ``(seed, step)``, so training
is reproducible and resumable, and each rank takes its own slice of the same global batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from vidseg_ros.classes import IGNORE_INDEX
from vidseg_ros.data.datasets.base import DatasetError, VideoDataset, VideoSequence
from vidseg_ros.models.twnet import TWNetModel
from vidseg_ros.runtime.segmenter import Segmenter


class TrainingDataError(DatasetError):
    """Data that cannot be trained on: too short for the clips asked for."""


@dataclass
class FrameSequence:
    """One bag in memory: normalised images, label ids at the training size, and reverse flows.

    ``flows[i]`` is the flow from frame ``i`` to frame ``i - 1`` (``flows[0]`` is zeros and never used): DIS,
    or for video bags the codec's vectors. ``intra`` lists a video's I-frames, which have no vectors (zero
    flow here): a clip may start at one but not carry one as a non-key frame, as in an online run.
    """

    name: str
    images: Tensor  # [N, 3, H, W] float32
    labels: Tensor  # [N, H, W] uint8, IGNORE_INDEX where unlabelled
    flows: Tensor | None  # [N, 2, h, w] float32
    intra: tuple[int, ...] = ()
    #: TWNet stage 2: the frozen key CNN's warp-point features of each frame, and of each mirrored frame.
    key_features: Tensor | None = None
    key_features_flipped: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def resize_labels(labels: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """``labels`` at ``size`` (w, h) by centred nearest neighbour; all-ignore when there are none."""
    w, h = size
    if labels is None:
        return np.full((h, w), IGNORE_INDEX, np.uint8)
    if labels.shape != (h, w):
        # Centred nearest neighbour, consistent with the pixel-centre convention of the image resize.
        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return labels


def load_sequence(
    dataset: VideoDataset, seq: VideoSequence, segmenter: Segmenter, *, with_flow: bool
) -> FrameSequence:
    """Prepares all frames of ``seq`` (and flows, when ``with_flow``) on the CPU, as the node would."""
    images: list[Tensor] = []
    labels: list[np.ndarray] = []
    flows: list[Tensor] = []
    intra: list[int] = []
    previous = None
    for i, frame in enumerate(dataset.iter_frames(seq)):
        prepared = segmenter.prepare(frame.image)
        images.append(prepared.image[0].cpu())
        labels.append(resize_labels(frame.labels, segmenter.input_size))
        is_intra = frame.motion is not None and frame.motion.intra
        if is_intra:
            intra.append(i)
        if with_flow:
            if previous is None or is_intra:
                h, w = segmenter.flow_size[1], segmenter.flow_size[0]
                flows.append(torch.zeros(2, h, w))
            elif frame.motion is not None:
                flows.append(segmenter.codec_motion(frame.motion.flow)[0].cpu())
            else:
                flows.append(segmenter.motion(prepared, previous)[0].cpu())
            previous = prepared
    return FrameSequence(
        name=seq.name,
        images=torch.stack(images),
        labels=torch.from_numpy(np.stack(labels)),
        flows=torch.stack(flows) if with_flow else None,
        intra=tuple(intra),
    )


@dataclass
class Clip:
    """Frames ``start .. start + distance`` of sequence ``seq``, optionally mirrored left-right."""

    seq: int
    start: int
    flip: bool


@torch.no_grad()
def attach_key_features(
    sequences: Sequence[FrameSequence], model: TWNetModel, device: torch.device, *, chunk: int = 16
) -> None:
    """Caches the frozen key CNN's features of every frame (and mirrored frame) for TWNet stage 2.

    The key CNN is frozen in eval mode, so its features of a frame never change during stage 2; computing
    them once removes the key step and the L2 target from every training step. Mirroring is not an exact
    symmetry of a CNN, so mirrored frames get their own features.
    """
    point = model.warp_point
    model.key_cnn.eval()
    for seq in sequences:
        for flipped in (False, True):
            parts = []
            for i in range(0, len(seq), chunk):
                images = seq.images[i : i + chunk].to(device)
                parts.append(model.key_features(images.flip(-1) if flipped else images)[point].cpu())
            features = torch.cat(parts)
            if flipped:
                seq.key_features_flipped = features
            else:
                seq.key_features = features


def key_feature_bytes(sequences: Sequence[FrameSequence], model: TWNetModel) -> int:
    """Memory :func:`attach_key_features` would take (both orientations, float32)."""
    h, w = sequences[0].images.shape[-2:]
    stride = {"p4": 16, "p3": 8, "p2": 4}[model.warp_point]
    per_frame = model.key_cnn.decoder.channels * math.ceil(h / stride) * math.ceil(w / stride) * 4
    return 2 * per_frame * sum(len(s) for s in sequences)


@dataclass
class Batch:
    """A batch of clips, time first: ``images [T, B, 3, H, W]``, ``labels [T, B, H, W]`` (int64),
    ``flows [T, B, 2, h, w]`` or None, and cached key-CNN ``targets [T, B, C, h', w']`` or None.
    ``T = distance + 1``; index 0 is the key frame."""

    images: Tensor
    labels: Tensor
    flows: Tensor | None = None
    targets: Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        images, labels = self.images.to(device), self.labels.to(device)
        return Batch(images, labels, move(self.flows), move(self.targets))


class ClipSampler:
    """Draws the clips of each step from a generator seeded by ``(seed, step)``.

    Args:
        lengths: Frames per sequence.
        batch: Global batch size (all ranks together); must be divisible by ``world_size``.
        min_distance, max_distance: Non-key frames per clip; each step draws one distance for the whole
            batch, uniformly in ``[min_distance, max_distance]`` (0 for single frames).
        flip: Mirror each clip left-right with probability 0.5.
        barriers: Per sequence, frames that cannot be a clip's non-key frames (a video's I-frames).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        batch: int,
        seed: int,
        min_distance: int = 0,
        max_distance: int = 0,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        barriers: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if batch < world_size or batch % world_size:
            raise ValueError(
                f"batch {batch} must be a positive multiple of the number of processes {world_size}"
            )
        longest = max(lengths, default=0)
        if longest < min_distance + 1:
            raise TrainingDataError(
                f"clips need at least {min_distance + 1} consecutive frames but the longest bag has {longest}"
            )
        self.lengths = list(lengths)
        self.batch = batch
        self.seed = seed
        self.min_distance = min_distance
        self.max_distance = min(max_distance, longest - 1)
        self.flip = flip
        self.rank = rank
        self.world_size = world_size
        self.barriers = [sorted(b) for b in barriers] if barriers is not None else [[] for _ in lengths]

    def valid_starts(self, distance: int) -> list[np.ndarray]:
        """Per sequence, the first frames of the clips of ``distance`` non-key frames that cross no barrier."""
        out = []
        for n, barrier in zip(self.lengths, self.barriers, strict=True):
            starts = np.arange(max(0, n - distance))
            if barrier and len(starts):
                marks = np.zeros(n + 1, np.int64)
                marks[np.asarray(barrier) + 1] = 1
                seen = np.cumsum(marks)  # seen[k]: barriers among frames 0..k-1
                starts = starts[seen[starts + distance + 1] == seen[starts + 1]]  # none in s+1..s+distance
            out.append(starts)
        return out

    def sample(self, step: int) -> tuple[int, list[Clip]]:
        """``(distance, this rank's clips)`` for ``step``."""
        rng = np.random.default_rng([self.seed, step])
        distance = int(rng.integers(self.min_distance, self.max_distance + 1))
        valid = self.valid_starts(distance)
        starts = np.array([len(v) for v in valid])
        if not starts.sum():
            raise TrainingDataError(f"no clip of {distance} non-key frames avoids the I-frames of the videos")
        bounds = np.cumsum(starts)
        picks = rng.integers(0, int(bounds[-1]), size=self.batch)
        flips = rng.random(self.batch) < 0.5
        per_rank = self.batch // self.world_size
        clips = []
        for i in range(self.rank * per_rank, (self.rank + 1) * per_rank):
            seq = int(np.searchsorted(bounds, picks[i], side="right"))
            start = int(valid[seq][picks[i] - (bounds[seq - 1] if seq else 0)])
            clips.append(Clip(seq=seq, start=start, flip=bool(self.flip and flips[i])))
        return distance, clips


def collate(sequences: Sequence[FrameSequence], clips: Sequence[Clip], distance: int) -> Batch:
    """Stacks clips into a time-first :class:`Batch` (CPU tensors)."""
    images, labels, flows, targets = [], [], [], []
    for clip in clips:
        seq = sequences[clip.seq]
        window = slice(clip.start, clip.start + distance + 1)
        img, lab = seq.images[window], seq.labels[window]
        flo = None if seq.flows is None else seq.flows[window]
        cached = seq.key_features_flipped if clip.flip else seq.key_features
        if cached is not None:
            targets.append(cached[window])
        if clip.flip:
            img, lab = img.flip(-1), lab.flip(-1)
            if flo is not None:
                # Mirroring negates horizontal motion; pixel centres map onto pixel centres, so this is exact.
                flo = flo.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
        images.append(img)
        labels.append(lab)
        if flo is not None:
            flows.append(flo)
    return Batch(
        images=torch.stack(images, dim=1),
        labels=torch.stack(labels, dim=1).long(),
        flows=torch.stack(flows, dim=1) if flows else None,
        targets=torch.stack(targets, dim=1) if targets else None,
    )


class InMemoryClips:
    """Training batches from sequences held in memory, preprocessed once (see the module docstring)."""

    def __init__(
        self,
        dataset: VideoDataset,
        segmenter: Segmenter,
        *,
        with_flow: bool,
        distances: tuple[int, int],
        batch: int,
        seed: int,
        flip: bool,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = False,
    ) -> None:
        from tqdm import tqdm

        seqs = tqdm(dataset.sequences, desc="load", unit="sequence", disable=not progress)
        self.sequences = [load_sequence(dataset, s, segmenter, with_flow=with_flow) for s in seqs]
        self.sampler = ClipSampler(
            [len(s) for s in self.sequences],
            batch=batch,
            seed=seed,
            min_distance=distances[0],
            max_distance=distances[1],
            flip=flip,
            rank=rank,
            world_size=world_size,
            barriers=[s.intra for s in self.sequences],
        )

    def frames(self) -> int:
        return sum(len(s) for s in self.sequences)

    def labels(self) -> Tensor:
        return torch.cat([s.labels.reshape(-1) for s in self.sequences])

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, Batch]]:
        for step in range(start, stop):
            distance, clips = self.sampler.sample(step)
            yield distance, collate(self.sequences, clips, distance)
