"""Augmented clips: one draw per clip, labels aligned with pixels, flow of the augmented frames, sampling."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from vidseg_ros.classes import IGNORE_INDEX, SYNTH_PALETTE, SYNTH_TABLE
from vidseg_ros.data.datasets.base import VideoDataset, VideoSequence
from vidseg_ros.training.clips import AUGMENTS, Augment, ClipDataset, StepSampler, augment_clip, collate_clips


def blocks(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """Labels of random 20 px blocks of the 9 synthetic classes."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 9, (h // 20, w // 20)), np.ones((20, 20), np.int64)).astype(np.uint8)


def test_labels_stay_on_their_pixels_under_scale_crop_and_flip():
    labels = blocks()
    image = np.array(SYNTH_PALETTE, np.uint8)[labels]
    aug = Augment(scale=(0.5, 2.0), flip=True, jitter=0.0)
    scales = set()
    for seed in range(12):
        frames, ids = augment_clip([image], labels, (80, 60), aug, seed)
        inner = ids != IGNORE_INDEX
        expected = np.array(SYNTH_PALETTE)[np.minimum(ids, 8)]
        # A pixel's colour is its label's colour, except near block edges (interpolation mixes colours
        # there); the mirrored frame, a misalignment, fails this.
        assert np.mean(np.abs(frames[-1] - expected).sum(-1)[inner] < 6) > 0.7
        assert np.mean(np.abs(frames[-1][:, ::-1] - expected).sum(-1)[inner] < 6) < 0.3
        scales.add(bool((~inner).any()))
    assert scales == {True, False}  # some draws shrink (padding with ignore), some enlarge (a crop)


def test_every_frame_of_a_clip_gets_the_same_draw():
    labels = blocks()
    image = np.array(SYNTH_PALETTE, np.uint8)[labels]
    frames, _ = augment_clip([image, image.copy(), image.copy()], labels, (80, 60), AUGMENTS["full"], 3)
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[1], frames[2])
    other, _ = augment_clip([image], labels, (80, 60), AUGMENTS["full"], 4)
    assert not np.array_equal(frames[0], other[0])


class Shifted(VideoDataset):
    """One sequence of a textured frame moving right by ``shift`` px per frame; the last frame labelled."""

    format = "test"

    def __init__(self, shift: int, frames: int = 4) -> None:
        super().__init__(Path("."), "train")
        self.classes = SYNTH_TABLE
        self.shift = shift
        rng = np.random.default_rng(1)
        base = rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)
        self.base = np.kron(base, np.ones((4, 4, 1), np.uint8))  # 120x160, 4 px texture
        self.sequences = [VideoSequence("s", tuple(range(10, 10 + frames)), (10 + frames - 1,))]

    def read_frames(self, seq: VideoSequence, numbers: Sequence[int]) -> list[np.ndarray]:
        return [np.roll(self.base, self.shift * n, axis=1) for n in numbers]

    def label_path(self, seq: VideoSequence, number: int) -> Path:
        return Path("labels.png")

    def read_raw_labels(self, seq: VideoSequence, number: int) -> np.ndarray:
        return blocks()


def test_clip_items_carry_the_flow_of_the_augmented_frames():
    ds = Shifted(shift=6)
    clips = ds.clips(2)
    assert [c.frames for c in clips] == [(11, 12, 13)]
    items = ClipDataset(
        ds, clips, size=(160, 120), mean=[0.5] * 3, std=[0.25] * 3, augment=AUGMENTS["none"], flow_downscale=2
    )
    item = items[(0, 2, 0)]
    assert item["images"].shape == (3, 3, 120, 160) and item["flows"].shape == (3, 2, 60, 80)
    # Content moves right by 6 px a frame: each pixel was 6 px to the left before, 3 px at flow resolution.
    dx = item["flows"][1:, 0, 10:-10, 10:-10]
    assert float(dx.median()) == pytest.approx(-3.0, abs=0.5)
    assert (item["labels"][:-1] == IGNORE_INDEX).all() and (item["labels"][-1] != IGNORE_INDEX).any()
    mirrored = ClipDataset(
        ds, clips, size=(160, 120), mean=[0.5] * 3, std=[0.25] * 3, augment=AUGMENTS["flip"], flow_downscale=2
    )
    flipped = [mirrored[(0, 1, s)] for s in range(8)]
    signs = {round(float(f["flows"][1, 0, 10:-10, 10:-10].median())) for f in flipped}
    assert signs == {-3, 3}  # mirrored clips move left


def test_dataset_errors_come_back_as_one_line():
    class Broken(Shifted):
        def read_raw_labels(self, seq, number):
            return np.full((120, 160), 40, np.uint8)

    ds = Broken(shift=1)
    items = ClipDataset(ds, ds.clips(0), size=(80, 60), mean=[0.5] * 3, std=[0.25] * 3, augment=AUGMENTS["full"],
                        flow_downscale=None)  # fmt: skip
    err = collate_clips([items[(0, 0, 1)]])
    assert (
        isinstance(err, ValueError) and "labels.png" in str(err) and "40" in str(err) and "\n" not in str(err)
    )


def test_step_sampler_is_a_function_of_seed_and_step_and_ranks_split_the_batch():
    def keys(**kw):
        return list(StepSampler(50, batch=4, seed=3, distances=(1, 3), **kw))

    full = keys(start=0, stop=6)
    assert full == keys(start=0, stop=6) and full[2:] == keys(start=2, stop=6)
    assert {k[1] for b in full for k in b} <= {1, 2, 3} and all(len({k[1] for k in b}) == 1 for b in full)
    halves = [keys(start=0, stop=6, rank=r, world_size=2) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves, strict=True)] == full
    with pytest.raises(ValueError, match="multiple"):
        StepSampler(5, batch=3, seed=0, start=0, stop=1, distances=(0, 0), world_size=2)


def test_collate_is_time_first():
    ds = Shifted(shift=2)
    items = ClipDataset(ds, ds.clips(1), size=(80, 60), mean=[0.5] * 3, std=[0.25] * 3, augment=AUGMENTS["full"],
                        flow_downscale=2)  # fmt: skip
    batch = collate_clips([items[(0, 1, s)] for s in range(3)])
    assert batch.images.shape == (2, 3, 3, 60, 80) and batch.labels.shape == (2, 3, 60, 80)
    assert batch.flows.shape == (2, 3, 2, 30, 40) and batch.labels.dtype == torch.int64
