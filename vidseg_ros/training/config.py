"""Options of a training run, their per-method defaults, and the recipe a checkpoint records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidseg_ros.models.netwarp import DEFAULT_LAYERS
from vidseg_ros.models.twnet import DEFAULT_KEY_INTERVAL, DEFAULT_WARP_LAYER

METHODS: tuple[str, ...] = ("perframe", "netwarp", "twnet")

#: Default learning rates: stage 1 from scratch; NetWarp and TWNet fine-tune a trained image model.
DEFAULT_LR: dict[str, float] = {"perframe": 1e-3, "netwarp": 2e-4, "twnet": 5e-4}
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
    init: Path | None = None
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
    netwarp_layers: tuple[str, ...] = DEFAULT_LAYERS
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
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else self.lr

    @property
    def distances(self) -> tuple[int, int]:
        """``(min, max)`` non-key frames per training clip."""
        if self.method == "perframe":
            return 0, 0
        if self.method == "netwarp":
            return 1, 1 if self.max_distance is None else self.max_distance
        cap = max(1, self.key_interval - 1)
        return 1, min(DEFAULT_TWNET_DISTANCE, cap) if self.max_distance is None else self.max_distance

    def validate(self) -> None:
        """Raises ValueError for inconsistent options, before any data is loaded."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if not self.bags:
            raise ValueError("at least one --bag is needed")
        if self.method == "twnet" and self.init is None:
            raise ValueError("twnet stage 2 needs --init PERFRAME_CKPT (its frozen key-frame CNN)")
        for name in ("steps", "batch", "save_every", "flow_downscale"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"lr must be > 0, got {self.learning_rate}")
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
        if self.stop_at is not None and self.stop_at < 1:
            raise ValueError(f"stop_at must be >= 1, got {self.stop_at}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its ``--resume`` (``steps`` may, to extend a run)."""
        lo, hi = self.distances
        return {
            "method": self.method,
            "init": str(self.init) if self.init else None,
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
        }
