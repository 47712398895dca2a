"""Builders of small datasets in the exact published layouts, rendered from the synthetic street video.

Imported by name (``from layouts import make_cityscapes``), like ``test/models/tiny_models.py``. Every builder
writes under ``root`` and returns it; label files hold each format's raw values (converted from synth ids), so
readers must map them back to train ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from vidseg_ros.classes import SYNTH_CLASSES, SYNTH_PALETTE
from vidseg_ros.data.synth import StreetScene, SynthConfig, generate

#: Synth train id -> raw label value, by position (road, sidewalk, building, vegetation, sky, pole, sign, car, person).
SYNTH_TO_CITYSCAPES = (7, 8, 11, 21, 23, 17, 20, 26, 24)
SYNTH_TO_CAMVID = (3, 4, 1, 5, 0, 2, 6, 8, 9)


def remap(labels: np.ndarray, table: Sequence[int]) -> np.ndarray:
    """Synth train ids -> raw values via ``table`` (uint8)."""
    return np.asarray(table, np.uint8)[labels]


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), path


def write_index(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def make_cityscapes(
    root: Path,
    *,
    split: str = "train",
    snippets: Iterable[tuple[str, int, int]] = (("aachen", 0, 19), ("aachen", 1, 19)),
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
    with_sequence: bool = True,
) -> Path:
    """Cityscapes: per snippet ``(city, seq, L)``, frames ``L-19 .. L+10`` and fine labels of ``L``.

    Writes ``leftImg8bit_sequence`` (unless ``with_sequence`` is false), the labelled frame into ``leftImg8bit``,
    and ``gtFine`` ``_labelIds.png`` plus decoy ``_color.png``, ``_instanceIds.png`` and ``_polygons.json`` files.
    Snippet ``i`` is rendered with synthetic seed ``seed + i``; ``size`` is (width, height).
    """
    root = Path(root)
    for i, (city, seq, label) in enumerate(snippets):
        stem = f"{city}_{seq:06d}"
        cfg = SynthConfig(seed=seed + i, frames=30, width=size[0], height=size[1])
        for k, (rgb, labels) in enumerate(generate(cfg)):
            n = label - 19 + k
            if with_sequence:
                write_rgb(
                    root / "leftImg8bit_sequence" / split / city / f"{stem}_{n:06d}_leftImg8bit.png", rgb
                )
            if n != label:
                continue
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_{n:06d}_leftImg8bit.png", rgb)
            gt = root / "gtFine" / split / city
            write_index(gt / f"{stem}_{n:06d}_gtFine_labelIds.png", remap(labels, SYNTH_TO_CITYSCAPES))
            # Decoys with values no label id has: a reader that picks them up fails the label checks.
            write_index(gt / f"{stem}_{n:06d}_gtFine_instanceIds.png", np.full_like(labels, 200))
            write_rgb(gt / f"{stem}_{n:06d}_gtFine_color.png", np.full((*labels.shape, 3), 250, np.uint8))
            (gt / f"{stem}_{n:06d}_gtFine_polygons.json").write_text("{}")
    return root


def camvid_stem(seq: str, number: int) -> str:
    """CamVid's file stem of labelled frame ``number`` of ``seq``, with the published naming quirks."""
    if seq in ("Seq05VD", "0006R0"):
        return f"{seq}_f{number:05d}"
    if seq == "0016E5":
        return f"{seq}_{number:05d}"
    return f"{seq}_{number:06d}"


def make_camvid(
    root: Path,
    *,
    split: str = "train",
    labelled: Iterable[tuple[str, int]] = (("0016E5", 390), ("0016E5", 420)),
    size: tuple[int, int] = (120, 90),
    seed: int = 0,
    with_frames: bool = True,
) -> Path:
    """CamVid (SegNet layout): labelled images in ``{split}/``, annotations in ``{split}annot/``, video frames.

    Each sequence is one continuous synthetic video (seed ``seed + its index``) whose frame ``n`` is written
    to ``frames/{seq}/{n:06d}.png`` for ``n`` in ``L-29 .. L`` of each of its labelled frames ``L`` (unless
    ``with_frames`` is false); the labelled image is the same frame. ``size`` is (width, height).
    """
    root = Path(root)
    by_seq: dict[str, list[int]] = {}
    for seq, number in labelled:
        by_seq.setdefault(seq, []).append(number)
    for i, (seq, numbers) in enumerate(by_seq.items()):
        start = min(numbers) - 29
        scene = StreetScene(SynthConfig(seed=seed + i, frames=0, width=size[0], height=size[1]))
        wanted = sorted(
            {n for label in numbers for n in range(label - 29, label + 1)} if with_frames else set(numbers)
        )
        for n in wanted:
            frame = scene.render(n - start)
            if with_frames:
                write_rgb(root / "frames" / seq / f"{n:06d}.png", frame.rgb)
            if n in numbers:
                write_rgb(root / split / f"{camvid_stem(seq, n)}.png", frame.rgb)
                write_index(
                    root / f"{split}annot" / f"{camvid_stem(seq, n)}.png",
                    remap(frame.labels, SYNTH_TO_CAMVID),
                )
    return root


def write_synth_classes(path: Path, **extra: object) -> Path:
    """A ``classes.yaml`` of the 9 synthetic classes (raw value = synth id), with extra top-level keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"name": n, "color": list(c)} for n, c in zip(SYNTH_CLASSES, SYNTH_PALETTE, strict=True)]
    path.write_text(yaml.safe_dump({"classes": rows, "ignore": [255], **extra}, sort_keys=False))
    return path


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 30.0) -> Path:
    """RGB frames as an MPEG-4 Part 2 ``.mp4`` (or Motion JPEG for ``.avi``), a codec OpenCV's FFmpeg writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for rgb in frames:
        if writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
            writer = cv2.VideoWriter(str(path), fourcc, fps, (rgb.shape[1], rgb.shape[0]))
            assert writer.isOpened(), f"cannot write {path}"
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert writer is not None, "no frames"
    writer.release()
    return path


def make_folder(
    root: Path,
    *,
    split: str = "train",
    sequences: int = 2,
    frames: int = 12,
    label_every: int = 4,
    size: tuple[int, int] = (96, 64),
    seed: int = 0,
    video: bool = False,
) -> Path:
    """The folder format: ``classes.yaml`` and sequences ``seq00``, ``seq01``, ... of ``frames`` frames each.

    Frames are ``frames/{n:06d}.png`` or, with ``video``, one ``video.mp4``; labels (synth ids) are written for
    frames ``0, label_every, 2 * label_every, ...``. Sequence ``i`` uses synthetic seed ``seed + i``.
    """
    root = Path(root)
    if not (root / "classes.yaml").exists():
        write_synth_classes(root / "classes.yaml")
    for i in range(sequences):
        folder = root / split / f"seq{i:02d}"
        rendered = list(generate(SynthConfig(seed=seed + i, frames=frames, width=size[0], height=size[1])))
        if video:
            write_video(folder / "video.mp4", (rgb for rgb, _ in rendered))
        for n, (rgb, labels) in enumerate(rendered):
            if not video:
                write_rgb(folder / "frames" / f"{n:06d}.png", rgb)
            if n % label_every == 0:
                write_index(folder / "labels" / f"{n:06d}.png", labels)
    return root


def one_line_error(fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    """Calls ``fn`` expecting a :class:`DatasetError`; returns its message after checking it is one line."""
    from vidseg_ros.data.datasets.base import DatasetError

    try:
        fn(*args, **kwargs)
    except DatasetError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"not a single line: {msg!r}"
        return msg
    raise AssertionError(f"{getattr(fn, '__name__', fn)} raised no DatasetError")
