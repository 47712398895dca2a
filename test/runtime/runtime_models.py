"""Tiny models shared by the runtime tests (imported by name, like test/models/tiny_models.py)."""

from __future__ import annotations

import torch

from vidseg_ros.classes import SYNTH_CLASSES
from vidseg_ros.models.base import VideoSegModel
from vidseg_ros.models.registry import build_model

#: Model names: methods, plus ``twnet_separable`` (TWNet with the separable CFR; ``twnet`` is the bottleneck).
METHODS = ("perframe", "netwarp", "twnet", "twnet_separable", "grfp", "tdnet")
#: The step functions each exports: per-frame one, motion methods key and non-key, TDNet one per sub-network.
STEPS = {"perframe": ["key"], "tdnet": ["key", "nonkey0", "nonkey1", "nonkey2", "nonkey3"]}


def expected_steps(name: str) -> list[str]:
    return STEPS.get(name, ["key", "nonkey"])


def nonkey_step_name(name: str, t: int) -> str:
    """The step frame ``t`` after a key frame runs (TDNet: sub-network ``t mod 4``)."""
    return f"nonkey{t % 4}" if name == "tdnet" else "nonkey"


#: ``twnet`` has more decoder channels than classes plus its 16 bottleneck channels, so that the backends run
#: its projected form (:mod:`vidseg_ros.models.twnet_projected`), as for the shipped models.
VARIANTS = {
    "twnet": ("twnet", {"cfr": "bottleneck", "decoder_channels": 32}),
    "twnet_separable": ("twnet", {"cfr": "separable"}),
}
TINY = {"backbone": "mobilenetv2", "width_mult": 0.25, "decoder_channels": 16}


def tiny_model(name: str, seed: int = 0) -> VideoSegModel:
    """A tiny model with every parameter nudged off its initial value.

    NetWarp's fusion weights start at (1, 0) and TWNet's correction starts at zero, which would make the
    recurrent state of a fresh model trivially independent of the previous frame; the nudge makes every path
    (warp, FlowCNN, fusion, CFR, RGA) contribute, so carried state is really tested.
    """
    torch.manual_seed(seed)
    method, extra = VARIANTS.get(name, (name, {}))
    model = build_model(method, num_classes=len(SYNTH_CLASSES), **{**TINY, **extra})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()
