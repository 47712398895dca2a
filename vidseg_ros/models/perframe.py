"""The per-frame (image) model: encoder + U-shaped FPN decoder, no temporal state.

It is stage 1 of training and the reference the video models are built from: NetWarp wraps it and TWNet uses
it as its key-frame CNN.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vidseg_ros.models.backbones import LEVELS, FeatureHook, build_backbone
from vidseg_ros.models.base import State, VideoSegModel
from vidseg_ros.models.fpn import DECODER_LEVELS, FPNDecoder, upsample_logits

#: Named features of the image model in computation order; NetWarp can be inserted after any of them.
LAYERS: tuple[str, ...] = LEVELS + DECODER_LEVELS

#: Default decoder width. The stride-4 decoder layer is memory-bound on CPUs; 96 keeps it to ~15% of the
#: per-frame time with MobileNetV2 while leaving ample capacity for a handful of classes.
DECODER_CHANNELS = 96
#: The narrowest decoder the registry builds.
MIN_DECODER_CHANNELS = 8


class PerFrameModel(VideoSegModel):
    """Backbone + FPN decoder, run independently on every frame.

    Args:
        num_classes: Output classes.
        backbone: ``"mobilenetv2"`` or ``"resnet18"``.
        width_mult: MobileNetV2 width multiplier (1.0 for resnet18).
        decoder_channels: Width of the decoder features ``p5``..``p2``.
    """

    method = "perframe"
    uses_motion = False
    key_interval = 1

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "mobilenetv2",
        width_mult: float = 1.0,
        decoder_channels: int = DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, width_mult=width_mult)
        self.decoder = FPNDecoder(self.backbone.channels, num_classes, decoder_channels)
        self.num_classes = int(num_classes)
        self._config = {
            "backbone": backbone,
            "num_classes": int(num_classes),
            "width_mult": float(width_mult),
            "decoder_channels": int(decoder_channels),
        }

    def config(self) -> dict[str, Any]:
        """Keyword arguments of the constructor (JSON-serialisable)."""
        return dict(self._config)

    @property
    def channels(self) -> dict[str, int]:
        """Channels of every named layer in :data:`LAYERS`."""
        ch = dict(self.backbone.channels)
        ch.update({p: self.decoder.channels for p in DECODER_LEVELS})
        return ch

    def features(self, image: Tensor, hook: FeatureHook | None = None) -> dict[str, Tensor]:
        """All named features (``c1``..``c5``, ``p5``..``p2``) and ``logits`` at the input resolution.

        ``hook(name, feature)`` is called after each named layer and its result replaces the feature for
        everything downstream; NetWarp fuses temporal information this way.
        """
        feats = self.backbone(image, hook=hook)
        out = self.decoder(feats, hook=hook)
        out["logits"] = upsample_logits(out["logits"], (int(image.shape[-2]), int(image.shape[-1])))
        return {**feats, **out}

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        return self.features(image)["logits"], {}

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        return self.key_step(image)


def load_image_weights(target: PerFrameModel, source: PerFrameModel | dict[str, Tensor]) -> None:
    """Copies a per-frame model (or its state dict) into ``target``; architectures must match exactly."""
    state = source.state_dict() if isinstance(source, nn.Module) else source
    target.load_state_dict(state)
