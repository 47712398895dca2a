"""Backbones: torchvision key-name compatibility, parameter counts, feature strides, pretrained loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidseg_ros.models.backbones import (
    MobileNetV2,
    PretrainedWeightsError,
    ResNet18,
    build_backbone,
    load_pretrained_backbone,
)

# Known entries of torchvision's ImageNet state dicts (torchvision.models.mobilenet_v2 / resnet18).
MOBILENET_V2_KEYS = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.running_var": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.bias": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.num_batches_tracked": (),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "features.18.1.bias": (1280,),
}
RESNET18_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_mean": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.1.bn2.running_var": (512,),
}


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mobilenetv2_matches_torchvision_layout() -> None:
    sd = MobileNetV2(width_mult=1.0).state_dict()
    for key, shape in MOBILENET_V2_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    # torchvision: 3,504,872 parameters in all, minus the 1280x1000 + 1000 classifier.
    assert _num_params(MobileNetV2()) == 3_504_872 - 1_281_000 == 2_223_872
    # 52 conv weights + 52 BNs x 5 entries; torchvision adds classifier.1.{weight,bias} for 314.
    assert len(sd) == 312


def test_resnet18_matches_torchvision_layout() -> None:
    sd = ResNet18().state_dict()
    for key, shape in RESNET18_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    # torchvision: 11,689,512 parameters in all, minus the 512x1000 + 1000 fc.
    assert _num_params(ResNet18()) == 11_689_512 - 513_000 == 11_176_512
    assert len(sd) == 120


def test_width_mult_channels() -> None:
    half = MobileNetV2(width_mult=0.5)
    assert half.channels == {"c1": 8, "c2": 16, "c3": 16, "c4": 48, "c5": 1280}
    assert half.state_dict()["features.0.0.weight"].shape == (16, 3, 3, 3)
    assert MobileNetV2(width_mult=1.4).channels["c5"] == 1792


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18"])
def test_feature_strides_and_upto(name: str) -> None:
    torch.manual_seed(0)
    bb = build_backbone(name, width_mult=1.0 if name == "resnet18" else 0.25).eval()
    x = torch.randn(1, 3, 64, 96)
    feats = bb(x)
    for level, stride in {"c2": 4, "c3": 8, "c4": 16, "c5": 32}.items():
        assert feats[level].shape == (1, bb.channels[level], 64 // stride, 96 // stride)
    partial = bb(x, upto="c3")
    assert list(partial) == ["c1", "c2", "c3"]
    assert feats["c1"].shape == (1, bb.channels["c1"], 32, 48)
    torch.testing.assert_close(partial["c3"], feats["c3"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="level"):
        bb(x, upto="c6")


def test_build_backbone_rejects() -> None:
    with pytest.raises(ValueError, match="width_mult"):
        build_backbone("resnet18", width_mult=0.5)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")


@pytest.mark.parametrize(("name", "classifier"), [("mobilenetv2", "classifier.1"), ("resnet18", "fc")])
def test_pretrained_round_trip(tmp_path: Path, name: str, classifier: str) -> None:
    src = build_backbone(name, width_mult=1.0)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    state = dict(src.state_dict())
    # An ImageNet file also holds the classifier, which must be ignored.
    state[f"{classifier}.weight"] = torch.zeros(1000, 8)
    state[f"{classifier}.bias"] = torch.zeros(1000)
    path = tmp_path / f"{name}_imagenet.pth"
    torch.save(state, path)
    dst = build_backbone(name, width_mult=1.0)
    load_pretrained_backbone(dst, path)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_pretrained_errors_list_keys(tmp_path: Path) -> None:
    src = MobileNetV2(width_mult=0.5).state_dict()
    path = tmp_path / "half.pth"
    torch.save(src, path)
    with pytest.raises(PretrainedWeightsError, match="shape mismatch: features.0.0.weight"):
        load_pretrained_backbone(MobileNetV2(width_mult=1.0), path)

    broken = dict(MobileNetV2(width_mult=0.25).state_dict())
    del broken["features.18.0.weight"]
    broken["features.19.0.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(PretrainedWeightsError) as err:
        load_pretrained_backbone(MobileNetV2(width_mult=0.25), path)
    assert "missing: features.18.0.weight" in str(err.value)
    assert "unexpected: features.19.0.weight" in str(err.value)

    path.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedWeightsError, match="cannot read") as err:
        load_pretrained_backbone(ResNet18(), path)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
