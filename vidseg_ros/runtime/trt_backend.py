"""The ``tensorrt`` backend: torch-tensorrt (dynamo frontend), imported lazily and optional.

Each step function is exported with ``torch.export`` as a flat module (state tensors in and out explicitly),
compiled with static shapes, and cached on disk by :class:`~vidseg_ros.runtime.engine_cache.EngineCache`,
keyed by the model, the step, its shapes, the precision, this file and the toolchain and GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from vidseg_ros.models.base import State, VideoSegModel
from vidseg_ros.runtime.backend_api import BackendUnavailable
from vidseg_ros.runtime.backend_api import check_precision as _check_precision
from vidseg_ros.runtime.engine_cache import CacheResult, EngineCache, EngineKey
from vidseg_ros.runtime.steps import (
    StepSpec,
    code_hash,
    model_fingerprint,
    nonkey_inputs,
    nonkey_name,
    step_specs,
)

log = logging.getLogger(__name__)

#: Artifact extension of cached TensorRT programs (``torch_tensorrt.save`` as an ExportedProgram).
TRT_SUFFIX = ".ep"


def torch_tensorrt_problem() -> str | None:
    """None when ``torch_tensorrt`` imports; otherwise why not, in words."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt not importable (not installed)"
    try:
        importlib.import_module("torch_tensorrt")
    except Exception as e:  # noqa: BLE001 - a broken install raises anything from ImportError to OSError
        return (
            f"torch_tensorrt not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )
    return None


def import_torch_tensorrt() -> Any:
    """``torch_tensorrt``, imported on first use; raises BackendUnavailable with the reason."""
    problem = torch_tensorrt_problem()
    if problem is not None:
        raise BackendUnavailable(problem)
    return importlib.import_module("torch_tensorrt")


def tensorrt_environment(device: torch.device | None = None) -> dict[str, str]:
    """The toolchain and GPU fields of an engine cache key."""
    trt = import_torch_tensorrt()
    try:
        trt_version = importlib.import_module("tensorrt").__version__
    except ImportError:
        trt_version = "unknown"
    index = (device or torch.device("cuda")).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "torch_tensorrt_version": str(trt.__version__),
        "tensorrt_version": str(trt_version),
        "gpu_name": torch.cuda.get_device_name(index),
        "compute_capability": f"{major}.{minor}",
    }


def _precision_kwargs(compile_fn: Callable, precision: str) -> dict[str, Any]:
    """fp16 settings for the installed torch-tensorrt; state tensors stay fp32 at the engine's boundary."""
    if precision == "fp32":
        return {}
    params = inspect.signature(compile_fn).parameters
    if "enable_autocast" in params:  # torch-tensorrt >= 2.10: rule-based autocast (weak typing is deprecated)
        kwargs: dict[str, Any] = {"use_explicit_typing": True, "enable_autocast": True}
        if "low_precision_type" in params:
            kwargs["low_precision_type"] = torch.float16
        return kwargs
    kwargs = {"enabled_precisions": {torch.float32, torch.float16}}
    if "use_explicit_typing" in params:
        kwargs["use_explicit_typing"] = False
    return kwargs


def build_tensorrt_step(spec: StepSpec, precision: str, path: Path) -> None:
    """Exports ``spec`` with ``torch.export``, compiles it with static shapes and saves it to ``path``."""
    trt = import_torch_tensorrt()
    inputs = list(spec.example_inputs)
    program = torch.export.export(spec.module, tuple(inputs), strict=False)
    compiled = trt.dynamo.compile(program, inputs, **_precision_kwargs(trt.dynamo.compile, precision))
    save_params = inspect.signature(trt.save).parameters
    arg = "arg_inputs" if "arg_inputs" in save_params else "inputs"
    trt.save(compiled, str(path), output_format="exported_program", **{arg: inputs})


def load_tensorrt_step(path: Path) -> Callable[..., Any]:
    import_torch_tensorrt()  # registers the TensorRT runtime ops the saved program calls
    return torch.export.load(str(path)).module()


class TensorRTBackend:
    """Steps compiled by torch-tensorrt (dynamo frontend) per static input shape, cached on disk.

    Args:
        model: The model; its eager copy is only used to derive state shapes and to trace.
        precision: ``fp32`` or ``fp16``.
        cache: Engine cache (default: :func:`~vidseg_ros.runtime.engine_cache.default_cache_dir`).
        model_hash: Key of the weights, e.g. the checkpoint's :func:`file_hash`; default: a fingerprint.
        progress: Called with a line of text before each engine is loaded or built (builds take minutes).
        device: The CUDA device (default: the current one).
    """

    name: ClassVar[str] = "tensorrt"

    def __init__(
        self,
        model: VideoSegModel,
        *,
        precision: str = "fp16",
        reason: str = "",
        cache: EngineCache | None = None,
        model_hash: str | None = None,
        progress: Callable[[str], None] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.precision = _check_precision(self.name, precision)
        import_torch_tensorrt()
        if device is None:
            if not torch.cuda.is_available():
                raise BackendUnavailable("TensorRT needs a CUDA device and none is available")
            device = torch.device("cuda", torch.cuda.current_device())
        self.reason = reason or "requested tensorrt"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cache = cache or EngineCache(suffix=TRT_SUFFIX)
        self.model_hash = model_hash or model_fingerprint(model)
        self.progress = progress
        self.results: list[CacheResult] = []
        self._env = tensorrt_environment(self.device)
        self._engines: dict[tuple, tuple[Callable[..., Any], tuple[str, ...]]] = {}

    def engine_key(self, spec: StepSpec) -> EngineKey:
        return EngineKey(
            model_hash=self.model_hash,
            step=spec.name,
            input_shapes=spec.input_shapes,
            precision=self.precision,
            code_hash=code_hash(__file__),
            **self._env,
        )

    def load_or_build(self, spec: StepSpec) -> CacheResult:
        """Loads the engine of ``spec`` from the cache, building it first if needed."""
        key = self.engine_key(spec)
        if self.progress is not None:
            state = "cached" if self.cache.check(key) is None else "building (can take minutes)"
            self.progress(
                f"{spec.name} step {'x'.join(map(str, spec.input_shapes[0][-2:]))} {self.precision}: {state}"
            )
        result = self.cache.get_or_build(
            key,
            lambda path: build_tensorrt_step(spec, self.precision, path),
            load_tensorrt_step,
            extra={"inputs": list(spec.input_names), "outputs": list(spec.output_names)},
        )
        self.results.append(result)
        log.info("tensorrt %s step: %s %s", spec.name, result.status, result.path)
        self._engines[(spec.name, spec.input_shapes)] = (result.value, spec.state_keys)
        return result

    def prepare(self, image_hw: tuple[int, int], flow_hw: tuple[int, int] | None = None) -> None:
        for spec in step_specs(self.model, image_hw, flow_hw):
            if (spec.name, spec.input_shapes) not in self._engines:
                self.load_or_build(spec)

    def _run(
        self, step: str, inputs: tuple[Tensor, ...], flow_hw: tuple[int, int] | None
    ) -> tuple[Tensor, State]:
        shapes = tuple(tuple(t.shape) for t in inputs)
        if (step, shapes) not in self._engines:
            image_hw = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))
            with torch.inference_mode(False):  # torch.export wants ordinary tensors, not inference ones
                for spec in step_specs(self.model, image_hw, flow_hw, steps=(step,)):
                    self.load_or_build(spec)
        engine, keys = self._engines[(step, shapes)]
        out = engine(*(t.float().contiguous() for t in inputs))
        out = tuple(out) if isinstance(out, list | tuple) else (out,)
        return out[0], dict(zip(keys, out[1:], strict=True))

    @torch.inference_mode()
    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        return self._run("key", (image,), None)

    @torch.inference_mode()
    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        flow_hw = (int(flow.shape[-2]), int(flow.shape[-1])) if flow is not None else None
        name = nonkey_name(self.model, self.model.phase_of(state))
        return self._run(name, nonkey_inputs(self.model, image, prev_image, flow, state), flow_hw)
