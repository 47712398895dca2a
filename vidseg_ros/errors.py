"""What every "one clear line" error message shares, and the weights-only loader whose failures they word."""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any


def first_line(e: BaseException) -> str:
    """The first line of an error's message (parsers, ONNX Runtime and torch explain over several lines; users
    read one), or the error's type name when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_problem(e: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in a few words.

    Torch's own text for a file its weights-only loader cannot read advises loading it with
    ``weights_only=False``, which would run whatever code the file holds: not advice to pass on.
    """
    if isinstance(e, pickle.UnpicklingError):
        return "not readable as tensors and plain data; refused rather than unpickled"
    return first_line(e).split(". ")[0]


def load_tensors(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU: no pickled code runs. Torch's warnings about the
    pickle protocol of files it then refuses are silenced, so a failure shows as one line
    (:func:`load_problem` words it)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
