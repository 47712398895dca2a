"""Per-frame segmentation models a user brings as ONNX, described by a model card, and GRFP over them.

``model.onnx`` needs ``model.yaml`` beside it::

    classes:                       # one per output channel, in order
      - {name: road, color: [128, 64, 128]}
    input:
      width: 1024                  # the network's input size
      height: 512
      channel_order: rgb           # rgb | bgr
      scale: 0.00392156862745098   # uint8 values are multiplied by this, then
      mean: [0.485, 0.456, 0.406]  # normalised per channel, in channel_order
      std: [0.229, 0.224, 0.225]
    output: logits                 # logits | probabilities; NCHW, any spatial size

The graph must have one input; its first output is the scores. The frame is resized to the card's size by the
segmenter, which normalises with the card's values re-expressed for its own convention (``(v - mean) / std`` on
0..255 values, in RGB order): ``v * scale`` normalised by ``(mean, std)`` is ``v`` normalised by
``(mean / scale, std / scale)``. The model runs in its own ONNX Runtime session on the CPU; probabilities
become log-probabilities, so the arg-max, and GRFP's softmax, see the same classes.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from vidseg_ros.errors import first_line
from vidseg_ros.models.base import State, VideoSegModel
from vidseg_ros.models.fpn import upsample_logits
from vidseg_ros.models.grfp import DEFAULT_KERNEL, STGRU, GRFPBase
from vidseg_ros.motion.warp import resize_to
from vidseg_ros.runtime.ort_backend import onnxruntime_problem, session_options

CARD_SUFFIX = ".yaml"
CHANNEL_ORDERS = ("rgb", "bgr")
OUTPUTS = ("logits", "probabilities")
#: GRFP over a foreign model runs its unit at the model's output size, but no finer than a quarter of the
#: input (as the shipped models' stride-4 logits): a full-resolution output would make the unit cost more
#: than many networks.
MIN_STRIDE = 4


class CardError(ValueError):
    """A model card (or its ONNX model) that is missing or does not describe a usable model."""


@dataclass(frozen=True)
class ModelCard:
    """A foreign model's classes, input size and normalisation (see the module docstring)."""

    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    width: int
    height: int
    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str

    def rgb_normalisation(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` as fractions of 255 in RGB order: the checkpoint metadata's convention."""
        order = slice(None) if self.channel_order == "rgb" else slice(None, None, -1)
        mean = [m / (self.scale * 255.0) for m in self.mean[order]]
        std = [s / (self.scale * 255.0) for s in self.std[order]]
        return mean, std

    def as_dict(self) -> dict[str, Any]:
        return {
            "classes": [{"name": n, "color": list(c)} for n, c in zip(self.classes, self.colors, strict=True)],
            "input": {"width": self.width, "height": self.height, "channel_order": self.channel_order,
                      "scale": self.scale, "mean": list(self.mean), "std": list(self.std)},
            "output": self.output,
        }  # fmt: skip


def card_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(CARD_SUFFIX)


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CardError(f"{where} must be a number, got {value!r}")
    if positive and not value > 0:
        raise CardError(f"{where} must be > 0, got {value!r}")
    return float(value)


def _triple(value: Any, where: str, *, positive: bool = False) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise CardError(f"{where} must be a list of 3 numbers, got {value!r}")
    a, b, c = (_number(v, f"{where}[{i}]", positive=positive) for i, v in enumerate(value))
    return a, b, c


def parse_card(data: Any) -> ModelCard:
    """Validates a card's content; raises CardError naming the first bad field."""
    if not isinstance(data, dict):
        raise CardError(f"must be a mapping with classes, input and output, got {type(data).__name__}")
    missing = [k for k in ("classes", "input", "output") if k not in data]
    if missing:
        raise CardError(f"missing field(s) {', '.join(missing)}")
    classes = data["classes"]
    if not isinstance(classes, list) or not classes:
        raise CardError("classes must be a non-empty list of {name, color}")
    if len(classes) > 255:
        raise CardError(f"at most 255 classes fit a mono8 mask, got {len(classes)}")
    names, colors = [], []
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            raise CardError(f"classes[{i}] must have a non-empty name, got {c!r}")
        color = c.get("color")
        if not (isinstance(color, list) and len(color) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)):  # fmt: skip
            raise CardError(f"classes[{i}].color must be 3 ints in 0..255, got {color!r}")
        names.append(c["name"])
        colors.append((int(color[0]), int(color[1]), int(color[2])))
    if len(set(names)) != len(names):
        raise CardError(f"class names must be unique, got {names}")
    inp = data["input"]
    if not isinstance(inp, dict):
        raise CardError(f"input must be a mapping, got {inp!r}")
    for key in ("width", "height", "channel_order", "scale", "mean", "std"):
        if key not in inp:
            raise CardError(f"missing field input.{key}")
    for key in ("width", "height"):
        v = inp[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 8:
            raise CardError(f"input.{key} must be an int >= 8, got {v!r}")
    if inp["channel_order"] not in CHANNEL_ORDERS:
        raise CardError(f"input.channel_order must be rgb or bgr, got {inp['channel_order']!r}")
    if data["output"] not in OUTPUTS:
        raise CardError(f"output must be logits or probabilities, got {data['output']!r}")
    return ModelCard(
        classes=tuple(names),
        colors=tuple(colors),
        width=int(inp["width"]),
        height=int(inp["height"]),
        channel_order=str(inp["channel_order"]),
        scale=_number(inp["scale"], "input.scale", positive=True),
        mean=_triple(inp["mean"], "input.mean"),
        std=_triple(inp["std"], "input.std", positive=True),
        output=str(data["output"]),
    )


def load_card(onnx_path: str | Path) -> ModelCard:
    """The card beside ``onnx_path``; raises CardError with the file and the problem in one line."""
    path = card_path(Path(onnx_path))
    if not path.is_file():
        raise CardError(
            f"model card {path} not found: an ONNX model needs its card beside it (see the README)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CardError(f"model card {path} is not readable YAML ({first_line(e)})") from e
    try:
        return parse_card(data)
    except CardError as e:
        raise CardError(f"model card {path}: {e}") from e


def write_card(onnx_path: str | Path, card: ModelCard) -> Path:
    path = card_path(Path(onnx_path))
    path.write_text(yaml.safe_dump(card.as_dict(), sort_keys=False, default_flow_style=None))
    return path


class OnnxStaticNet:
    """A foreign ONNX model and its card, run by ONNX Runtime on normalised RGB tensors.

    Args:
        path: The ``.onnx`` file (its card beside it).
        threads: Intra-op threads (default: PyTorch's).

    Raises:
        CardError: Missing or invalid card, a graph that does not load, has not one input, or whose output
            is not ``[N, classes, h, w]``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.card = load_card(self.path)
        if problem := onnxruntime_problem():
            raise CardError(f"{self.path.name} needs onnxruntime: {problem}; install the [onnx] extra")
        ort = importlib.import_module("onnxruntime")
        level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so = session_options(ort, threads or torch.get_num_threads(), level)
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises plain Exceptions for unreadable graphs
            raise CardError(f"onnxruntime cannot load {self.path}: {first_line(e)}") from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise CardError(
                f"{self.path.name} has {len(inputs)} inputs ({names}); a per-frame model takes one"
            )
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else None
        #: A graph exported with batch 1 runs a batch one frame at a time.
        self.batch_one = batch == 1
        probe = self.scores(torch.zeros(1, 3, self.card.height, self.card.width))
        if probe.ndim != 4 or probe.shape[1] != len(self.card.classes):
            raise CardError(
                f"{self.path.name} outputs {tuple(probe.shape)}, but its card lists {len(self.card.classes)} "
                "classes: the first output must be [N, classes, h, w]"
            )

    @property
    def num_classes(self) -> int:
        return len(self.card.classes)

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as e:  # noqa: BLE001 - ORT's exceptions are plain Exceptions
            raise RuntimeError(f"{self.path.name} failed on a {x.shape} input: {first_line(e)}") from e

    @torch.no_grad()
    def scores(self, image: Tensor) -> Tensor:
        """Class scores ``[B, C, h, w]`` (log-probabilities for a probabilities model) of RGB-normalised
        ``image`` ``[B, 3, H, W]`` (the segmenter's normalisation from :meth:`ModelCard.rgb_normalisation`)."""
        x = image.detach().to("cpu", torch.float32)
        if self.card.channel_order == "bgr":
            x = x.flip(1)
        x = x.contiguous().numpy()
        if self.batch_one and x.shape[0] > 1:
            out = np.concatenate([self._run(x[i : i + 1]) for i in range(x.shape[0])])
        else:
            out = self._run(x)
        scores = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        if self.card.output == "probabilities":
            scores = scores.clamp_min(1e-8).log()
        return scores.to(image.device)


class ForeignModel(VideoSegModel):
    """A foreign ONNX model run per frame: no temporal state."""

    method = "onnx"
    uses_motion = False
    key_interval = 1
    #: Runs its own ONNX Runtime session: backends run it as it is instead of exporting it.
    own_runtime = True

    def __init__(self, net: OnnxStaticNet) -> None:
        super().__init__()
        self.net = net

    def config(self) -> dict[str, Any]:
        return {"num_classes": self.net.num_classes, "base": str(self.net.path)}

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        return upsample_logits(self.net.scores(image), (int(image.shape[-2]), int(image.shape[-1]))), {}

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        return self.key_step(image)


class GRFPOnnxModel(GRFPBase):
    """GRFP's STGRU over a foreign ONNX model (frozen: it runs in ONNX Runtime, only the unit trains).

    Args:
        base: The ``.onnx`` file, its card beside it.
        base_sha256: The SHA-256 the unit was trained over; a different file is refused.
        num_classes: Must equal the card's class count.
        kernel: Convolution size of the STGRU.
    """

    method = "grfp_onnx"
    own_runtime = True

    def __init__(
        self, *, base: str, base_sha256: str | None, num_classes: int, kernel: int = DEFAULT_KERNEL
    ) -> None:
        super().__init__()
        from vidseg_ros.runtime.checkpoint import file_hash

        path = Path(base)
        if not path.is_file():
            raise CardError(f"base model {path} not found (the STGRU was trained over it)")
        digest = file_hash(path)
        if base_sha256 is not None and digest != base_sha256:
            raise CardError(
                f"base model {path} has SHA-256 {digest[:12]}…, but the STGRU was trained over "
                f"{base_sha256[:12]}…: retrain with --base {path}, or restore the original file"
            )
        self.net = OnnxStaticNet(path)
        if self.net.num_classes != num_classes:
            raise CardError(f"{path.name} has {self.net.num_classes} classes, the STGRU {num_classes}")
        self.base, self.base_sha256 = str(path), digest
        self.stgru = STGRU(num_classes, kernel)

    def config(self) -> dict[str, Any]:
        return {
            "num_classes": self.net.num_classes,
            "kernel": self.stgru.kernel,
            "base": self.base,
            "base_sha256": self.base_sha256,
        }

    def static_scores(self, image: Tensor) -> Tensor:
        scores = self.net.scores(image)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        cap = (math.ceil(h / MIN_STRIDE), math.ceil(w / MIN_STRIDE))
        if scores.shape[-2] > cap[0] or scores.shape[-1] > cap[1]:
            scores = resize_to(scores, cap)
        return scores


def foreign_meta(
    card: ModelCard, method: str, arch: dict[str, Any], recipe: dict[str, Any] | None = None
) -> Any:
    """Checkpoint metadata of a model over a foreign network: its card's classes, colours, size and
    normalisation."""
    from vidseg_ros.runtime.checkpoint import ModelMeta

    mean, std = card.rgb_normalisation()
    return ModelMeta(
        method=method,
        arch={"method": method, **arch},
        classes=list(card.classes),
        palette=[list(c) for c in card.colors],
        mean=mean,
        std=std,
        input_size=[card.width, card.height],
        recipe=dict(recipe or {}),
    )


def onnx_meta(path: Path, card: ModelCard | None = None) -> Any:
    """The metadata of a ``.onnx`` checkpoint, from its card (read here unless given; no session is built)."""
    card = card or load_card(path)
    return foreign_meta(card, ForeignModel.method, {"num_classes": len(card.classes), "base": str(path)})


def load_foreign(path: Path) -> tuple[ForeignModel, Any]:
    """A ``.onnx`` checkpoint: the model per frame, with metadata from the card its network read."""
    model = ForeignModel(OnnxStaticNet(path))
    return model.eval(), onnx_meta(path, model.net.card)
