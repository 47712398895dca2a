"""TWNet's inference form: the state projected onto what the non-key step reads of it.

At warp layer 3 the warped features ``w`` (the decoder's 96 channels) reach the output only through linear
maps without bias: the NKFC classifier's weights (one row per class) and, in the bottleneck CFR,
``reduce``'s columns over ``w`` (one row per bottleneck channel). The correction adds ``expand(a * h)``, also
linear. A warp is linear in the map, with the same sampling weights for every channel, so it commutes with any
per-pixel linear map ``P``: ``P warp(x) = warp(P x)``. So the state can be ``s = P x`` with
``P = [classifier; reduce over w]``:

    key frame:      s = P p2
    non-key frame:  s' = warp(s)
                    h  = the bottleneck from s'[classes:], the frame and RGA's residual (as in TWNet)
                    s  = s' + (P expand)(a * h);    logits = s[:classes] + the classifier's bias

These are TWNet's logits up to float rounding, with 25 channels warped and carried instead of 96 for the
shipped models (the number of classes alone for warp-only TWNet). ``P`` and ``P expand`` are taken from the
weights at each step (a 25x96 by 96x16 product; constants in an export), so the form follows the model's
weights. Training keeps the full form: its consistency loss compares the full features.

The separable CFR (a depthwise convolution over ``w``) and warp layers 1 and 2 (whose non-key steps run
nonlinear layers on ``w``) have no such form, and a model with as many classes and bottleneck channels as
features gains nothing from it; :meth:`TWNetModel.inference_form` returns those unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vidseg_ros.models.base import POOLED_IMAGE, State, VideoSegModel
from vidseg_ros.models.fpn import upsample_logits
from vidseg_ros.models.twnet import BottleneckCFR, TWNetModel
from vidseg_ros.motion.warp import warp

#: State key of the projected features.
PROJECTED = "projected"


def projectable(model: TWNetModel) -> bool:
    """Whether ``model`` has the projected form (warp layer 3, with the bottleneck CFR or warp-only) and it
    carries fewer channels than the full state (a model with more classes than features would gain nothing)."""
    if model.warp_layer != 3 or not (model.cfr is None or isinstance(model.cfr, BottleneckCFR)):
        return False
    classifier = model.nkfc.classifier
    width = 0 if model.cfr is None else model.cfr.reduce.out_channels
    return classifier.out_channels + width < classifier.in_channels


class ProjectedTWNet(VideoSegModel):
    """The steps of a :class:`TWNetModel` on the projected state (see the module docstring).

    State: ``{"projected": [B, classes + width, H/4, W/4]}``, plus the pooled frame with the bottleneck CFR.
    """

    method = "twnet"
    uses_motion = True

    def __init__(self, twnet: TWNetModel) -> None:
        super().__init__()
        if not projectable(twnet):
            raise ValueError(
                f"this TWNet (warp layer {twnet.warp_layer}, correction {twnet.correction}, {twnet.cfr_kind} "
                "CFR) has no projected form smaller than its state"
            )
        self.twnet = twnet
        self.key_interval = twnet.key_interval
        self.classes = int(twnet.nkfc.classifier.out_channels)
        self.training = twnet.training

    def projection(self) -> Tensor:
        """``P``, ``[classes (+ width), channels, 1, 1]``."""
        weight = self.twnet.nkfc.classifier.weight
        cfr = self.twnet.cfr
        return weight if cfr is None else torch.cat((weight, cfr.reduce_warped))

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        twnet = self.twnet
        feats = twnet.key_cnn.features(image)
        state = twnet.key_state(F.conv2d(feats[twnet.warp_point], self.projection()), image)
        state[PROJECTED] = state.pop(twnet.warp_point)
        return feats["logits"], state

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        twnet, cfr, k = self.twnet, self.twnet.cfr, self.classes
        s = warp(state[PROJECTED], flow)
        new_state = {PROJECTED: s}
        if cfr is not None and twnet.rga is not None:
            size = (int(s.shape[-2]), int(s.shape[-1]))
            fine, pooled = cfr.pool(image, size)
            residual = twnet.rga.residual(pooled, state[POOLED_IMAGE], flow, size)
            hidden = twnet.rga.attend(residual) * cfr.hidden(s[:, k:], fine, residual)
            projected_expand = (self.projection().flatten(1) @ cfr.expand.weight.flatten(1))[..., None, None]
            s = s + F.conv2d(hidden, projected_expand)
            new_state = {PROJECTED: s, POOLED_IMAGE: pooled}
        logits = s[:, :k] + twnet.nkfc.classifier.bias.view(1, k, 1, 1)
        return upsample_logits(logits, (int(image.shape[-2]), int(image.shape[-1]))), new_state
