"""Registry: building by name, early rejection of bad options, arch_config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from vidseg_ros.models import VideoSegModel, arch_config, available_models, build_model, register_model


def test_available_models() -> None:
    assert {"perframe", "netwarp", "twnet"} <= set(available_models())


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("perframe")(lambda **_: None)


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        ("segformer", {}, "unknown method"),
        ("perframe", {"backbone": "vgg16"}, "unknown backbone"),
        ("perframe", {"backbone": "resnet18", "width_mult": 0.5}, "width_mult"),
        ("perframe", {"width_mult": 0}, "width_mult"),
        ("perframe", {"num_classes": 0}, "num_classes"),
        ("perframe", {"warp_layer": 1}, "unknown option"),
        ("netwarp", {"warp_layer": 1}, "unknown option"),
        ("netwarp", {"layers": ["c6"]}, "unknown NetWarp layer"),
        ("netwarp", {"layers": []}, "at least one"),
        ("netwarp", {"layers": ["p2", "p2"]}, "duplicate"),
        ("twnet", {"warp_layer": 0}, "warp_layer"),
        ("twnet", {"warp_layer": 4}, "warp_layer"),
        ("twnet", {"key_interval": 0}, "key_interval"),
        ("twnet", {"correction": "yes"}, "correction"),
        ("twnet", {"layers": ["c5"]}, "unknown option"),
        ("perframe", {"decoder_channels": 2}, "decoder_channels"),
    ],
)
def test_rejects_bad_options(method: str, kwargs: dict, match: str) -> None:
    kwargs = {"num_classes": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_model(method, **kwargs)


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        build_model("perframe", "mobilenetv2", 4)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("perframe", {"backbone": "resnet18", "decoder_channels": 16}),
        ("netwarp", {"width_mult": 0.25, "layers": ["p3", "c3"], "decoder_channels": 16}),
        ("twnet", {"width_mult": 0.5, "warp_layer": 2, "correction": False, "key_interval": 6}),
    ],
)
def test_arch_config_round_trip(method: str, options: dict) -> None:
    model = build_model(method, num_classes=7, **options)
    assert isinstance(model, VideoSegModel) and model.method == method
    config = json.loads(json.dumps(arch_config(model)))
    assert config["method"] == method and config["num_classes"] == 7
    rebuilt = build_model(**config)
    assert arch_config(rebuilt) == config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    if method == "twnet":
        assert rebuilt.key_interval == 6
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().key_step(x)[0], model.eval().key_step(x)[0])


def test_options_left_out_take_the_method_classs_defaults() -> None:
    """TDNet's sub-networks default to the shipped 48-channel decoder, not the per-frame model's 96."""
    tdnet = build_model("tdnet", backbone="mobilenetv2_shallow", width_mult=0.25, num_classes=9)
    assert tdnet.config()["decoder_channels"] == 48 and tdnet.config()["paths"] == 4
    assert build_model("perframe", num_classes=9).config()["decoder_channels"] == 96
