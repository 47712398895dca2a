"""CamVid, the common 11-class version (the SegNet tutorial's layout), paired with frames of its source videos.

Layout (``split`` is ``train``, ``val`` or ``test``)::

    ROOT/{split}/{seq}_{frame}.png        # the labelled RGB images, e.g. 0016E5_00390.png, Seq05VD_f00030.png
    ROOT/{split}annot/{seq}_{frame}.png   # index PNGs: 0-10 the classes below, 11 void
    ROOT/frames/{seq}/{n:06d}.png         # optional: every frame of the sequence's source video (.jpg too)

Names are ``{seq}_{digits}``; ``Seq05VD`` and ``0006R0`` put an ``f`` before the number (``0006R0_f01110``).
The number is the labelled frame's index in its 30 fps source video.

The labelled images are all a video method needs to train per frame; for the frames before them, extract
each source video once, numbering decoded frames from 0 and scaling them to the labelled images' size
(480x360 in the SegNet version, whose images are downscaled from the videos' 960x720)::

    mkdir -p ROOT/frames/0016E5
    ffmpeg -i 0016E5.MXF -vf scale=480:360 -start_number 0 ROOT/frames/0016E5/%06d.png

Each labelled frame ``L`` becomes one sequence with the extracted frames ``L-29 .. L-1`` that exist and ``L``
itself, read from ``{split}/`` (the exact labelled image). At construction the extraction is checked against
the labelled images: a folder whose numbering is shifted, or whose frames have another size, is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vidseg_ros.classes import IGNORE_INDEX, ClassTable
from vidseg_ros.data.datasets.base import DatasetError, VideoDataset, VideoSequence, read_image

#: (name, colour) by label value 0-10; value 11 is void.
CAMVID_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("sky", (128, 128, 128)),
    ("building", (128, 0, 0)),
    ("pole", (192, 192, 128)),
    ("road", (128, 64, 128)),
    ("pavement", (60, 40, 222)),
    ("tree", (128, 128, 0)),
    ("sign_symbol", (192, 128, 128)),
    ("fence", (64, 64, 128)),
    ("car", (64, 0, 128)),
    ("pedestrian", (64, 64, 0)),
    ("bicyclist", (0, 128, 192)),
)
VOID = 11
#: Extracted frames paired with a labelled frame (a second of video before it).
CONTEXT = 29
FPS = 30.0
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Offsets tried by the alignment check, and how clearly another offset must win to count as misaligned.
_SHIFTS = range(-3, 4)
_CLEAR_WIN = 1.25

_NAME_RE = re.compile(r"^(?P<seq>.+?)_f?(?P<frame>\d+)$")


def camvid_classes() -> ClassTable:
    """The 11 classes by label value; void (11) and 255 are ignored."""
    return ClassTable(
        names=tuple(name for name, _ in CAMVID_CLASSES),
        colors=tuple(color for _, color in CAMVID_CLASSES),
        raw_ids=tuple(range(len(CAMVID_CLASSES))),
        ignore_ids=(VOID, IGNORE_INDEX),
    )


def parse_name(stem: str) -> tuple[str, int] | None:
    """``("Seq05VD", 30)`` for ``Seq05VD_f00030``; None for a stem that is not ``{seq}_[f]{digits}``."""
    m = _NAME_RE.match(stem)
    return (m["seq"], int(m["frame"])) if m else None


@dataclass(frozen=True)
class _Labelled:
    seq: str
    number: int
    image: Path
    label: Path


class CamVidDataset(VideoDataset):
    """CamVid's labelled frames, each with the extracted video frames before it when ``ROOT/frames/`` has them.

    Args:
        root: The folder holding ``{split}/``, ``{split}annot/`` and optionally ``frames/``.
        split: ``train``, ``val`` or ``test``.

    Raises:
        DatasetError: Missing folders, unpaired or misnamed files, or misaligned extracted frames.
    """

    format = "camvid"
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, split: str) -> None:
        super().__init__(root, split)
        self.classes = camvid_classes()
        self._frames_root = self.root / "frames"
        images = _pngs(self.root / split, "labelled images")
        annots = _pngs(self.root / f"{split}annot", "annotations")
        for stem in sorted(images.keys() ^ annots.keys()):
            if stem in images:
                raise DatasetError(
                    f"{images[stem]} has no annotation: expected {self.root / f'{split}annot' / images[stem].name}"
                )
            raise DatasetError(
                f"{annots[stem]} has no labelled image: expected {self.root / split / annots[stem].name}"
            )
        if not images:
            raise DatasetError(
                f"{self.describe()}: no labelled images in {self.root / split}/ (expected <seq>_<frame>.png)"
            )

        items: dict[tuple[str, int], _Labelled] = {}
        for stem in sorted(images):
            parsed = parse_name(stem)
            if parsed is None:
                raise DatasetError(
                    f"{images[stem]}: expected a name like 0016E5_00390.png or Seq05VD_f00030.png"
                )
            if parsed in items:
                raise DatasetError(
                    f"{images[stem]} and {items[parsed].image} are both frame {parsed[1]} of {parsed[0]}"
                )
            items[parsed] = _Labelled(parsed[0], parsed[1], images[stem], annots[stem])

        self._videos: dict[str, dict[int, Path]] = {}
        for seq in sorted({s for s, _ in items}):
            found = _index_frames(self._frames_root / seq)
            if found:
                self._videos[seq] = found
        self._missing = sorted({s for s, _ in items} - self._videos.keys())
        self._size: dict[str, tuple[int, int]] = {}

        self._items: dict[str, _Labelled] = {}
        self.sequences = []
        for (seq, n), item in sorted(items.items()):
            extracted = self._videos.get(seq, {})
            numbers = {f for f in range(n - CONTEXT, n) if f in extracted} | {n}
            name = f"{seq}_{n:06d}"
            self._items[name] = item
            self.sequences.append(VideoSequence(name, tuple(sorted(numbers)), (n,), FPS))
        for seq, extracted in self._videos.items():
            first = next(
                (it for it in self._items.values() if it.seq == seq and it.number in extracted), None
            )
            if first is not None:
                self._check_alignment(first, extracted)

    # ---- format hooks ---------------------------------------------------------------------------------

    def read_frames(self, seq: VideoSequence, numbers: Sequence[int]) -> list[np.ndarray]:
        item = self._items[seq.name]
        out = []
        for n in numbers:
            if n == item.number:
                out.append(read_image(item.image))
                continue
            path = self._videos[item.seq][n]
            image = read_image(path)
            w, h = self._labelled_size(item)
            if image.shape[:2] != (h, w):
                raise DatasetError(_size_error(path, image, item.image, (w, h), self._extract_cmd(item.seq)))
            out.append(image)
        return out

    def label_path(self, seq: VideoSequence, number: int) -> Path:
        return self._items[seq.name].label

    def missing_context(self) -> str | None:
        if not self._missing:
            return None
        seq = self._missing[0] if len(self._missing) == 1 else "<seq>"
        return (
            f"{self.describe()}: video methods need the source video frames in {self._frames_root}/{seq}/ "
            f"(none for {', '.join(self._missing)}); extract each video with: mkdir -p {self._frames_root}/{seq} && "
            f"{self._extract_cmd(seq)}"
            "; without them only per-frame training works"
        )

    def frame_id(self, seq: VideoSequence) -> str:
        return self._items[seq.name].seq

    # ---- helpers --------------------------------------------------------------------------------------

    def _labelled_size(self, item: _Labelled) -> tuple[int, int]:
        """(width, height) of the sequence's labelled images (read from one file's header, then cached)."""
        if item.seq not in self._size:
            from PIL import Image

            with Image.open(item.image) as im:
                self._size[item.seq] = im.size
        return self._size[item.seq]

    def _extract_cmd(self, seq: str, extra: str = "") -> str:
        item = next((it for it in self._items.values() if it.seq == seq), next(iter(self._items.values())))
        w, h = self._labelled_size(item)
        return (
            f"ffmpeg -i {seq}.MXF -vf {extra}scale={w}:{h} -start_number 0 {self._frames_root}/{seq}/%06d.png"
        )

    def _check_alignment(self, item: _Labelled, extracted: dict[int, Path]) -> None:
        """Raises if the extracted frame ``L`` is not the one most like labelled frame ``L``, or has another size.

        CamVid's labelled images come from the same video, so the right frame is near-identical to them while
        its neighbours differ by the motion between frames; a clear win of a neighbour means shifted numbering.
        """
        labelled = read_image(item.image)
        h, w = labelled.shape[:2]
        self._size[item.seq] = (w, h)
        small = (64, max(1, round(64 * h / w)))
        ref = cv2.resize(labelled, small, interpolation=cv2.INTER_AREA).astype(np.float32)
        at_label = read_image(extracted[item.number])
        mad: dict[int, float] = {}
        for d in _SHIFTS:
            if item.number + d in extracted:
                frame = at_label if d == 0 else read_image(extracted[item.number + d])
                mad[d] = float(np.abs(cv2.resize(frame, small, interpolation=cv2.INTER_AREA) - ref).mean())
        best = min(mad, key=mad.__getitem__)
        if best != 0 and mad[0] > _CLEAR_WIN * mad[best] + 0.5:
            # Our frame L+best holds video frame L: drop `best` leading frames, or start numbering later.
            fix = (
                self._extract_cmd(item.seq, f"trim=start_frame={best},setpts=PTS-STARTPTS,")
                if best > 0
                else self._extract_cmd(item.seq).replace("-start_number 0", f"-start_number {-best}")
            )
            raise DatasetError(
                f"{self._frames_root / item.seq}/ is shifted by {best:+d} frame(s): labelled {item.image.name} "
                f"matches extracted frame {item.number + best:06d} (mean abs diff {mad[best]:.1f}) better than "
                f"{item.number:06d} ({mad[0]:.1f}); re-extract so frame n is the video's n-th frame: {fix}"
            )
        if at_label.shape[:2] != (h, w):
            raise DatasetError(
                _size_error(extracted[item.number], at_label, item.image, (w, h), self._extract_cmd(item.seq))
            )


def _size_error(path: Path, image: np.ndarray, labelled: Path, size: tuple[int, int], cmd: str) -> str:
    return (
        f"{path} is {image.shape[1]}x{image.shape[0]} but the labelled image {labelled} is {size[0]}x{size[1]}; "
        f"extracted frames must have the labelled images' size: {cmd}"
    )


def _pngs(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"camvid {what} folder not found: expected {folder}/<seq>_<frame>.png")
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")}


def _index_frames(folder: Path) -> dict[int, Path]:
    """Frame number -> file of an extraction folder (``000390.png``); empty if the folder is absent."""
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in FRAME_SUFFIXES and stem.isdigit():
                n = int(stem)
                if n in out:
                    raise DatasetError(f"{out[n]} and {entry.path} are both frame {n}; keep one")
                out[n] = Path(entry.path)
    return out
