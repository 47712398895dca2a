"""Video files (H.264, MPEG-4, ...) as unlabelled sequences: ``vidseg eval --video FILE`` runs and timings.

Frames are decoded with their codec motion (:func:`vidseg_ros.motion.codec.read_video`), so a run keys on the
file's I-frames and its non-key frames take the codec's vectors, as on a CompressedVideo bag. There are no
labels: a run reports timings and TC, not mIoU. Not a training format.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from vidseg_ros.classes import ClassTable
from vidseg_ros.data.datasets.base import DatasetError, DatasetFrame, VideoDataset, VideoSequence
from vidseg_ros.motion.codec import CodecError, read_video, video_info


class VideoFileDataset(VideoDataset):
    """Video files, one unlabelled sequence each.

    Args:
        paths: The files.
        classes: The model's classes (the masks' meaning; the files have no labels).

    Raises:
        DatasetError: A missing or undecodable file, or one without a video stream.
    """

    format = "video"
    video = True

    def __init__(self, paths: Sequence[str | Path], classes: ClassTable) -> None:
        if not paths:
            raise DatasetError("at least one video file is needed")
        super().__init__(paths[0], "all")
        self.paths = [Path(p) for p in paths]
        self.classes = classes
        self.sequences = []
        for path in self.paths:
            try:
                frames, fps = video_info(path)
            except CodecError as e:
                raise DatasetError(str(e)) from e
            self.sequences.append(VideoSequence(str(path), tuple(range(frames)), (), fps))

    def iter_frames(self, seq: VideoSequence, *, chunk: int = 8) -> Iterator[DatasetFrame]:
        period_ns = round(1e9 / seq.fps)
        try:
            for i, frame in enumerate(read_video(seq.name)):
                yield DatasetFrame(i * period_ns, "camera", frame.rgb, None, i, frame)
        except CodecError as e:
            raise DatasetError(str(e)) from e

    def read_frames(self, seq: VideoSequence, numbers: Sequence[int]) -> list[np.ndarray]:
        raise DatasetError(f"{seq.name}: video files are for unlabelled eval runs, not for training")

    def label_path(self, seq: VideoSequence, number: int) -> Path:
        raise DatasetError(f"{seq.name} has no labels")

    def describe(self) -> str:
        return f"video file(s) {', '.join(str(p) for p in self.paths)}"
