"""The node's parameters, declared once: name, default, type, range or choices, and description.

ROS-free, so the same table drives parameter declaration in the node, validation of updates, the launch file's
arguments and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    #: Needs a restart (model, subscription); rclpy rejects runtime updates of read-only parameters.
    read_only: bool = False

    def check(self, value: Any) -> str | None:
        """The reason ``value`` is not acceptable, or None."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            return f"{self.name} must be {expected.__name__}, got {type(value).__name__}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {'|'.join(self.choices)}, got '{value}'"
        if self.min is not None and value < self.min:
            return f"{self.name} must be >= {self.min:g}, got {value}"
        if self.max is not None and value > self.max:
            return f"{self.name} must be <= {self.max:g}, got {value}"
        return None


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "autostart",
        True,
        "Configure and activate at start-up; false leaves the lifecycle to a manager.",
        read_only=True,
    ),
    ParamSpec(
        "model.checkpoint",
        "",
        'Checkpoint file (`.pt`), or a per-frame ONNX model with its card (`.onnx`, see "Bring your own '
        'per-frame model"); empty = the NetWarp model shipped with the package.',
        read_only=True,
    ),
    ParamSpec(
        "model.device",
        "auto",
        "Where the model runs: auto (CUDA if present), cpu or cuda.",
        choices=("auto", "cpu", "cuda"),
        read_only=True,
    ),
    ParamSpec(
        "model.backend",
        "auto",
        "auto: TensorRT when torch-tensorrt and CUDA are present, else PyTorch on CUDA, else onnxruntime on "
        "the CPU (PyTorch if it fails); torch; tensorrt; onnxruntime (CPU, or CUDA with onnxruntime-gpu).",
        choices=("auto", "torch", "tensorrt", "onnxruntime"),
        read_only=True,
    ),
    ParamSpec(
        "model.precision",
        "fp32",
        "fp32, or fp16/bf16 on CUDA and TensorRT (bf16: CUDA only).",
        choices=("fp32", "fp16", "bf16"),
        read_only=True,
    ),
    ParamSpec(
        "model.engine_cache",
        "",
        "Cache of TensorRT engines and ONNX Runtime sessions (in onnxruntime/); empty = $VIDSEG_ENGINE_CACHE or ~/.cache/vidseg_ros/engines.",
        read_only=True,
    ),
    ParamSpec(
        "model.threads",
        0,
        "CPU threads for PyTorch and ONNX Runtime; 0 = half the cores (at least 1), leaving the rest to DDS and other nodes.",
        min=0,
        max=256,
        read_only=True,
    ),
    ParamSpec(
        "model.width",
        0,
        "Inference width in pixels; 0 = the checkpoint's training size.",
        min=0,
        max=8192,
        read_only=True,
    ),
    ParamSpec(
        "model.height",
        0,
        "Inference height in pixels; 0 = the checkpoint's training size.",
        min=0,
        max=8192,
        read_only=True,
    ),
    ParamSpec(
        "twnet.key_interval",
        0,
        "TWNet: run the full CNN every N frames; 0 = the checkpoint's value (12).",
        min=0,
        max=1000,
    ),
    ParamSpec(
        "motion.flow_downscale",
        2,
        "Optical flow is computed at the inference size divided by this.",
        min=1,
        max=8,
        read_only=True,
    ),
    ParamSpec(
        "temporal.max_gap_s",
        1.0,
        "Reset the temporal state when two frames are further apart (s).",
        min=0.0,
        max=3600.0,
    ),
    ParamSpec(
        "input.transport",
        "raw",
        "raw: sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage (JPEG, PNG) on "
        "`image`/compressed, as image_transport names it; h264: foxglove_msgs/CompressedVideo (one H.264 access "
        "unit per message, no B-frames) on `image`/h264, keyed on its I-frames with the codec's motion vectors "
        "as flow (needs foxglove_msgs and PyAV).",
        choices=("raw", "compressed", "h264"),
        read_only=True,
    ),
    ParamSpec(
        "qos.reliability",
        "best_effort",
        "Subscriber reliability: best_effort (cameras) or reliable (bag replay).",
        choices=("best_effort", "reliable"),
        read_only=True,
    ),
    ParamSpec("qos.depth", 1, "Subscriber history depth.", min=1, max=100, read_only=True),
    ParamSpec(
        "realtime",
        True,
        "true: keep only the newest frame and count drops; false: process every frame "
        "in order (evaluation on bags).",
        read_only=True,
    ),
    ParamSpec("publish.color", True, "Publish semantic_mask/color (only computed when subscribed)."),
    ParamSpec("publish.overlay", True, "Publish semantic_mask/overlay (only computed when subscribed)."),
    ParamSpec("publish.overlay_alpha", 0.5, "Weight of the class colours in the overlay.", min=0.0, max=1.0),
    ParamSpec(
        "diagnostics.expected_rate",
        5.0,
        "WARN on /diagnostics when the output rate falls under this (Hz).",
        min=0.0,
        max=1000.0,
    ),
    ParamSpec(
        "diagnostics.drop_warn_ratio",
        0.5,
        "WARN when more than this fraction of frames is dropped.",
        min=0.0,
        max=1.0,
    ),
    ParamSpec(
        "diagnostics.window_s",
        5.0,
        "Window of the rates and percentiles on /diagnostics (s).",
        min=1.0,
        max=600.0,
    ),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class NodeConfig:
    """Parameter values as the node uses them."""

    values: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @classmethod
    def defaults(cls) -> NodeConfig:
        return cls({p.name: p.default for p in PARAMS})

    def updated(self, changes: dict[str, Any]) -> NodeConfig:
        """A copy with ``changes`` applied; raises ValueError with the first reason a change is rejected."""
        for name, value in changes.items():
            spec = SPECS.get(name)
            if spec is None:
                raise ValueError(f"unknown parameter {name}")
            reason = spec.check(value)
            if reason:
                raise ValueError(reason)
        return NodeConfig({**self.values, **changes})
