"""The contract every video segmentation model implements.

A model step is a pure function with explicit state in and out, so the same step runs eagerly, under
torch.export, as ONNX and as TensorRT, and one node can serve several streams (each owns its state).

Conventions shared by all models:

* ``image`` and ``prev_image`` are normalised float tensors ``[B, 3, H, W]`` (mean/std from the checkpoint).
* ``flow`` is *reverse* optical flow ``[B, 2, Hf, Wf]`` in pixels of its own resolution: for a pixel ``x`` of
  frame t, ``x + flow(x)`` is where it was in frame t-1 (channel 0 = dx, channel 1 = dy). ``Hf, Wf`` may differ
  from ``H, W``; :func:`vidseg_ros.motion.warp.warp` rescales flow to whatever resolution it warps.
* Logits are returned at the input resolution ``[B, C, H, W]``.
* ``State`` is a flat ``dict[str, Tensor]``; ``key_step`` and ``nonkey_step`` return the same keys and shapes,
  so state can be carried frame to frame and exported as explicit tensors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = dict[str, Tensor]
#: State key under which GRFP, TWNet (bottleneck correction) and NetWarp carry the frame pooled as their next
#: step compares it with the current one, so that each frame is pooled once.
POOLED_IMAGE = "image"


class VideoSegModel(nn.Module):
    """Base class of every method.

    ``key_interval`` is the default key-frame policy: 1 runs ``key_step`` on every frame (per-frame model),
    0 runs it only on the first frame after a reset (NetWarp, GRFP, TDNet), N > 1 on every N-th frame (TWNet).
    """

    method: ClassVar[str] = ""
    uses_motion: ClassVar[bool] = False
    #: Submodules that stage-2 training creates from scratch (the rest starts from a trained image model);
    #: they train at a higher learning rate (``FRESH_LR_MULT`` in :mod:`vidseg_ros.training.loop`).
    fresh_modules: ClassVar[tuple[str, ...]] = ()
    key_interval: int = 1
    #: Non-key step functions that take turns (TDNet's sub-networks, chosen by the state); 1 for the others.
    phases: int = 1

    #: Submodules frozen by :meth:`freeze`: no gradients, and eval mode whatever ``train()`` is asked.
    _frozen: tuple[str, ...] = ()

    def freeze(self, name: str) -> None:
        """Stops gradients into submodule ``name`` and keeps it in eval mode (BN statistics frozen) from now on:
        the trained network a video method builds on."""
        module = getattr(self, name)
        module.requires_grad_(False)
        module.eval()
        self._frozen = (*self._frozen, name)

    def train(self, mode: bool = True) -> VideoSegModel:
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        """Full computation on a frame with no usable history; returns logits and fresh state."""
        raise NotImplementedError

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        """Computation that reuses ``state`` of frame t-1 warped by ``flow``; returns logits and new state."""
        raise NotImplementedError

    def phase_of(self, state: State) -> int:
        """Which of the :attr:`phases` non-key steps the next frame takes after ``state``."""
        return 0

    def phase_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State, phase: int
    ) -> tuple[Tensor, State]:
        """The non-key step of one phase; exporters trace each phase as its own graph."""
        return self.nonkey_step(image, prev_image, flow, state)

    def inference_form(self) -> VideoSegModel:
        """The module the backends run: the same outputs from cheaper steps, whose state may differ from the
        one training sees (TWNet's is projected, :mod:`vidseg_ros.models.twnet_projected`); ``self`` for most
        models. It shares this model's weights."""
        return self

    def forward(self, image: Tensor) -> Tensor:
        """Single-image logits (the image model); used for training stage 1 and as a reference."""
        return self.key_step(image)[0]


def scale_channels(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x * weight + bias`` with one weight (and bias) per channel of ``x`` ``[B, C, H, W]``.

    In an ONNX export it is a depthwise 1x1 convolution, the same values: ONNX Runtime runs that in its blocked
    (NCHWc) layout, so an upsampling or convolution after it stays blocked instead of converting the layout
    and running the plain kernel. PyTorch eager keeps the product and sum, which is faster there (15 against
    182 us for 48 channels at 40x30).
    """
    if torch.onnx.is_in_onnx_export():
        c = int(x.shape[1])
        return F.conv2d(x, weight.view(c, 1, 1, 1), bias, groups=c)
    scaled = x * weight.view(1, -1, 1, 1)
    return scaled if bias is None else scaled + bias.view(1, -1, 1, 1)
