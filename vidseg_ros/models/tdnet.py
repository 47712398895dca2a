"""TDNet (Hu et al., CVPR 2020): shallow sub-networks that take turns, recomposed by attention propagation.

Frame t runs only path ``t mod N`` (after a reset, the first frame is path 0). Each path is a narrow, shallow
per-frame model (:class:`PerFrameModel`, typically ``mobilenetv2_shallow`` x0.25); its features up to ``p3``
(stride 8, ``D`` channels) are the path's group of the full ``N * D`` feature channels. The groups of the
last N frames are recomposed by attention instead of being concatenated:

    q, k = query_p(g), key_p(g)  (1x1, D -> dk)      v = value_p(g)  (1x1, D -> D)     per path p
    x_1 = V_1;   x_i = A_i(K_{i-1}, x_{i-1}, Q_i) + V_i  (i = 2 .. N-1);   c = A_N(K_{N-1}, x_{N-1}, q_t)
    A(K, V, Q) = proj(softmax(Q^T K / sqrt(dk)) V)                     one output projection per chain step
    logits = Head_p(Norm_p(c + v_t))

Index 1 is the oldest cached frame. Cached queries, keys and values are decimated (every 4th row and
column, in training as at test: the official code used 3 in training and 4 at test; coarser on large inputs,
see :data:`MAX_KEYS`); q_t and v_t keep the full stride-8 size. ``Norm_p`` normalises each pixel over its
channels (a fixed-shape LayerNorm would lock the input size). ``Head_p`` is path p's own stride-4 decoder
stage and classifier, with ``Norm_p(c + v_t)`` in place of its ``p3``: the sub-network keeps its low-level
detail. Until the cache holds N-1 frames the output is the cold start ``Head_p(Norm_p(v_t))``; the step
computes it as ``c * full`` so that one exported graph serves both.

State: ``query``/``key`` ``[B, (N-1) * dk, h, w]`` and ``value`` ``[B, (N-1) * D, h, w]`` (oldest first,
decimated), ``count`` ``[1]`` (frames cached) and ``phase`` ``[1]`` (the path of the next frame). The
step of each path is its own function (:meth:`TDNetModel.phase_step`), so each exports as its own graph.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidseg_ros.models.base import State, VideoSegModel, scale_channels
from vidseg_ros.models.fpn import merge, upsample_logits
from vidseg_ros.models.perframe import PerFrameModel, load_image_weights

DEFAULT_PATHS = 4
#: Each sub-network's architecture by default: a per-frame model of about half the shipped one's time.
SUB_BACKBONE, SUB_WIDTH, SUB_DECODER_CHANNELS = "mobilenetv2_shallow", 0.25, 48
DEFAULT_SUBNETWORK = {
    "backbone": SUB_BACKBONE,
    "width_mult": SUB_WIDTH,
    "decoder_channels": SUB_DECODER_CHANNELS,
}
DEFAULT_KEY_CHANNELS = 16
#: Every DECIMATION-th row and column of a cached query, key or value is kept, or every d-th with the least
#: d that keeps at most MAX_KEYS of them: the attention's cost grows with queries x keys, so without the
#: bound it grew with the square of the input size (at 1024x512 it took 19.7 of a 114.9 ms PyTorch step).
#: At the shipped 320x240 (40x30 features) the bound changes nothing: d = 4, 80 keys per frame.
DECIMATION = 4
MAX_KEYS = 96
ATTENTION_DROPOUT = 0.1


class ChannelNorm(nn.Module):
    """Normalisation of each pixel over its channels, with a learnt scale and shift: works at any size."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=1, keepdim=True)
        # Exported as a depthwise convolution (scale_channels), the head's upsampling of the result stays in
        # ONNX Runtime's blocked layout: TD4's step at 320x240 took 4.46 against 4.80 ms (1 thread,
        # interleaved), where the plain upsampling alone had taken 0.32 ms.
        return scale_channels(centred * torch.rsqrt(var + self.eps), self.weight, self.bias)


class Encoding(nn.Module):
    """Query, key and value of one path's group features."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        with (
            torch.no_grad()
        ):  # the value starts as the group itself: the cold start is the sub-network's model
            self.value.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
            self.value.bias.zero_()

    def forward(self, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.query(group), self.key(group), self.value(group)


def attend(query: Tensor, key: Tensor, value: Tensor, dropout: float = 0.0) -> Tensor:
    """``softmax(Q^T K / sqrt(dk)) V``: each query pixel's mean of the values, weighted by key similarity.

    ``query`` ``[B, dk, Hq, Wq]``; ``key`` ``[B, dk, Hk, Wk]``; ``value`` ``[B, D, Hk, Wk]``; returns
    ``[B, D, Hq, Wq]``.
    """
    b, dk, hq, wq = (int(s) for s in query.shape)
    d = int(value.shape[1])
    scores = torch.matmul(query.flatten(2).transpose(1, 2), key.flatten(2)) / math.sqrt(dk)  # [B, Nq, Nk]
    weights = F.dropout(torch.softmax(scores, dim=-1), p=dropout, training=dropout > 0)
    out = torch.matmul(weights, value.flatten(2).transpose(1, 2))  # [B, Nq, D]
    return out.transpose(1, 2).reshape(b, d, hq, wq)


class AttentionPropagation(nn.Module):
    """The chain over the cached frames (oldest first) ending at the current frame's query."""

    def __init__(self, paths: int, channels: int, dropout: float = ATTENTION_DROPOUT) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(paths - 1))
        self.dropout = dropout
        for conv in self.proj:  # small, not zero: the earlier frames' keys and values get gradients at once
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(
        self, queries: list[Tensor], keys: list[Tensor], values: list[Tensor], query: Tensor
    ) -> Tensor:
        drop = self.dropout if self.training else 0.0
        x = values[0]
        for i in range(1, len(values)):
            x = self.proj[i - 1](attend(queries[i], keys[i - 1], x, drop)) + values[i]
        return self.proj[-1](attend(query, keys[-1], x, drop))


def decimation(h: int, w: int) -> int:
    """The decimation of a ``h x w`` feature map (see :data:`MAX_KEYS`)."""
    d = DECIMATION
    while -(-h // d) * -(-w // d) > MAX_KEYS:
        d += 1
    return d


def decimate(x: Tensor) -> Tensor:
    d = decimation(int(x.shape[-2]), int(x.shape[-1]))
    return x[:, :, ::d, ::d]


class TDNetModel(VideoSegModel):
    """TDNet with ``paths`` sub-networks (see the module docstring).

    Args:
        num_classes, backbone, width_mult, decoder_channels: Those of each sub-network (a per-frame model;
            its ``p3`` is the path's group, ``decoder_channels`` wide).
        paths: N, the number of sub-networks (2 or 4).
        key_channels: Channels of queries and keys.

    Training (:mod:`vidseg_ros.training.distill`): clips of N frames, one per path, labelled on the last.
    """

    method = "tdnet"
    uses_motion = False
    key_interval = 0
    fresh_modules = ("encodings", "norms", "propagation")

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = SUB_BACKBONE,
        width_mult: float = SUB_WIDTH,
        decoder_channels: int = SUB_DECODER_CHANNELS,
        paths: int = DEFAULT_PATHS,
        key_channels: int = DEFAULT_KEY_CHANNELS,
    ) -> None:
        super().__init__()
        if isinstance(paths, bool) or paths not in (2, 3, 4):
            raise ValueError(f"paths must be 2, 3 or 4, got {paths!r}")
        if isinstance(key_channels, bool) or not isinstance(key_channels, int) or key_channels < 1:
            raise ValueError(f"key_channels must be a positive int, got {key_channels!r}")
        self.phases = paths
        self.key_channels = key_channels
        self.paths = nn.ModuleList(
            PerFrameModel(
                num_classes=num_classes,
                backbone=backbone,
                width_mult=width_mult,
                decoder_channels=decoder_channels,
            )
            for _ in range(paths)
        )
        d = decoder_channels
        self.encodings = nn.ModuleList(Encoding(d, key_channels) for _ in range(paths))
        self.norms = nn.ModuleList(ChannelNorm(d) for _ in range(paths))
        self.propagation = AttentionPropagation(paths, d)

    @classmethod
    def from_image_model(
        cls,
        image_model: PerFrameModel,
        *,
        paths: int = DEFAULT_PATHS,
        key_channels: int = DEFAULT_KEY_CHANNELS,
    ) -> TDNetModel:
        """A TDNet whose sub-networks all start as copies of ``image_model`` (weights included)."""
        model = cls(**image_model.config(), paths=paths, key_channels=key_channels)
        for path in model.paths:
            load_image_weights(path, image_model)  # type: ignore[arg-type]
        return model.to(next(image_model.parameters()).device)

    def config(self) -> dict[str, Any]:
        first = self.paths[0]
        assert isinstance(first, PerFrameModel)
        return {**first.config(), "paths": self.phases, "key_channels": self.key_channels}

    # ------------------------------------------------------------------------------------------ pieces
    def subnetwork(self, path: int, image: Tensor) -> tuple[Tensor, Tensor]:
        """Path ``path``'s group features (its ``p3``, stride 8) and its stride-4 encoder features ``c2``."""
        net = self.paths[path]
        feats = net.backbone(image)
        dec = net.decoder
        x = dec.lateral["c5"](feats["c5"])
        for level in ("c4", "c3"):
            x = merge(dec.lateral[level], dec.smooth[level], feats[level], x)
        return x, feats["c2"]

    def head(self, path: int, fused: Tensor, c2: Tensor) -> Tensor:
        """Path ``path``'s stride-4 logits from the recomposed features (``c + v_t``)."""
        dec = self.paths[path].decoder
        x = merge(dec.lateral["c2"], dec.smooth["c2"], c2, self.norms[path](fused))
        return dec.classifier(x)

    def cached(self, state: State, key: str) -> list[Tensor]:
        """The cached ``query``, ``key`` or ``value`` of the last N-1 frames, oldest first."""
        return list(torch.chunk(state[key], self.phases - 1, dim=1))

    def encode(self, path: int, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Path ``path`` on ``image``: its query, key and value, and its stride-4 encoder features ``c2``."""
        group, c2 = self.subnetwork(path, image)
        return (*self.encodings[path](group), c2)

    def alone(self, path: int, image: Tensor) -> Tensor:
        """Path ``path``'s stride-4 logits from ``image`` alone: the cold-start output."""
        _, _, v, c2 = self.encode(path, image)
        return self.head(path, v, c2)

    def clip_logits(self, frames: list[Tensor], start: int) -> tuple[Tensor, Tensor, int]:
        """Training: ``frames`` (N of them, oldest first) run paths ``start, start + 1, ...`` (mod N).

        Returns the last frame's stride-4 logits with the cache full, those of its path alone (the cold-start
        output) and that path.
        """
        n = self.phases
        if len(frames) != n:
            raise ValueError(f"a TDNet clip has {n} frames, got {len(frames)}")
        cached = [
            [decimate(t) for t in self.encode((start + j) % n, f)[:3]] for j, f in enumerate(frames[:-1])
        ]
        path = (start + n - 1) % n
        q, _, v, c2 = self.encode(path, frames[-1])
        c = self.propagation(*(list(entries) for entries in zip(*cached, strict=True)), q)
        return self.head(path, c + v, c2), self.head(path, v, c2), path

    # ---------------------------------------------------------------------------------------- the steps
    def _step(self, image: Tensor, state: State | None, path: int) -> tuple[Tensor, State]:
        n = self.phases
        q, k, v, c2 = self.encode(path, image)
        entry = {"query": decimate(q), "key": decimate(k), "value": decimate(v)}
        if state is None:  # cold start: an empty cache
            fused = v
            count = torch.zeros(1, device=image.device, dtype=v.dtype)
            cache = {name: torch.cat([torch.zeros_like(t)] * (n - 1), dim=1) for name, t in entry.items()}
        else:
            count = state["count"]
            cache = {name: state[name] for name in entry}
            full = (count >= n - 1).to(v.dtype).view(1, 1, 1, 1)
            c = self.propagation(*(self.cached(state, name) for name in ("query", "key", "value")), q)
            fused = v + c * full
        logits = upsample_logits(self.head(path, fused, c2), (int(image.shape[-2]), int(image.shape[-1])))
        width = {name: int(t.shape[1]) for name, t in entry.items()}
        new_state = {name: torch.cat((cache[name][:, width[name] :], entry[name]), dim=1) for name in entry}
        new_state["count"] = torch.clamp(count + 1, max=n - 1)
        new_state["phase"] = torch.full_like(count, float((path + 1) % n))
        return logits, new_state

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        return self._step(image, None, 0)

    def phase_of(self, state: State) -> int:
        phase = int(state["phase"].reshape(-1)[0].item())
        if not 0 <= phase < self.phases:
            raise ValueError(f"TDNet state phase {phase} is not a path of this {self.phases}-path model")
        return phase

    def phase_step(
        self, image: Tensor, prev_image: Tensor | None, flow: Tensor | None, state: State, phase: int
    ) -> tuple[Tensor, State]:
        return self._step(image, state, phase)

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor | None, flow: Tensor | None, state: State
    ) -> tuple[Tensor, State]:
        return self._step(image, state, self.phase_of(state))

    def forward(self, image: Tensor) -> Tensor:
        """The cold-start output of path 0 (the sub-network's own model)."""
        return self.key_step(image)[0]
