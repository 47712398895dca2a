"""Where and how a model's step functions run: PyTorch eager on CPU or CUDA, TensorRT engines, or ONNX Runtime.

Every backend exposes the model contract of :mod:`vidseg_ros.models.base` on device tensors, so the
segmenter does not care which one it drives:

===========  =========================================================================================
cpu          PyTorch eager, fp32.
cuda         PyTorch eager; fp16/bf16 through autocast; each step is captured once per input shape into a
             CUDA graph and replayed (shapes are static once the node has fixed its inference size).
tensorrt     :mod:`~vidseg_ros.runtime.trt_backend`: torch-tensorrt, dynamo frontend; each step function is
             exported with ``torch.export`` as a flat module (state tensors in and out explicitly), compiled
             with static shapes, and cached on disk. Imported lazily; optional.
onnxruntime  :mod:`~vidseg_ros.runtime.ort_backend`: the same flat steps exported to ONNX, optimised by
             ONNX Runtime and cached on disk; CPU provider, or with onnxruntime-gpu the CUDA or TensorRT
             provider (requests ``onnxruntime-cuda``, ``onnxruntime-tensorrt``).
===========  =========================================================================================

:func:`select_backend` resolves ``auto`` (tensorrt if importable and CUDA is present, else cuda, else onnxruntime
if it imports and the model exports, else cpu) and says why in words, for the log and /diagnostics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vidseg_ros.errors import first_line
from vidseg_ros.models.base import State, VideoSegModel
from vidseg_ros.models.folding import channels_last_networks, fold_batch_norms
from vidseg_ros.models.fpn import model_output
from vidseg_ros.runtime.backend_api import PRECISIONS, Backend, BackendUnavailable
from vidseg_ros.runtime.backend_api import check_precision as _check_precision
from vidseg_ros.runtime.engine_cache import EngineCache
from vidseg_ros.runtime.ort_backend import OrtBackend, onnxruntime_problem, ort_cache, ort_request_reason
from vidseg_ros.runtime.steps import (
    FlatKeyStep,
    FlatNonKeyStep,
    default_flow_hw,
    nonkey_inputs,
    nonkey_name,
    phase_of_name,
    step_names,
)
from vidseg_ros.runtime.trt_backend import TRT_SUFFIX, TensorRTBackend, torch_tensorrt_problem

log = logging.getLogger(__name__)

REQUESTS = ("auto", "cpu", "cuda", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt")


class EagerBackend:
    """PyTorch eager on the CPU (fp32).

    The steps run on a copy of the model with its batch norms folded into the convolutions
    (:func:`~vidseg_ros.models.folding.fold_batch_norms`), made by :meth:`prepare` or else at the first
    step: the same masks. In one interleaved run of ``vidseg eval``'s runner at 320x240 (one thread), each
    checkpoint folded and not, the per-frame model and TD4 took 17% less time a frame, TD2 13%. On the CPU the
    copy's encoders and decoders also hold their weights channels-last
    (:func:`~vidseg_ros.models.folding.channels_last_networks`), so oneDNN runs their convolutions without
    reordering; the steps return contiguous logits and state.
    """

    name: ClassVar[str] = "cpu"
    #: Whether the steps run on the folded copy.
    fold: ClassVar[bool] = True
    #: Whether, on the CPU, that copy's encoders and decoders run channels-last.
    channels_last: ClassVar[bool] = True

    def __init__(
        self, model: VideoSegModel, *, precision: str = "fp32", reason: str = "", device: str = "cpu"
    ) -> None:
        self.precision = _check_precision(self.name, precision)
        self.reason = reason or f"requested {self.name}"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._runner: VideoSegModel | None = None

    @property
    def runner(self) -> VideoSegModel:
        """The module the steps run: the model's inference form
        (:meth:`~vidseg_ros.models.base.VideoSegModel.inference_form`), folded (built at the first call)."""
        if self._runner is None:
            # A model over a foreign ONNX file holds an onnxruntime session (not copied; its runtime folds).
            foreign = getattr(self.model, "own_runtime", False)
            form = self.model.inference_form()
            self._runner = fold_batch_norms(form) if self.fold and not foreign else form
            if self.channels_last and self.device.type == "cpu" and not foreign:
                channels_last_networks(self._runner)
        return self._runner

    def prepare(self, image_hw: tuple[int, int], flow_hw: tuple[int, int] | None = None) -> None:
        """Makes the folded copy now (the node prepares at configure), not at the first frame."""
        _ = self.runner

    def _output(self) -> contextlib.AbstractContextManager:
        """On the CPU the steps return the logits at the classifier's size (``Segmenter.to_mask`` takes the
        arg-max of their upsampling without building most of it); elsewhere upsampled."""
        return model_output("native" if self.device.type == "cpu" else "logits")

    @torch.inference_mode()
    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        with self._output():
            return _contiguous(*self.runner.key_step(image))

    @torch.inference_mode()
    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        with self._output():
            return _contiguous(*self.runner.nonkey_step(image, prev_image, flow, state))


def _contiguous(logits: Tensor, state: State) -> tuple[Tensor, State]:
    """Logits and state in contiguous order (no copy where they already are): the mask's reductions run along
    rows, and the next step's warps read the state fastest that way."""
    return logits.contiguous(), {k: v.contiguous() for k, v in state.items()}


class OwnRuntimeBackend(EagerBackend):
    """A model over a foreign ONNX file: its network runs in its own onnxruntime session on the CPU (and a GRFP
    unit over it in PyTorch), so there is nothing to export or compile."""

    name: ClassVar[str] = "onnxruntime"


def _own_runtime_reason(model: VideoSegModel, requested: str) -> str:
    what = "the ONNX model runs in its own onnxruntime session on the CPU"
    if model.uses_motion:
        what += ", the STGRU in PyTorch"
    if requested not in ("auto", "cpu", "onnxruntime"):
        what += f" (backend '{requested}' does not apply to it)"
    return f"{model.method}: {what}"


class _GraphedStep:
    """A flat step captured into a CUDA graph: inputs are copied into static buffers, outputs cloned out."""

    def __init__(self, graph: Any, static_in: tuple[Tensor, ...], static_out: tuple[Tensor, ...]) -> None:
        self.graph, self.static_in, self.static_out = graph, static_in, static_out

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        for dst, src in zip(self.static_in, inputs, strict=True):
            dst.copy_(src)
        self.graph.replay()
        # Cloned because the next replay overwrites the static outputs while a stream still holds its state.
        return tuple(t.clone() for t in self.static_out)


class CudaBackend(EagerBackend):
    """PyTorch eager on a CUDA device, optionally under fp16/bf16 autocast and replayed from CUDA graphs.

    A graph is captured per (step, input shapes and dtypes) on the first call with those shapes, after a few
    warm-up runs on a side stream; a capture failure is logged and that signature runs eagerly from then on.
    """

    name: ClassVar[str] = "cuda"
    #: Its steps run the inference form unfolded and in its own layout: neither change was measured on a GPU.
    fold: ClassVar[bool] = False
    channels_last: ClassVar[bool] = False
    MAX_GRAPHS = 8

    def __init__(
        self,
        model: VideoSegModel,
        *,
        precision: str = "fp32",
        reason: str = "",
        device: str = "cuda",
        cuda_graphs: bool = True,
    ) -> None:
        super().__init__(model, precision=precision, reason=reason, device=device)
        self.autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, _GraphedStep | None] = {}
        self._modules: dict[tuple, nn.Module] = {}
        self._state_keys: tuple[str, ...] | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # No weight-cast cache: cached casts would be captured into a graph and go stale.
        return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)

    def _eager(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        with self._autocast():
            return module(*inputs)

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> _GraphedStep | None:
        try:
            static_in = tuple(t.clone() for t in inputs)
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._eager(module, static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._eager(module, static_in)
            return _GraphedStep(graph, static_in, tuple(static_out))
        except RuntimeError as e:
            log.warning("CUDA graph capture failed (%s); running this step eagerly", str(e).splitlines()[0])
            return None

    def _run(self, step: str, inputs: tuple[Tensor, ...]) -> tuple[Tensor, State]:
        keys = self._state_keys or ()
        module = self._modules.get((step, keys))
        if module is None:
            module = (
                FlatKeyStep(self.runner, keys)
                if step == "key"
                else FlatNonKeyStep(self.runner, keys, phase_of_name(step))
            )
            self._modules[(step, keys)] = module
        signature = (step, keys, tuple((tuple(t.shape), t.dtype) for t in inputs))
        if signature not in self._graphs:
            capture = self.cuda_graphs and len(self._graphs) < self.MAX_GRAPHS
            self._graphs[signature] = self._capture(module, inputs) if capture else None
        runner = self._graphs[signature]
        out = runner(*inputs) if runner is not None else self._eager(module, inputs)
        return out[0], dict(zip(keys, out[1:], strict=True))

    @torch.inference_mode()
    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        if self._state_keys is None:
            # The first call learns the state layout; flat (graphable) calls need it.
            with self._autocast():
                logits, state = self.runner.key_step(image)
            self._state_keys = tuple(sorted(state))
            return logits, state
        return self._run("key", (image,))

    @torch.inference_mode()
    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        self._state_keys = tuple(sorted(state))
        name = nonkey_name(self.runner, self.runner.phase_of(state))
        return self._run(name, nonkey_inputs(self.runner, image, prev_image, flow, state))

    def prepare(self, image_hw: tuple[int, int], flow_hw: tuple[int, int] | None = None) -> None:
        image = torch.randn(1, 3, *image_hw, device=self.device)
        self.key_step(image)
        # The first call learns the state layout, the second captures; the state then has the dtype autocast
        # gives it, so the non-key graphs are captured for exactly what later frames pass in.
        _, state = self.key_step(image)
        flow = torch.zeros(1, 2, *(flow_hw or default_flow_hw(image_hw)), device=self.device)
        for _ in step_names(self.model)[1:]:  # each phase in turn
            _, state = self.nonkey_step(image, image, flow, state)


BACKENDS: dict[str, type] = {
    "cpu": EagerBackend,
    "cuda": CudaBackend,
    "tensorrt": TensorRTBackend,
    "onnxruntime": OrtBackend,
}


# ----------------------------------------------------------------------------------------------- selection
def cuda_device_name() -> str | None:
    """Name of the current CUDA device, or None when there is none."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())


def choose_backend(
    requested: str, precision: str = "fp32", *, cpu_only: bool = False
) -> tuple[str, str, str]:
    """Decides ``(backend, precision, reason)`` without building anything.

    ``auto`` never fails: it falls back to a backend that runs here, and to fp32 when the chosen backend lacks
    the requested precision; ``cpu_only`` keeps it off the GPU (onnxruntime, else cpu). An explicit request
    that cannot be honoured raises.

    Raises:
        ValueError: Unknown request or precision, or a precision the requested backend lacks.
        BackendUnavailable: ``cuda``/``tensorrt``/``onnxruntime-*`` requested without CUDA, or the package
            or execution provider it needs is missing.
    """
    if requested not in REQUESTS:
        raise ValueError(f"backend must be one of {'|'.join(REQUESTS)}, got {requested!r}")
    if precision not in PRECISIONS["cuda"]:
        raise ValueError(f"precision must be one of {'|'.join(PRECISIONS['cuda'])}, got {precision!r}")
    gpu = cuda_device_name() if requested not in ("cpu", "onnxruntime") and not cpu_only else None
    if requested == "auto":
        trt_problem = None if cpu_only else torch_tensorrt_problem()
        if trt_problem is None and gpu:
            name, why = "tensorrt", f"torch_tensorrt importable and CUDA device '{gpu}' present"
        elif gpu:
            name, why = "cuda", f"{trt_problem}; CUDA device '{gpu}' present"
        else:
            ort_problem = onnxruntime_problem()
            name = "cpu" if ort_problem else "onnxruntime"
            why = "cpu only" if cpu_only else f"{trt_problem or 'torch_tensorrt importable'}; no CUDA device"
            why += f"; {ort_problem or 'onnxruntime importable'}"
        reason = f"auto: {why} -> {name}"
        if precision not in PRECISIONS[name]:
            reason += f" (precision {precision} not supported by {name}; using fp32)"
            precision = "fp32"
        return name, precision, reason
    family = requested.partition("-")[0]
    _check_precision(family, precision)
    if requested == "cpu":
        return "cpu", precision, "requested cpu"
    if family == "onnxruntime":
        return requested, precision, ort_request_reason(requested, gpu)
    problems = [torch_tensorrt_problem()] if requested == "tensorrt" else []
    if not gpu:
        problems.append("no CUDA device is available")
    problems = [p for p in problems if p]
    if problems:
        hint = ""
        if requested == "tensorrt":
            hint = (
                "; install the [tensorrt] extra (JetPack: NVIDIA's torch-tensorrt wheel) or use backend auto"
            )
        raise BackendUnavailable(f"backend '{requested}' requested but {' and '.join(problems)}{hint}")
    return requested, precision, f"requested {requested} on '{gpu}'"


def _fallback(error: Exception, failed: str, to: str, reason: str) -> str:
    """Logs why ``failed`` could not be built under ``auto`` and returns the reason extended with it."""
    first = first_line(error)
    log.warning("%s backend failed (%s); falling back to %s", failed, first, to)
    return f"{reason}; {failed} failed ({first}) -> {to}"


def select_backend(
    requested: str,
    model: VideoSegModel,
    *,
    precision: str = "fp32",
    cpu_only: bool = False,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    model_hash: str | None = None,
    cuda_graphs: bool = True,
    prepare: tuple[tuple[int, int], tuple[int, int] | None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Backend, str]:
    """Builds the backend :func:`choose_backend` picks and returns it with the reason.

    Args:
        requested: One of :data:`REQUESTS`.
        model: The model (moved to the backend's device).
        precision: ``fp32``, ``fp16`` or ``bf16`` (bf16: cuda only).
        cpu_only: Keep ``auto`` on the CPU (the node's ``model.device: cpu``).
        threads: onnxruntime intra-op threads (default: PyTorch's).
        cache_dir: Engine cache directory (default: ``$VIDSEG_ENGINE_CACHE`` or ``~/.cache``); onnxruntime
            keeps its sessions in its ``onnxruntime`` folder.
        model_hash: Checkpoint hash for the cache keys (default: fingerprint of the weights).
        cuda_graphs: Let the cuda backend replay CUDA graphs.
        prepare: ``(image_hw, flow_hw)`` to build/capture for now. Under ``auto``, a TensorRT failure here
            falls back to the cuda backend and an onnxruntime failure (import, export, session) to cpu,
            logged and added to the reason, instead of failing.
        progress: Progress lines of TensorRT engine builds and onnxruntime exports.
    """
    if getattr(model, "own_runtime", False):
        reason = _own_runtime_reason(model, requested)
        return OwnRuntimeBackend(model, reason=reason), reason
    name, precision, reason = choose_backend(requested, precision, cpu_only=cpu_only)
    backend: Backend
    if name == "tensorrt":
        try:
            backend = TensorRTBackend(
                model,
                precision=precision,
                reason=reason,
                cache=EngineCache(cache_dir, suffix=TRT_SUFFIX),
                model_hash=model_hash,
                progress=progress,
            )
            if prepare is not None:
                backend.prepare(*prepare)
            return backend, reason
        except Exception as e:  # noqa: BLE001 - any compiler failure; explicit requests re-raise it
            if requested != "auto":
                raise
            reason, name = _fallback(e, "tensorrt", "cuda", reason), "cuda"
            if precision not in PRECISIONS["cuda"]:  # pragma: no cover - fp32/fp16 are both cuda precisions
                precision = "fp32"
    elif name.startswith("onnxruntime"):
        try:
            backend = OrtBackend(
                model,
                provider=name.partition("-")[2] or "cpu",
                threads=threads,
                precision=precision,
                reason=reason,
                cache=ort_cache(cache_dir),
                model_hash=model_hash,
                progress=progress,
            )
            if prepare is not None:
                backend.prepare(*prepare)
            return backend, reason
        except Exception as e:  # noqa: BLE001 - import, export or session failure; explicit requests re-raise
            if requested != "auto":
                raise
            reason, name = _fallback(e, "onnxruntime", "cpu", reason), "cpu"
    if name == "cuda":
        backend = CudaBackend(model, precision=precision, reason=reason, cuda_graphs=cuda_graphs)
    else:
        backend = EagerBackend(model, precision=precision, reason=reason)
    if prepare is not None:
        backend.prepare(*prepare)
    return backend, reason
