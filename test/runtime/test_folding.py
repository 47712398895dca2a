"""The eager backend's CPU copy: batch norms folded into their convolutions, and the encoders and decoders
channels-last. The same steps, fewer ops."""

from __future__ import annotations

import pytest
import torch
from runtime_models import METHODS, tiny_model
from torch import nn

from vidseg_ros.models.folding import CHANNELS_LAST_PARTS, fold_batch_norms
from vidseg_ros.models.fpn import model_output
from vidseg_ros.runtime.backends import CudaBackend, EagerBackend


def _randomise_statistics(model: nn.Module, seed: int = 0) -> None:
    """Running statistics far from a fresh batch norm's (0 and 1), so that a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.1)


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", METHODS)
def test_folded_model_runs_the_same_steps_without_batch_norms(name: str) -> None:
    model = tiny_model(name).eval()
    _randomise_statistics(model)
    before = _batch_norms(model)
    folded = fold_batch_norms(model)
    assert before > 0 and _batch_norms(folded) == 0 and _batch_norms(model) == before
    torch.manual_seed(1)
    frames = [torch.randn(1, 3, 64, 96) for _ in range(5)]
    flow = torch.randn(1, 2, 32, 48)
    with torch.inference_mode():
        (a, sa), (b, sb) = model.key_step(frames[0]), folded.key_step(frames[0])
        for prev, image in zip(frames, frames[1:], strict=False):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
            assert sa.keys() == sb.keys()
            for k in sa:
                torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-4)
            (a, sa), (b, sb) = (
                model.nonkey_step(image, prev, flow, sa),
                folded.nonkey_step(image, prev, flow, sb),
            )
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_only_batch_norms_after_a_convolution_fold() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert fold_batch_norms(plain) is plain  # nothing to fold: no copy
    leading = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    _randomise_statistics(leading)
    folded = fold_batch_norms(leading)
    assert [type(m) for m in folded] == [nn.BatchNorm2d, nn.Conv2d, nn.Identity, nn.ReLU]
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), leading(x), rtol=1e-5, atol=1e-5)


def test_eager_backend_runs_a_folded_copy_and_leaves_the_model_alone() -> None:
    model = tiny_model("perframe")
    _randomise_statistics(model)
    backend = EagerBackend(model)
    backend.prepare((64, 96))
    folded = backend._runner  # made by prepare, before any frame
    image = torch.randn(1, 3, 64, 96)
    logits, _ = backend.key_step(image)
    assert backend.runner is folded
    assert backend.model is model and _batch_norms(model) > 0
    assert backend.runner is not model and _batch_norms(backend.runner) == 0
    with torch.inference_mode(), model_output("native"):  # a CPU backend's logits: at the classifier's size
        torch.testing.assert_close(logits, model.key_step(image)[0], rtol=1e-4, atol=1e-4)
    assert logits.shape[-2:] == (16, 24)
    assert not CudaBackend.fold


def test_a_model_over_a_foreign_onnx_file_runs_unfolded() -> None:
    """Its network is an onnxruntime session, which a copy would have to duplicate; that runtime folds."""
    model = tiny_model("perframe")
    model.own_runtime = True  # as ForeignModel declares
    backend = EagerBackend(model)
    backend.key_step(torch.randn(1, 3, 64, 96))
    assert backend.runner is model and _batch_norms(model) > 0


def _conv_layouts(model: nn.Module) -> dict[bool, set[bool]]:
    """Per "inside an encoder or decoder": the set of "weight is channels-last" over its convolutions' weights."""
    seen: dict[bool, set[bool]] = {True: set(), False: set()}
    for name, m in model.named_modules():
        # 1x1 kernels and depthwise ones (one input channel per group) are both layouts at once.
        if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1 and m.weight.shape[1] > 1:
            inside = any(part in CHANNELS_LAST_PARTS for part in name.split("."))
            seen[inside].add(m.weight.is_contiguous(memory_format=torch.channels_last))
    return seen


@pytest.mark.parametrize("name", METHODS)
def test_eager_backend_runs_encoders_and_decoders_channels_last_with_the_same_chain(name: str) -> None:
    model = tiny_model(name)
    _randomise_statistics(model)
    backend = EagerBackend(model)
    layouts = _conv_layouts(backend.runner)
    assert layouts[True] == {True}  # every encoder and decoder convolution
    assert layouts[False] <= {False}  # the rest (TWNet's correction, TDNet's attention) as it was
    assert _conv_layouts(model)[True] == {False}  # the model itself is left alone

    class Plain(EagerBackend):
        channels_last = False

    plain = Plain(model)
    assert _conv_layouts(plain.runner)[True] == {False}
    torch.manual_seed(2)
    frames = [torch.randn(1, 3, 64, 96) for _ in range(5)]
    flow = torch.randn(1, 2, 32, 48)
    (a, sa), (b, sb) = plain.key_step(frames[0]), backend.key_step(frames[0])
    for prev, image in zip(frames, frames[1:], strict=False):
        assert b.is_contiguous() and all(t.is_contiguous() for t in sb.values())
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sb, sa, rtol=1e-4, atol=1e-4)
        (a, sa), (b, sb) = (
            plain.nonkey_step(image, prev, flow, sa),
            backend.nonkey_step(image, prev, flow, sb),
        )
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert _conv_layouts(CudaBackend(model, device="cpu").runner)[True] == {False}  # not measured on a GPU
