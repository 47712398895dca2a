"""TDNet's training: clips of N frames, one per sub-network, and grouped knowledge distillation.

A clip is the labelled frame and the N-1 frames before it at random gaps of 1 or 2, taken from a contiguous
run of ``2 (N-1) + 1`` frames; its first frame runs a random path, so every path learns to be the current
one. The loss, the paper's on the first line and ours on the second (see below):

    CE(full) + 0.5 CE(sub) + KL(teacher || full) + 0.5 KL(teacher group p || sub)
      + 0.5 CE(other) + w (KL(sub || other) + KL(other || sub))

``full`` is the last frame's output with the cache full, ``sub`` its path alone (the cold-start output). The
teacher is a wider per-frame model, frozen. Its classifier is a 1x1 convolution over the decoder's ``p2``, so
its logits are a sum over input channels: the classifier restricted to the p-th of N equal channel groups
(with 1/N of the bias) gives group p's share, and the N shares sum to the teacher's logits. Sub-teacher p is
N times that share: what the teacher would predict if every group spoke as group p does. Our sub-output is
a whole prediction (path p's own head), not a share of a sum, and distilling it from the unscaled share
pulled it towards a flat distribution: on the held-out bags that cost 5.8 mIoU against the scaled target
(52.2 against 58.0, TD4, same recipe). Path p learns from group p, in that order (the official TD4 code
handed its groups over as 1, 3, 2, 4).

The second line: a second path q, drawn at random, also segments the labelled frame
alone, and the two paths' own outputs are pulled together (each towards the other, held fixed). Frames
alternate paths, so paths that disagree make the masks flicker. Measured on the held-out bags with TD4: one
path alone on every frame gave 76.0 TC, the paths alternating 69.6 and the full model 71.5; with this term
(w = 2) the full model gave 74.0 TC and 58.7 mIoU instead of 58.0.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vidseg_ros.models.fpn import upsample_like
from vidseg_ros.models.perframe import PerFrameModel
from vidseg_ros.models.tdnet import TDNetModel
from vidseg_ros.runtime.checkpoint import load_checkpoint
from vidseg_ros.training.losses import cross_entropy

SUB_WEIGHT = 0.5
#: w: weight of each direction of the agreement between two paths' own outputs.
AGREE_WEIGHT = 2.0


def clip_span(paths: int) -> int:
    """Frames before the labelled one that a clip may reach back (every gap 2)."""
    return 2 * (paths - 1)


def load_teacher(path: Path, classes: list[str], paths: int) -> PerFrameModel:
    """The frozen per-frame teacher of ``path``; it must predict ``classes`` with a decoder that splits into
    ``paths`` equal channel groups."""
    teacher, meta = load_checkpoint(path)
    if not isinstance(teacher, PerFrameModel):
        raise ValueError(f"--teacher must be a perframe checkpoint, {path} holds a {meta.method} model")
    if list(meta.classes) != list(classes):
        raise ValueError(f"--teacher {path} predicts other classes ({', '.join(meta.classes[:4])}, ...)")
    channels = teacher.decoder.channels
    if channels % paths:
        raise ValueError(f"--teacher {path} has {channels} decoder channels: not {paths} equal groups")
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def teacher_outputs(teacher: PerFrameModel, image: Tensor, groups: int) -> tuple[Tensor, list[Tensor]]:
    """The teacher's stride-4 logits and the ``groups`` shares of them by input-channel group (which sum to
    them)."""
    teacher.eval()
    p2 = teacher.decoder(teacher.backbone(image))["p2"]
    classifier = teacher.decoder.classifier
    width = p2.shape[1] // groups
    bias = classifier.bias / groups
    parts = [
        F.conv2d(p2[:, g * width : (g + 1) * width], classifier.weight[:, g * width : (g + 1) * width], bias)
        for g in range(groups)
    ]
    return classifier(p2), parts


def distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """``KL(softmax(teacher) || softmax(student))`` per pixel, averaged; the student resized to the teacher."""
    if student.shape[-2:] != teacher.shape[-2:]:
        student = upsample_like(student, teacher)
    log_s = F.log_softmax(student, dim=1)
    log_t = F.log_softmax(teacher, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean()


def tdnet_loss(
    model: TDNetModel,
    teacher: PerFrameModel | None,
    images: Tensor,
    labels: Tensor,
    class_weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """The loss of one batch of clips ``images`` ``[T, B, 3, H, W]`` labelled on the last frame.

    Returns ``loss``, ``ce`` (of the full output) and ``aux`` (the teacher's terms; 0 without a teacher).
    """
    n = model.phases
    if images.shape[0] < clip_span(n) + 1:
        raise ValueError(f"TDNet clips need {clip_span(n) + 1} frames, got {images.shape[0]}")
    index = [images.shape[0] - 1]
    for gap in torch.randint(1, 3, (n - 1,)).tolist():
        index.insert(0, index[0] - gap)
    start = int(torch.randint(0, n, ()).item())
    full, sub, path = model.clip_logits([images[i] for i in index], start)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    ce = cross_entropy(up(full), labels[-1], class_weight)
    loss = ce + SUB_WEIGHT * cross_entropy(up(sub), labels[-1], class_weight)
    kd = torch.zeros_like(ce)
    if teacher is not None:
        whole, parts = teacher_outputs(teacher, images[-1], n)
        kd = distillation(full, whole) + SUB_WEIGHT * distillation(sub, n * parts[path])
    other = model.alone((path + 1 + int(torch.randint(0, n - 1, ()).item())) % n, images[-1])
    loss = loss + SUB_WEIGHT * cross_entropy(up(other), labels[-1], class_weight)
    loss = loss + AGREE_WEIGHT * (distillation(other, sub.detach()) + distillation(sub, other.detach()))
    return {"loss": loss + kd, "ce": ce.detach(), "aux": kd.detach()}
