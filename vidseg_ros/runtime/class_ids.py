"""Class ids from scores on the CPU: the first arg-max over classes, and that of bilinearly upsampled scores.

The node's mask is the arg-max of the stride-4 logits upsampled (bilinear, ``align_corners=False``) to the
inference size. :func:`upsample_ids` gives those ids without upsampling the scores where it need not: with an
even integer factor ``s``, each output pixel mixes the four scores of one 2x2 window of input pixels (of
the edge-padded scores, which is the border clamping), with weights that are never negative. Where all four
have the same first arg-max ``c``, ``c`` is the first arg-max of every such mixture (``c`` beats every
class at every corner, and strictly beats every class before it), so the window's ``s x s`` output pixels
are ``c``; only the other windows, where labels meet, are interpolated. The cost follows the scene: on
street frames (the synthetic test bags, ``vtest.avi``) 20-27% of the windows are mixed, and at 640x480 with 9
classes (one thread) this took 2.1 ms against 5.3 ms for PyTorch's upsampling and arg-max, at 320x240 0.57
against 1.8 ms, with the same ids; on ``vidseg bench``'s noise-textured frames 46% are mixed (3.7 ms at
640x480). Pruning each mixed window to its corners' classes, with a bound that proves the others lose, was
slower (8.0 ms on street frames): the bound failed for a third of the windows.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def first_max_ids(scores: torch.Tensor) -> torch.Tensor:
    """uint8 index of the first maximum over the classes of contiguous ``[C, H, W]`` scores (C < 256).

    The ids of ``max(dim=0).indices``, in three passes that reduce over the outer dimension, which PyTorch
    vectorises: class c scores ``C - c`` where it reaches the maximum, so the largest score marks the first
    maximum. On onnxruntime's contiguous logits with 9 classes this took 2.6 against 3.6 ms at 640x480 and
    0.69 against 0.94 ms at 320x240 (1 thread); on channels-last logits the reductions run along the classes
    and are slower.
    """
    c = int(scores.shape[0])
    top = scores.amax(dim=0, keepdim=True)
    rank = torch.arange(c, 0, -1, dtype=torch.uint8).view(c, *([1] * (scores.dim() - 1)))
    # Clamped so that a NaN score (never equal to the maximum) still gives a valid class id.
    return (c - (scores == top).to(torch.uint8).mul_(rank).amax(dim=0)).clamp_(max=c - 1).to(torch.uint8)


@functools.lru_cache(maxsize=8)
def _window_weights(factor: int) -> torch.Tensor:
    """``[4, factor * factor]``: the weight of each corner of a window (top-left, top-right, bottom-left,
    bottom-right) in each of its output pixels, row by row.

    Window ``(i, j)`` of the edge-padded input covers output rows ``factor * (i - 1) + factor / 2 + a``,
    ``a = 0 .. factor - 1``; bilinear sampling (``align_corners=False``) puts weight ``(a + 0.5) / factor``
    on its bottom row there, and the same along the columns.
    """
    t = (torch.arange(factor, dtype=torch.float64) + 0.5) / factor
    axis = torch.stack((1 - t, t), dim=1)  # [factor, 2]: top (left) and bottom (right) weights
    return torch.einsum("ai,bj->ijab", axis, axis).reshape(4, factor * factor).float()


def upsample_ids(scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The first arg-max over classes of ``scores`` (``[C, h, w]``, CPU, C < 256) bilinearly upsampled to
    ``size`` (``align_corners=False``), as a uint8 ``[H, W]`` array.

    An even integer factor on both axes takes the window shortcut of the module docstring; other ratios
    upsample every score first (the same ids, more slowly).
    """
    c, h, w = (int(d) for d in scores.shape)
    out_h, out_w = int(size[0]), int(size[1])
    s = out_h // h
    if (h, w) == (out_h, out_w):
        return first_max_ids(scores.contiguous()).numpy()
    if s < 2 or s % 2 or (out_h, out_w) != (s * h, s * w):
        up = F.interpolate(scores[None].float(), size=(out_h, out_w), mode="bilinear", align_corners=False)
        return first_max_ids(up[0].contiguous()).numpy()
    padded = F.pad(scores[None].float(), (1, 1, 1, 1), mode="replicate")[0].contiguous()
    corner = first_max_ids(padded).numpy()  # [h + 2, w + 2]
    top_left = corner[:-1, :-1]  # one label per window, [h + 1, w + 1]
    mixed = (top_left != corner[:-1, 1:]) | (top_left != corner[1:, :-1]) | (top_left != corner[1:, 1:])
    tiles = np.repeat(np.repeat(top_left, s, axis=0), s, axis=1)  # every window's s x s pixels its label
    ys, xs = np.nonzero(mixed)
    if ys.size:
        row = w + 2
        at = torch.from_numpy(ys * row + xs)
        corners = padded.view(c, -1)[:, torch.cat((at, at + 1, at + row, at + row + 1))]  # [C, 4n]
        mixes = corners.view(c, 4, -1).transpose(1, 2).reshape(-1, 4) @ _window_weights(s)  # [C n, s s]
        ids = first_max_ids(mixes.view(c, 1, -1))[0].numpy().reshape(-1, s, s)
        # Advanced indices on either side of a slice: the selection is [n, s, s], window by window.
        tiles.reshape(h + 1, s, w + 1, s)[ys, :, xs, :] = ids
    half = s // 2
    return np.ascontiguousarray(tiles[half : half + out_h, half : half + out_w])
