"""Model registry: build any method by name with keyword-only, validated options.

Checkpoints store :func:`arch_config` of their model and rebuild it with ``build_model(**arch)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from vidseg_ros.models.backbones import BACKBONES, WIDTH_BACKBONES
from vidseg_ros.models.base import VideoSegModel
from vidseg_ros.models.grfp import DEFAULT_KERNEL, GRFPModel
from vidseg_ros.models.netwarp import NetWarpModel
from vidseg_ros.models.perframe import DECODER_CHANNELS, MIN_DECODER_CHANNELS, PerFrameModel
from vidseg_ros.models.tdnet import TDNetModel
from vidseg_ros.models.twnet import TWNetModel

Builder = Callable[..., VideoSegModel]
B = TypeVar("B", bound=Builder)

_BUILDERS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[B], B]:
    """Registers a builder under ``name``; registering the same name twice raises ``ValueError``."""

    def wrapper(fn: B) -> B:
        if name in _BUILDERS:
            raise ValueError(f"a model is already registered as {name!r}")
        _BUILDERS[name] = fn
        return fn

    return wrapper


def available_models() -> list[str]:
    """Registered method names."""
    return sorted(_BUILDERS)


def _options_of(builder: Builder) -> set[str]:
    params = inspect.signature(builder).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_common(backbone: str, num_classes: int, width_mult: float, decoder_channels: int) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(width_mult, bool) or not isinstance(width_mult, int | float) or not width_mult > 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    if backbone not in WIDTH_BACKBONES and width_mult != 1.0:
        raise ValueError(f"width_mult applies to mobilenetv2 only; {backbone} needs 1.0, got {width_mult}")
    if (
        isinstance(decoder_channels, bool)
        or not isinstance(decoder_channels, int)
        or decoder_channels < MIN_DECODER_CHANNELS
    ):
        raise ValueError(
            f"decoder_channels must be an int >= {MIN_DECODER_CHANNELS}, got {decoder_channels!r}"
        )


def build_model(
    method: str, *, backbone: str = "mobilenetv2", num_classes: int, width_mult: float = 1.0, **options: Any
) -> VideoSegModel:
    """Builds an untrained model.

    Args:
        method: A name from :func:`available_models` (``perframe``, ``netwarp``, ``twnet``, ``grfp``,
            ``tdnet``).
        backbone: ``mobilenetv2`` or ``resnet18``.
        num_classes: Output classes.
        width_mult: MobileNetV2 width multiplier; must stay 1.0 for resnet18.
        **options: Method options: ``decoder_channels`` (all); ``layers`` (netwarp);
            ``warp_layer``, ``correction``, ``key_interval``, ``cfr`` (twnet); ``kernel`` (grfp);
            ``paths``, ``key_channels`` (tdnet).

    Raises:
        ValueError: Unknown method, backbone or option, or an invalid or incompatible value.
    """
    if method not in _BUILDERS:
        raise ValueError(f"unknown method {method!r}; available: {available_models()}")
    builder = _BUILDERS[method]
    allowed = _options_of(builder) - {"backbone", "num_classes", "width_mult"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; accepted: {sorted(allowed)}")
    _check_common(backbone, num_classes, width_mult, options.get("decoder_channels", DECODER_CHANNELS))
    return builder(backbone=backbone, num_classes=num_classes, width_mult=float(width_mult), **options)


def arch_config(model: VideoSegModel) -> dict[str, Any]:
    """JSON-serialisable kwargs that rebuild ``model``'s architecture: ``build_model(**arch_config(m))``."""
    config = getattr(model, "config", None)
    if not model.method or not callable(config):
        raise TypeError(f"{type(model).__name__} does not describe its architecture (no method/config())")
    return {"method": model.method, **config()}


# The methods' own classes are their builders: their keyword-only constructors are the options.
for _cls in (PerFrameModel, NetWarpModel, TWNetModel, GRFPModel, TDNetModel):
    register_model(_cls.method)(_cls)


@register_model("grfp_onnx")
def _grfp_onnx(
    *,
    backbone: str,
    num_classes: int,
    width_mult: float,
    base: str,
    base_sha256: str | None = None,
    kernel: int = DEFAULT_KERNEL,
) -> VideoSegModel:
    """GRFP over a foreign ONNX model (``vidseg train --method grfp --base model.onnx``); ``backbone`` and
    ``width_mult`` do not apply."""
    from vidseg_ros.runtime.foreign import GRFPOnnxModel  # runtime code: imported only when asked for

    return GRFPOnnxModel(base=base, base_sha256=base_sha256, num_classes=num_classes, kernel=kernel)
