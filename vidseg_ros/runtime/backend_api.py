"""What every backend shares: the :class:`Backend` protocol, its error and the precisions each one supports.

Kept apart from :mod:`vidseg_ros.runtime.backends` (which builds and selects backends) so that a backend
living in its own module, such as :mod:`vidseg_ros.runtime.ort_backend`, implements the protocol without
importing the selection code that imports it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from vidseg_ros.models.base import State

PRECISIONS: dict[str, tuple[str, ...]] = {
    "cpu": ("fp32",),
    "cuda": ("fp32", "fp16", "bf16"),
    "tensorrt": ("fp32", "fp16"),
    "onnxruntime": ("fp32",),
}


class BackendUnavailable(RuntimeError):
    """A backend was requested explicitly but cannot run here (missing package or device)."""


@runtime_checkable
class Backend(Protocol):
    """What the segmenter needs from a backend. Tensors are on :attr:`device`; state is the model's dict."""

    name: str
    device: torch.device
    precision: str
    #: Why this backend was chosen (``select_backend``'s words), for the log and /diagnostics.
    reason: str

    def prepare(self, image_hw: tuple[int, int], flow_hw: tuple[int, int] | None = None) -> None:
        """Does the one-off work for these shapes now (engine build/load, graph capture) instead of on frame 1."""
        ...

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        """The frame's scores and the state after it. Scores are ``[1, C, h, w]`` logits at the image's size or
        at the classifier's own (CPU backends: the segmenter upsamples them), or uint8 class ids ``[1, 1, H, W]``."""
        ...

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]: ...


def check_precision(backend: str, precision: str) -> str:
    """``precision`` if ``backend`` supports it; raises ValueError naming the ones it does."""
    if precision not in PRECISIONS[backend]:
        raise ValueError(
            f"backend {backend} supports precision {'|'.join(PRECISIONS[backend])}, got {precision!r}"
        )
    return precision
