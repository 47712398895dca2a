"""Label sets: the synthetic street classes of the shipped checkpoints, and :class:`ClassTable` for any other.

A class table is data, as in cityscapesScripts' ``labels.py``: one row per class with its name, the raw value
its pixels carry in the dataset's label files, and its colour. The row's position is its train id, the id a
model predicts; raw values listed as ignored become :data:`IGNORE_INDEX`. Checkpoints carry names and colours,
so the node's classes topic, the palette and eval's per-class names all follow the data a model was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Label id used for pixels that carry no label (ignored by losses and metrics).
IGNORE_INDEX = 255

#: Class names, indexed by label id.
SYNTH_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "vegetation",
    "sky",
    "pole",
    "sign",
    "car",
    "person",
)

#: RGB colour per class (Cityscapes colours where the class exists there).
SYNTH_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (107, 142, 35),
    (70, 130, 180),
    (153, 153, 153),
    (220, 220, 0),
    (0, 0, 142),
    (220, 20, 60),
)

#: Classes that move non-rigidly (used to report the TWNet correction gains).
NON_RIGID = ("person",)

#: Most classes a model may have: train ids are stored in uint8 masks next to the ignore value 255.
MAX_CLASSES = IGNORE_INDEX


class LabelError(ValueError):
    """A label image or class definition that does not fit the class table (one line, naming the file)."""


@dataclass(frozen=True)
class ClassTable:
    """Classes in train-id order, plus the mapping from a dataset's raw label values to train ids.

    Attributes:
        names: Class names; position = train id.
        colors: RGB colour of each class.
        raw_ids: Raw label value of each class in the dataset's label files.
        ignore_ids: Raw values that mean "not labelled" (mapped to :data:`IGNORE_INDEX`).
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    raw_ids: tuple[int, ...]
    ignore_ids: tuple[int, ...] = (IGNORE_INDEX,)

    def __post_init__(self) -> None:
        n = len(self.names)
        if not 1 <= n <= MAX_CLASSES:
            raise LabelError(f"a class table needs 1 to {MAX_CLASSES} classes, got {n}")
        if len(set(self.names)) != n:
            raise LabelError(f"class names must be unique, got {list(self.names)}")
        if len(self.colors) != n or len(self.raw_ids) != n:
            raise LabelError(f"{n} classes need {n} colours and {n} raw ids")
        for name, color in zip(self.names, self.colors, strict=True):
            if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
                raise LabelError(f"class {name!r}: colour must be three integers 0-255, got {list(color)}")
        values = [*self.raw_ids, *self.ignore_ids]
        if not all(isinstance(v, int) and 0 <= v <= 65535 for v in values):
            raise LabelError(f"raw label values must be integers 0-65535, got {values}")
        if len(set(self.raw_ids)) != n or set(self.raw_ids) & set(self.ignore_ids):
            raise LabelError("each raw label value may name one class only, and not also be ignored")

    @classmethod
    def simple(
        cls,
        names: Sequence[str],
        colors: Sequence[Sequence[int]],
        ignore_ids: Iterable[int] = (IGNORE_INDEX,),
    ) -> ClassTable:
        """A table whose label files hold train ids directly (raw value = position)."""
        return cls(
            tuple(names),
            tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors),
            tuple(range(len(names))),
            tuple(ignore_ids),
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def lut(self) -> np.ndarray:
        """``int32[65536]``: raw value -> train id, :data:`IGNORE_INDEX` for ignored values, -1 for unknown ones."""
        lut = np.full(65536, -1, np.int32)
        lut[list(self.ignore_ids)] = IGNORE_INDEX
        lut[list(self.raw_ids)] = np.arange(len(self.raw_ids))
        return lut

    def to_train_ids(self, raw: np.ndarray, source: str) -> np.ndarray:
        """Maps a label image of raw values to uint8 train ids.

        Raises:
            LabelError: A value that is neither a class nor ignored, named with ``source`` (the file).
        """
        if raw.ndim != 2:
            raise LabelError(
                f"{source}: labels must be a single-channel index image, got shape {list(raw.shape)} "
                "(colour-coded labels must be converted to class ids first)"
            )
        if raw.dtype not in (np.uint8, np.uint16):
            raise LabelError(f"{source}: labels must be 8- or 16-bit integers, got {raw.dtype}")
        mapped = self.lut[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0])
            listed = ", ".join(str(v) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
            raise LabelError(
                f"{source}: label value(s) {listed} are neither a class nor ignored "
                f"({len(self)} classes with raw ids {_ranges(self.raw_ids)}, ignored {_ranges(self.ignore_ids)})"
            )
        return mapped.astype(np.uint8)

    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.colors]

    def to_yaml_dict(self) -> dict[str, Any]:
        """The ``classes.yaml`` form of this table (see :func:`load_classes_yaml`)."""
        rows = [
            {"name": n, "color": list(c), "id": r}
            for n, c, r in zip(self.names, self.colors, self.raw_ids, strict=True)
        ]
        return {"classes": rows, "ignore": list(self.ignore_ids)}


def _ranges(values: Sequence[int]) -> str:
    """``0-18, 255`` style listing of integer values."""
    out: list[tuple[int, int]] = []
    for v in sorted(values):
        if out and out[-1][1] == v - 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out) or "none"


SYNTH_TABLE = ClassTable.simple(SYNTH_CLASSES, SYNTH_PALETTE)


def load_classes_yaml(path: str | Path) -> ClassTable:
    """Reads a ``classes.yaml``::

        classes:                          # in train-id order
          - {name: road, color: [128, 64, 128]}          # id defaults to the row's position
          - {name: car, color: [0, 0, 142], id: 26}      # raw value in the label PNGs
        ignore: [255]                     # raw values that carry no label (default [255]); an int is fine too

    Raises:
        LabelError: Missing file or any missing or invalid field, in one line naming the file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LabelError(f"class file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LabelError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list) or not doc["classes"]:
        raise LabelError(f"{path}: needs a non-empty list 'classes' of {{name, color}} entries")
    names, colors, raw = [], [], []
    for i, row in enumerate(doc["classes"]):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not row["name"]:
            raise LabelError(f"{path}: classes[{i}] needs a non-empty string 'name'")
        color = row.get("color")
        if not isinstance(color, list) or len(color) != 3:
            raise LabelError(f"{path}: classes[{i}] ({row['name']}) needs 'color: [r, g, b]'")
        names.append(row["name"])
        colors.append(tuple(color))
        raw.append(row.get("id", i))
    ignore = doc.get("ignore", [IGNORE_INDEX])
    ignore = [ignore] if isinstance(ignore, int) else ignore
    if not isinstance(ignore, list):
        raise LabelError(f"{path}: 'ignore' must be an integer or a list of integers")
    try:
        return ClassTable(tuple(names), tuple(colors), tuple(raw), tuple(ignore))
    except LabelError as e:
        raise LabelError(f"{path}: {e}") from e
