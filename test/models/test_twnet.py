"""TWNet: key frames equal the per-frame model, non-key path, stage-2 training hooks, cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import NUM_CLASSES, TINY
from torch.utils.flop_counter import FlopCounterMode

from vidseg_ros.models.base import POOLED_IMAGE
from vidseg_ros.models.perframe import PerFrameModel
from vidseg_ros.models.twnet import CFR_KINDS, DEFAULT_WARP_LAYER, BottleneckCFR, TWNetModel

STATE_SHAPES = {1: ("p4", (2, 16, 4, 6)), 2: ("p3", (2, 16, 8, 12)), 3: ("p2", (2, 16, 16, 24))}


def _image_model(backbone: str) -> PerFrameModel:
    torch.manual_seed(2)
    model = PerFrameModel(num_classes=NUM_CLASSES, **TINY[backbone])
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 96))
    return model.eval()


@pytest.mark.parametrize("cfr", CFR_KINDS)
@pytest.mark.parametrize("backbone", sorted(TINY))
@pytest.mark.parametrize("warp_layer", [1, 2, 3])
def test_key_equals_perframe_and_state_contract(
    backbone: str, warp_layer: int, cfr: str, frames: tuple[torch.Tensor, ...]
) -> None:
    image, prev, flow = frames
    image_model = _image_model(backbone)
    model = TWNetModel.from_image_model(image_model, warp_layer=warp_layer, cfr=cfr).eval()
    with torch.no_grad():
        logits, state = model.key_step(image)
        torch.testing.assert_close(logits, image_model(image), rtol=0, atol=0)
        name, shape = STATE_SHAPES[warp_layer]
        assert state[name].shape == shape
        if cfr == "separable":
            assert list(state) == [name]
        else:  # the frame pooled to the warp point's size, for the next step's RGA
            assert list(state) == [name, POOLED_IMAGE]
            torch.testing.assert_close(state[POOLED_IMAGE], F.adaptive_avg_pool2d(image, shape[-2:]))
        logits2, state2 = model.nonkey_step(image, prev, flow, state)
    assert logits2.shape == logits.shape
    assert {k: v.shape for k, v in state2.items()} == {k: v.shape for k, v in state.items()}


@pytest.mark.parametrize("cfr", CFR_KINDS)
@pytest.mark.parametrize("warp_layer", [1, 2, 3])
def test_nonkey_on_same_frame_with_zero_flow_reproduces_key(warp_layer: int, cfr: str) -> None:
    image = torch.randn(1, 3, 64, 96)
    model = TWNetModel.from_image_model(_image_model("mobilenetv2"), warp_layer=warp_layer, cfr=cfr).eval()
    with torch.no_grad():
        key_logits, state = model.key_step(image)
        logits, new_state = model.nonkey_step(image, image, torch.zeros(1, 2, 32, 48), state)
    # Only the warp's 1e-4 px epsilon separates the two paths.
    torch.testing.assert_close(logits, key_logits, rtol=0, atol=1e-3)
    torch.testing.assert_close(new_state, state, rtol=0, atol=1e-3)


@pytest.mark.parametrize("cfr", CFR_KINDS)
@pytest.mark.parametrize("warp_layer", [1, 3])
def test_untrained_correction_equals_warp_only(
    warp_layer: int, cfr: str, frames: tuple[torch.Tensor, ...]
) -> None:
    image, prev, flow = frames
    image_model = _image_model("mobilenetv2")
    corrected = TWNetModel.from_image_model(image_model, warp_layer=warp_layer, cfr=cfr).eval()
    warp_only = TWNetModel.from_image_model(image_model, warp_layer=warp_layer, correction=False).eval()
    assert warp_only.cfr is None and warp_only.rga is None
    with torch.no_grad():
        _, state = corrected.key_step(prev)
        logits, new_state = corrected.nonkey_step(image, prev, flow, state)
        point = corrected.warp_point
        ref_logits, ref_state = warp_only.nonkey_step(image, prev, flow, {point: state[point]})
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    torch.testing.assert_close(new_state[point], ref_state[point], rtol=0, atol=0)


def test_bottleneck_cfr_against_its_equations() -> None:
    """The module against the formula written out, with the attention on the residual (as in the paper)."""
    torch.manual_seed(0)
    cfr = BottleneckCFR(channels=12, width=4, spatial_channels=5)
    for p in cfr.parameters():
        torch.nn.init.normal_(p, std=0.3)
    warped, image = torch.randn(2, 12, 8, 10), torch.randn(2, 3, 32, 40)
    fine, pooled = BottleneckCFR.pool(image, (8, 10))
    torch.testing.assert_close(fine, F.avg_pool2d(image, 2))
    torch.testing.assert_close(pooled, F.avg_pool2d(image, 4))
    attention, residual = torch.rand(2, 1, 8, 10), torch.rand(2, 1, 8, 10)
    spatial = F.relu(F.conv2d(fine, cfr.spatial.weight, cfr.spatial.bias, stride=2, padding=1))
    hidden = F.conv2d(torch.cat((warped, spatial, residual), 1), cfr.reduce.weight, cfr.reduce.bias)
    hidden = F.relu(F.conv2d(F.relu(hidden), cfr.mix.weight, cfr.mix.bias, padding=1, groups=4))
    expected = warped + attention * F.conv2d(hidden, cfr.expand.weight)
    torch.testing.assert_close(cfr(warped, fine, attention, residual), expected)


def test_bottleneck_reads_the_previous_frame_from_its_state(frames: tuple[torch.Tensor, ...]) -> None:
    """The previous frame reaches RGA as the state's pooled copy: the full frame is not read again, and the
    new state holds this frame pooled."""
    image, prev, flow = frames
    model = TWNetModel.from_image_model(_image_model("mobilenetv2"), cfr="bottleneck").eval()
    assert list(model.nkfc.stages) == []  # no NKFC encoder stage: the spatial input is the pooled frame
    with torch.no_grad():
        torch.nn.init.normal_(model.cfr.expand.weight, std=0.1)
        torch.nn.init.normal_(model.rga.conv.weight, std=0.5)
        _, state = model.key_step(prev)
        logits, new_state = model.nonkey_step(image, prev, flow, state)
        again, _ = model.nonkey_step(image, torch.zeros_like(prev), flow, state)
        other, _ = model.nonkey_step(
            image, prev, flow, {**state, POOLED_IMAGE: torch.zeros_like(state[POOLED_IMAGE])}
        )
    torch.testing.assert_close(again, logits, rtol=0, atol=0)
    assert not torch.allclose(other, logits)
    size = state["p2"].shape[-2:]
    torch.testing.assert_close(new_state[POOLED_IMAGE], F.adaptive_avg_pool2d(image, size))


@pytest.mark.parametrize("cfr", CFR_KINDS)
def test_stage2_training_step(cfr: str, frames: tuple[torch.Tensor, ...]) -> None:
    image, prev, flow = frames
    model = TWNetModel.from_image_model(_image_model("mobilenetv2"), warp_layer=1, cfr=cfr)
    assert TWNetModel(num_classes=3).warp_layer == DEFAULT_WARP_LAYER == 3
    assert TWNetModel(num_classes=3).cfr_kind == "bottleneck"
    model.freeze_key_cnn()
    model.train()
    assert not model.key_cnn.training and model.nkfc.training
    # Make the RGA path observable: it only gets gradient once CFR's output is non-zero.
    with torch.no_grad():
        out = model.cfr.pointwise if cfr == "separable" else model.cfr.expand
        out.weight.normal_(std=0.1)
    with torch.no_grad():
        _, state = model.key_step(prev)
    logits, new_state = model.nonkey_step(image, prev, flow, state)
    target = model.key_features(image)
    assert set(target) == {"p4"} and set(new_state) == set(state) and not target["p4"].requires_grad
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    loss = F.cross_entropy(logits, labels) + 10.0 * F.mse_loss(new_state["p4"], target["p4"])
    loss.backward()
    assert all(p.grad is None for p in model.key_cnn.parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if not n.startswith("key_cnn.")]
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    torch.testing.assert_close(model.key_features(image)["p4"], model.key_step(image)[1]["p4"])


def test_nkfc_is_an_independent_copy() -> None:
    image_model = _image_model("resnet18")
    model = TWNetModel.from_image_model(image_model, warp_layer=2)
    assert list(model.nkfc.stages) == ["c1", "c2"] and list(model.nkfc.lateral) == ["c2"]
    nk = model.nkfc.stages["c1"][0].weight
    torch.testing.assert_close(nk, image_model.backbone.conv1.weight, rtol=0, atol=0)
    with torch.no_grad():
        nk.add_(1.0)
    assert not torch.equal(nk, model.key_cnn.backbone.conv1.weight)
    model.load_image_weights(image_model.state_dict())
    torch.testing.assert_close(model.nkfc.stages["c1"][0].weight, image_model.backbone.conv1.weight)
    separable = TWNetModel(num_classes=3, warp_layer=3, cfr="separable", **TINY["resnet18"])
    assert list(separable.nkfc.stages) == ["c1"]
    # The warp-only Layer 3 path needs no encoder at all.
    assert (
        list(TWNetModel(num_classes=3, warp_layer=3, correction=False, **TINY["resnet18"]).nkfc.stages) == []
    )


def _gmacs(fn) -> float:  # noqa: ANN001
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize(("warp_layer", "width_mult"), [(1, 1.0), (2, 1.0), (3, 1.0), (2, 0.5), (3, 0.5)])
def test_average_cost_at_key_interval_12(warp_layer: int, width_mult: float) -> None:
    # Real widths at a 1:2 aspect ratio; MAC ratios barely depend on the absolute size.
    x = torch.randn(1, 3, 128, 256)
    model = TWNetModel(num_classes=9, warp_layer=warp_layer, width_mult=width_mult).eval()
    _, state = model.key_step(x)
    key = _gmacs(lambda: model.key_step(x))
    nonkey = _gmacs(lambda: model.nonkey_step(x, x, torch.zeros(1, 2, 64, 128), state))
    average = (key + (model.key_interval - 1) * nonkey) / model.key_interval
    assert model.key_interval == 12
    assert average <= 0.6 * key
