"""``vidseg train``: train per-frame, NetWarp or TWNet models on a dataset or on labelled bags.

Stages::

    vidseg train --dataset cityscapes --data-root ROOT --method perframe --steps N --size 512x256 --out pf.pt
    vidseg train --dataset cityscapes --data-root ROOT --method netwarp --init pf.pt --steps N --out nw.pt
    vidseg train --method perframe --bag bags/a --bag bags/b --out perframe.pt --steps 2000
    vidseg train --method twnet --init perframe.pt --bag bags/a --out twnet.pt --steps 500

Several processes (GPUs, or CPU workers with gloo)::

    torchrun --nproc_per_node 2 -m vidseg_ros.cli train --method perframe --bag bags/a --out perframe.pt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vidseg_ros.tools.synth import parse_size


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (checked before a long run, not after it), or None.

    Creates the parent folders, as writing would.
    """
    if path.is_dir():
        return "it is a folder"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return e.strerror or str(e)
    if not os.access(path.parent, os.W_OK):
        return f"{path.parent} is not writable"
    return None


def add_data_arguments(p: argparse.ArgumentParser, *, split: str) -> None:
    """The data options ``train`` and ``eval`` share: a dataset format, or bags with their topics."""
    from vidseg_ros.data.datasets import FORMATS
    from vidseg_ros.data.datasets.bag import DEFAULT_IMAGE_TOPIC, DEFAULT_LABEL_TOPIC

    g = p.add_argument_group("data (a dataset, or bags)")
    g.add_argument("--dataset", choices=sorted(FORMATS), help="dataset format under --data-root")
    g.add_argument("--data-root", type=Path, help="the dataset's folder, in its published layout")
    g.add_argument("--split", default=split, help=f"dataset split (default {split})")
    g.add_argument("--bag", dest="bags", type=Path, action="append", help="labelled bag (repeatable)")
    g.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC, help="bags: sensor_msgs/Image topic")
    g.add_argument("--label-topic", default=DEFAULT_LABEL_TOPIC, help="bags: mono8 label topic (train ids)")
    g.add_argument(
        "--classes",
        type=Path,
        help="bags: classes.yaml of the labels (default: --init's classes, else synthetic)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the ``train`` options to ``p``."""
    from vidseg_ros.models.netwarp import DEFAULT_LAYERS
    from vidseg_ros.models.twnet import CFR_KINDS, DEFAULT_WARP_LAYER

    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument(
        "--method",
        required=True,
        choices=("perframe", "netwarp", "twnet", "grfp", "tdnet"),
        help="what to train",
    )
    add_data_arguments(p, split="train")
    p.add_argument(
        "--out", type=Path, required=True, help="checkpoint to write; training state goes to OUT.state"
    )
    p.add_argument(
        "--init",
        type=Path,
        help="trained perframe checkpoint to start from (required for twnet, grfp and tdnet)",
    )
    p.add_argument(
        "--base",
        type=Path,
        help="grfp: a per-frame ONNX model with its model card beside it (model.yaml); trains only the STGRU "
        "over it, for its classes, at its input size",
    )
    g = p.add_argument_group("architecture (new models only; --init fixes them)")
    g.add_argument(
        "--backbone",
        choices=("mobilenetv2", "mobilenetv2_shallow", "resnet18"),
        help="encoder (default mobilenetv2)",
    )
    g.add_argument("--width-mult", type=float, help="MobileNetV2 width (default 0.5; resnet18 needs 1.0)")
    g.add_argument("--decoder-channels", type=int, help="FPN decoder width (default 96)")
    g.add_argument("--pretrained-backbone", type=Path, help="torchvision ImageNet state dict for the encoder")
    g.add_argument(
        "--size",
        type=parse_size,
        metavar="WxH",
        help="training/inference size (default: init's, else 320x240)",
    )
    g.add_argument(
        "--key-interval", type=int, default=12, help="twnet: key frame every N frames (stored in the model)"
    )
    g.add_argument(
        "--warp-layer",
        type=int,
        choices=(1, 2, 3),
        default=DEFAULT_WARP_LAYER,
        help="twnet: decoder layer warped (3 meets the 0.6x cost target on a CPU)",
    )
    g.add_argument(
        "--no-correction", dest="correction", action="store_false", help="twnet: warp-only (no CFR/RGA)"
    )
    g.add_argument(
        "--cfr",
        choices=CFR_KINDS,
        default="bottleneck",
        help="twnet: correction design: bottleneck over the pooled frame (default; cheap on CPUs) or "
        "separable over the NKFC stem features",
    )
    g.add_argument(
        "--netwarp-layers",
        default=",".join(DEFAULT_LAYERS),
        help="netwarp: comma-separated insertion layers",
    )
    g.add_argument("--paths", type=int, default=4, help="tdnet: sub-networks taking turns (2, 3 or 4)")
    g.add_argument(
        "--teacher",
        type=Path,
        help="tdnet: a wider perframe checkpoint to distil from (grouped knowledge distillation)",
    )
    g.add_argument("--grfp-kernel", type=int, default=3, help="grfp: convolution size of the STGRU (odd)")
    g.add_argument(
        "--finetune-static",
        action="store_true",
        help="grfp: fine-tune the static network (at --lr) together with the STGRU (at 10x --lr) instead of "
        "keeping it frozen",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=1000, help="total optimiser steps")
    o.add_argument("--batch", type=int, default=8, help="global batch (clips per step over all processes)")
    o.add_argument(
        "--lr", type=float, help="peak learning rate (default perframe 1e-3, netwarp 2e-4, twnet 5e-4)"
    )
    o.add_argument(
        "--weight-decay", type=float, default=1e-4, help="AdamW weight decay (not on 1-D parameters)"
    )
    o.add_argument(
        "--lambda", dest="lam", type=float, default=10.0, help="twnet: weight of the L2 consistency loss"
    )
    o.add_argument(
        "--max-distance",
        type=int,
        help="non-key frames per clip: netwarp 1 (pairs), twnet min(4, K-1), grfp 3-4",
    )
    o.add_argument("--no-flip", dest="flip", action="store_false", help="no random left-right mirroring")
    o.add_argument(
        "--augment",
        choices=("full", "flip", "none"),
        help="full: random scale 0.5-2, crop, flip, colour jitter (default for datasets); flip: mirroring "
        "only, bags preprocessed once in memory (default for bags)",
    )
    o.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="fp16 mixed precision (default: on with CUDA, off on the CPU)",
    )
    o.add_argument(
        "--class-weights",
        choices=("enet", "none"),
        default="enet",
        help="class-balanced cross-entropy from the training labels' frequencies (enet), or plain (none)",
    )
    o.add_argument("--seed", type=int, default=0, help="seeds initialisation and the batch sampling")
    r = p.add_argument_group("run")
    r.add_argument("--resume", action="store_true", help="continue from OUT.state when it exists")
    r.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="stop after STEP steps (state saved); finish with --resume",
    )
    r.add_argument("--save-every", type=int, default=100, help="write OUT.state every N steps")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--workers", type=int, default=2, help="data loading processes for augmented clips")
    r.add_argument(
        "--flow-downscale", type=int, default=2, help="flow at size / N, as the node's motion.flow_downscale"
    )
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Trains; returns 0 on success, 2 for bad options or data."""
    from vidseg_ros.models.backbones import PretrainedWeightsError
    from vidseg_ros.runtime.checkpoint import CheckpointError
    from vidseg_ros.training.config import TrainConfig
    from vidseg_ros.training.loop import ResumeError, train

    cfg = TrainConfig(
        method=args.method,
        bags=list(args.bags or []),
        out=args.out,
        dataset=args.dataset,
        data_root=args.data_root,
        split=args.split,
        image_topic=args.image_topic,
        label_topic=args.label_topic,
        classes=args.classes,
        augment=args.augment,
        workers=args.workers,
        amp=args.amp,
        init=args.init,
        base=args.base,
        backbone=args.backbone,
        width_mult=args.width_mult,
        decoder_channels=args.decoder_channels,
        pretrained_backbone=args.pretrained_backbone,
        size=args.size,
        steps=args.steps,
        stop_at=args.stop_at,
        batch=args.batch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        key_interval=args.key_interval,
        warp_layer=args.warp_layer,
        correction=args.correction,
        cfr=args.cfr,
        finetune_static=args.finetune_static,
        grfp_kernel=args.grfp_kernel,
        paths=args.paths,
        teacher=args.teacher,
        netwarp_layers=tuple(x.strip() for x in args.netwarp_layers.split(",") if x.strip()),
        lam=args.lam,
        max_distance=args.max_distance,
        flip=args.flip,
        class_weights=args.class_weights,
        flow_downscale=args.flow_downscale,
        save_every=args.save_every,
        progress=args.progress,
    )
    if problem := unwritable(args.out):
        print(f"vidseg train: error: cannot write {args.out}: {problem}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except (ValueError, CheckpointError, ResumeError, PretrainedWeightsError) as e:
        print(f"vidseg train: error: {e}", file=sys.stderr)
        return 2
    return 0
