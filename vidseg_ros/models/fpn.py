"""U-shaped FPN decoder: a top-down path over ``c5`` with three lateral connections (``c4``, ``c3``, ``c2``).

Named decoder features (used as NetWarp insertion points and TWNet warp points)::

    p5 = lateral_c5(c5)                          stride 32  (deepest context)
    p4 = smooth_c4(lateral_c4(c4) + up(p5))      stride 16  ("decoder layer 1")
    p3 = smooth_c3(lateral_c3(c3) + up(p4))      stride 8   ("decoder layer 2")
    p2 = smooth_c2(lateral_c2(c2) + up(p3))      stride 4   ("decoder layer 3", the decoder output)
    logits = upsample(classifier(p2))            input size

Smoothing convs are depthwise-separable: a dense 3x3 at stride 4 would cost more than the whole
MobileNetV2 encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Decoder feature names, deep to shallow, and the encoder level feeding each one's lateral.
DECODER_LEVELS: tuple[str, ...] = ("p5", "p4", "p3", "p2")
LATERAL_OF: dict[str, str] = {"p5": "c5", "p4": "c4", "p3": "c3", "p2": "c2"}
STRIDES: dict[str, int] = {"p5": 32, "p4": 16, "p3": 8, "p2": 4}

FeatureHook = Callable[[str, Tensor], Tensor]


def conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def sep_conv_bn_relu(channels: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, one BN + ReLU after each."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def upsample_like(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def merge(lateral: nn.Module, smooth: nn.Module, skip: Tensor, above: Tensor) -> Tensor:
    """One top-down step: ``smooth(lateral(skip) + up(above))``; shared by the key and non-key paths."""
    lat = lateral(skip)
    return smooth(lat + upsample_like(above, lat))


#: What every model's step returns first (see :func:`model_output`).
MODEL_OUTPUTS = ("logits", "native", "labels")
#: The form :func:`upsample_logits` produces now. A module global, like the warp's padding switch, because
#: TorchDynamo guards on globals.
_output = "logits"


@contextlib.contextmanager
def model_output(form: str) -> Iterator[None]:
    """Makes every model's output ``form`` inside the block (:data:`MODEL_OUTPUTS`):

    - ``logits``: upsampled to the input size (outside any block);
    - ``native``: the logits at the classifier's own size (stride 4), for consumers that take the arg-max of
      the upsampled logits themselves and so skip most of the upsampling
      (:func:`~vidseg_ros.runtime.class_ids.upsample_ids`, through ``Segmenter.to_mask``): the CPU backends;
    - ``labels``: the class-id map ``[B, 1, H, W]`` (uint8), for exports whose consumer only takes the arg-max:
      :func:`upsample_argmax` replaces the upsampling (models of 256 classes or more keep their logits).

    Process-wide for the duration of the block: steps and exports run in one thread.
    """
    global _output
    if form not in MODEL_OUTPUTS:
        raise ValueError(f"output must be one of {'|'.join(MODEL_OUTPUTS)}, got {form!r}")
    before, _output = _output, form
    try:
        yield
    finally:
        _output = before


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling to the input size, in channels-last memory order.

    The values are those of the plain NCHW call; the layout puts each pixel's class scores side by side, which
    made the interpolation plus the caller's arg-max over classes 1.6x faster on a CPU (1.5 ms against 2.4 ms
    at 320x240 with 9 classes). Exporters see the same graph either way. Inside :func:`model_output` it returns
    the logits unchanged (``native``) or :func:`upsample_argmax` (``labels``).
    """
    if _output == "native":
        return logits
    if _output == "labels" and int(logits.shape[1]) < 256:
        return upsample_argmax(logits, size)
    return F.interpolate(
        logits.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear", align_corners=False
    )


def _phase_taps(factor: int) -> Tensor:
    """``[factor, 3]`` weights of input pixels ``j-1, j, j+1`` for output pixel ``factor * j + phase``.

    Bilinear interpolation with ``align_corners=False`` samples output pixel ``i`` at input position
    ``(i + 0.5) / factor - 0.5``: for phase ``p`` that is ``j + (p + 0.5) / factor - 0.5``, an offset in
    ``(-0.5, 0.5)``, so two neighbours of ``j`` carry the whole weight.
    """
    taps = torch.zeros(factor, 3)
    for p in range(factor):
        off = (p + 0.5) / factor - 0.5
        if off < 0:
            taps[p, 0], taps[p, 1] = -off, 1.0 + off
        else:
            taps[p, 1], taps[p, 2] = 1.0 - off, off
    return taps


def upsample_argmax(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """The first arg-max over classes of the bilinearly upsampled ``logits``, as uint8 ids ``[B, 1, H, W]``.

    When ``size`` is an integer multiple ``s`` of the logits' size (stride-4 logits of a frame whose sides are
    multiples of 4), the upsampled scores are never built at full size in channels of their own: a grouped 3x3
    convolution over the edge-padded logits gives each class's ``s * s`` output phases at the logits' size
    (edge padding is the clamping that ``align_corners=False`` applies at the border), the arg-max runs there
    and DepthToSpace interleaves the phases. In ONNX Runtime at 640x480 with 9 classes (1 thread) this took
    3.2-3.5 ms against 6.6 ms for Resize plus the host's arg-max, with the same ids. Other ratios upsample
    first.
    """
    b, c, h, w = (int(d) for d in logits.shape)
    out_h, out_w = int(size[0]), int(size[1])
    s = out_h // h
    if s < 1 or out_h != s * h or out_w != s * w:
        up = F.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
        return up.argmax(dim=1, keepdim=True).to(torch.uint8)
    taps = _phase_taps(s).to(logits.dtype).to(logits.device)
    # Output channel (py * s + px) of class k: the separable product of the two axes' taps.
    kernel = torch.einsum("ai,bj->abij", taps, taps).reshape(s * s, 1, 3, 3).repeat(c, 1, 1, 1)
    padded = F.pad(logits, (1, 1, 1, 1), mode="replicate")
    phases = F.conv2d(padded, kernel, groups=c).reshape(b, c, s * s, h, w)
    ids = phases.argmax(dim=1).to(torch.uint8)  # [B, s*s, h, w]
    return F.pixel_shuffle(ids, s)


class FPNDecoder(nn.Module):
    """Top-down decoder and classifier.

    Args:
        in_channels: Channels of ``c2``..``c5`` (``Backbone.channels``).
        num_classes: Output classes.
        channels: Width of every decoder feature.
    """

    def __init__(self, in_channels: dict[str, int], num_classes: int, channels: int = 96) -> None:
        super().__init__()
        self.channels = channels
        self.lateral = nn.ModuleDict(
            {LATERAL_OF[p]: conv_bn_relu(in_channels[LATERAL_OF[p]], channels) for p in DECODER_LEVELS}
        )
        self.smooth = nn.ModuleDict({LATERAL_OF[p]: sep_conv_bn_relu(channels) for p in DECODER_LEVELS[1:]})
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, feats: dict[str, Tensor], hook: FeatureHook | None = None) -> dict[str, Tensor]:
        """Returns ``p5``..``p2`` and ``logits`` at stride 4; ``hook`` may replace each ``p*`` in flight."""
        out: dict[str, Tensor] = {}
        x = self.lateral["c5"](feats["c5"])
        if hook is not None:
            x = hook("p5", x)
        out["p5"] = x
        for p in DECODER_LEVELS[1:]:
            level = LATERAL_OF[p]
            x = merge(self.lateral[level], self.smooth[level], feats[level], x)
            if hook is not None:
                x = hook(p, x)
            out[p] = x
        out["logits"] = self.classifier(x)
        return out
