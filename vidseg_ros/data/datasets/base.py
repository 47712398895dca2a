"""The one interface every dataset format implements: labelled clips for training, online sequences for eval.

A dataset is a list of :class:`VideoSequence` s. Each names the frame numbers it has (in recording order; the
numbers need not start at 0 or be contiguous across sequences) and which of them carry labels. Training takes
*labelled clips*: a labelled frame and the ``k`` frames before it, found by frame number. Evaluation runs each
sequence online, frame by frame, as the node would, and scores the labelled frames.

Formats live in their own modules (``bags``, ``cityscapes``, ``camvid``, ``folder``) and only implement how
frames and labels are found and read; validation of labels against the class table happens here, once.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from vidseg_ros.classes import ClassTable, LabelError
from vidseg_ros.motion.codec import CodecFrame


class DatasetError(ValueError):
    """A dataset that cannot be used: missing or incomplete folders, unreadable files, bad labels.

    The message is one line that names the file or folder and what was expected there.
    """


@dataclass(frozen=True)
class VideoSequence:
    """One run of consecutive frames.

    Attributes:
        name: Unique within the dataset (e.g. ``frankfurt_000000_000294``, ``0016E5``, a bag path).
        frames: Frame numbers present, ascending. Consecutive recorded frames differ by 1.
        labelled: Frame numbers that have labels (a subset of ``frames``).
        fps: Recording rate, for the stamps the online run sees (the node resets on gaps over 1 s).
    """

    name: str
    frames: tuple[int, ...]
    labelled: tuple[int, ...]
    fps: float = 30.0


@dataclass(frozen=True)
class ClipRef:
    """A labelled frame and the frames before it: ``frames[-1]`` is labelled, all consecutive by number."""

    sequence: int
    frames: tuple[int, ...]


@dataclass
class DatasetFrame:
    """One frame of an online run: RGB image, train-id labels or None, and a synthetic stamp.

    ``motion``: the decoded frame with its codec motion, for video input (see :class:`~vidseg_ros.motion.codec.CodecFrame`).
    """

    stamp_ns: int
    frame_id: str
    image: np.ndarray
    labels: np.ndarray | None
    number: int
    motion: CodecFrame | None = None


class VideoDataset(abc.ABC):
    """Base class of every format. Subclasses set ``classes`` and ``sequences`` in ``__init__``.

    Args:
        root: Dataset folder (or, for bags, one bag).
        split: Split name; each format documents its choices.
    """

    format: ClassVar[str] = ""
    #: Splits the format knows; ``None`` means any folder name.
    splits: ClassVar[tuple[str, ...] | None] = None
    #: Rendered rather than recorded (checkpoints trained only on such data say so in the node's log).
    synthetic: bool = False
    #: Frames come from a video decoder with codec motion (``DatasetFrame.motion``).
    video: bool = False

    classes: ClassTable
    sequences: list[VideoSequence]

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        if self.splits is not None and split not in self.splits:
            raise DatasetError(f"{self.format}: unknown split {split!r}; expected one of {list(self.splits)}")

    # ---- what a format implements -------------------------------------------------------------------

    @abc.abstractmethod
    def read_frames(self, seq: VideoSequence, numbers: Sequence[int]) -> list[np.ndarray]:
        """RGB ``[H, W, 3]`` uint8 frames ``numbers`` (consecutive, ascending) of ``seq``."""

    @abc.abstractmethod
    def label_path(self, seq: VideoSequence, number: int) -> Path:
        """The label file of frame ``number`` (which is in ``seq.labelled``)."""

    def read_raw_labels(self, seq: VideoSequence, number: int) -> np.ndarray:
        """Raw label values of frame ``number``; the default reads an index PNG."""
        return read_index_png(self.label_path(seq, number))

    def missing_context(self) -> str | None:
        """Why the dataset has no frames before its labelled ones (video methods need them), or None."""
        return None

    # ---- shared behaviour ---------------------------------------------------------------------------

    def read_labels(self, seq: VideoSequence, number: int) -> np.ndarray:
        """Train ids (uint8, :data:`~vidseg_ros.classes.IGNORE_INDEX` where unlabelled) of frame ``number``.

        Raises:
            DatasetError: Unreadable file, or a value outside the class table (naming file and value).
        """
        try:
            return self.classes.to_train_ids(
                self.read_raw_labels(seq, number), str(self.label_path(seq, number))
            )
        except LabelError as e:
            raise DatasetError(str(e)) from e

    def clips(self, context: int) -> list[ClipRef]:
        """Every labelled frame that has ``context`` consecutive frames before it, as a clip of ``context + 1``.

        Raises:
            DatasetError: ``context > 0`` on a dataset without preceding frames, or no labelled clip at all.
        """
        if context > 0 and (why := self.missing_context()):
            raise DatasetError(why)
        out = [ref for ref in self._windows(context) if isinstance(ref, ClipRef)]
        if not out:
            what = "labelled frames" if context == 0 else f"labelled frames with {context} frames before them"
            raise DatasetError(f"{self.describe()} has no {what}")
        return out

    def missing_before(self, context: int) -> list[tuple[str, int, int]]:
        """``(sequence, labelled frame, first missing frame number)`` of each labelled frame that lacks some of
        the ``context`` frames before it (left out of :meth:`clips`)."""
        return [ref for ref in self._windows(context) if not isinstance(ref, ClipRef)]

    def _windows(self, context: int) -> Iterator[ClipRef | tuple[str, int, int]]:
        for i, seq in enumerate(self.sequences):
            present = set(seq.frames)
            for n in seq.labelled:
                window = tuple(range(n - context, n + 1))
                missing = [f for f in window if f not in present]
                yield (seq.name, n, missing[-1]) if missing else ClipRef(i, window)

    def iter_frames(self, seq: VideoSequence, *, chunk: int = 8) -> Iterator[DatasetFrame]:
        """The frames of ``seq`` in order, with labels where it has them, as an online run sees them."""
        labelled = set(seq.labelled)
        period_ns = round(1e9 / seq.fps)
        frames = seq.frames
        for start in range(0, len(frames), chunk):
            # Read runs of consecutive numbers together (video formats decode them in one pass).
            numbers = frames[start : start + chunk]
            for run in _consecutive_runs(numbers):
                for number, image in zip(run, self.read_frames(seq, run), strict=True):
                    labels = self.read_labels(seq, number) if number in labelled else None
                    if labels is not None and labels.shape != image.shape[:2]:
                        raise DatasetError(
                            f"{self.label_path(seq, number)}: labels are {labels.shape[1]}x{labels.shape[0]} "
                            f"but the frame is {image.shape[1]}x{image.shape[0]}"
                        )
                    yield DatasetFrame(number * period_ns, self.frame_id(seq), image, labels, number)

    def frame_id(self, seq: VideoSequence) -> str:
        return "camera"

    def labelled_count(self) -> int:
        return sum(len(s.labelled) for s in self.sequences)

    def describe(self) -> str:
        return f"{self.format} {self.split} at {self.root}"


def _consecutive_runs(numbers: Sequence[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (8-bit colour or grey images; alpha dropped).

    Raises:
        DatasetError: Missing or unreadable file.
    """
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"cannot read image {path} (corrupt or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel label image, values unchanged: 8- or 16-bit grey, or the indices of a palette PNG.

    Pillow, not OpenCV: OpenCV expands palette PNGs (the usual format of index labels) into colours.

    Raises:
        DatasetError: Missing or unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetError(f"label file not found: {path}")
    try:
        with Image.open(path) as im:
            raw = np.array(im)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"cannot read label file {path} (corrupt or not an image)") from e
    if raw.dtype == np.int32:  # Pillow's mode "I" (16-bit PNGs on some versions)
        raw = raw.astype(np.uint16) if raw.min() >= 0 and raw.max() <= 65535 else raw
    return raw
