"""Your own labelled video: a folder per sequence with its frames (or one video file) and some label PNGs.

Layout (``split`` is any subfolder name, e.g. ``train`` and ``val``)::

    ROOT/classes.yaml                # see vidseg_ros.classes.load_classes_yaml; optional `fps: 30` key at top level
    ROOT/{split}/{sequence}/         # one folder per sequence (any name)
        frames/000000.png ...        # image files (.png/.jpg/.jpeg/.bmp); the frame number is the last run of digits in the stem
        video.mp4                    # ...OR exactly one video file (.mp4/.avi/.mkv/.mov/.webm, any name) instead of frames/;
                                     #    frame n is the n-th decoded frame (0-based)
        labels/000123.png            # index PNGs for some frames, numbered like the frames

Label PNGs hold the raw values of ``classes.yaml`` (by default a class's row position, ``ignore: [255]``). The
frame numbers of image frames need not start at 0; consecutive frames differ by 1, and a gap in the numbers is
a cut (clips never span it). ``fps`` sets the stamps of the online evaluation run (the node resets on gaps over
1 s); without it, a video's own frame rate is used, and 30 for image frames. A sequence without ``labels/``
is allowed but gives no clips or scores; a split needs at least one label file.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vidseg_ros.classes import LabelError, load_classes_yaml
from vidseg_ros.data.datasets.base import DatasetError, VideoDataset, VideoSequence, read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
DEFAULT_FPS = 30.0
#: Videos kept open per process (sequential reads continue without seeking).
_OPEN_VIDEOS = 4

_LAST_DIGITS = re.compile(r"(\d+)\D*$")
#: Decoded frame counts by (path, size, mtime), so a dataset opened twice in one process counts once.
_COUNTS: dict[tuple[str, int, int], int] = {}


@dataclass(frozen=True)
class _Source:
    folder: Path
    images: dict[int, Path] | None
    video: Path | None
    labels: dict[int, Path]


class FolderDataset(VideoDataset):
    """Sequences of image frames or videos with index-PNG labels, classes from ``ROOT/classes.yaml``.

    Args:
        root: The folder holding ``classes.yaml`` and the split folders.
        split: Any subfolder of ``root``.

    Raises:
        DatasetError: A missing or invalid ``classes.yaml``, split or sequence folder, or a label without frame.
    """

    format = "folder"
    splits = None

    def __init__(self, root: str | Path, split: str) -> None:
        super().__init__(root, split)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        yaml_path = self.root / "classes.yaml"
        try:
            self.classes = load_classes_yaml(yaml_path)
        except LabelError as e:
            raise DatasetError(str(e)) from e
        fps = _read_fps(yaml_path)
        split_dir = self.root / split
        layout = f"{split_dir}/<sequence>/ with frames/ (or one video) and labels/"
        if not split_dir.is_dir():
            raise DatasetError(f"split folder not found: expected {layout}")
        folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DatasetError(f"{split_dir} has no sequence folders: expected {layout}")

        self._sources: dict[str, _Source] = {}
        self.sequences = []
        for folder in folders:
            src = _scan(folder)
            if src.video is not None:
                count, video_fps = video_info(src.video)
                frames: tuple[int, ...] = tuple(range(count))
                for n, path in src.labels.items():
                    if n >= count:
                        raise DatasetError(
                            f"{path} is frame {n} but {src.video} has {count} frames (0-{count - 1})"
                        )
                seq_fps = fps or video_fps or DEFAULT_FPS
            else:
                assert src.images is not None
                frames = tuple(sorted(src.images))
                for n, path in src.labels.items():
                    if n not in src.images:
                        raise DatasetError(
                            f"{path} labels frame {n} but {folder / 'frames'}/ has no image numbered {n}"
                        )
                seq_fps = fps or DEFAULT_FPS
            self._sources[folder.name] = src
            self.sequences.append(VideoSequence(folder.name, frames, tuple(sorted(src.labels)), seq_fps))
        if not any(s.labelled for s in self.sequences):
            raise DatasetError(
                f"{split_dir} has no label files: expected {split_dir}/<sequence>/labels/<frame>.png"
            )
        self._videos: OrderedDict[str, _VideoReader] = OrderedDict()
        self._pid = os.getpid()

    # ---- format hooks ---------------------------------------------------------------------------------

    def read_frames(self, seq: VideoSequence, numbers: Sequence[int]) -> list[np.ndarray]:
        src = self._sources[seq.name]
        if src.images is not None:
            out = []
            for n in numbers:
                if n not in src.images:
                    raise DatasetError(f"{src.folder / 'frames'}/ has no image numbered {n}")
                out.append(read_image(src.images[n]))
            return out
        assert src.video is not None
        return self._reader(seq.name, src.video).read(numbers)

    def label_path(self, seq: VideoSequence, number: int) -> Path:
        return self._sources[seq.name].labels[number]

    def frame_id(self, seq: VideoSequence) -> str:
        return seq.name

    # ---- video readers --------------------------------------------------------------------------------

    def _reader(self, name: str, path: Path) -> _VideoReader:
        # Decoder state does not survive fork (data loader workers): each process opens its own.
        if self._pid != os.getpid():
            self._videos, self._pid = OrderedDict(), os.getpid()
        reader = self._videos.pop(name, None) or _VideoReader(path)
        self._videos[name] = reader
        while len(self._videos) > _OPEN_VIDEOS:
            self._videos.popitem(last=False)[1].close()
        return reader

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_videos"] = OrderedDict()  # open captures cannot be pickled (spawned workers reopen them)
        return state


class _VideoReader:
    """An open video that reads runs of consecutive frames, seeking only when a run does not continue the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cap = _open(path)
        self.next = 0

    def read(self, numbers: Sequence[int]) -> list[np.ndarray]:
        if numbers and numbers[0] != self.next:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, numbers[0])
            if int(self.cap.get(cv2.CAP_PROP_POS_FRAMES)) != numbers[0]:
                # The container would not seek exactly: decode from the start instead.
                self.cap.release()
                self.cap = _open(self.path)
                for n in range(numbers[0]):
                    if not self.cap.grab():
                        raise DatasetError(f"{self.path}: cannot decode frame {n}")
            self.next = numbers[0]
        out = []
        for n in numbers:
            ok, bgr = self.cap.read()
            if not ok:
                self.next = -1
                raise DatasetError(f"{self.path}: cannot decode frame {n}")
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            self.next = n + 1
        return out

    def close(self) -> None:
        self.cap.release()


def video_info(path: Path) -> tuple[int, float]:
    """Exact number of decodable frames of a video, and its frame rate (0 if unknown).

    The container's frame count is an estimate for some formats (often for .mkv and .webm), so it is trusted only
    when the frame before it decodes and the one at it does not; otherwise every frame is decoded once to count.

    Raises:
        DatasetError: A file OpenCV cannot open or that has no decodable frame.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if key not in _COUNTS:
            reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            count = -1
            if reported > 0 and cap.set(cv2.CAP_PROP_POS_FRAMES, reported - 1) and cap.grab():
                if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == reported and not cap.grab():
                    count = reported
            if count < 0:
                cap.release()
                cap = _open(path)
                count = 0
                while cap.grab():
                    count += 1
            if count == 0:
                raise DatasetError(f"{path}: no decodable frames")
            _COUNTS[key] = count
        return _COUNTS[key], fps
    finally:
        cap.release()


def _open(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise DatasetError(f"cannot open video {path} (unsupported codec or not a video)")
    return cap


def _read_fps(path: Path) -> float | None:
    """The optional top-level ``fps`` of ``classes.yaml`` (already known to be valid YAML with ``classes``)."""
    import yaml

    fps = yaml.safe_load(path.read_text()).get("fps")
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
        raise DatasetError(f"{path}: 'fps' must be a positive number, got {fps!r}")
    return float(fps)


def _number(path: Path) -> int | None:
    m = _LAST_DIGITS.search(path.stem)
    return int(m[1]) if m else None


def _numbered(folder: Path, suffixes: tuple[str, ...], what: str, strict: bool) -> dict[int, Path]:
    """Files of ``folder`` by the number in their stem; ``strict`` rejects files of other types."""
    out: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            if strict:
                raise DatasetError(f"{path}: {what} must be {'/'.join(suffixes)} files")
            continue
        n = _number(path)
        if n is None:
            raise DatasetError(f"{path}: {what} need a frame number in the name (e.g. 000123{path.suffix})")
        if n in out:
            raise DatasetError(f"{out[n]} and {path} are both frame {n}; keep one")
        out[n] = path
    return out


def _scan(folder: Path) -> _Source:
    """A sequence folder's frames (images or one video) and labels."""
    videos = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")
    )
    frames_dir = folder / "frames"
    has_frames = frames_dir.is_dir()
    if len(videos) > 1:
        raise DatasetError(
            f"{folder} has {len(videos)} videos ({', '.join(p.name for p in videos)}); expected exactly one"
        )
    if has_frames and videos:
        raise DatasetError(f"{folder} has both frames/ and {videos[0].name}; keep one of them")
    if not has_frames and not videos:
        raise DatasetError(
            f"{folder} has neither frames/ nor a video; expected frames/<n>.png or one {'/'.join(VIDEO_SUFFIXES)} file"
        )
    images = None
    if has_frames:
        images = _numbered(frames_dir, IMAGE_SUFFIXES, "frames", strict=False)
        if not images:
            raise DatasetError(f"{frames_dir} has no image files ({'/'.join(IMAGE_SUFFIXES)})")
    labels_dir = folder / "labels"
    labels = _numbered(labels_dir, (".png",), "labels", strict=True) if labels_dir.is_dir() else {}
    return _Source(folder, images, videos[0] if videos else None, labels)
