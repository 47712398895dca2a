"""Checkpoints that carry everything needed to run them: weights plus metadata.

The metadata (method, architecture, classes, palette, normalisation, inference size, training recipe) is the
single source of preprocessing for the node, ``vidseg eval`` and export, so they cannot drift apart.
Checkpoints are loaded with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch

from vidseg_ros.errors import load_problem, load_tensors
from vidseg_ros.models.base import VideoSegModel

FORMAT = "vidseg-checkpoint/1"
T = TypeVar("T")
#: Shipped with the package; `seg_node` and `make demo` use it when no checkpoint is given.
DEFAULT_CHECKPOINT = "netwarp_mobilenetv2_synth.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not describe a model we can build."""


@dataclass
class ModelMeta:
    """What a checkpoint says about its model, besides the weights."""

    method: str
    arch: dict[str, Any]
    classes: list[str]
    palette: list[list[int]]
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    #: Inference size (width, height) the model was trained at; the node resizes frames to it.
    input_size: list[int] = field(default_factory=lambda: [320, 240])
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<method>_<backbone>``; for a model over a foreign ONNX file, ``<method>_<its file name>``."""
        tag = self.arch.get("backbone") or Path(str(self.arch.get("base", "?"))).stem
        return f"{self.method}_{tag}"

    @property
    def synthetic_only(self) -> bool:
        """Trained on rendered data only (``recipe["data"]["synthetic"]``, written by ``vidseg train``)."""
        data = self.recipe.get("data")
        return isinstance(data, dict) and bool(data.get("synthetic"))


def synth_meta(
    model: VideoSegModel, input_size: tuple[int, int], recipe: dict[str, Any] | None = None
) -> ModelMeta:
    """Metadata for ``model`` with the synthetic street label set (classes and palette of ``vidseg synth``)."""
    from vidseg_ros.classes import SYNTH_CLASSES, SYNTH_PALETTE
    from vidseg_ros.models.registry import arch_config

    return ModelMeta(
        method=model.method,
        arch=arch_config(model),
        classes=list(SYNTH_CLASSES),
        palette=[list(c) for c in SYNTH_PALETTE],
        input_size=[int(input_size[0]), int(input_size[1])],
        recipe=dict(recipe or {}),
    )


def packaged_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    """Path of a checkpoint shipped inside the package."""
    return Path(str(resources.files("vidseg_ros") / "checkpoints" / name))


def resolve_checkpoint(path: str | os.PathLike[str] | None) -> Path:
    """An empty path means the shipped default; a bare file name may also name a shipped checkpoint."""
    if not path:
        return packaged_checkpoint()
    p = Path(path).expanduser()
    if not p.exists() and p.name == str(path) and packaged_checkpoint(p.name).exists():
        return packaged_checkpoint(p.name)
    return p


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, used to key caches and to name the model in diagnostics."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str], model: VideoSegModel, meta: ModelMeta, *, half: bool = True
) -> Path:
    """Write ``model`` and ``meta`` atomically; ``half`` stores floating tensors as fp16 to keep files small."""
    state = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    return atomic_torch_save({"format": FORMAT, "meta": asdict(meta), "state_dict": state}, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        # mkstemp creates 0600; give the file the mode a plain open() would (other users may run the node).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    """Read metadata and weights without building the model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = load_tensors(path)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file; all mean the same
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a vidseg checkpoint ({load_problem(e)})"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    try:
        meta = ModelMeta(**payload["meta"])
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path} has malformed metadata: {e}") from e
    return meta, payload["state_dict"]


def _from_onnx(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)`` of a foreign ``.onnx`` model, its card problems raised as CheckpointError."""
    from vidseg_ros.runtime.foreign import CardError

    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return read(path)
    except CardError as e:
        raise CheckpointError(str(e)) from e


def read_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """A checkpoint's metadata without building the model; a ``.onnx`` file's comes from its model card."""
    path = Path(path)
    if path.suffix == ".onnx":
        from vidseg_ros.runtime.foreign import onnx_meta

        return _from_onnx(path, onnx_meta)
    return read_checkpoint(path)[0]


#: Options whose default changed, with the value that checkpoints saved before the option existed were built with.
LEGACY_OPTIONS: dict[str, dict[str, Any]] = {"twnet": {"cfr": "separable"}}


def build_from_meta(meta: ModelMeta) -> VideoSegModel:
    """An untrained model of the architecture ``meta`` describes."""
    from vidseg_ros.models.registry import build_model

    arch = {**LEGACY_OPTIONS.get(meta.method, {}), **{k: v for k, v in meta.arch.items() if k != "method"}}
    try:
        return build_model(meta.method, **arch)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot build model '{meta.method}': {e}") from e


def load_checkpoint(
    path: str | os.PathLike[str] | None, *, device: str | torch.device = "cpu"
) -> tuple[VideoSegModel, ModelMeta]:
    """Build the model a checkpoint describes, load its weights and put it in eval mode on ``device``.

    A ``.onnx`` path is a foreign per-frame model with its model card (:mod:`vidseg_ros.runtime.foreign`).
    """
    resolved = resolve_checkpoint(path)
    if resolved.suffix == ".onnx":
        from vidseg_ros.runtime.foreign import load_foreign

        return _from_onnx(resolved, load_foreign)
    meta, state = read_checkpoint(resolved)
    try:
        model = build_from_meta(meta)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {resolved}: {e}") from e
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"checkpoint {resolved} does not match its architecture: {first}") from e
    return model.to(device).eval(), meta
