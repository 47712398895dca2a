"""ImageNet encoders in plain torch: MobileNetV2, ResNet-18, and a shallow MobileNetV2 for TDNet's sub-networks.

Module names reproduce torchvision's, so its ImageNet state dicts (``mobilenet_v2``, ``resnet18``) load
directly, minus the classifier. Each encoder returns a dict of features at strides 4, 8, 16 and 32 named
``c2``..``c5`` (the decoder's inputs), plus the stride-2 stem output ``c1``, and can stop early (``upto``),
which TWNet's cheap non-key path relies on.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from vidseg_ros.errors import load_problem, load_tensors

#: Feature names, shallow to deep, with their stride.
LEVELS: tuple[str, ...] = ("c1", "c2", "c3", "c4", "c5")
STRIDES: dict[str, int] = {"c1": 2, "c2": 4, "c3": 8, "c4": 16, "c5": 32}

#: Called after each level with (name, feature); its return value replaces the feature downstream.
FeatureHook = Callable[[str, Tensor], Tensor]


class PretrainedWeightsError(ValueError):
    """An ImageNet state dict that does not fit the backbone."""


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding of the MobileNet papers (and torchvision), never dropping more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _check_upto(upto: str) -> None:
    if upto not in LEVELS:
        raise ValueError(f"unknown feature level {upto!r}; expected one of {LEVELS}")


class Backbone(nn.Module):
    """Common interface: ``forward(x, upto="c5", hook=None) -> {"c1": ..., "c2": ..., ...}``."""

    name: ClassVar[str] = ""
    #: Channels of each returned level.
    channels: dict[str, int]
    #: Prefixes of ImageNet-classifier keys that segmentation does not use.
    classifier_prefixes: ClassVar[tuple[str, ...]] = ()

    def stage_modules(self, level: str) -> list[nn.Module]:
        """Modules that map the previous level (or the image for ``c1``) to ``level``, in order."""
        raise NotImplementedError

    def forward(self, x: Tensor, upto: str = "c5", hook: FeatureHook | None = None) -> dict[str, Tensor]:
        _check_upto(upto)
        feats: dict[str, Tensor] = {}
        for level in LEVELS:
            for module in self.stage_modules(level):
                x = module(x)
            if hook is not None:
                x = hook(level, x)
            feats[level] = x
            if level == upto:
                break
        return feats


class ConvBNReLU6(nn.Sequential):
    """torchvision's ``Conv2dNormActivation`` with ReLU6: keys ``0.weight``, ``1.*``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: optional 1x1 expansion, depthwise 3x3, linear 1x1 projection (``conv.*`` keys)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(Backbone):
    """MobileNetV2 encoder (``features.0`` .. ``features.18``) with a width multiplier.

    Levels: ``c1`` = ``features[0:2]`` (stride 2), ``c2`` = ``[2:4]`` (4), ``c3`` = ``[4:7]`` (8),
    ``c4`` = ``[7:14]`` (16),
    ``c5`` = ``[14:19]`` (32, including the final 1x1 conv to 1280 x max(1, width_mult) channels).
    """

    name = "mobilenetv2"
    classifier_prefixes = ("classifier.",)
    # t (expansion), c (channels), n (repeats), s (stride of the first repeat)
    SETTING: ClassVar[tuple[tuple[int, int, int, int], ...]] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    SLICES: ClassVar[dict[str, tuple[int, int]]] = {
        "c1": (0, 2),
        "c2": (2, 4),
        "c3": (4, 7),
        "c4": (7, 14),
        "c5": (14, 19),
    }

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = float(width_mult)
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in self.SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(ConvBNReLU6(cin, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.channels = {level: self._out_channels(end - 1) for level, (_, end) in self.SLICES.items()}
        _init_weights(self)

    def _out_channels(self, index: int) -> int:
        block = self.features[index]
        if isinstance(block, InvertedResidual):
            return block.out_channels
        return block[0].out_channels

    def stage_modules(self, level: str) -> list[nn.Module]:
        start, end = self.SLICES[level]
        return list(self.features[start:end])


class ShallowMobileNetV2(MobileNetV2):
    """MobileNetV2 with one inverted residual per stage (two at strides 8 and 16): 9 blocks instead of 17.

    TDNet's sub-networks are shallow by design. On a CPU a narrow MobileNetV2 spends most of its time in
    per-layer overhead, not arithmetic (x0.25 took 0.58x of x0.5 at 320x240 in PyTorch eager), so depth, not
    width, is what makes a sub-network cheap: this one at x0.25 took 0.49x. It has no ImageNet weights.
    """

    name = "mobilenetv2_shallow"
    SETTING: ClassVar[tuple[tuple[int, int, int, int], ...]] = (
        (1, 16, 1, 1),
        (6, 24, 1, 2),
        (6, 32, 2, 2),
        (6, 64, 2, 2),
        (6, 96, 1, 1),
        (6, 160, 1, 2),
        (6, 320, 1, 1),
    )
    SLICES: ClassVar[dict[str, tuple[int, int]]] = {
        "c1": (0, 2),
        "c2": (2, 3),
        "c3": (3, 5),
        "c4": (5, 8),
        "c5": (8, 11),
    }


class BasicBlock(nn.Module):
    """ResNet basic block with torchvision's names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(Backbone):
    """ResNet-18 encoder: ``c1`` = 7x7 stem (stride 2), ``c2`` = max-pool + ``layer1`` (4), ``c3..c5`` =
    ``layer2..layer4``."""

    name = "resnet18"
    classifier_prefixes = ("fc.",)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.channels = {"c1": 64, "c2": 64, "c3": 128, "c4": 256, "c5": 512}
        _init_weights(self)

    def stage_modules(self, level: str) -> list[nn.Module]:
        if level == "c1":
            return [self.conv1, self.bn1, self.relu]
        if level == "c2":
            return [self.maxpool, self.layer1]
        return [{"c3": self.layer2, "c4": self.layer3, "c5": self.layer4}[level]]


def _init_weights(module: nn.Module) -> None:
    # torchvision's initialisation, so that an untrained backbone behaves like theirs.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


BACKBONES: dict[str, type[Backbone]] = {
    "mobilenetv2": MobileNetV2,
    "mobilenetv2_shallow": ShallowMobileNetV2,
    "resnet18": ResNet18,
}
#: Backbones that take a width multiplier.
WIDTH_BACKBONES: tuple[str, ...] = ("mobilenetv2", "mobilenetv2_shallow")


def build_backbone(name: str, *, width_mult: float = 1.0) -> Backbone:
    """Builds a MobileNetV2 (any ``width_mult``) or ``"resnet18"`` (``width_mult`` must be 1)."""
    if name in WIDTH_BACKBONES:
        return BACKBONES[name](width_mult=width_mult)  # type: ignore[call-arg]
    if name == "resnet18":
        if width_mult != 1.0:
            raise ValueError(f"width_mult applies to mobilenetv2 only; resnet18 got {width_mult}")
        return ResNet18()
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")


def load_pretrained_backbone(backbone: Backbone, path: str | os.PathLike[str]) -> None:
    """Loads a torchvision ImageNet state dict file into ``backbone``, ignoring the classifier.

    Args:
        backbone: A :class:`MobileNetV2` or :class:`ResNet18`.
        path: File saved with ``torch.save(model.state_dict(), path)``; read with ``weights_only=True``.

    Raises:
        PretrainedWeightsError: The file is unreadable, or keys are missing/unexpected, or shapes differ.
    """
    try:
        state = load_tensors(path)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {load_problem(e)}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} does not hold a state dict")
    state = {k: v for k, v in state.items() if not k.startswith(backbone.classifier_prefixes)}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                details.append(f"{label}: {shown}")
        raise PretrainedWeightsError(
            f"{path} does not fit backbone {backbone.name} "
            f"(channels {backbone.channels}): " + "; ".join(details)
        )
    backbone.load_state_dict(state)
