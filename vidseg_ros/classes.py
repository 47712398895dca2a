"""The label set of the synthetic street data and of the shipped checkpoints.

Checkpoints carry their own class names and palette; this module is the default they are trained with.
"""

from __future__ import annotations

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
