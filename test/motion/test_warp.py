"""Tests of the backward warp against exact references."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from vidseg_ros.motion.warp import resize_flow, resize_to, scale_flow, warp, warp_padding


def _const_flow(b: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0] = dx
    flow[:, 1] = dy
    return flow


def test_zero_flow_returns_input() -> None:
    x = torch.randn(2, 5, 13, 17)
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 13, 17), eps=0.0), x, atol=1e-5, rtol=0)
    # The default epsilon moves samples by 1e-4 px: tolerance proportional to the local gradient.
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 13, 17)), x, atol=2e-3, rtol=0)


@pytest.mark.parametrize(("dx", "dy"), [(3, 0), (0, -2), (-4, 5), (1, 1)])
def test_integer_shift_matches_indexing(dx: int, dy: int) -> None:
    h, w = 20, 24
    x = torch.randn(1, 3, h, w)
    out = warp(x, _const_flow(1, h, w, dx, dy), eps=0.0)
    ys = torch.arange(h).clamp(0, h - 1)
    xs = torch.arange(w)
    # out[y, x] = x_in[y + dy, x + dx] with border clamp.
    ref = x[:, :, (ys + dy).clamp(0, h - 1)][:, :, :, (xs + dx).clamp(0, w - 1)]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # Away from the borders it is a plain roll.
    rolled = torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))
    inner = (slice(None), slice(None), slice(5, h - 5), slice(5, w - 5))
    torch.testing.assert_close(out[inner], rolled[inner], atol=1e-5, rtol=0)
    torch.testing.assert_close(warp(x, _const_flow(1, h, w, dx, dy))[inner], rolled[inner], atol=2e-3, rtol=0)


def test_border_clamp() -> None:
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    far_right = warp(x, _const_flow(1, 3, 4, 100.0, 0.0), eps=0.0)
    torch.testing.assert_close(far_right, x[..., 3:4].expand(1, 1, 3, 4))
    far_up = warp(x, _const_flow(1, 3, 4, 0.0, -100.0), eps=0.0)
    torch.testing.assert_close(far_up, x[..., 0:1, :].expand(1, 1, 3, 4))


def test_half_pixel_shift_is_bilinear() -> None:
    x = torch.randn(1, 2, 8, 10)
    out = warp(x, _const_flow(1, 8, 10, 0.5, 0.0), eps=0.0)
    ref = 0.5 * (x[..., :, :-1] + x[..., :, 1:])
    torch.testing.assert_close(out[..., :-1], ref, atol=1e-5, rtol=0)


def test_flow_rescaled_across_resolutions() -> None:
    h, w = 16, 24
    x = torch.randn(2, 4, h, w)
    full = torch.randn(2, 2, h, w)
    # Flow at half resolution, in half-resolution pixels: a constant field resizes exactly.
    half_const = _const_flow(2, h // 2, w // 2, 1.5, -1.0)
    full_const = _const_flow(2, h, w, 3.0, -2.0)
    torch.testing.assert_close(warp(x, half_const), warp(x, full_const), atol=1e-5, rtol=0)
    # A general field: warping with half-res flow equals warping with its explicit full-res equivalent.
    half = torch.randn(2, 2, h // 2, w // 2)
    up = torch.nn.functional.interpolate(half, size=(h, w), mode="bilinear", align_corners=False) * 2.0
    torch.testing.assert_close(warp(x, half), warp(x, up), atol=1e-5, rtol=0)
    # Different x and y ratios scale dx and dy separately.
    odd = _const_flow(1, 4, 12, 1.0, 1.0)
    torch.testing.assert_close(resize_flow(odd, (h, w))[0, :, 3, 3], torch.tensor([2.0, 4.0]))
    assert warp(x, full).shape == x.shape


def test_scale_flow_and_resize_to() -> None:
    flow = torch.ones(1, 2, 4, 4)
    torch.testing.assert_close(scale_flow(flow, (4, 4), (2, 8))[0, :, 0, 0], torch.tensor([2.0, 0.5]))
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    torch.testing.assert_close(resize_to(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    pooled = resize_flow(torch.full((1, 2, 8, 8), 4.0), (2, 2), pool=True)
    torch.testing.assert_close(pooled, torch.ones(1, 2, 2, 2))


def test_gradients_flow_to_input_and_flow() -> None:
    x = torch.randn(1, 3, 10, 12, requires_grad=True)
    flow = (torch.randn(1, 2, 5, 6) * 2).requires_grad_()
    warp(x, flow).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert flow.grad is not None and flow.grad.abs().sum() > 0


def test_zero_flow_gradient_defined_thanks_to_eps() -> None:
    x = torch.randn(1, 1, 8, 8)
    flow = torch.zeros(1, 2, 8, 8, requires_grad=True)
    warp(x, flow).sum().backward()
    assert flow.grad is not None and torch.isfinite(flow.grad).all() and flow.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_warp_exports_to_onnx() -> None:
    ort = pytest.importorskip("onnxruntime")

    class Warp(torch.nn.Module):
        def forward(self, x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
            return warp(x, flow)

    x = torch.randn(1, 3, 16, 20)
    flow = torch.randn(1, 2, 8, 10) * 3
    torch.export.export(Warp(), (x, flow), strict=False)
    buf = io.BytesIO()
    torch.onnx.export(Warp(), (x, flow), buf, opset_version=17, dynamo=False, input_names=["x", "flow"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy(), "flow": flow.numpy()})
    np.testing.assert_allclose(out, warp(x, flow).numpy(), atol=1e-4)


@pytest.mark.parametrize("scale", [0.5, 4.0, 60.0])
def test_clamped_form_equals_border_padding(scale: float) -> None:
    """The clamped zero-padding form gives grid_sample's border values, far outside the map included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 15, 21, generator=g)
    flow = torch.randn(2, 2, 30, 42, generator=g) * scale
    border = warp(x, flow)
    with warp_padding("clamped"):
        clamped = warp(x, flow)
    # Only the rounding of the normalised grid differs (a few ulp of a position in the tens of pixels).
    torch.testing.assert_close(clamped, border, atol=2e-5, rtol=1e-5)
    assert warp(x, flow).equal(border)  # the block restored the default


def test_clamped_form_keeps_exact_borders_and_gradients() -> None:
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    with warp_padding("clamped"):
        torch.testing.assert_close(
            warp(x, _const_flow(1, 3, 4, 100.0, 0.0), eps=0.0), x[..., 3:4].expand(1, 1, 3, 4)
        )
        torch.testing.assert_close(
            warp(x, _const_flow(1, 3, 4, 0.0, -100.0), eps=0.0), x[..., 0:1, :].expand(1, 1, 3, 4)
        )
        flow = (torch.randn(1, 2, 3, 4) * 2).requires_grad_()
        warp(x.requires_grad_(), flow).square().sum().backward()
    assert flow.grad is not None and torch.isfinite(flow.grad).all()


def test_warp_padding_rejects_unknown_forms() -> None:
    with pytest.raises(ValueError, match="warp padding must be one of border|clamped, got 'zeros'"):
        with warp_padding("zeros"):
            pass


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_clamped_form_exports_zero_padding_with_border_values() -> None:
    """What the onnxruntime backend exports: a GridSample with zero padding (ORT's fast kernel), border values."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    class Warp(torch.nn.Module):
        def forward(self, x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
            return warp(x, flow)

    x = torch.randn(1, 5, 16, 20)
    flow = torch.randn(1, 2, 8, 10) * 6  # many samples past the borders
    buf = io.BytesIO()
    with warp_padding("clamped"):
        torch.onnx.export(Warp(), (x, flow), buf, opset_version=17, dynamo=False, input_names=["x", "flow"])
    (node,) = [n for n in onnx.load_from_string(buf.getvalue()).graph.node if n.op_type == "GridSample"]
    assert {a.name: a.s for a in node.attribute}["padding_mode"] == b"zeros"
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy(), "flow": flow.numpy()})
    np.testing.assert_allclose(out, warp(x, flow).numpy(), atol=5e-5)


@pytest.mark.parametrize(
    ("size", "kernel"),
    [
        ((8, 10), (2, 2)),
        ((16, 5), (1, 4)),
        ((8, 20), (2, 1)),
        ((4, 5), (4, 4)),
        ((2, 2), (8, 10)),
        ((1, 1), (16, 20)),
    ],
)
def test_block_means_match_average_pooling(size: tuple[int, int], kernel: tuple[int, int]) -> None:
    """Small blocks are summed from strided slices and large ones averaged as two reductions (both faster in
    PyTorch on CPUs): the same means and gradients as avg_pool2d."""
    x = torch.randn(2, 3, 16, 20, requires_grad=True)
    want = torch.nn.functional.avg_pool2d(x, kernel_size=kernel, stride=kernel)
    got = resize_to(x, size)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), x)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), x)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_small_blocks_export_as_average_pooling() -> None:
    """ONNX Runtime pools faster than it sums strided slices, so exports keep AveragePool."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return resize_to(x, (8, 10))

    x = torch.randn(1, 3, 16, 20)
    buf = io.BytesIO()
    torch.onnx.export(Pool(), (x,), buf, opset_version=17, dynamo=False, input_names=["x"])
    ops = [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node]
    assert ops == ["AveragePool"]
    (out,) = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )
    np.testing.assert_allclose(out, resize_to(x, (8, 10)).numpy(), atol=1e-6)
