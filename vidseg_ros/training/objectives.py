"""The model each stage trains and the loss it optimises.

* ``perframe`` (stage 1): the image model on single frames, pixel cross-entropy (ignore label 255).
* ``netwarp``: NetWarp around a copy of the trained image model; the whole network (image model, FlowCNNs
  and fusion weights) is fine-tuned on clips ``t-k .. t``: ``key_step`` on the first frame, ``nonkey_step``
  on each following one with the reverse flow, cross-entropy on the non-key frames. Gradients flow through
  the key frame as well (both branches share weights, as in the paper's Siamese training).
* ``twnet`` (stage 2): the key-frame CNN is a frozen copy of the image model (eval mode, no gradients); the
  NKFC (copies of the shallow stages, the lateral/top-down layers below the warp point and the classifier),
  CFR and RGA are trained on chains of 1..max_distance non-key frames after a key frame with
  ``CE + lambda * MSE(corrected features, key CNN features of the same frame)`` averaged over the chain;
  gradients run through the whole chain, so accumulated warping error is what is learned to correct.
  Without correction the warped features depend on no trainable weight, so only the NKFC is fine-tuned
  (by the cross-entropy; the L2 term is reported but has no gradient).
* ``grfp``: a frozen copy of the image model is the static network; only the STGRU is trained, on clips of 4
  or 5 frames (first frame: ``h = x``), cross-entropy on the labelled frames after the first, gradients
  through the whole chain. ``finetune_static`` trains the static network with it.
* ``tdnet``: every sub-network starts as a copy of the image model; clips of N frames, one per path, with
  CE and grouped distillation from a wider per-frame teacher (:mod:`vidseg_ros.training.distill`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidseg_ros.classes import IGNORE_INDEX, SYNTH_TABLE, ClassTable
from vidseg_ros.models.backbones import load_pretrained_backbone
from vidseg_ros.models.base import VideoSegModel
from vidseg_ros.models.grfp import GRFPModel
from vidseg_ros.models.netwarp import NetWarpModel
from vidseg_ros.models.perframe import DECODER_CHANNELS, PerFrameModel
from vidseg_ros.models.registry import arch_config, build_model
from vidseg_ros.models.tdnet import TDNetModel
from vidseg_ros.models.twnet import TWNetModel
from vidseg_ros.runtime.checkpoint import ModelMeta, load_checkpoint
from vidseg_ros.runtime.foreign import GRFPOnnxModel, foreign_meta
from vidseg_ros.training.config import DEFAULT_SIZE, DEFAULT_WIDTH_MULT, TrainConfig
from vidseg_ros.training.distill import tdnet_loss
from vidseg_ros.training.losses import consistency, cross_entropy


def _image_model(cfg: TrainConfig, classes: ClassTable) -> tuple[PerFrameModel, ModelMeta | None]:
    """The per-frame model to train or to start from: ``cfg.init``'s, or a new one with ``classes``."""
    if cfg.init is not None:
        model, meta = load_checkpoint(cfg.init)
        if not isinstance(model, PerFrameModel):
            raise ValueError(f"--init must be a perframe checkpoint, {cfg.init} holds a {meta.method} model")
        if list(meta.classes) != list(classes.names):
            raise ValueError(
                f"--init {cfg.init} predicts {len(meta.classes)} classes ({', '.join(meta.classes[:4])}, ...) "
                f"but the data has {len(classes)} ({', '.join(classes.names[:4])}, ...): train stage 1 "
                "(--method perframe) on this data first"
            )
        arch = model.config()
        asked = {
            "backbone": cfg.backbone,
            "width_mult": cfg.width_mult,
            "decoder_channels": cfg.decoder_channels,
        }
        for name, value in asked.items():
            if value is not None and value != arch[name]:
                raise ValueError(
                    f"--{name.replace('_', '-')} {value} conflicts with {cfg.init} ({arch[name]})"
                )
        if cfg.pretrained_backbone is not None:
            raise ValueError(
                "--pretrained-backbone and --init exclude each other (--init has trained weights)"
            )
        return model, meta
    backbone = cfg.backbone or "mobilenetv2"
    width = (
        cfg.width_mult
        if cfg.width_mult is not None
        else (DEFAULT_WIDTH_MULT if backbone.startswith("mobilenetv2") else 1.0)
    )
    model = build_model(
        "perframe",
        backbone=backbone,
        num_classes=len(classes),
        width_mult=width,
        decoder_channels=DECODER_CHANNELS if cfg.decoder_channels is None else cfg.decoder_channels,
    )
    if cfg.pretrained_backbone is not None:
        load_pretrained_backbone(model.backbone, cfg.pretrained_backbone)
    assert isinstance(model, PerFrameModel)
    return model, None


def build_stage_model(cfg: TrainConfig, classes: ClassTable = SYNTH_TABLE) -> tuple[VideoSegModel, ModelMeta]:
    """The model ``cfg.method`` trains, initialised as the method prescribes, with its checkpoint metadata.

    ``classes`` are the data's; an init checkpoint must have the same. Normalisation comes from the init
    checkpoint, else ImageNet's; the input size is ``cfg.size``, else the init checkpoint's, else 320x240.
    Seeds torch with ``cfg.seed`` first, so freshly initialised layers are reproducible.
    """
    torch.manual_seed(cfg.seed)
    if cfg.base is not None:
        return _foreign_grfp(cfg, classes)
    image, init_meta = _image_model(cfg, classes)
    image.train()
    model: VideoSegModel
    if cfg.method == "perframe":
        model = image
    elif cfg.method == "netwarp":
        model = NetWarpModel.from_image_model(image, layers=cfg.netwarp_layers)
    elif cfg.method == "tdnet":
        model = TDNetModel.from_image_model(image, paths=cfg.paths)
    elif cfg.method == "grfp":
        grfp = GRFPModel.from_image_model(image, kernel=cfg.grfp_kernel)
        if not cfg.finetune_static:
            grfp.freeze_static()
        model = grfp
    else:
        twnet = TWNetModel.from_image_model(
            image,
            warp_layer=cfg.warp_layer,
            correction=cfg.correction,
            key_interval=cfg.key_interval,
            cfr=cfg.cfr,
        )
        twnet.freeze_key_cnn()
        model = twnet
    size = cfg.size or (tuple(init_meta.input_size) if init_meta else DEFAULT_SIZE)
    meta = ModelMeta(
        method=model.method,
        arch=arch_config(model),
        classes=list(classes.names),
        palette=[list(c) for c in (init_meta.palette if init_meta else classes.colors)],
        input_size=[int(size[0]), int(size[1])],
    )
    if init_meta:
        meta.mean, meta.std = list(init_meta.mean), list(init_meta.std)
    return model, meta


def _foreign_grfp(cfg: TrainConfig, classes: ClassTable) -> tuple[VideoSegModel, ModelMeta]:
    """GRFP's unit over the ``--base`` ONNX model: its card gives the classes, input size and normalisation."""
    assert cfg.base is not None
    model = GRFPOnnxModel(
        base=str(cfg.base.resolve()), base_sha256=None, num_classes=len(classes), kernel=cfg.grfp_kernel
    )
    card = model.net.card
    if list(card.classes) != list(classes.names):
        raise ValueError(
            f"--base {cfg.base} predicts {len(card.classes)} classes ({', '.join(card.classes[:4])}, ...) but the "
            f"data has {len(classes)} ({', '.join(classes.names[:4])}, ...): label the data with the card's classes"
        )
    return model, foreign_meta(card, model.method, model.config())


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameter count per top-level submodule (what a stage actually trains)."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.split(".", 1)[0]
            counts[top] = counts.get(top, 0) + p.numel()
    return counts


class StageObjective(nn.Module):
    """Loss of one training step; a module so DistributedDataParallel can wrap the whole clip unroll.

    ``forward(images [T,B,3,H,W], labels [T,B,H,W], flows [T,B,2,h,w] | None, targets | None)`` returns ``loss``, ``ce`` and
    ``aux``, the method's second term (TWNet's L2, TDNet's distillation; 0 where not used). ``T == 1`` trains
    the image model; ``T > 1`` unrolls key + non-key steps (TDNet: :func:`~vidseg_ros.training.distill.tdnet_loss`).
    ``targets`` are TWNet's cached key-CNN features of each frame (computed here when not given).
    """

    def __init__(
        self,
        model: VideoSegModel,
        lam: float = 10.0,
        class_weight: Tensor | None = None,
        teacher: PerFrameModel | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.teacher = teacher
        self.lam = float(lam)
        self.class_weight: Tensor | None
        self.register_buffer("class_weight", class_weight)

    def forward(
        self, images: Tensor, labels: Tensor, flows: Tensor | None = None, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        model = self.model
        if isinstance(model, TDNetModel):
            return tdnet_loss(model, self.teacher, images, labels, self.class_weight)
        if images.shape[0] == 1 or not model.uses_motion:
            ce = cross_entropy(model(images[-1]), labels[-1], self.class_weight)
            return {"loss": ce, "ce": ce.detach(), "aux": torch.zeros_like(ce).detach()}
        if flows is None:
            raise ValueError(f"{model.method} trains on clips and needs flows")
        twnet = model if isinstance(model, TWNetModel) else None
        if twnet is not None:
            if targets is None:
                # The frozen key CNN on every frame of the clip at once: frame 0's features are the key
                # state (exactly what key_step stores), the others the L2 targets.
                t, b = images.shape[:2]
                targets = twnet.key_features(images.flatten(0, 1))[twnet.warp_point].unflatten(0, (t, b))
            state = twnet.key_state(targets[0], images[0])
        else:
            _, state = model.key_step(images[0])
        ce = images.new_zeros(())
        l2 = images.new_zeros(())
        steps = images.shape[0] - 1
        labelled = 0  # real datasets label the last frame of a clip only; bags label every frame
        for t in range(1, images.shape[0]):
            logits, state = model.nonkey_step(images[t], images[t - 1], flows[t], state)
            if bool((labels[t] != IGNORE_INDEX).any()):
                ce = ce + cross_entropy(logits, labels[t], self.class_weight)
                labelled += 1
            if twnet is not None and targets is not None:
                l2 = l2 + consistency(state[twnet.warp_point], targets[t])
        ce, l2 = ce / max(1, labelled), l2 / steps
        return {"loss": ce + self.lam * l2, "ce": ce.detach(), "aux": l2.detach()}
