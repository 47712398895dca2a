"""Experiment (reverted in the next commit): TD4 whose full output should not depend on which path runs.

The labelled clip is unrolled twice, starting from two different paths, so the labelled frame is segmented by
two different sub-networks (each with the others' cached features). Both unrolls get the shipped terms (the
second at half weight), the two paths' own outputs are pulled together as in the shipped agreement term, and
the two full outputs are pulled together too (symmetric KL, each towards the other held fixed), weight W.

    B="$(for s in 1 2 3 4 5 6 7 8; do printf -- '--bag out/bags/train_s%s ' $s; done)"
    python experiments/tdnet_phase_train.py W $B --batch 8 --seed 0 --threads 1 --method tdnet --paths 4 \
        --out out/s10/td4_phase.pt --init out/ckpt/shallow_s1.pt --teacher out/ckpt/perframe_s1.pt --steps 300
    vidseg eval $(for s in 101 102 103 104 105 106; do printf -- '--bag out/bags/test_s%s ' $s; done) \
        --threads 1 --checkpoint vidseg_ros/checkpoints/tdnet4_mobilenetv2_synth.pt --checkpoint out/s10/td4_phase.pt
"""

import sys

import torch
import torch.nn.functional as F

import vidseg_ros.training.distill as d
import vidseg_ros.training.objectives as objectives
from vidseg_ros.training.losses import cross_entropy

WEIGHT = float(sys.argv.pop(1))


def phase_loss(model, teacher, images, labels, class_weight=None):
    n = model.phases
    index = [images.shape[0] - 1]
    for gap in torch.randint(1, 3, (n - 1,)).tolist():
        index.insert(0, index[0] - gap)
    frames = [images[i] for i in index]
    start = int(torch.randint(0, n, ()).item())
    runs = [model.clip_logits(frames, start)]
    other = (start + 1 + int(torch.randint(0, n - 1, ()).item())) % n
    runs.append(model.clip_logits(frames, other))
    size = (int(images.shape[-2]), int(images.shape[-1]))

    def ce(x):
        return cross_entropy(
            F.interpolate(x, size=size, mode="bilinear", align_corners=False), labels[-1], class_weight
        )

    whole, parts = d.teacher_outputs(teacher, images[-1], n) if teacher is not None else (None, None)
    loss = kd = torch.zeros(())
    for weight, (full, sub, path) in zip((1.0, 0.5), runs, strict=True):
        loss = loss + weight * (ce(full) + d.SUB_WEIGHT * ce(sub))
        if teacher is not None:
            kd = kd + weight * (
                d.distillation(full, whole) + d.SUB_WEIGHT * d.distillation(sub, n * parts[path])
            )
    (full, sub, _), (full2, sub2, _) = runs
    loss = loss + d.AGREE_WEIGHT * (d.distillation(sub2, sub.detach()) + d.distillation(sub, sub2.detach()))
    loss = loss + WEIGHT * (d.distillation(full2, full.detach()) + d.distillation(full, full2.detach()))
    return {"loss": loss + kd, "ce": ce(full).detach(), "aux": kd.detach()}


objectives.tdnet_loss = phase_loss

from vidseg_ros.cli import main  # noqa: E402

sys.exit(main(["train", *sys.argv[1:]]))
