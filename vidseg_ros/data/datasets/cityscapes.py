"""Cityscapes as published: fine labels of one frame per 30-frame snippet, and the snippets themselves.

Layout (``split`` is ``train``, ``val`` or ``test``)::

    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png        # raw label ids 0-33
    ROOT/leftImg8bit_sequence/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png  # 30-frame snippets
    ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png        # the labelled frames only

``seq`` and ``frame`` have six digits. The labelled frame ``L`` is the 20th of its snippet, which holds frames
``L-19 .. L+10``. Frame numbers need not start at 0 and several snippets may share one ``seq`` number
(``frankfurt_000000_000294`` and ``frankfurt_000000_000576`` are different snippets), so each labelled frame
is its own :class:`~vidseg_ros.data.datasets.base.VideoSequence` whose frames are found by number.

Only ``_gtFine_labelIds.png`` files are read; the ``_color.png``, ``_instanceIds.png`` and ``_polygons.json``
files next to them are ignored. Without ``leftImg8bit_sequence/{split}/`` (``leftImg8bit_sequence_trainvaltest.zip``)
the dataset works per frame from ``leftImg8bit/{split}/``: enough for per-frame training, not for video methods.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidseg_ros.classes import ClassTable
from vidseg_ros.data.datasets.base import DatasetError, VideoDataset, VideoSequence, read_image

#: Every Cityscapes label id as cityscapesScripts' ``helpers/labels.py`` defines it:
#: (name, label id in the ``_labelIds.png`` files, train id or 255 when ignored, RGB colour).
#: ``license plate`` (id -1) is left out: it never appears in the label files.
CITYSCAPES_LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
)

#: Frames of a snippet before and after its labelled frame.
BEFORE, AFTER = 19, 10
FPS = 17.0

_LABEL_RE = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_gtFine_labelIds\.png$")
_FRAME_RE = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


def cityscapes_classes() -> ClassTable:
    """The 19 train classes in train-id order; every other label id 0-33 is ignored."""
    train = sorted((row for row in CITYSCAPES_LABELS if row[2] != 255), key=lambda row: row[2])
    return ClassTable(
        names=tuple(row[0] for row in train),
        colors=tuple(row[3] for row in train),
        raw_ids=tuple(row[1] for row in train),
        ignore_ids=tuple(row[1] for row in CITYSCAPES_LABELS if row[2] == 255),
    )


@dataclass(frozen=True)
class _Snippet:
    city: str
    seq: int
    label: Path
    #: The labelled frame's image when the sequence folder lacks it (or there is no sequence folder).
    fallback: Path | None


class CityscapesDataset(VideoDataset):
    """Cityscapes fine labels, one sequence per labelled frame (its snippet, or the frame alone).

    Args:
        root: The folder holding ``gtFine/`` and ``leftImg8bit_sequence/`` (or ``leftImg8bit/``).
        split: ``train``, ``val`` or ``test``.

    Raises:
        DatasetError: Missing or incomplete folders, misnamed label files, or a labelled frame without image.
    """

    format = "cityscapes"
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, split: str) -> None:
        super().__init__(root, split)
        self.classes = cityscapes_classes()
        gt_dir = self.root / "gtFine" / split
        self._seq_dir = self.root / "leftImg8bit_sequence" / split
        self._img_dir = self.root / "leftImg8bit" / split
        expected = f"{gt_dir}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
        if not gt_dir.is_dir():
            raise DatasetError(
                f"{self.describe()} not found or incomplete: expected {expected} (no folder {gt_dir})"
            )
        self._per_frame = not self._seq_dir.is_dir()
        if self._per_frame and not self._img_dir.is_dir():
            raise DatasetError(
                f"{self.describe()} not found or incomplete: expected frames in "
                f"{self._seq_dir}/<city>/<city>_<seq>_<frame>_leftImg8bit.png (30-frame snippets) "
                f"or {self._img_dir}/<city>/... (found neither folder)"
            )
        labels = sorted(gt_dir.glob("*/*_gtFine_labelIds.png"))
        if not labels:
            raise DatasetError(f"{self.describe()} not found or incomplete: expected {expected} (found none)")

        index: dict[tuple[str, int], set[int]] = {}
        scanned: set[str] = set()
        self._snippets: dict[str, _Snippet] = {}
        self.sequences = []
        for path in labels:
            m = _LABEL_RE.match(path.name)
            if m is None:
                raise DatasetError(
                    f"{path}: expected a name like <city>_<seq:6 digits>_<frame:6 digits>_gtFine_labelIds.png"
                )
            city, seq, n = m["city"], int(m["seq"]), int(m["frame"])
            if self._per_frame:
                numbers = {n}
            else:
                if city not in scanned:
                    scanned.add(city)
                    index.update(_index_city(self._seq_dir / city))
                present = index.get((city, seq), set())
                numbers = {f for f in range(n - BEFORE, n + AFTER + 1) if f in present}
            fallback = None
            if n not in numbers or self._per_frame:
                fallback = self._img_dir / city / f"{city}_{seq:06d}_{n:06d}_leftImg8bit.png"
                if not fallback.is_file():
                    where = fallback if self._per_frame else f"{self._frame_path(city, seq, n)} or {fallback}"
                    raise DatasetError(f"{path}: the labelled frame's image is missing; expected {where}")
                numbers.add(n)
            name = f"{city}_{seq:06d}_{n:06d}"
            self._snippets[name] = _Snippet(city, seq, path, fallback)
            self.sequences.append(VideoSequence(name, tuple(sorted(numbers)), (n,), FPS))

    # ---- format hooks ---------------------------------------------------------------------------------

    def read_frames(self, seq: VideoSequence, numbers: Sequence[int]) -> list[np.ndarray]:
        snip = self._snippets[seq.name]
        out = []
        for n in numbers:
            path = snip.fallback if snip.fallback is not None and n == seq.labelled[0] else None
            out.append(read_image(path or self._frame_path(snip.city, snip.seq, n)))
        return out

    def label_path(self, seq: VideoSequence, number: int) -> Path:
        return self._snippets[seq.name].label

    def missing_context(self) -> str | None:
        if not self._per_frame:
            return None
        return (
            f"{self.describe()} has no {self._seq_dir}/ (the 30-frame snippets of "
            "leftImg8bit_sequence_trainvaltest.zip), which video methods need; only per-frame training works without it"
        )

    def frame_id(self, seq: VideoSequence) -> str:
        return self._snippets[seq.name].city

    def _frame_path(self, city: str, seq: int, n: int) -> Path:
        return self._seq_dir / city / f"{city}_{seq:06d}_{n:06d}_leftImg8bit.png"


def _index_city(folder: Path) -> dict[tuple[str, int], set[int]]:
    """Frame numbers present per (city, seq) in one city folder of ``leftImg8bit_sequence`` (empty if absent)."""
    out: dict[tuple[str, int], set[int]] = {}
    if not folder.is_dir():
        return out
    # scandir, not glob: a train city holds tens of thousands of frames.
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _FRAME_RE.match(entry.name)
            if m is not None:
                out.setdefault((m["city"], int(m["seq"])), set()).add(int(m["frame"]))
    return out
