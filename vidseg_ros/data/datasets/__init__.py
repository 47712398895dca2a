"""Dataset formats behind one interface (:class:`~vidseg_ros.data.datasets.base.VideoDataset`).

``open_dataset("cityscapes", root, "val")`` returns the format's dataset; formats are imported lazily.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from vidseg_ros.data.datasets.base import DatasetError, VideoDataset

#: Format name -> (module, class).
FORMATS: dict[str, tuple[str, str]] = {
    "cityscapes": ("vidseg_ros.data.datasets.cityscapes", "CityscapesDataset"),
    "camvid": ("vidseg_ros.data.datasets.camvid", "CamVidDataset"),
    "folder": ("vidseg_ros.data.datasets.folder", "FolderDataset"),
}


def open_dataset(fmt: str, root: str | Path, split: str) -> VideoDataset:
    """The dataset of format ``fmt`` at ``root``, split ``split``.

    Raises:
        DatasetError: Unknown format, or a dataset that is missing, incomplete or invalid.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {sorted(FORMATS)}")
    module, name = FORMATS[fmt]
    cls = getattr(importlib.import_module(module), name)
    return cls(root, split)


__all__ = ["FORMATS", "DatasetError", "VideoDataset", "open_dataset"]
