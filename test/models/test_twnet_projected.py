"""TWNet's projected inference form: TWNet's logits over a chain of frames, on a smaller state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import NUM_CLASSES, TINY

from vidseg_ros.models.base import POOLED_IMAGE
from vidseg_ros.models.twnet import TWNetModel
from vidseg_ros.models.twnet_projected import PROJECTED, ProjectedTWNet
from vidseg_ros.motion.warp import warp_padding


def _twnet(
    correction: bool, cfr: str = "bottleneck", warp_layer: int = 3, decoder_channels: int = 32
) -> TWNetModel:
    torch.manual_seed(4)
    model = TWNetModel(
        num_classes=NUM_CLASSES,
        **{**TINY["mobilenetv2"], "decoder_channels": decoder_channels},
        warp_layer=warp_layer,
        correction=correction,
        cfr=cfr,
    )
    with torch.no_grad():  # off the zero-initialised correction, so that every term reaches the output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _chain(frames: int = 6, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(2, 3, 64, 96, generator=g) for _ in range(frames)]
    # Flows that reach past the border, where the padding decides the samples.
    flows = [torch.randn(2, 2, 32, 48, generator=g) * 6.0 for _ in range(frames)]
    return images, flows


@pytest.mark.parametrize("padding", ["border", "clamped"])
@pytest.mark.parametrize("correction", [True, False], ids=["bottleneck", "warp-only"])
def test_projected_steps_give_twnets_logits_over_a_chain(correction: bool, padding: str) -> None:
    model = _twnet(correction)
    form = model.inference_form()
    assert isinstance(form, ProjectedTWNet) and form.key_interval == model.key_interval
    images, flows = _chain()
    width = model.cfr.reduce.out_channels if correction else 0
    with torch.no_grad(), warp_padding(padding):
        logits, state = model.key_step(images[0])
        p_logits, p_state = form.key_step(images[0])
        torch.testing.assert_close(p_logits, logits, rtol=0, atol=0)
        for t in range(1, len(images)):
            logits, state = model.nonkey_step(images[t], images[t - 1], flows[t], state)
            p_logits, p_state = form.nonkey_step(images[t], images[t - 1], flows[t], p_state)
            torch.testing.assert_close(p_logits, logits, rtol=1e-4, atol=1e-4)
            # The carried state is the full state projected.
            assert p_state[PROJECTED].shape[1] == NUM_CLASSES + width < state["p2"].shape[1]
            torch.testing.assert_close(
                p_state[PROJECTED], F.conv2d(state["p2"], form.projection()), rtol=1e-4, atol=1e-4
            )
            assert (
                set(p_state) - {PROJECTED} == set(state) - {"p2"} == ({POOLED_IMAGE} if correction else set())
            )
    # The history matters: a key frame on the last image gives other logits.
    assert not torch.allclose(form.key_step(images[-1])[0], p_logits, atol=1e-2)


def test_the_form_follows_the_models_weights() -> None:
    model = _twnet(True)
    form = model.inference_form()
    images, flows = _chain(2)
    with torch.no_grad():
        state = form.key_step(images[0])[1]
        before = form.nonkey_step(images[1], images[0], flows[1], state)[0]
        model.nkfc.classifier.weight.mul_(-1.0)
        after, _ = form.nonkey_step(images[1], images[0], flows[1], form.key_step(images[0])[1])
        full = model.nonkey_step(images[1], images[0], flows[1], model.key_step(images[0])[1])[0]
    assert not torch.allclose(before, after, atol=1e-2)
    torch.testing.assert_close(after, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("cfr", "warp_layer", "channels"),
    [("separable", 3, 32), ("bottleneck", 2, 32), ("bottleneck", 1, 32), ("bottleneck", 3, 21)],
)
def test_variants_without_a_smaller_form_run_as_they_are(cfr: str, warp_layer: int, channels: int) -> None:
    """Separable CFR and warp layers 1-2 have no projected form; with 5 classes and a 16-channel bottleneck,
    21 features would gain nothing from one."""
    model = _twnet(True, cfr, warp_layer, channels)
    assert model.inference_form() is model
    with pytest.raises(ValueError, match="has no projected form"):
        ProjectedTWNet(model)
    assert isinstance(_twnet(True, cfr, 3, channels + 1).inference_form(), ProjectedTWNet) == (
        cfr != "separable"
    )
