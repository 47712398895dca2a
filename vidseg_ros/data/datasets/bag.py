"""Labelled rosbag2 bags as a dataset: one sequence per bag, frames numbered in bag order.

Images and labels are paired by header stamp (:func:`vidseg_ros.data.bags.read_frames`); label images hold
train ids of ``classes`` directly (255 ignored), as ``vidseg synth`` writes them. Online runs stream the bag;
random access for augmented training reads a bag into memory once (bags are the small, recorded format; for
hours of footage the ``folder`` format reads frames from disk as needed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from vidseg_ros.classes import ClassTable, LabelError
from vidseg_ros.data.bags import SYNTHETIC_KEY, BagError, custom_data
from vidseg_ros.data.bags import read_frames as read_bag_frames
from vidseg_ros.data.datasets.base import DatasetError, DatasetFrame, VideoDataset, VideoSequence

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/labels"


class BagDataset(VideoDataset):
    """Labelled bags.

    Args:
        bags: Bag directories, one sequence each.
        classes: What the label images' values mean (train ids, 255 ignored).
        image_topic, label_topic: sensor_msgs/Image topics of the frames and of their mono8 labels.

    Raises:
        DatasetError: A missing or unreadable bag, a missing topic (the line lists the bag's topics), a bag
            without labels, or a label value outside ``classes``.
    """

    format = "bag"

    def __init__(
        self,
        bags: Sequence[str | Path],
        classes: ClassTable,
        *,
        image_topic: str = DEFAULT_IMAGE_TOPIC,
        label_topic: str = DEFAULT_LABEL_TOPIC,
    ) -> None:
        if not bags:
            raise DatasetError("at least one bag is needed")
        super().__init__(bags[0], "all")
        self.bags = [Path(b) for b in bags]
        self.classes = classes
        self.image_topic = image_topic
        self.label_topic = label_topic
        self._cache: dict[str, tuple[list[np.ndarray], dict[int, np.ndarray]]] = {}
        self.sequences = [self._scan(b) for b in self.bags]
        #: Bags rendered by ``vidseg synth`` (their metadata says so).
        self.synthetic = all(SYNTHETIC_KEY in custom_data(b) for b in self.bags)

    def _frames(self, bag: Path) -> Iterator[tuple[int, object]]:
        try:
            yield from enumerate(
                read_bag_frames(bag, image_topic=self.image_topic, label_topic=self.label_topic)
            )
        except BagError as e:
            raise DatasetError(str(e)) from e

    def _scan(self, bag: Path) -> VideoSequence:
        """Reads the bag once: frame count, labelled frames, label values checked; keeps nothing."""
        count, labelled, stamps = 0, [], []
        for i, frame in self._frames(bag):
            count += 1
            stamps.append(frame.stamp_ns)
            self.video = self.video or frame.motion is not None
            if frame.labels is not None:
                self._map(frame.labels, bag, i)
                labelled.append(i)
        if not count:
            raise DatasetError(f"bag {bag} holds no images on {self.image_topic}")
        if not labelled:
            raise DatasetError(
                f"bag {bag} holds no labels on {self.label_topic} with the stamps of its images "
                "(pass --label-topic)"
            )
        span = (stamps[-1] - stamps[0]) / 1e9
        fps = (count - 1) / span if count > 1 and span > 0 else 30.0
        return VideoSequence(str(bag), tuple(range(count)), tuple(labelled), fps)

    def _map(self, raw: np.ndarray, bag: Path, index: int) -> np.ndarray:
        try:
            return self.classes.to_train_ids(raw, f"bag {bag}, {self.label_topic} frame {index}")
        except LabelError as e:
            raise DatasetError(str(e)) from e

    def _load(self, seq: VideoSequence) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
        if seq.name not in self._cache:
            images, labels = [], {}
            for i, frame in self._frames(Path(seq.name)):
                images.append(frame.image)
                if frame.labels is not None:
                    labels[i] = frame.labels
            self._cache[seq.name] = (images, labels)
        return self._cache[seq.name]

    def read_frames(self, seq: VideoSequence, numbers: Sequence[int]) -> list[np.ndarray]:
        images, _ = self._load(seq)
        return [images[n] for n in numbers]

    def label_path(self, seq: VideoSequence, number: int) -> Path:
        return Path(seq.name)

    def read_labels(self, seq: VideoSequence, number: int) -> np.ndarray:
        _, labels = self._load(seq)
        return self._map(labels[number], Path(seq.name), number)

    def iter_frames(self, seq: VideoSequence, *, chunk: int = 8) -> Iterator[DatasetFrame]:
        """Streams the bag (nothing kept), with its own stamps and frame_id."""
        bag = Path(seq.name)
        for i, frame in self._frames(bag):
            labels = None if frame.labels is None else self._map(frame.labels, bag, i)
            yield DatasetFrame(frame.stamp_ns, frame.frame_id, frame.image, labels, i, frame.motion)

    def describe(self) -> str:
        return f"bag(s) {', '.join(str(b) for b in self.bags)}"
