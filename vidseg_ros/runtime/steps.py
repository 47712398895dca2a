"""Step functions as flat modules: explicit tensors in and out, the form torch.export, ONNX and TensorRT take.

State dicts are flattened to a fixed, sorted tuple of tensors (``state_<key>`` in, ``next_state_<key>`` out).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vidseg_ros.models.base import VideoSegModel


class FlatKeyStep(nn.Module):
    """``key_step`` with flat outputs ``(logits, *state[k] for k in state_keys)`` (ONNX/TensorRT friendly)."""

    def __init__(self, model: VideoSegModel, state_keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.state_keys = tuple(state_keys)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        logits, state = self.model.key_step(image)
        return (logits, *(state[k] for k in self.state_keys))


class FlatNonKeyStep(FlatKeyStep):
    """One phase of ``nonkey_step``, flat: inputs ``(image, prev_image, flow, *state)`` for models that use
    motion, ``(image, *state)`` for those that do not (TDNet); outputs ``(logits, *state)``."""

    def __init__(self, model: VideoSegModel, state_keys: tuple[str, ...], phase: int = 0) -> None:
        super().__init__(model, state_keys)
        self.phase = int(phase)

    def forward(self, image: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        prev_image, flow, state = (
            (rest[0], rest[1], rest[2:]) if self.model.uses_motion else (None, None, rest)
        )
        logits, new_state = self.model.phase_step(
            image, prev_image, flow, dict(zip(self.state_keys, state, strict=True)), self.phase
        )
        return (logits, *(new_state[k] for k in self.state_keys))


def nonkey_name(model: VideoSegModel, phase: int = 0) -> str:
    """The step name of a non-key phase: ``nonkey``, or ``nonkey0`` .. for models whose steps take turns."""
    return "nonkey" if model.phases == 1 else f"nonkey{phase}"


def phase_of_name(name: str) -> int:
    """The phase of a non-key step name (:func:`nonkey_name`)."""
    return int(name.removeprefix("nonkey") or 0)


def nonkey_inputs(
    model: VideoSegModel, image: Tensor, prev_image: Tensor | None, flow: Tensor | None, state: dict
) -> tuple[Tensor, ...]:
    """The flat inputs of a non-key step (:class:`FlatNonKeyStep`), state in sorted key order."""
    motion = (prev_image, flow) if model.uses_motion else ()
    return (image, *motion, *(state[k] for k in sorted(state)))  # type: ignore[misc]


@dataclass(frozen=True)
class StepSpec:
    """One exportable step function with example inputs of the static shapes it is built for."""

    name: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: tuple[Tensor, ...]
    state_keys: tuple[str, ...]

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(t.shape) for t in self.example_inputs)


def step_names(model: VideoSegModel) -> tuple[str, ...]:
    """``("key",)`` for per-frame models, ``("key", "nonkey")`` for models that use motion, and
    ``("key", "nonkey0", ...)`` for models whose non-key steps take turns."""
    if not model.uses_motion and model.phases == 1:
        return ("key",)
    return ("key", *(nonkey_name(model, p) for p in range(model.phases)))


def default_flow_hw(image_hw: tuple[int, int], flow_downscale: int = 2) -> tuple[int, int]:
    """The flow size the segmenter produces for an inference size (``max(1, side // downscale)``)."""
    return max(1, image_hw[0] // flow_downscale), max(1, image_hw[1] // flow_downscale)


def step_specs(
    model: VideoSegModel,
    image_hw: tuple[int, int],
    flow_hw: tuple[int, int] | None = None,
    *,
    steps: tuple[str, ...] | None = None,
    seed: int = 0,
) -> list[StepSpec]:
    """Flat step modules of ``model`` with random example inputs of ``image_hw`` (and ``flow_hw``).

    The steps are those of the model's :meth:`~VideoSegModel.inference_form`. State keys are taken, sorted,
    from one ``key_step`` on a random frame; that frame's state is the example state of the non-key step, so
    every shape is exactly what the model produces.
    """
    model = model.inference_form()
    device = next(model.parameters()).device
    h, w = image_hw
    fh, fw = flow_hw or default_flow_hw(image_hw)
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, h, w, generator=g).to(device)
    prev = torch.randn(1, 3, h, w, generator=g).to(device)
    flow = (torch.randn(1, 2, fh, fw, generator=g) * 2.0).to(device)
    with torch.no_grad():
        _, state = model.key_step(prev)
    keys = tuple(sorted(state))
    state_in = tuple(f"state_{k}" for k in keys)
    state_out = tuple(f"next_state_{k}" for k in keys)
    specs = []
    all_names = step_names(model)
    for name in steps or all_names:
        if name == "key":
            specs.append(
                StepSpec(
                    "key", FlatKeyStep(model, keys).eval(), ("image",), ("logits", *state_out), (image,), keys
                )
            )
        elif name in all_names:
            motion = ("prev_image", "flow") if model.uses_motion else ()
            motion_in = (prev, flow) if model.uses_motion else ()
            specs.append(
                StepSpec(
                    name,
                    FlatNonKeyStep(model, keys, phase_of_name(name)).eval(),
                    ("image", *motion, *state_in),
                    ("logits", *state_out),
                    (image, *motion_in, *(state[k] for k in keys)),
                    keys,
                )
            )
        else:
            raise ValueError(f"unknown step {name!r}; expected one of {', '.join(all_names)}")
    return specs


def model_fingerprint(model: VideoSegModel) -> str:
    """SHA-256 of the architecture and every weight: a model hash when no checkpoint file is at hand."""
    from vidseg_ros.models.registry import arch_config

    digest = hashlib.sha256(json.dumps(arch_config(model), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def code_hash(*builders: str | Path) -> str:
    """SHA-256 of the code that shapes a compiled step: the models, the warp and motion code, these flat steps,
    and the ``builders`` (the modules that export or compile them for one backend).

    An engine cache keyed by the checkpoint alone would keep serving a graph after a change to this code, for
    example a model whose state gains a key.
    """
    package = Path(__file__).resolve().parents[1]
    files = sorted([*package.glob("models/*.py"), *package.glob("motion/*.py")])
    files += [Path(__file__).resolve(), *(Path(b).resolve() for b in builders)]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
