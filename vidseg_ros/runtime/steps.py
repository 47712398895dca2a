"""Step functions as flat modules: explicit tensors in and out, the form torch.export, ONNX and TensorRT take.

State dicts are flattened to a fixed, sorted tuple of tensors (``state_<key>`` in, ``next_state_<key>`` out).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

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
    """``nonkey_step`` with flat inputs ``(image, prev_image, flow, *state)`` and outputs ``(logits, *state)``."""

    def forward(self, image: Tensor, prev_image: Tensor, flow: Tensor, *state: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        logits, new_state = self.model.nonkey_step(
            image, prev_image, flow, dict(zip(self.state_keys, state, strict=True))
        )
        return (logits, *(new_state[k] for k in self.state_keys))


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
    """``("key",)`` for models without motion (per-frame), else ``("key", "nonkey")``."""
    return ("key", "nonkey") if model.uses_motion else ("key",)


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

    State keys are taken, sorted, from one ``key_step`` on a random frame; that frame's state is the example
    state of the non-key step, so every shape is exactly what the model produces.
    """
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
    for name in steps or step_names(model):
        if name == "key":
            specs.append(
                StepSpec(
                    "key", FlatKeyStep(model, keys).eval(), ("image",), ("logits", *state_out), (image,), keys
                )
            )
        elif name == "nonkey":
            specs.append(
                StepSpec(
                    "nonkey",
                    FlatNonKeyStep(model, keys).eval(),
                    ("image", "prev_image", "flow", *state_in),
                    ("logits", *state_out),
                    (image, prev, flow, *(state[k] for k in keys)),
                    keys,
                )
            )
        else:
            raise ValueError(f"unknown step {name!r}; expected key or nonkey")
    return specs


def model_fingerprint(model: VideoSegModel) -> str:
    """SHA-256 of the architecture and every weight: a model hash when no checkpoint file is at hand."""
    from vidseg_ros.models.registry import arch_config

    digest = hashlib.sha256(json.dumps(arch_config(model), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
