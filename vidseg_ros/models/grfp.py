"""GRFP (Nilsson & Sminchisescu, CVPR 2018): a gated recurrent unit over a static network's class scores.

The STGRU takes the static network's scores ``x_t`` of the current frame and its own previous output
``h_{t-1}``, warped into frame t with the reverse flow, and gates the two by how well the warp explains the
image::

    p_h = softmax(h_{t-1}) - 1/C          p_x = softmax(x_t) - 1/C          centred probabilities
    e   = I_t - W(I_{t-1})                                                  photometric residual of the warp
    r   = 1 - tanh(|conv_3->1(e) + b_r|)                                    ~1 where the warp is right
    h_w = r * W(p_h)
    h~  = conv_C->C(p_x) + conv_C->C(h_w)
    z   = sigmoid(conv_C->1(p_x) + conv_C->1(h_w) + b_z)
    h_t = lambda * (1 - z) * h_w + z * h~                                   the frame's scores: argmax h_t

Here the unit runs on the static network's stride-4 logits, before they are upsampled (the per-frame model's
classifier works at stride 4, so nothing finer exists to propagate; the official code ran at full resolution
on logits upsampled from stride 8). The images and the flow are brought to that resolution (block means, and
the flow resized with its vectors rescaled), and the warp is the one every method here uses (bilinear, border
clamp; the official op reads zeros outside the image). The pairs of convolutions over ``p_x`` and ``h_w`` are
one convolution over their concatenation with ``C + 1`` outputs: the same arithmetic, one kernel launch.

Initialisation, as the authors needed it: the C->C convolutions start at 6 x identity (centre tap) plus
small noise, lambda at 2 (learnt), the gate convolution near zero so the gate starts open (r ~ 1). The first
frame after a reset has no history: h = x.

State: ``{"h": [B, C, h, w]}``, the unit's output at the logits' resolution (``h, w = ceil(H/4), ceil(W/4)``),
and ``{"image": [B, 3, h, w]}``, the frame pooled to it, which the next step's residual reads (each frame is
pooled once).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vidseg_ros.models.base import POOLED_IMAGE, State, VideoSegModel
from vidseg_ros.models.fpn import upsample_logits
from vidseg_ros.models.perframe import DECODER_CHANNELS, PerFrameModel, load_image_weights
from vidseg_ros.motion.warp import resize_to, warp

#: Convolution size of the unit. The original 7x7 at full resolution reaches 3 pixels; at stride 4 a 3x3
#: kernel already reaches 4 input pixels.
DEFAULT_KERNEL = 3
IDENTITY_GAIN = 6.0
INIT_LAMBDA = 2.0
INIT_NOISE = 1e-3


def centred_softmax(scores: Tensor) -> Tensor:
    """``softmax(scores) - 1/C`` over the class axis: zero mean, bounded, whatever the scores' scale."""
    if torch.onnx.is_in_onnx_export():
        # The same softmax written out: ONNX Runtime's Softmax over axis 1 of a [1, 9, 120, 160] map took 1.57 ms
        # against 0.29 ms for these reductions over the same axis (1 thread); PyTorch keeps its own kernel.
        e = torch.exp(scores - scores.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True) - 1.0 / int(scores.shape[1])
    return torch.softmax(scores, dim=1) - 1.0 / int(scores.shape[1])


class STGRU(nn.Module):
    """The spatio-temporal GRU of GRFP for ``num_classes`` score maps (see the module docstring)."""

    def __init__(self, num_classes: int, kernel: int = DEFAULT_KERNEL) -> None:
        super().__init__()
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"STGRU kernel must be an odd int >= 1, got {kernel!r}")
        c = int(num_classes)
        self.num_classes, self.kernel = c, kernel
        pad = kernel // 2
        self.gate = nn.Conv2d(3, 1, kernel, padding=pad)
        # Outputs 0..C-1: h~ = conv(p_x) + conv(h_w); output C: the update gate's pre-activation.
        self.mix = nn.Conv2d(2 * c, c + 1, kernel, padding=pad)
        self.lam = nn.Parameter(torch.tensor(INIT_LAMBDA))
        with torch.no_grad():
            for conv in (self.gate, self.mix):
                conv.weight.normal_(0.0, INIT_NOISE)
                conv.bias.zero_()
            eye = torch.arange(c)
            self.mix.weight[eye, eye, pad, pad] += IDENTITY_GAIN
            self.mix.weight[eye, c + eye, pad, pad] += IDENTITY_GAIN

    def forward(self, x: Tensor, h_prev: Tensor, image: Tensor, prev_image: Tensor, flow: Tensor) -> Tensor:
        """One step. ``x`` and ``h_prev``: scores ``[B, C, h, w]``; the images at any size that pools to
        ``(h, w)``; ``flow``: reverse flow t -> t-1 in pixels of its own size."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        image, prev_image = resize_to(image, size), resize_to(prev_image, size)
        residual = image - warp(prev_image, flow)
        r = 1.0 - torch.tanh(self.gate(residual).abs())
        h_w = r * warp(centred_softmax(h_prev), flow)
        mixed = self.mix(torch.cat((centred_softmax(x), h_w), dim=1))
        h_tilde, z = mixed[:, : self.num_classes], torch.sigmoid(mixed[:, self.num_classes :])
        return self.lam * (1.0 - z) * h_w + z * h_tilde


class GRFPBase(VideoSegModel):
    """The STGRU over any static network's scores: subclasses give :meth:`static_scores`."""

    uses_motion = True
    fresh_modules = ("stgru",)
    key_interval = 0
    stgru: STGRU

    def static_scores(self, image: Tensor) -> Tensor:
        """The static network's class scores for a normalised image ``[B, 3, H, W]``, at their own size."""
        raise NotImplementedError

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        x = self.static_scores(image)
        return upsample_logits(x, _hw(image)), {"h": x, POOLED_IMAGE: resize_to(image, _hw(x))}

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        """``prev_image`` is not read: the state carries the previous frame pooled to the scores' size, so
        each frame is pooled once (at 640x480 in ONNX Runtime each pooling took 0.55 ms)."""
        x = self.static_scores(image)
        pooled = resize_to(image, _hw(x))
        h = self.stgru(x, state["h"], pooled, state[POOLED_IMAGE], flow)
        return upsample_logits(h, _hw(image)), {"h": h, POOLED_IMAGE: pooled}


class GRFPModel(GRFPBase):
    """GRFP around a :class:`PerFrameModel` (the static network).

    Args:
        num_classes, backbone, width_mult, decoder_channels: Those of the static network.
        kernel: Convolution size of the STGRU.

    Training (:meth:`freeze_static`, then clips): only the STGRU learns unless the static network is unfrozen
    for fine-tuning afterwards.
    """

    method = "grfp"

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "mobilenetv2",
        width_mult: float = 1.0,
        decoder_channels: int = DECODER_CHANNELS,
        kernel: int = DEFAULT_KERNEL,
    ) -> None:
        super().__init__()
        self.image_model = PerFrameModel(
            num_classes=num_classes,
            backbone=backbone,
            width_mult=width_mult,
            decoder_channels=decoder_channels,
        )
        self.stgru = STGRU(num_classes, kernel)

    @classmethod
    def from_image_model(cls, image_model: PerFrameModel, *, kernel: int = DEFAULT_KERNEL) -> GRFPModel:
        """A GRFP model whose static network is a copy of ``image_model`` (weights included)."""
        model = cls(**image_model.config(), kernel=kernel)
        load_image_weights(model.image_model, image_model)
        return model.to(next(image_model.parameters()).device)

    def freeze_static(self) -> None:
        """Stops gradients into the static network and keeps it in eval mode (BN statistics frozen)."""
        self.freeze("image_model")

    def config(self) -> dict[str, Any]:
        return {**self.image_model.config(), "kernel": self.stgru.kernel}

    def static_scores(self, image: Tensor) -> Tensor:
        """The static network's logits at stride 4 (before upsampling)."""
        return self.image_model.decoder(self.image_model.backbone(image))["logits"]


def _hw(image: Tensor) -> tuple[int, int]:
    return int(image.shape[-2]), int(image.shape[-1])
