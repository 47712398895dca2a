"""NetWarp (Gadde et al., ICCV 2017): fuse flow-warped features of frame t-1 into an image CNN.

At each insertion layer ``L`` of the wrapped :class:`PerFrameModel`::

    f~     = FlowCNN(flow, I_t, I_{t-1}, I_t - I_{t-1})      all pooled to the resolution of L
    z~_t^L = w1 * z_t^L + w2 * warp(z~_{t-1}^L, f~)           w1, w2 per channel, initialised to 1 and 0

and ``z~_t^L`` replaces ``z_t^L`` for the rest of the network, so at initialisation NetWarp computes exactly
what the image model computes. The state carries ``z~^L`` for every insertion layer: at inference the
fused features propagate recurrently (the first frame after a reset runs ``key_step`` and stores the plain
image-model features, which is also the frame-pair training setting). It also carries the frame as the
FlowCNNs see it (block means at the finest insertion layer's stride), so that each frame is pooled once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vidseg_ros.models.backbones import STRIDES as ENCODER_STRIDES
from vidseg_ros.models.base import POOLED_IMAGE, State, VideoSegModel, scale_channels
from vidseg_ros.models.fpn import STRIDES as DECODER_STRIDES
from vidseg_ros.models.perframe import DECODER_CHANNELS, LAYERS, PerFrameModel, load_image_weights
from vidseg_ros.motion.warp import resize_flow, resize_to, warp

#: Default insertion layers: the deepest context features and the decoder output.
DEFAULT_LAYERS: tuple[str, ...] = ("c5", "p4")


class FlowCNN(nn.Module):
    """Residual flow transformation of NetWarp.

    Input: flow (2), I_t (3), I_{t-1} (3), I_t - I_{t-1} (3), all at the feature resolution, flow in pixels of
    that resolution. Body: 3x3 convs to 16, 32 and 2 channels with ReLU between; the 2-channel result is
    concatenated with the input flow and a final 3x3 conv gives the transformed flow.

    Initialisation: the final conv is the identity on the input-flow channels and zero on the body's output,
    so the transformed flow starts equal to the input flow (warping is meaningful from the first step); the
    body keeps PyTorch's default initialisation and its weights still receive gradients through the final conv.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(11, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 2, 3, padding=1),
        )
        self.out = nn.Conv2d(4, 2, 3, padding=1)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()
            self.out.weight[0, 2, 1, 1] = 1.0
            self.out.weight[1, 3, 1, 1] = 1.0

    def forward(self, flow: Tensor, image: Tensor, prev_image: Tensor) -> Tensor:
        x = torch.cat((flow, image, prev_image, image - prev_image), dim=1)
        return self.out(torch.cat((self.body(x), flow), dim=1))


class NetWarpModule(nn.Module):
    """FlowCNN + warp + per-channel fusion for one layer with ``channels`` channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.flow_cnn = FlowCNN()
        self.w1 = nn.Parameter(torch.ones(channels))
        self.w2 = nn.Parameter(torch.zeros(channels))

    def transformed_flow(
        self, flow: Tensor, image: Tensor, prev_image: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """FlowCNN output at ``size``, in pixels of ``size``."""
        return self.flow_cnn(
            resize_flow(flow, size, pool=True), resize_to(image, size), resize_to(prev_image, size)
        )

    def forward(self, z: Tensor, prev_z: Tensor, flow: Tensor, image: Tensor, prev_image: Tensor) -> Tensor:
        size = (int(z.shape[-2]), int(z.shape[-1]))
        warped = warp(prev_z, self.transformed_flow(flow, image, prev_image, size))
        # Exported as depthwise convolutions (scale_channels), the sum and the decoder's upsampling of the fused
        # p4 stay in ONNX Runtime's blocked layout: the non-key step took 32.8 against 33.5 ms at 640x480 and
        # 10.1 against 10.5 ms at 320x240 (1 thread, interleaved).
        return scale_channels(z, self.w1) + scale_channels(warped, self.w2)


def validate_layers(layers: Sequence[str]) -> tuple[str, ...]:
    """Checks NetWarp insertion layers; returns them in computation order."""
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    if not layers:
        raise ValueError("NetWarp needs at least one insertion layer")
    unknown = [name for name in layers if name not in LAYERS]
    if unknown:
        raise ValueError(f"unknown NetWarp layer(s) {unknown}; expected names from {LAYERS}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate NetWarp layers in {list(layers)}")
    return tuple(name for name in LAYERS if name in layers)


class NetWarpModel(VideoSegModel):
    """NetWarp around a :class:`PerFrameModel`.

    Args:
        num_classes, backbone, width_mult, decoder_channels: Those of the wrapped image model.
        layers: Insertion layers, any of ``c1``..``c5`` (encoder outputs, strides 2..32) and ``p5``..``p2``
            (decoder features, ``p2`` being the decoder output at stride 4). Default ``("c5", "p4")``: on ONNX
            Runtime its non-key step stays within 1.15x the per-frame step, which ``("c5", "p2")`` does not.

    State: ``{layer: fused features}`` for each insertion layer, e.g. ``{"c5": [B, 1280, H/32, W/32],
    "p2": [B, decoder_channels, H/4, W/4]}`` (strides round up for sizes not divisible by 32), and
    ``{"image": [B, 3, H/s, W/s]}``, the frame as block means at the finest insertion layer's stride ``s`` (the
    frame itself when ``s`` does not divide its size).

    To start from a trained per-frame model use :meth:`from_image_model`, or
    ``model.image_model.load_state_dict(perframe.state_dict())``.
    """

    method = "netwarp"
    uses_motion = True
    fresh_modules = ("netwarp",)
    key_interval = 0

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "mobilenetv2",
        width_mult: float = 1.0,
        decoder_channels: int = DECODER_CHANNELS,
        layers: Sequence[str] = DEFAULT_LAYERS,
    ) -> None:
        super().__init__()
        self.layers = validate_layers(layers)
        self.image_model = PerFrameModel(
            num_classes=num_classes,
            backbone=backbone,
            width_mult=width_mult,
            decoder_channels=decoder_channels,
        )
        channels = self.image_model.channels
        self.netwarp = nn.ModuleDict({name: NetWarpModule(channels[name]) for name in self.layers})

    @classmethod
    def from_image_model(
        cls, image_model: PerFrameModel, *, layers: Sequence[str] = DEFAULT_LAYERS
    ) -> NetWarpModel:
        """A NetWarp model whose image model is a copy of ``image_model`` (weights included)."""
        model = cls(**image_model.config(), layers=layers)
        model.load_image_weights(image_model)
        return model.to(next(image_model.parameters()).device)

    def load_image_weights(self, source: PerFrameModel | dict[str, Tensor]) -> None:
        """Loads per-frame weights (model or state dict) into the wrapped image model."""
        load_image_weights(self.image_model, source)

    def config(self) -> dict[str, Any]:
        return {**self.image_model.config(), "layers": list(self.layers)}

    def pooled(self, image: Tensor) -> Tensor:
        """``image`` as block means at the finest insertion layer's stride, or as it is when that stride does
        not divide its size."""
        stride = min(LAYER_STRIDES[name] for name in self.layers)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        return image if h % stride or w % stride else resize_to(image, (h // stride, w // stride))

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        feats = self.image_model.features(image)
        state = {name: feats[name] for name in self.layers}
        return feats["logits"], {**state, POOLED_IMAGE: self.pooled(image)}

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        """``prev_image`` is read only by layers whose size does not divide the pooled frames' (a frame size not
        divisible by the strides): the state carries the previous frame pooled, so each frame is pooled once."""
        # The FlowCNNs see the images as block means at their layer's resolution. Pooled once to the finest
        # layer's stride, a coarser layer's means come from those (the same values: the blocks nest), not
        # again from the full frames: on ONNX Runtime at 640x480 the stride-32 means of the two full frames
        # cost about 0.4 ms a step, and the stride-16 means of one frame 0.24 ms.
        images = (self.pooled(image), state[POOLED_IMAGE])
        new_state: State = {POOLED_IMAGE: images[0]}

        def fuse(name: str, z: Tensor) -> Tensor:
            # Resolved at trace time: the set of insertion layers is static.
            if name not in self.netwarp:
                return z
            size = (int(z.shape[-2]), int(z.shape[-1]))
            small = images if _nests(images[0], size) else (image, prev_image)
            fused = self.netwarp[name](z, state[name], flow, *small)
            new_state[name] = fused
            return fused

        logits = self.image_model.features(image, hook=fuse)["logits"]
        return logits, new_state


#: Stride of every named layer of the image model.
LAYER_STRIDES: dict[str, int] = {**ENCODER_STRIDES, **DECODER_STRIDES}


def _nests(x: Tensor, size: tuple[int, int]) -> bool:
    """Whether ``size`` divides ``x``'s size, so that block means of ``x`` are block means of what it pools."""
    return int(x.shape[-2]) % size[0] == 0 and int(x.shape[-1]) % size[1] == 0
