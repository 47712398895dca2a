"""GRFP: the STGRU against a direct implementation of its equations, its initialisation, the state contract
and what training reaches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import NUM_CLASSES, TINY

from vidseg_ros.models.grfp import STGRU, GRFPModel, centred_softmax
from vidseg_ros.models.perframe import PerFrameModel
from vidseg_ros.motion.warp import resize_to, warp


def _direct_stgru(unit: STGRU, x, h_prev, image, prev_image, flow):
    """The equations as written (separate convolutions per term), from the unit's weights."""
    c, pad = unit.num_classes, unit.kernel // 2
    w, b = unit.mix.weight, unit.mix.bias
    size = x.shape[-2:]
    image, prev_image = resize_to(image, size), resize_to(prev_image, size)
    p_h = torch.softmax(h_prev, 1) - 1.0 / c
    p_x = torch.softmax(x, 1) - 1.0 / c
    e = image - warp(prev_image, flow)
    r = 1 - torch.tanh((F.conv2d(e, unit.gate.weight, padding=pad) + unit.gate.bias.view(1, 1, 1, 1)).abs())
    h_w = r * warp(p_h, flow)
    h_tilde = (
        F.conv2d(p_x, w[:c, :c], padding=pad) + F.conv2d(h_w, w[:c, c:], padding=pad) + b[:c].view(1, c, 1, 1)
    )
    z = torch.sigmoid(
        F.conv2d(p_x, w[c:, :c], padding=pad) + F.conv2d(h_w, w[c:, c:], padding=pad) + b[c:].view(1, 1, 1, 1)
    )
    return unit.lam * (1 - z) * h_w + z * h_tilde


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_stgru_is_the_papers_equations(kernel: int) -> None:
    torch.manual_seed(kernel)
    unit = STGRU(NUM_CLASSES, kernel)
    with torch.no_grad():
        for p in unit.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x, h = torch.randn(2, NUM_CLASSES, 12, 16) * 3, torch.randn(2, NUM_CLASSES, 12, 16) * 3
    image, prev = torch.randn(2, 3, 48, 64), torch.randn(2, 3, 48, 64)
    flow = torch.randn(2, 2, 24, 32) * 4
    torch.testing.assert_close(unit(x, h, image, prev, flow), _direct_stgru(unit, x, h, image, prev, flow))


def test_initialisation_opens_the_gate_and_keeps_the_static_prediction() -> None:
    """At initialisation r ~ 1, and a still scene with h = x keeps x's arg-max everywhere."""
    torch.manual_seed(0)
    unit = STGRU(NUM_CLASSES)
    assert float(unit.lam.detach()) == 2.0
    image = torch.rand(1, 3, 48, 64)
    r = 1 - torch.tanh(unit.gate(torch.rand(1, 3, 12, 16)).abs())
    assert r.min() > 0.99
    x = torch.randn(1, NUM_CLASSES, 12, 16) * 2
    h = unit(x, x, image, image, torch.zeros(1, 2, 24, 32))
    assert torch.equal(h.argmax(1), x.argmax(1))
    # Identity-like: h is close to a positive multiple of the centred probabilities (7x here: 1 + 6).
    torch.testing.assert_close(h / 7.0, centred_softmax(x), atol=0.02, rtol=0.05)


def test_bad_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="odd int"):
        STGRU(NUM_CLASSES, 4)


def test_first_frame_state_is_the_static_scores_and_steps_chain(frames) -> None:
    image, prev, flow = frames
    model = GRFPModel(num_classes=NUM_CLASSES, **TINY["mobilenetv2"]).eval()
    with torch.no_grad():
        logits0, state0 = model.key_step(prev)
        static = model.static_scores(prev)
        logits1, state1 = model.nonkey_step(image, prev, flow, state0)
    assert set(state0) == {"h", "image"} and torch.equal(state0["h"], static)
    assert state0["h"].shape == (2, NUM_CLASSES, 16, 24) and state1["h"].shape == state0["h"].shape
    # The state carries the previous frame pooled once to the scores' size; the step equals the unit on the
    # full frames, and passes the current frame on pooled.
    assert state0["image"].shape == (2, 3, 16, 24)
    with torch.no_grad():
        full = model.stgru(model.static_scores(image), static, image, prev, flow)
    torch.testing.assert_close(state1["h"], full)
    torch.testing.assert_close(state1["image"], torch.nn.functional.avg_pool2d(image, 4))
    assert logits0.shape == logits1.shape == (2, NUM_CLASSES, 64, 96)
    assert model.uses_motion and model.key_interval == 0 and model.method == "grfp"


def test_training_reaches_the_unit_only(frames) -> None:
    image, prev, flow = frames
    image_model = PerFrameModel(num_classes=NUM_CLASSES, **TINY["mobilenetv2"])
    model = GRFPModel.from_image_model(image_model)
    model.freeze_static()
    model.train()
    assert not model.image_model.training  # BN statistics stay frozen
    _, state = model.key_step(prev)
    logits, state = model.nonkey_step(image, prev, flow, state)
    logits, _ = model.nonkey_step(prev, image, flow, state)
    logits.logsumexp(1).mean().backward()
    stgru = {n: p.grad for n, p in model.stgru.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in stgru.values()), stgru.keys()
    assert all(p.grad is None for p in model.image_model.parameters())
    assert torch.equal(
        model.image_model.decoder.classifier.weight, image_model.decoder.classifier.weight
    )  # a copy of the static network's weights
