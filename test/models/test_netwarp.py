"""NetWarp: equals the image model at initialisation, state contract, gradients, FlowCNN init."""

from __future__ import annotations

import pytest
import torch
from tiny_models import NUM_CLASSES, TINY

from vidseg_ros.models.base import POOLED_IMAGE
from vidseg_ros.models.netwarp import FlowCNN, NetWarpModel
from vidseg_ros.models.perframe import PerFrameModel


def _image_model(backbone: str) -> PerFrameModel:
    torch.manual_seed(1)
    model = PerFrameModel(num_classes=NUM_CLASSES, **TINY[backbone])
    # Non-trivial BN statistics so that equality is not an artefact of fresh initialisation.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 96))
    return model.eval()


@pytest.mark.parametrize(
    ("backbone", "layers"),
    [("mobilenetv2", ("c5", "p2")), ("mobilenetv2", ("c2", "c4", "p4")), ("resnet18", ("c3", "p5", "p2"))],
)
def test_equals_image_model_at_init(
    backbone: str, layers: tuple[str, ...], frames: tuple[torch.Tensor, ...]
) -> None:
    image, prev, flow = frames
    image_model = _image_model(backbone)
    model = NetWarpModel.from_image_model(image_model, layers=layers).eval()
    with torch.no_grad():
        ref = image_model(image)
        key_logits, state = model.key_step(prev)
        assert set(state) == {*layers, POOLED_IMAGE}
        torch.testing.assert_close(model.key_step(image)[0], ref, rtol=0, atol=0)
        logits, new_state = model.nonkey_step(image, prev, flow, state)
    torch.testing.assert_close(logits, ref, rtol=0, atol=0)
    assert {k: v.shape for k, v in new_state.items()} == {k: v.shape for k, v in state.items()}


def test_state_shapes_and_defaults(frames: tuple[torch.Tensor, ...]) -> None:
    image, _, _ = frames
    model = NetWarpModel(num_classes=NUM_CLASSES, **TINY["mobilenetv2"])
    assert model.layers == ("c5", "p4") and model.key_interval == 0 and model.uses_motion
    _, state = model.key_step(image)
    assert state["c5"].shape == (2, 1280, 2, 3)
    assert state["p4"].shape == (2, 16, 4, 6)
    assert state[POOLED_IMAGE].shape == (2, 3, 4, 6)  # block means at p4's stride, 16


@pytest.mark.parametrize(
    ("layers", "size"), [(("c5", "p4"), (64, 96)), (("c5", "p2"), (64, 96)), (("c5",), (50, 70))]
)
def test_state_carries_the_pooled_frame_that_the_next_step_reads(
    layers: tuple[str, ...], size: tuple[int, int]
) -> None:
    """Each frame is pooled once: the state carries it as the FlowCNNs see it, and the next step reads that
    instead of pooling the previous frame again (which it reads only when the strides do not divide the size)."""
    torch.manual_seed(0)
    model = NetWarpModel(num_classes=NUM_CLASSES, layers=layers, **TINY["mobilenetv2"]).eval()
    with torch.no_grad():
        for module in model.netwarp.values():  # a FlowCNN and fusion that read the images
            module.w2.fill_(0.5)
            module.flow_cnn.out.weight.normal_(std=0.1)
    frames = [torch.rand(1, 3, *size) for _ in range(3)]
    flows = [torch.randn(1, 2, size[0] // 2, size[1] // 2) for _ in range(3)]
    divides = size[0] % 32 == 0 and size[1] % 32 == 0
    with torch.no_grad():
        _, state = model.key_step(frames[0])
        for t in (1, 2):
            image, prev, flow = frames[t], frames[t - 1], flows[t]
            torch.testing.assert_close(state[POOLED_IMAGE], model.pooled(prev), rtol=0, atol=0)
            logits, next_state = model.nonkey_step(image, prev, flow, state)
            if divides:
                unread = model.nonkey_step(image, torch.zeros_like(prev), flow, state)[0]
                torch.testing.assert_close(unread, logits, rtol=0, atol=0)
                other = {**state, POOLED_IMAGE: state[POOLED_IMAGE] + 0.5}
                assert not torch.equal(model.nonkey_step(image, prev, flow, other)[0], logits)
            else:
                assert state[POOLED_IMAGE].shape[-2:] == size  # the frame itself
            state = next_state


def test_gradients_reach_every_parameter(frames: tuple[torch.Tensor, ...]) -> None:
    image, prev, flow = frames
    model = NetWarpModel(num_classes=NUM_CLASSES, **TINY["mobilenetv2"])
    # At init w2 = 0 and the FlowCNN ignores its body (identity init), so those get no gradient yet; move
    # them off their initial values to check that everything is connected.
    with torch.no_grad():
        for module in model.netwarp.values():
            module.w2.fill_(0.5)
            module.flow_cnn.out.weight[:, :2].normal_(std=0.1)
    _, state = model.key_step(prev)
    logits, _ = model.nonkey_step(image, prev, flow, state)
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_w2_receives_gradient_at_init(frames: tuple[torch.Tensor, ...]) -> None:
    image, prev, flow = frames
    model = NetWarpModel(num_classes=NUM_CLASSES, layers=("c5", "p2"), **TINY["mobilenetv2"])
    _, state = model.key_step(prev)
    model.nonkey_step(image, prev, flow, state)[0].logsumexp(1).mean().backward()
    assert model.netwarp["p2"].w2.grad.abs().sum() > 0
    assert model.netwarp["c5"].w1.grad.abs().sum() > 0
    # The FlowCNN only starts learning once w2 is non-zero.
    assert not model.netwarp["p2"].flow_cnn.out.weight.grad.abs().sum() > 0


def test_flowcnn_starts_as_identity() -> None:
    flow = torch.randn(2, 2, 8, 12)
    out = FlowCNN()(flow, torch.randn(2, 3, 8, 12), torch.randn(2, 3, 8, 12))
    # Zero padding only touches the body branch, which the identity init ignores.
    torch.testing.assert_close(out, flow, rtol=0, atol=1e-6)


def test_load_image_weights_from_state_dict() -> None:
    image_model = _image_model("mobilenetv2")
    model = NetWarpModel(num_classes=NUM_CLASSES, **TINY["mobilenetv2"]).eval()
    model.load_image_weights(image_model.state_dict())
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.key_step(x)[0], image_model(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        model.load_image_weights(PerFrameModel(num_classes=NUM_CLASSES + 1, **TINY["mobilenetv2"]))
