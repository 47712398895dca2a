"""Every step function traces under torch.export with dict-of-tensor state and matches eager execution."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vidseg_ros.models import build_model
from vidseg_ros.models.base import State, VideoSegModel

TINY = {"width_mult": 0.25, "decoder_channels": 16}


class KeyStep(nn.Module):
    def __init__(self, model: VideoSegModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, State]:
        return self.model.key_step(image)


class NonKeyStep(KeyStep):
    def forward(self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State) -> tuple[Tensor, State]:  # type: ignore[override]
        return self.model.nonkey_step(image, prev_image, flow, state)


# perframe's key step is the image model that both others run in their key steps.
@pytest.mark.parametrize(("method", "options"), [("netwarp", {}), ("twnet", {"warp_layer": 1})])
def test_steps_export(method: str, options: dict) -> None:
    torch.manual_seed(0)
    model = build_model(method, num_classes=4, **TINY, **options).eval()
    image, prev = torch.randn(1, 3, 32, 64), torch.randn(1, 3, 32, 64)
    flow = torch.randn(1, 2, 16, 32)
    with torch.no_grad():
        _, state = model.key_step(prev)
        key_prog = torch.export.export(KeyStep(model), (image,), strict=False)
        logits, key_state = key_prog.module()(image)
        ref_logits, ref_state = model.key_step(image)
        torch.testing.assert_close(logits, ref_logits)
        torch.testing.assert_close(key_state, ref_state)
        args = (image, prev, flow, state)
        nonkey_prog = torch.export.export(NonKeyStep(model), args, strict=False)
        logits, new_state = nonkey_prog.module()(*args)
        ref_logits, ref_state = model.nonkey_step(*args)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(new_state, ref_state)
    assert set(new_state) == set(state)


class FlatNonKeyStep(nn.Module):
    """ONNX wants flat tensors: state goes in and out as positional tensors in ``keys`` order."""

    def __init__(self, model: VideoSegModel, keys: list[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, image: Tensor, prev_image: Tensor, flow: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new_state = self.model.nonkey_step(
            image, prev_image, flow, dict(zip(self.keys, state, strict=True))
        )
        return (logits, *(new_state[k] for k in self.keys))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize(("method", "options"), [("netwarp", {}), ("twnet", {"warp_layer": 2})])
def test_nonkey_step_onnx_matches_torch(method: str, options: dict) -> None:
    ort = pytest.importorskip("onnxruntime")
    import io

    torch.manual_seed(0)
    model = build_model(method, num_classes=4, **TINY, **options).eval()
    image, prev, flow = torch.randn(1, 3, 48, 80), torch.randn(1, 3, 48, 80), torch.randn(1, 2, 24, 40)
    with torch.no_grad():
        _, state = model.key_step(prev)
        # eval() on the wrapper: the exporter restores the wrapper's mode, recursively, when it is done.
        step = FlatNonKeyStep(model, list(state)).eval()
        args = (image, prev, flow, *state.values())
        names = ["image", "prev_image", "flow", *(f"state_{k}" for k in state)]
        buf = io.BytesIO()
        torch.onnx.export(step, args, buf, opset_version=17, dynamo=False, input_names=names)
        ref = step(*args)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    # The exporter drops inputs a step does not read (TWNet's bottleneck reads the pooled previous frame from
    # its state, not prev_image).
    given = dict(zip(names, args, strict=True))
    feeds = {i.name: given[i.name].numpy() for i in sess.get_inputs()}
    for out, expected in zip(sess.run(None, feeds), ref, strict=True):
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)
