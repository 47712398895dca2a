"""TWNet (Feng, Li, Li): key frames through the full CNN, non-key frames warp deep decoder features.

Key frames run the per-frame model unchanged (the *key-frame CNN*). A non-key frame warps the previous frame's
decoder features at one *warp point* with the flow, and recomputes only what is shallower than it with the
*non-key frame CNN* (NKFC, a fine-tunable copy of the key CNN's shallow encoder stages, the remaining
lateral/top-down layers and the classifier). ``warp_layer`` picks the warp point in our FPN (see
:mod:`vidseg_ros.models.fpn`):

==========  ===========  ================================  ======================  ==================
warp_layer  warped       NKFC encoder stages               laterals recomputed     CFR spatial input
==========  ===========  ================================  ======================  ==================
1           p4 (s16)     c1..c3 (stride 8)                 c3, c2                  c3 pooled to s16
2           p3 (s8)      c1, c2 (stride 4)                 c2                      c2 pooled to s8
3           p2 (s4)      c1 (stride 2; none if warp-only)  none (classifier only)  c1 pooled to s4
==========  ===========  ================================  ======================  ==================

Layer 3 needs no lateral, so its CFR takes the stride-2 stem output: on CPUs MobileNetV2's stride-2/4 layers
are memory-bound and cost about 60% of the per-frame time (25% of its MACs), so stopping at stride 2 is what
makes that variant cheap in wall-clock time, not just in MACs.

Correction (``correction=True``), applied to the warped features ``w`` at the warp point, in one of two
designs (``cfr``):

``separable`` (the first design; checkpoints without a ``cfr`` key are this)::

    residual  = CFR(concat[w, spatial])                     one depthwise-separable 3x3 conv
    attention = sigmoid(conv3x3(resize(mean_c |I_t - warp(I_{t-1})|)))      RGA, at flow resolution
    corrected = w + attention * residual

``bottleneck`` (the default): the same structure, made cheap enough for ONNX Runtime on a CPU, where the
separable design's non-key step took 2.7x the warp-only step (22 against 8.2 ms at 640x480, one thread)::

    f_t       = I_t pooled to twice the features' size;  p_t = f_t pooled to their size
    r         = mean_c |p_t - warp(p_{t-1})|          p_{t-1} is carried in the state: each frame pooled once
    attention = sigmoid(conv3x3(r))                                               RGA, at the features' size
    hidden    = relu(dw3x3(relu(reduce(concat[w, relu(conv3x3_stride2(f_t)), r]))))   16 channels
    corrected = w + expand(attention * hidden)                                    expand: 1x1, no bias

No NKFC encoder stage runs: the spatial input comes from the pooled frame, not from the stride-2 stem, whose
convolutions and layout conversions took about 3 ms of ORT's step. The attention multiplies the 16-channel
bottleneck, which equals multiplying the residual because ``expand`` is linear. In two ``vidseg bench`` runs
at 640x480 (one thread) its ORT non-key step took 12.6 and 12.8 ms, against 29.6 and 29.9 ms for the
per-frame step; warp-only took 8.0-8.3 ms in an interleaved comparison. It trades accuracy for that: see the
README's results (TWNet rows).

The backends run warp layer 3 with the bottleneck CFR or none on a projected state where that is smaller,
the same logits from a warp of 25 channels instead of 96 for the shipped models
(:mod:`vidseg_ros.models.twnet_projected`); the figures above are from the full state.

Either CFR's output conv is zero-initialised, so an untrained correction equals the warp-only variant. The
corrected features are the state (and are what the next non-key frame warps); the stage-2 L2 consistency loss
compares them with :meth:`TWNetModel.key_features` of the same frame.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidseg_ros.models.backbones import LEVELS
from vidseg_ros.models.base import POOLED_IMAGE, State, VideoSegModel
from vidseg_ros.models.fpn import DECODER_LEVELS, LATERAL_OF, merge, upsample_logits
from vidseg_ros.models.perframe import DECODER_CHANNELS, PerFrameModel, load_image_weights
from vidseg_ros.motion.warp import resize_to, warp

#: Decoder feature warped on non-key frames, per ``warp_layer``.
WARP_POINTS: dict[int, str] = {1: "p4", 2: "p3", 3: "p2"}
#: Encoder level whose features feed CFR, per ``warp_layer``.
SPATIAL_LEVEL: dict[int, str] = {1: "c3", 2: "c2", 3: "c1"}
DEFAULT_KEY_INTERVAL = 12
#: CFR designs (see the module docstring): ``separable`` over NKFC stem features, ``bottleneck`` over the
#: pooled frame.
CFR_KINDS = ("separable", "bottleneck")
#: Layer 3 is the one that keeps the measured average cost at key interval 12 under 0.6x per-frame on a CPU
#: (model step 0.54x, whole pipeline 0.60x with MobileNetV2 x0.5 at 320x240; Layer 2's pipeline measured
#: 0.82x, because the stride-2 and stride-4 stages it recomputes take 58% of the per-frame time and are
#: memory-bound). Layer 1 is the paper's more accurate setting.
DEFAULT_WARP_LAYER = 3


def validate_warp_layer(warp_layer: int) -> int:
    if isinstance(warp_layer, bool) or warp_layer not in WARP_POINTS:
        raise ValueError(f"warp_layer must be one of {sorted(WARP_POINTS)}, got {warp_layer!r}")
    return int(warp_layer)


class NonKeyCNN(nn.Module):
    """Shallow encoder stages, the top-down layers below the warp point and the classifier, copied."""

    def __init__(self, key_cnn: PerFrameModel, warp_layer: int, need_spatial: bool) -> None:
        super().__init__()
        warp_point = WARP_POINTS[warp_layer]
        below = DECODER_LEVELS[DECODER_LEVELS.index(warp_point) + 1 :]
        self.top_down = tuple(LATERAL_OF[p] for p in below)
        needed = set(self.top_down) | ({SPATIAL_LEVEL[warp_layer]} if need_spatial else set())
        deepest = max((LEVELS.index(level) for level in needed), default=-1)
        self.encoder_levels = LEVELS[: deepest + 1]
        self.stages = nn.ModuleDict({level: nn.Sequential() for level in self.encoder_levels})
        self.lateral = nn.ModuleDict({level: nn.Sequential() for level in self.top_down})
        self.smooth = nn.ModuleDict({level: nn.Sequential() for level in self.top_down})
        self.classifier = nn.Conv2d(1, 1, 1)
        self.copy_from(key_cnn)

    def copy_from(self, key_cnn: PerFrameModel) -> None:
        """Re-creates every NKFC module as a copy of the key CNN's (weights, buffers, train/eval mode)."""
        for level in self.encoder_levels:
            self.stages[level] = nn.Sequential(*copy.deepcopy(key_cnn.backbone.stage_modules(level)))
        for level in self.top_down:
            self.lateral[level] = copy.deepcopy(key_cnn.decoder.lateral[level])
            self.smooth[level] = copy.deepcopy(key_cnn.decoder.smooth[level])
        self.classifier = copy.deepcopy(key_cnn.decoder.classifier)
        for p in self.parameters():
            p.requires_grad_(True)

    def encode(self, image: Tensor) -> dict[str, Tensor]:
        feats: dict[str, Tensor] = {}
        x = image
        for level in self.encoder_levels:
            x = self.stages[level](x)
            feats[level] = x
        return feats

    def decode(self, x: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """Top-down from the (corrected) warp-point features to stride-4 logits."""
        for level in self.top_down:
            x = merge(self.lateral[level], self.smooth[level], feats[level], x)
        return self.classifier(x)


class CFR(nn.Module):
    """Correction of warped features: one depthwise-separable 3x3 conv over ``[warped, spatial]``."""

    def __init__(self, channels: int, spatial_channels: int) -> None:
        super().__init__()
        cin = channels + spatial_channels
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, channels, 1)
        nn.init.zeros_(self.pointwise.weight)
        nn.init.zeros_(self.pointwise.bias)

    def forward(self, warped: Tensor, spatial: Tensor) -> Tensor:
        if not torch.onnx.is_in_onnx_export():
            return self.pointwise(self.depthwise(torch.cat((warped, spatial), dim=1)))
        # In ONNX, the same convolutions split by input, so that the concatenated map is never built: ONNX
        # Runtime's TWNet non-key step at 640x480 took 0.4-0.6 ms less (20.5-21.3 against 20.9-22.0 ms, four
        # interleaved rounds; no concat and one layout conversion less). PyTorch eager keeps the concatenation,
        # which was 1.2 ms faster there.
        c = int(warped.shape[1])
        dw, pw = self.depthwise.weight, self.pointwise.weight
        a = F.conv2d(F.conv2d(warped, dw[:c], padding=1, groups=c), pw[:, :c], self.pointwise.bias)
        b = F.conv2d(F.conv2d(spatial, dw[c:], padding=1, groups=dw.shape[0] - c), pw[:, c:])
        return a + b


class BottleneckCFR(nn.Module):
    """CFR for CPUs: a bottleneck over the warped features, the frame at twice their resolution and RGA's
    residual (see the module docstring).

    RGA's attention multiplies the ``width``-channel bottleneck; ``expand`` has no bias, so that equals
    multiplying the residual, on fewer channels. ``expand`` is zero-initialised: untrained, it is warp-only.
    """

    def __init__(self, channels: int, width: int = 16, spatial_channels: int = 16) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(3, spatial_channels, 3, stride=2, padding=1)
        self.reduce = nn.Conv2d(channels + spatial_channels + 1, width, 1)
        self.mix = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.expand = nn.Conv2d(width, channels, 1, bias=False)
        nn.init.zeros_(self.expand.weight)

    @staticmethod
    def pool(image: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The frame pooled to twice ``size`` (the spatial input) and to ``size`` (for RGA and the state)."""
        fine = resize_to(image, (2 * size[0], 2 * size[1]))
        return fine, resize_to(fine, size)

    def forward(self, warped: Tensor, fine: Tensor, attention: Tensor, residual: Tensor) -> Tensor:
        """The corrected features, from the warped ones, the frame at twice their size, and RGA's output."""
        if torch.onnx.is_in_onnx_export():
            # An identity that ONNX Runtime runs in its blocked (NCHWc) layout: the final sum then fuses into
            # the expand convolution and the classifier reads the blocked result. Without it the warped map
            # stays in plain layout, and the sum and two layout conversions cost about 1 ms more at 640x480.
            warped = F.max_pool2d(warped, 1)
        hidden = self.hidden(F.conv2d(warped, self.reduce_warped), fine, residual)
        return warped + self.expand(attention * hidden)

    @property
    def reduce_warped(self) -> Tensor:
        """``reduce``'s weights over the warped features' channels, ``[width, channels, 1, 1]``."""
        return self.reduce.weight[:, : self.reduce.in_channels - self.spatial.out_channels - 1]

    def hidden(self, reduced_warped: Tensor, fine: Tensor, residual: Tensor) -> Tensor:
        """The bottleneck before ``expand``, from :attr:`reduce_warped` applied to the warped features (no bias),
        the frame at twice their size and RGA's residual. ``reduce`` takes one convolution per input, so no
        concatenation is built."""
        size = (int(reduced_warped.shape[-2]), int(reduced_warped.shape[-1]))
        spatial = resize_to(F.relu(self.spatial(fine)), size)
        c, w = int(self.reduce_warped.shape[1]), self.reduce.weight
        reduced = reduced_warped + F.conv2d(spatial, w[:, c:-1], self.reduce.bias)
        reduced = reduced + F.conv2d(residual, w[:, -1:])
        return F.relu(self.mix(F.relu(reduced)))


class RGA(nn.Module):
    """Residual-guided attention: ``sigmoid(conv3x3(residual))``, residual = mean_c |I_t - warp(I_{t-1})|.

    The residual is measured at the flow's resolution (where the motion was estimated; usually a fraction of
    the input, which keeps this cheap) and then averaged down to the feature resolution; with
    ``at_features`` (the bottleneck CFR, which passes frames already pooled) at the features' size. Initialised
    to a constant 0.5 (zero weights); it learns once CFR produces a non-zero residual.
    """

    def __init__(self, at_features: bool = False) -> None:
        super().__init__()
        self.at_features = at_features
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def residual(self, image: Tensor, prev_image: Tensor, flow: Tensor, size: tuple[int, int]) -> Tensor:
        motion_size = size if self.at_features else (int(flow.shape[-2]), int(flow.shape[-1]))
        image = resize_to(image, motion_size)
        prev_image = resize_to(prev_image, motion_size)
        residual = (image - warp(prev_image, flow)).abs().mean(dim=1, keepdim=True)
        return resize_to(residual, size)

    def attend(self, residual: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(residual))

    def forward(self, image: Tensor, prev_image: Tensor, flow: Tensor, size: tuple[int, int]) -> Tensor:
        return self.attend(self.residual(image, prev_image, flow, size))


class TWNetModel(VideoSegModel):
    """TWNet with a per-frame key CNN, NKFC, and optional CFR + RGA correction.

    Args:
        num_classes, backbone, width_mult, decoder_channels: Those of the key-frame CNN.
        warp_layer: 1, 2 or 3: warp ``p4``, ``p3`` or ``p2`` (see the module docstring); default 3.
        correction: Add CFR and RGA; ``False`` gives the warp-only variant.
        key_interval: Default key-frame interval (GOP 12 in the paper).
        cfr: ``bottleneck`` (default) or ``separable``: the correction's design (see the module docstring).

    State: ``{warp_point: features}``, e.g. ``{"p3": [B, decoder_channels, H/8, W/8]}`` for warp_layer 2,
    plus ``{"image": [B, 3, h, w]}`` (the frame pooled to the features' size) with the bottleneck CFR;
    the key CNN's features after a key frame, the corrected features after a non-key frame.

    Stage-2 training: :meth:`from_image_model` (or :meth:`load_image_weights`), :meth:`freeze_key_cnn`, then
    train on ``nonkey_step`` with CE + 10 * MSE(state[warp_point], key_features(image)[warp_point]).
    """

    method = "twnet"
    uses_motion = True
    fresh_modules = ("cfr", "rga")

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "mobilenetv2",
        width_mult: float = 1.0,
        decoder_channels: int = DECODER_CHANNELS,
        warp_layer: int = DEFAULT_WARP_LAYER,
        correction: bool = True,
        key_interval: int = DEFAULT_KEY_INTERVAL,
        cfr: str = "bottleneck",
    ) -> None:
        super().__init__()
        self.warp_layer = validate_warp_layer(warp_layer)
        if not isinstance(correction, bool):
            raise ValueError(f"correction must be a bool, got {correction!r}")
        if cfr not in CFR_KINDS:
            raise ValueError(f"cfr must be one of {'|'.join(CFR_KINDS)}, got {cfr!r}")
        self.cfr_kind = cfr
        if isinstance(key_interval, bool) or not isinstance(key_interval, int) or key_interval < 1:
            raise ValueError(f"key_interval must be an int >= 1, got {key_interval!r}")
        self.correction = correction
        self.key_interval = key_interval
        self.warp_point = WARP_POINTS[self.warp_layer]
        self.spatial_level = SPATIAL_LEVEL[self.warp_layer]
        self.key_cnn = PerFrameModel(
            num_classes=num_classes,
            backbone=backbone,
            width_mult=width_mult,
            decoder_channels=decoder_channels,
        )
        separable = correction and cfr == "separable"
        self.nkfc = NonKeyCNN(self.key_cnn, self.warp_layer, need_spatial=separable)
        self.cfr: CFR | BottleneckCFR | None = None
        self.rga: RGA | None = None
        if separable:
            self.cfr = CFR(decoder_channels, self.key_cnn.backbone.channels[self.spatial_level])
            self.rga = RGA()
        elif correction:
            self.cfr = BottleneckCFR(decoder_channels)
            self.rga = RGA(at_features=True)

    @classmethod
    def from_image_model(
        cls,
        image_model: PerFrameModel,
        *,
        warp_layer: int = DEFAULT_WARP_LAYER,
        correction: bool = True,
        key_interval: int = DEFAULT_KEY_INTERVAL,
        cfr: str = "bottleneck",
    ) -> TWNetModel:
        """A TWNet whose key CNN and NKFC are copies of ``image_model`` (weights included)."""
        model = cls(
            **image_model.config(),
            warp_layer=warp_layer,
            correction=correction,
            key_interval=key_interval,
            cfr=cfr,
        )
        model.load_image_weights(image_model)
        return model.to(next(image_model.parameters()).device)

    def load_image_weights(self, source: PerFrameModel | dict[str, Tensor]) -> None:
        """Loads per-frame weights into the key CNN and re-copies the NKFC from it."""
        load_image_weights(self.key_cnn, source)
        self.sync_nkfc()

    def sync_nkfc(self) -> None:
        """Resets the NKFC to a copy of the key CNN (the start of stage-2 training)."""
        device = next(self.key_cnn.parameters()).device
        self.nkfc.copy_from(self.key_cnn)
        self.nkfc.to(device).train(self.training)

    def freeze_key_cnn(self) -> None:
        """Stops gradients into the key CNN and keeps it in eval mode (BN statistics frozen) from now on."""
        self.freeze("key_cnn")

    def config(self) -> dict[str, Any]:
        return {
            **self.key_cnn.config(),
            "warp_layer": self.warp_layer,
            "correction": self.correction,
            "key_interval": self.key_interval,
            "cfr": self.cfr_kind,
        }

    def inference_form(self) -> VideoSegModel:
        """The steps on a projected state (:mod:`vidseg_ros.models.twnet_projected`) where this variant has
        that form: warp layer 3 with the bottleneck CFR or none."""
        from vidseg_ros.models.twnet_projected import ProjectedTWNet, projectable

        return ProjectedTWNet(self) if projectable(self) else self

    @torch.no_grad()
    def key_features(self, image: Tensor) -> State:
        """The key CNN's features at the warp point for ``image``: the target of the L2 consistency loss."""
        return {self.warp_point: self.key_cnn.features(image)[self.warp_point]}

    def key_state(self, features: Tensor, image: Tensor) -> State:
        """The state after a key frame whose warp-point features are ``features``.

        The bottleneck CFR also keeps the frame pooled to the features' size, which the next step's RGA
        compares with its own pooled frame (so each frame is pooled once).
        """
        state = {self.warp_point: features}
        if isinstance(self.cfr, BottleneckCFR):
            state[POOLED_IMAGE] = resize_to(image, (int(features.shape[-2]), int(features.shape[-1])))
        return state

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        feats = self.key_cnn.features(image)
        return feats["logits"], self.key_state(feats[self.warp_point], image)

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        warped = warp(state[self.warp_point], flow)
        size = (int(warped.shape[-2]), int(warped.shape[-1]))
        feats = self.nkfc.encode(image)
        new_state = {self.warp_point: warped}
        if isinstance(self.cfr, BottleneckCFR) and self.rga is not None:
            fine, pooled = self.cfr.pool(image, size)
            residual = self.rga.residual(pooled, state[POOLED_IMAGE], flow, size)
            attention = self.rga.attend(residual)
            new_state = {self.warp_point: self.cfr(warped, fine, attention, residual), POOLED_IMAGE: pooled}
        elif isinstance(self.cfr, CFR) and self.rga is not None:
            spatial = resize_to(feats[self.spatial_level], size)
            attention = self.rga(image, prev_image, flow, size)
            new_state[self.warp_point] = warped + attention * self.cfr(warped, spatial)
        logits = self.nkfc.decode(new_state[self.warp_point], feats)
        return upsample_logits(logits, (int(image.shape[-2]), int(image.shape[-1]))), new_state
