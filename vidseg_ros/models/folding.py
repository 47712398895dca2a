"""PyTorch eager inference on the CPU: batch norms folded into the convolutions before them, and the networks'
weights in channels-last order.

In eval mode a ``BatchNorm2d`` is a per-channel scale and shift of its input, so after a ``Conv2d`` it can be
folded into that convolution's weights and bias. PyTorch eager runs every op on its own, and in a narrow,
shallow network such as TDNet's sub-networks the batch norms cost about as much as the small convolutions
around them. ONNX Runtime and TensorRT fold them when they optimise a graph; this does the same for the
eager backend.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def _fold_sequential(seq: nn.Sequential) -> None:
    """Folds each batch norm that directly follows a convolution in ``seq``.

    The convolution is replaced by the folded one and the batch norm by an identity, so indices into the
    sequence stay valid.
    """
    items = list(seq)
    for i in range(len(items) - 1):
        conv, bn = items[i], items[i + 1]
        if (
            type(conv) is nn.Conv2d
            and type(bn) is nn.BatchNorm2d
            and bn.track_running_stats
            and bn.running_mean is not None
            and conv.out_channels == bn.num_features
        ):
            seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
            seq[i + 1] = nn.Identity()


def fold_batch_norms(model: M) -> M:
    """A copy of ``model`` in eval mode with every batch norm that follows a convolution inside an
    ``nn.Sequential`` folded into it; ``model`` itself when there is none to fold.

    The outputs equal the model's up to float rounding (about 1e-5 on the logits of the shipped models). The
    copy does not follow later changes to ``model``'s weights.
    """
    if not any(
        isinstance(m, nn.Sequential) and any(type(c) is nn.BatchNorm2d for c in m) for m in model.modules()
    ):
        return model
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in folded.modules():
            if isinstance(module, nn.Sequential):
                _fold_sequential(module)
    return folded


#: Names of the submodules that :func:`channels_last_networks` converts: every model's encoders and decoders.
CHANNELS_LAST_PARTS = ("backbone", "decoder")


def channels_last_networks(model: torch.nn.Module) -> None:
    """Puts the weights of ``model``'s encoders and decoders (submodules named in
    :data:`CHANNELS_LAST_PARTS`, at any depth) in channels-last order, in place.

    PyTorch's CPU convolutions (oneDNN) then run those networks in channels-last order without reordering
    each one's input and output. The rest stays as it was: TWNet's non-key step, which warps its projected
    state and runs a small correction on it, took 1.4x as long with every weight channels-last, and as long
    as before with only these parts (one thread, 640x480, state handed over contiguous).
    """
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in CHANNELS_LAST_PARTS:
            module.to(memory_format=torch.channels_last)
