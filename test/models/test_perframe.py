"""Per-frame model: shapes, state contract, gradients, odd input sizes."""

from __future__ import annotations

import pytest
import torch
from tiny_models import NUM_CLASSES, TINY

from vidseg_ros.models.perframe import LAYERS, PerFrameModel


@pytest.mark.parametrize("backbone", sorted(TINY))
def test_shapes_state_and_gradients(backbone: str, frames: tuple[torch.Tensor, ...]) -> None:
    image, prev, flow = frames
    model = PerFrameModel(num_classes=NUM_CLASSES, **TINY[backbone])
    logits, state = model.key_step(image)
    assert logits.shape == (2, NUM_CLASSES, 64, 96)
    assert state == {}
    logits2, state2 = model.nonkey_step(image, prev, flow, state)
    assert state2 == {} and logits2.shape == logits.shape
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert model.key_interval == 1 and not model.uses_motion


def test_named_features_and_odd_size() -> None:
    model = PerFrameModel(num_classes=3, **TINY["mobilenetv2"]).eval()
    feats = model.features(torch.randn(1, 3, 60, 84))
    assert set(LAYERS) <= set(feats)
    assert feats["logits"].shape == (1, 3, 60, 84)
    assert feats["p2"].shape[-2:] == feats["c2"].shape[-2:] == (15, 21)
    assert feats["p5"].shape[-2:] == feats["c5"].shape[-2:] == (2, 3)
    assert model.channels["p3"] == 16 and model.channels["c5"] == 1280


def test_hook_replaces_features_downstream() -> None:
    model = PerFrameModel(num_classes=3, **TINY["mobilenetv2"]).eval()
    x = torch.randn(1, 3, 32, 32)
    seen = []

    def hook(name: str, z: torch.Tensor) -> torch.Tensor:
        seen.append(name)
        return torch.zeros_like(z) if name == "p2" else z

    out = model.features(x, hook=hook)
    assert seen == list(LAYERS)
    # p2 is zeroed, so logits are the classifier bias everywhere.
    bias = model.decoder.classifier.bias.view(1, -1, 1, 1).expand_as(out["logits"])
    torch.testing.assert_close(out["logits"], bias)


@pytest.mark.parametrize(
    ("classes", "low", "high"),
    [(9, (30, 40), (120, 160)), (19, (17, 23), (68, 92)), (4, (8, 8), (24, 24)), (5, (10, 10), (25, 25))],
)
def test_fused_argmax_is_the_argmax_of_the_upsampled_logits(classes: int, low, high) -> None:
    """Phases at the logits' size, then interleaved: the ids of bilinear upsampling (incl. its clamped border);
    a ratio that is not an integer (25 / 10) upsamples first."""
    from vidseg_ros.models.fpn import upsample_argmax

    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(2, classes, *low, generator=g) * 3
    ref = torch.nn.functional.interpolate(logits, size=high, mode="bilinear", align_corners=False)
    ids = upsample_argmax(logits, high)
    assert ids.dtype == torch.uint8 and ids.shape == (2, 1, *high)
    assert torch.equal(ids, ref.argmax(dim=1, keepdim=True).to(torch.uint8))


def test_model_output_switches_the_model_output_inside_the_block_only() -> None:
    from vidseg_ros.models.fpn import model_output

    model = PerFrameModel(num_classes=NUM_CLASSES, **TINY["mobilenetv2"]).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits, _ = model.key_step(image)
        with model_output("labels"):
            ids, _ = model.key_step(image)
        with model_output("native"):
            native, _ = model.key_step(image)
        after, _ = model.key_step(image)
    assert ids.dtype == torch.uint8 and ids.shape == (1, 1, 64, 96)
    assert native.shape == (1, NUM_CLASSES, 16, 24)
    up = torch.nn.functional.interpolate(native, size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, logits)
    with pytest.raises(ValueError, match="output must be one of logits|native|labels"):
        with model_output("ids"):
            pass
    assert (ids == logits.argmax(dim=1, keepdim=True)).float().mean() > 0.999
    assert after.dtype == torch.float32 and torch.equal(after, logits)
