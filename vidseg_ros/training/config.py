"""Options of a training run, their per-method defaults, and the recipe a checkpoint records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidseg_ros.models.netwarp import DEFAULT_LAYERS
from vidseg_ros.models.perframe import MIN_DECODER_CHANNELS
from vidseg_ros.models.tdnet import DEFAULT_PATHS
from vidseg_ros.models.twnet import DEFAULT_KEY_INTERVAL, DEFAULT_WARP_LAYER
from vidseg_ros.training.distill import clip_span

METHODS: tuple[str, ...] = ("perframe", "netwarp", "twnet", "grfp", "tdnet")

#: Default learning rates: stage 1 from scratch; NetWarp and TWNet fine-tune a trained image model. GRFP's unit is
#: a fresh module and trains at 10x the rate: its weights start at 6 x identity, and at 1e-3 AdamW moved them by
#: under 0.2 in 300 steps (the unit stayed at its initialisation); at 1e-2 it learnt (see the README's results).
#: With --finetune-static the shipped recipe passes --lr 2e-4, per-frame fine-tuning's rate, for the network.
DEFAULT_LR: dict[str, float] = {"perframe": 1e-3, "netwarp": 2e-4, "twnet": 5e-4, "grfp": 1e-3, "tdnet": 5e-4}
#: GRFP trains on clips of 4 or 5 frames (3 or 4 steps of the unit after the first frame), as the paper does.
GRFP_DISTANCES = (3, 4)
#: TWNet trains on chains of up to this many non-key frames by default (capped at key_interval - 1).
DEFAULT_TWNET_DISTANCE = 4
DEFAULT_SIZE = (320, 240)
DEFAULT_WIDTH_MULT = 0.5


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``None`` means "the method's default" (see :meth:`resolve`).

    ``batch`` is the global batch: with ``torchrun`` each of the N processes takes ``batch / N`` clips of
    the same sampled batch, so the data seen per step does not depend on N.
    """

    method: str
    bags: list[Path]
    out: Path
    #: A dataset format (cityscapes, camvid, folder) read from ``data_root``; exclusive with ``bags``.
    dataset: str | None = None
    data_root: Path | None = None
    split: str = "train"
    image_topic: str = "/camera/image_raw"
    label_topic: str = "/camera/labels"
    #: classes.yaml for bags whose labels are not the synthetic (or the init checkpoint's) classes.
    classes: Path | None = None
    #: ``full`` (scale, crop, flip, colour jitter), ``flip`` or ``none``; None: flip for bags, full otherwise.
    augment: str | None = None
    #: DataLoader worker processes for augmented clips (0: in the training process).
    workers: int = 2
    #: Mixed precision (fp16 autocast + gradient scaling); None: on for CUDA, off on the CPU.
    amp: bool | None = None
    init: Path | None = None
    #: grfp over a foreign ONNX per-frame model (with its card) instead of --init's per-frame model.
    base: Path | None = None
    backbone: str | None = None
    width_mult: float | None = None
    decoder_channels: int | None = None
    pretrained_backbone: Path | None = None
    size: tuple[int, int] | None = None
    steps: int = 1000
    #: Stop after this many steps (state saved) and finish later with ``resume``; None runs to ``steps``.
    stop_at: int | None = None
    batch: int = 8
    lr: float | None = None
    weight_decay: float = 1e-4
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    threads: int | None = None
    key_interval: int = DEFAULT_KEY_INTERVAL
    warp_layer: int = DEFAULT_WARP_LAYER
    correction: bool = True
    #: twnet: the CFR design (``vidseg_ros.models.twnet.CFR_KINDS``).
    cfr: str = "bottleneck"
    netwarp_layers: tuple[str, ...] = DEFAULT_LAYERS
    #: grfp: train the static network too (it is frozen by default).
    finetune_static: bool = False
    grfp_kernel: int = 3
    #: tdnet: the number of sub-networks, and the wider per-frame model it distils from (None: no distillation).
    paths: int = DEFAULT_PATHS
    teacher: Path | None = None
    lam: float = 10.0
    max_distance: int | None = None
    flip: bool = True
    #: ``enet``: class-balanced cross-entropy (weights from the training labels); ``none``: plain.
    class_weights: str = "enet"
    flow_downscale: int = 2
    save_every: int = 100
    progress: bool = True

    @property
    def state_path(self) -> Path:
        """Where resumable training state (model, optimizer, step) lives: ``<out>.state``."""
        return self.out.with_name(self.out.name + ".state")

    @property
    def augmentation(self) -> str:
        if self.augment is not None:
            return self.augment
        if self.dataset is not None:
            return "full"
        return "flip" if self.flip else "none"

    @property
    def in_memory(self) -> bool:
        """Bags without scale augmentation are preprocessed once and held in memory (the fast path)."""
        return self.dataset is None and self.augmentation in ("flip", "none")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else self.lr

    @property
    def distances(self) -> tuple[int, int]:
        """``(min, max)`` non-key frames per training clip."""
        if self.method == "perframe":
            return 0, 0
        if self.method == "netwarp":
            return 1, 1 if self.max_distance is None else self.max_distance
        if self.method == "tdnet":  # the N frames are drawn from this run (gaps of 1-2)
            return clip_span(self.paths), clip_span(self.paths)
        if self.method == "grfp":
            lo, hi = GRFP_DISTANCES
            return (lo, hi) if self.max_distance is None else (min(lo, self.max_distance), self.max_distance)
        cap = max(1, self.key_interval - 1)
        return 1, min(DEFAULT_TWNET_DISTANCE, cap) if self.max_distance is None else self.max_distance

    def validate(self) -> None:
        """Raises ValueError for inconsistent options, before any data is loaded."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if bool(self.bags) == (self.dataset is not None):
            raise ValueError("give either --bag (repeatable) or --dataset with --data-root, not both")
        if self.dataset is not None and self.data_root is None:
            raise ValueError(f"--dataset {self.dataset} needs --data-root")
        if self.classes is not None and self.dataset is not None:
            raise ValueError("--classes is for bags; a dataset format brings its own classes")
        if self.augment is not None and self.augment not in ("full", "flip", "none"):
            raise ValueError(f"augment must be full, flip or none, got {self.augment!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.base is not None:
            if self.method != "grfp":
                raise ValueError(
                    f"--base is for --method grfp (a unit over a foreign model), not {self.method}"
                )
            if not self.base.is_file():
                raise ValueError(f"--base {self.base} not found")
            if self.init is not None:
                raise ValueError("--base and --init exclude each other: the ONNX model is the static network")
            if self.size is not None:
                raise ValueError("--size does not apply with --base: the model card fixes the input size")
            if self.finetune_static:
                raise ValueError("--finetune-static needs a PyTorch static network (--init), not --base")
        elif self.method in ("twnet", "grfp", "tdnet") and self.init is None:
            what = {"twnet": "its frozen key-frame CNN", "grfp": "its static network"}.get(
                self.method, "the model every sub-network starts from"
            )
            raise ValueError(f"{self.method} needs --init PERFRAME_CKPT ({what})")
        for name in ("steps", "batch", "save_every", "flow_downscale"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"lr must be > 0, got {self.learning_rate}")
        if self.decoder_channels is not None and self.decoder_channels < MIN_DECODER_CHANNELS:
            raise ValueError(
                f"decoder channels must be >= {MIN_DECODER_CHANNELS}, got {self.decoder_channels}"
            )
        if self.width_mult is not None and not self.width_mult > 0:
            raise ValueError(f"width mult must be > 0, got {self.width_mult}")
        if self.weight_decay < 0 or self.lam < 0:
            raise ValueError("weight decay and lambda must be >= 0")
        if self.key_interval < 2 and self.method == "twnet":
            raise ValueError(
                f"twnet needs key_interval >= 2 (non-key frames to train), got {self.key_interval}"
            )
        lo, hi = self.distances
        if hi < lo:
            raise ValueError(f"max_distance must be >= {lo} for {self.method}, got {hi}")
        if self.method == "twnet" and hi > self.key_interval - 1:
            raise ValueError(
                f"max_distance {hi} exceeds key_interval - 1 = {self.key_interval - 1}: "
                "the node never runs that many non-key frames in a row"
            )
        if self.method == "tdnet":
            if self.max_distance is not None:
                raise ValueError(
                    "--max-distance does not apply to tdnet: its clips are N frames at gaps of 1-2"
                )
            if self.paths not in (2, 3, 4):
                raise ValueError(f"paths must be 2, 3 or 4, got {self.paths}")
        elif self.teacher is not None:
            raise ValueError(f"--teacher is for --method tdnet, not {self.method}")
        if self.teacher is not None and not self.teacher.is_file():
            raise ValueError(f"--teacher {self.teacher} not found")
        if self.stop_at is not None and self.stop_at < 1:
            raise ValueError(f"stop_at must be >= 1, got {self.stop_at}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its ``--resume`` (``steps`` may, to extend a run)."""
        lo, hi = self.distances
        data = {}
        if self.dataset is not None or not self.in_memory:  # absent for bags in memory, as before
            data = {"dataset": self.dataset, "data_root": str(self.data_root), "split": self.split,
                    "augment": self.augmentation}  # fmt: skip
        return {
            **data,
            "method": self.method,
            "init": str(self.init) if self.init else None,
            **({"base": str(self.base)} if self.base else {}),
            "bags": [str(b) for b in self.bags],
            "batch": self.batch,
            "seed": self.seed,
            "size": list(self.size) if self.size else None,
            "lr": self.learning_rate,
            "weight_decay": self.weight_decay,
            "lambda": self.lam,
            "distances": [lo, hi],
            "flip": self.flip,
            "class_weights": self.class_weights,
            "flow_downscale": self.flow_downscale,
            **({"finetune_static": True} if self.finetune_static else {}),
            **({"grfp_kernel": self.grfp_kernel} if self.method == "grfp" else {}),
            **({"paths": self.paths, "teacher": str(self.teacher)} if self.method == "tdnet" else {}),
        }
