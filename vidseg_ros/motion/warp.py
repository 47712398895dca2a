"""Backward warping of feature maps and images with reverse optical flow.

All resampling here uses the pixel-centre convention (``align_corners=False``): pixel ``i`` of a map of size
``N`` covers ``[i, i + 1)`` and its centre sits at normalised coordinate ``2 * (i + 0.5) / N - 1``. Flow
resizing and grid normalisation share that convention; mixing the two conventions is a known source of a
half-pixel drift per resize in public NetWarp ports.

Everything is written without data-dependent Python control flow, so it traces under ``torch.export`` and
exports to ONNX (opset >= 16 for ``GridSample``).

Border clamping has two exact formulations. ``border`` is ``grid_sample``'s own border padding. ``clamped``
clamps each sample position into the map first and samples with zero padding: a clamped position never reaches
past the last pixel, and the corner beyond it gets weight 0, so the values are the same (to the rounding of the
normalised grid, below 2e-5 relative at clamped pixels in float32). ONNX Runtime's CPU ``GridSample`` has a
precomputed fast path only for zero padding: on a ``[1, 96, 60, 80]`` map it took 1.4 ms against 9.8 ms with
border padding (1 thread), the bulk of an exported non-key step. ``border`` stays the default because a
half-precision grid resolves only ~1e-3, several hundredths of a pixel on maps 80 or more wide, which zero
padding turns into errors of a few percent at the border pixels; :func:`warp_padding` selects ``clamped`` for a
float32 export (the onnxruntime backend's).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

#: Offset (pixels) added to the flow before sampling. NetWarp adds a small epsilon so that sample positions
#: are never exactly on the pixel grid, where bilinear interpolation is not differentiable w.r.t. the flow.
#: It is kept tiny so that an integer shift reproduces its reference up to ~1e-4 of the local gradient.
FLOW_EPS = 1e-4

#: Block size (pixels) from which :func:`resize_to` averages blocks as two mean reductions instead of one
#: ``avg_pool2d``: for NetWarp's pooling of 640x480 images to the stride-32 layer (32x32 blocks) that took
#: 0.15-0.20 ms against 0.75-0.77 ms in both PyTorch and ONNX Runtime (1 thread). At 8x8 the two tie, and at
#: 4x4 the pooling kernel is faster.
BLOCK_MEAN_MIN_AREA = 128
#: Block size (pixels) up to which PyTorch eager averages blocks as a sum of strided slices: 2x2 pooling of a
#: 320x240 RGB frame took 0.10 against 0.41 ms with ``avg_pool2d`` (0.035 against 0.10 ms at 160x120; 1
#: thread), the same values. ONNX Runtime's ``AveragePool`` is the faster of the two there (0.06 against
#: 0.27 ms), so exports keep the pooling.
STRIDED_SUM_MAX_AREA = 4


def scale_flow(flow: Tensor, src_size: tuple[int, int], dst_size: tuple[int, int]) -> Tensor:
    """Rescales flow vectors given in pixels of ``src_size`` (H, W) to pixels of ``dst_size``.

    Only the vector values change; the map itself is not resampled.
    """
    sy = dst_size[0] / src_size[0]
    sx = dst_size[1] / src_size[1]
    return torch.cat((flow[:, 0:1] * sx, flow[:, 1:2] * sy), dim=1)


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resamples a map ``[B, C, H, W]`` to ``size`` (h, w) without changing its values' meaning.

    Integer down-scaling averages each block (the pooling the official NetWarp model applies before its
    FlowCNN); any other ratio falls back to bilinear interpolation with ``align_corners=False``. The branch
    depends only on static shapes, so it is resolved at trace time.
    """
    h, w = int(size[0]), int(size[1])
    in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
    if (in_h, in_w) == (h, w):
        return x
    if in_h % h == 0 and in_w % w == 0:
        kh, kw = in_h // h, in_w // w
        if kh * kw <= STRIDED_SUM_MAX_AREA and not torch.onnx.is_in_onnx_export():
            parts = [x[..., i::kh, j::kw] for i in range(kh) for j in range(kw)]
            return functools.reduce(torch.add, parts) * (1.0 / (kh * kw))
        if kh * kw < BLOCK_MEAN_MIN_AREA:
            return F.avg_pool2d(x, kernel_size=(kh, kw), stride=(kh, kw))
        # The same block means as two reductions, along rows then columns (see BLOCK_MEAN_MIN_AREA).
        b, c = int(x.shape[0]), int(x.shape[1])
        rows = x.reshape(b, c, in_h, w, kw).mean(dim=4)
        return rows.reshape(b, c, h, kh, w).mean(dim=3)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def resize_flow(flow: Tensor, size: tuple[int, int], *, pool: bool = False) -> Tensor:
    """Resizes reverse flow ``[B, 2, Hf, Wf]`` to ``size`` (h, w) and rescales its vectors to match.

    Args:
        flow: Flow in pixels of its own resolution (channel 0 = dx, channel 1 = dy).
        size: Target (h, w).
        pool: Use :func:`resize_to` (block averaging for integer down-scaling) instead of plain bilinear
            interpolation, which is what :func:`warp` uses.

    Returns:
        Flow ``[B, 2, h, w]`` in pixels of the target resolution.
    """
    src = (int(flow.shape[-2]), int(flow.shape[-1]))
    dst = (int(size[0]), int(size[1]))
    if src == dst:
        return flow
    if pool:
        resized = resize_to(flow, dst)
    else:
        resized = F.interpolate(flow, size=dst, mode="bilinear", align_corners=False)
    return scale_flow(resized, src, dst)


#: Border formulations of :func:`warp` (see the module docstring).
WARP_PADDINGS = ("border", "clamped")
#: The formulation :func:`warp` traces now. A plain module global rather than a ContextVar: TorchDynamo (behind
#: torch.compile and torch-tensorrt) guards on globals but breaks the graph at ``ContextVar.get``.
_padding = "border"


@contextlib.contextmanager
def warp_padding(padding: str) -> Iterator[None]:
    """Makes :func:`warp` use the ``padding`` formulation inside the block, e.g. while tracing an export.

    Process-wide for the duration of the block: exports trace in one thread.
    """
    global _padding
    if padding not in WARP_PADDINGS:
        raise ValueError(f"warp padding must be one of {'|'.join(WARP_PADDINGS)}, got {padding!r}")
    before, _padding = _padding, padding
    try:
        yield
    finally:
        _padding = before


def sampling_grid(flow: Tensor, *, clamp: bool = False) -> Tensor:
    """Turns reverse flow ``[B, 2, H, W]`` (pixels) into a ``grid_sample`` grid ``[B, H, W, 2]``.

    ``clamp`` keeps each sample position inside the map (``[0, W - 1] x [0, H - 1]``), as border padding does.
    """
    h, w = int(flow.shape[-2]), int(flow.shape[-1])
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w)
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1)
    # Absolute sample position p = x + flow(x), normalised with the pixel-centre convention.
    px, py = xs + flow[:, 0], ys + flow[:, 1]
    if clamp:
        px, py = px.clamp(0, w - 1), py.clamp(0, h - 1)
    gx = (2.0 * (px + 0.5)) / w - 1.0
    gy = (2.0 * (py + 0.5)) / h - 1.0
    return torch.stack((gx, gy), dim=-1)


def warp(x: Tensor, flow: Tensor, eps: float = FLOW_EPS) -> Tensor:
    """Backward-warps ``x`` from frame t-1 into frame t with reverse flow.

    ``out[..., y, x] = x_in[..., y + dy, x + dx]`` sampled bilinearly; positions outside the map are clamped
    to the border.

    Args:
        x: Map of frame t-1, ``[B, C, H, W]``.
        flow: Reverse flow ``[B, 2, Hf, Wf]`` in pixels of its own resolution; it is bilinearly resized to
            ``(H, W)`` and its vectors rescaled by ``W / Wf`` (dx) and ``H / Hf`` (dy).
        eps: Pixels added to the flow (see :data:`FLOW_EPS`); 0 gives exact integer shifts.

    Returns:
        The warped map, ``[B, C, H, W]``, same dtype as ``x``.
    """
    size = (int(x.shape[-2]), int(x.shape[-1]))
    # Positions are built in float32 even for half-precision maps: fp16 cannot resolve sub-pixel offsets
    # of coordinates in the hundreds. Only the final normalised grid is cast.
    flow = resize_flow(flow.float(), size)
    if eps:
        flow = flow + eps
    clamped = _padding == "clamped"
    grid = sampling_grid(flow, clamp=clamped).to(x.dtype)
    padding = "zeros" if clamped else "border"
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
