"""ONNX Runtime backend: the step functions exported to ONNX, optimised once, cached on disk and run from there.

Each step (per-frame key; NetWarp and TWNet key and non-key) is exported with
:func:`~vidseg_ros.runtime.onnx_export.export_onnx` from :func:`~vidseg_ros.runtime.steps.step_specs`, with
static shapes and the recurrent state as explicit inputs (``state_<k>``) and outputs (``next_state_<k>``). The
warps export in their ``clamped`` form (:data:`EXPORT_WARP`), which ORT's CPU kernel runs about 7x faster.
ONNX Runtime optimises the graph (``ORT_ENABLE_ALL``) and the optimised model is stored in an
:class:`~vidseg_ros.runtime.engine_cache.EngineCache` under ``<engine cache>/onnxruntime``: the next start only
loads it. On the CPU the optimised graph holds layout transforms (NCHWc) chosen for this CPU's vector width, so
the CPU is part of the key; before ORT optimises it, the graph's narrow tensors are widened to that layout's
channel block (:mod:`~vidseg_ros.runtime.onnx_pad`). For the CUDA and TensorRT providers only the
hardware-independent basic rewrites are stored and the rest is redone at load, because ORT cannot save a graph
with provider-compiled nodes.

Runs go through IO binding: inputs are bound where the torch tensors live, and every output is written by ORT
straight into a fresh torch tensor, so the outputs and the state come back without a copy and never alias a
buffer that the next run overwrites.

The node only takes the arg-max of the logits upsampled to the image's size. By default the steps end in the
class ids (``labels``, :func:`~vidseg_ros.models.fpn.model_output`), so only those come back, except on the
CPU above :data:`FUSED_MAX_PIXELS`, where they end at the classifier (``native``) and ``Segmenter.to_mask``
takes that arg-max without upsampling most of the scores. ``logits`` keeps the upsampled logits (parity checks, other consumers).
"""

from __future__ import annotations

import functools
import importlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from vidseg_ros.errors import first_line
from vidseg_ros.models.base import State, VideoSegModel
from vidseg_ros.models.fpn import MODEL_OUTPUTS
from vidseg_ros.runtime.backend_api import BackendUnavailable, check_precision
from vidseg_ros.runtime.engine_cache import (
    CacheResult,
    EngineCache,
    default_cache_dir,
    fields_digest,
    slot_name,
)
from vidseg_ros.runtime.hardware import cpu_identity, gpu_identity
from vidseg_ros.runtime.onnx_export import export_onnx
from vidseg_ros.runtime.onnx_pad import host_block, pad_file
from vidseg_ros.runtime.steps import StepSpec, code_hash, model_fingerprint, nonkey_name, step_specs

log = logging.getLogger(__name__)

#: Execution providers per provider request, in ORT's order of preference (later ones take what earlier ones
#: cannot run).
ORT_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
ONNX_SUFFIX = ".onnx"
MIN_OPSET = 17
#: Warp formulation of the export (:func:`~vidseg_ros.motion.warp.warp_padding`): border clamping through zero
#: padding, the GridSample mode ORT's CPU kernel has a fast path for (1.4 ms against 9.8 ms with border padding
#: on a [1, 96, 60, 80] map, 1 thread); same values, and float32 is the only precision this backend runs.
EXPORT_WARP = "clamped"
#: CPU steps on images of at most this many pixels end in the class ids by default, larger ones at the
#: classifier (see the module docstring). Per frame, model step plus mask, one thread, interleaved: at 320x240
#: the ids took 0.14 to 0.30 ms less (per-frame model, NetWarp, TWNet, TD4); at 480x360 the classifier's
#: logits took 0.2 to 0.5 ms less, at 640x480 0.7 to 1.4 ms and at 768x576 1.2 to 1.6 ms.
FUSED_MAX_PIXELS = 320 * 240


def step_output(requested: str | None, provider: str, image_hw: tuple[int, int]) -> str:
    """What a step returns first (:data:`~vidseg_ros.models.fpn.MODEL_OUTPUTS`): ``requested``, or
    the default for ``provider`` and the image size."""
    if requested is not None:
        return requested
    if provider == "cpu" and image_hw[0] * image_hw[1] > FUSED_MAX_PIXELS:
        return "native"
    return "labels"


#: ORT's element types of the step outputs this backend binds, as torch and numpy dtypes.
OUTPUT_DTYPES: dict[str, tuple[torch.dtype, type]] = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(uint8)": (torch.uint8, np.uint8),
}
#: Folder of the ORT cache inside the engine cache root (``model.engine_cache``).
CACHE_SUBDIR = "onnxruntime"
GPU_HINT = "install the [ort-gpu] extra (onnxruntime-gpu)"
#: setup.py extra that installs what each provider needs.
EXTRAS = {"cpu": "onnx", "cuda": "ort-gpu", "tensorrt": "ort-gpu"}


class OrtError(RuntimeError):
    """ONNX Runtime refused a model or a run (its own exceptions are not RuntimeErrors)."""


# ----------------------------------------------------------------------------------------------- probes
def onnxruntime_problem() -> str | None:
    """None when ``onnxruntime`` imports; otherwise why not, in words."""
    try:
        importlib.import_module("onnxruntime")
    except ModuleNotFoundError as e:
        if e.name == "onnxruntime" and "halted" not in str(e):
            return "onnxruntime not importable (not installed)"
        return f"onnxruntime not importable ({type(e).__name__}: {first_line(e)})"
    except Exception as e:  # noqa: BLE001 - a broken install raises anything from ImportError to OSError
        return f"onnxruntime not importable ({type(e).__name__}: {first_line(e)})"
    return None


def provider_problem(provider: str) -> str | None:
    """None when ORT imports and has every execution provider of ``provider``; otherwise why not."""
    problem = onnxruntime_problem()
    if problem is not None:
        return problem
    ort = importlib.import_module("onnxruntime")
    missing = [p for p in ORT_PROVIDERS[provider] if p not in ort.get_available_providers()]
    if missing:
        return f"onnxruntime {ort.__version__} has no {', '.join(missing)} ({GPU_HINT})"
    return None


def ort_request_reason(requested: str, gpu: str | None) -> str:
    """Why an explicit ``onnxruntime[-cuda|-tensorrt]`` request runs here; raises BackendUnavailable if it cannot.

    Args:
        requested: ``onnxruntime`` (CPU provider), ``onnxruntime-cuda`` or ``onnxruntime-tensorrt``.
        gpu: Name of the CUDA device, or None.
    """
    provider = requested.partition("-")[2] or "cpu"
    missing = provider_problem(provider)
    problems = [missing] if missing else []
    if provider != "cpu" and not gpu:
        problems.append("no CUDA device is available")
    if problems:
        hint = "; use backend auto"
        if missing and GPU_HINT not in missing:  # onnxruntime itself is missing
            hint = f"; install the [{EXTRAS[provider]}] extra or use backend auto"
        raise BackendUnavailable(f"backend '{requested}' requested but {' and '.join(problems)}{hint}")
    where = f" on '{gpu}'" if provider != "cpu" else ""
    return f"requested {requested}{where} ({', '.join(ORT_PROVIDERS[provider])})"


@functools.cache
def export_code_hash() -> str:
    """:func:`~vidseg_ros.runtime.steps.code_hash` of this backend: its exporter and this builder."""
    here = Path(__file__)
    return code_hash(here.with_name("onnx_export.py"), here.with_name("onnx_pad.py"), here)


def ort_cache(cache_dir: str | Path | None = None) -> EngineCache:
    """The ORT session cache: ``<cache_dir or the engine cache root>/onnxruntime``."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return EngineCache(root / CACHE_SUBDIR, suffix=ONNX_SUFFIX)


# ------------------------------------------------------------------------------------------------- key
@dataclass(frozen=True)
class OrtKey:
    """Everything a cached, optimised ONNX model depends on.

    Args:
        model_hash: Checkpoint SHA-256, or :func:`~vidseg_ros.runtime.steps.model_fingerprint`.
        step: ``key`` or ``nonkey``.
        output: The steps' first output (:data:`~vidseg_ros.models.fpn.MODEL_OUTPUTS`).
        input_shapes: Shapes of the flat inputs, in call order.
        opset: ONNX opset of the export.
        providers: Execution providers, in order.
        hardware: :func:`cpu_identity` for the CPU provider, the GPU's name and compute capability otherwise.
        onnxruntime_version, torch_version: Optimiser and exporter.
        code_hash: :func:`export_code_hash`.
    """

    SLOT_FIELDS: ClassVar[tuple[str, ...]] = (
        "model_hash",
        "step",
        "output",
        "input_shapes",
        "opset",
        "providers",
        "hardware",
    )

    model_hash: str
    step: str
    output: str
    input_shapes: tuple[tuple[int, ...], ...]
    opset: int
    providers: tuple[str, ...]
    hardware: str
    onnxruntime_version: str
    torch_version: str
    code_hash: str

    def __post_init__(self) -> None:
        shapes = tuple(tuple(int(d) for d in s) for s in self.input_shapes)
        object.__setattr__(self, "input_shapes", shapes)
        object.__setattr__(self, "providers", tuple(self.providers))

    def fields(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shapes"] = [list(s) for s in self.input_shapes]
        d["providers"] = list(self.providers)
        return d

    def digest(self) -> str:
        return fields_digest(self.fields())

    def slot(self) -> str:
        """``ort_<step>-<HxW>-<first provider>-<digest>``; versions and code only make an entry stale."""
        fields = self.fields()
        tag = self.providers[0].removesuffix("ExecutionProvider").lower()
        return slot_name(f"ort_{self.step}", self.input_shapes, tag, {k: fields[k] for k in self.SLOT_FIELDS})


# ------------------------------------------------------------------------------------------------ sessions
def session_options(ort: Any, threads: int, level: Any, optimized_path: Path | None = None) -> Any:
    """Sequential execution on ``threads`` intra-op threads at optimisation ``level``."""
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
        # ORT warns that a saved NCHWc graph is hardware specific: expected, the key holds the hardware.
        so.log_severity_level = 3
    return so


class OrtStep:
    """One session run on torch tensors through IO binding.

    Args:
        session: The ``InferenceSession``; its outputs must have static shapes (the export's) and float32 or
            uint8 elements.
        device: Where inputs are read and outputs written (CPU, or the CUDA device of a GPU provider).
    """

    def __init__(self, session: Any, device: torch.device) -> None:
        self.session = session
        self.device = device
        # The exporter drops inputs a step does not read (e.g. an unused previous image), so bind by name.
        self.input_names = frozenset(i.name for i in session.get_inputs())
        outputs = session.get_outputs()
        for o in outputs:
            if o.type not in OUTPUT_DTYPES or not all(isinstance(d, int) for d in o.shape):
                raise OrtError(
                    f"output {o.name} is {o.type} {o.shape}; expected float32 or uint8 of a static shape"
                )
        self.output_names = tuple(o.name for o in outputs)
        self.output_shapes = tuple(tuple(o.shape) for o in outputs)
        self.output_dtypes = tuple(OUTPUT_DTYPES[o.type] for o in outputs)
        self.state_keys = tuple(n.removeprefix("next_state_") for n in self.output_names[1:])
        self.binding = session.io_binding()
        self._where = (device.type, device.index or 0)

    def __call__(self, feeds: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """Runs on ``feeds`` (name -> tensor); returns the outputs as new tensors on :attr:`device`."""
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        alive = []  # bound by address: the tensors must outlive the run
        for name, tensor in feeds.items():
            if name in self.input_names:
                t = tensor.to(self.device, torch.float32).contiguous()  # the same tensor when it already is
                alive.append(t)
                binding.bind_input(name, *self._where, np.float32, tuple(t.shape), t.data_ptr())
        # Fresh tensors each run: the state handed to the stream must not be overwritten by the next run.
        outputs = tuple(
            torch.empty(s, dtype=dt, device=self.device)
            for s, (dt, _) in zip(self.output_shapes, self.output_dtypes, strict=True)
        )
        for name, out, (_, np_dtype) in zip(self.output_names, outputs, self.output_dtypes, strict=True):
            binding.bind_output(name, *self._where, np_dtype, tuple(out.shape), out.data_ptr())
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # ORT reads the inputs on its own stream
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:  # noqa: BLE001 - ORT's exceptions are plain Exceptions; callers expect RuntimeError
            raise OrtError(f"onnxruntime run failed: {first_line(e)}") from e
        finally:
            binding.clear_binding_inputs()
        return outputs


# ------------------------------------------------------------------------------------------------ backend
class OrtBackend:
    """Step functions run by ONNX Runtime from cached, optimised ONNX models.

    Args:
        model: The model; only exported (on the CPU) and used to derive state shapes.
        provider: ``cpu``, or ``cuda``/``tensorrt`` with onnxruntime-gpu and a CUDA device (see ORT_PROVIDERS).
        threads: Intra-op threads (the node's ``model.threads``); default: PyTorch's thread count.
        precision: ``fp32``.
        cache: Session cache (default: :func:`ort_cache`).
        model_hash: Key of the weights, e.g. the checkpoint's :func:`file_hash`; default: a fingerprint.
        opset: ONNX opset, at least 17.
        progress: Called with a line of text before each step is loaded or exported.
        output: What the steps return first (:data:`~vidseg_ros.models.fpn.MODEL_OUTPUTS`); None:
            by provider and size (:func:`step_output`).
    """

    name: ClassVar[str] = "onnxruntime"

    def __init__(
        self,
        model: VideoSegModel,
        *,
        provider: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
        reason: str = "",
        cache: EngineCache | None = None,
        model_hash: str | None = None,
        opset: int = MIN_OPSET,
        progress: Callable[[str], None] | None = None,
        output: str | None = None,
    ) -> None:
        self.precision = check_precision(self.name, precision)
        if provider not in ORT_PROVIDERS:
            raise ValueError(
                f"onnxruntime provider must be one of {'|'.join(ORT_PROVIDERS)}, got {provider!r}"
            )
        if opset < MIN_OPSET:
            raise ValueError(f"onnxruntime needs opset >= {MIN_OPSET} (GridSample), got {opset}")
        problem = provider_problem(provider)
        if problem is not None:
            raise BackendUnavailable(problem)
        self.ort = importlib.import_module("onnxruntime")
        self.provider, self.providers = provider, ORT_PROVIDERS[provider]
        if provider == "cpu":
            self.device = torch.device("cpu")
            self.hardware = cpu_identity()
        else:
            if not torch.cuda.is_available():
                raise BackendUnavailable(
                    f"onnxruntime provider {provider} needs a CUDA device and none is available"
                )
            self.device = torch.device("cuda", torch.cuda.current_device())
            self.hardware = gpu_identity(self.device)
        self.threads = threads or torch.get_num_threads()
        self.reason = reason or f"requested onnxruntime ({', '.join(self.providers)})"
        # Exported on the CPU: the graph is the same wherever it later runs.
        self.model = model.to("cpu").eval()
        self.cache = cache or ort_cache()
        self.model_hash = model_hash or model_fingerprint(self.model)
        self.opset = opset
        self.progress = progress
        if output is not None and output not in MODEL_OUTPUTS:
            raise ValueError(f"output must be one of {'|'.join(MODEL_OUTPUTS)}, got {output!r}")
        self.output = output
        self.results: list[CacheResult] = []
        self._steps: dict[tuple, OrtStep] = {}

    def output_of(self, spec: StepSpec) -> str:
        """What the step of ``spec`` returns first."""
        return step_output(self.output, self.provider, tuple(spec.input_shapes[0][-2:]))

    def session_key(self, spec: StepSpec) -> OrtKey:
        return OrtKey(
            model_hash=self.model_hash,
            step=spec.name,
            output=self.output_of(spec),
            input_shapes=spec.input_shapes,
            opset=self.opset,
            providers=self.providers,
            hardware=self.hardware,
            onnxruntime_version=str(self.ort.__version__),
            torch_version=torch.__version__,
            code_hash=export_code_hash(),
        )

    def _build(self, spec: StepSpec, path: Path) -> None:
        """Exports ``spec`` and writes ORT's optimised model of it to ``path``."""
        ort = self.ort
        # Hardware-independent rewrites only for GPU providers: ORT cannot save provider-compiled nodes.
        level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.provider != "cpu":
            level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        with tempfile.TemporaryDirectory(prefix="vidseg-onnx-") as tmp:
            raw = Path(tmp) / f"{spec.name}{ONNX_SUFFIX}"
            with torch.inference_mode(False):  # the tracer wants ordinary tensors
                export_onnx(spec, raw, self.opset, warp=EXPORT_WARP, output=self.output_of(spec))
            if self.provider == "cpu":
                pad_file(raw, host_block())
            try:
                so = session_options(ort, self.threads, level, optimized_path=path)
                ort.InferenceSession(str(raw), so, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - ORT's exceptions are plain Exceptions
                raise OrtError(f"onnxruntime cannot optimise the {spec.name} step: {first_line(e)}") from e

    def _provider_args(self) -> list[Any]:
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        index = {"device_id": self.device.index or 0}
        args: list[Any] = [("CUDAExecutionProvider", index), "CPUExecutionProvider"]
        if self.provider == "tensorrt":
            # TensorRT EP builds engines on first use (minutes): keep them next to our cache.
            trt_cache = str(self.cache.root / "tensorrt_ep")
            options = {**index, "trt_engine_cache_enable": True, "trt_engine_cache_path": trt_cache}
            args.insert(0, ("TensorrtExecutionProvider", options))
        return args

    def _load(self, path: Path) -> OrtStep:
        ort = self.ort
        so = session_options(ort, self.threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        try:
            session = ort.InferenceSession(str(path), so, providers=self._provider_args())
        except Exception as e:  # noqa: BLE001 - ORT's exceptions are plain Exceptions
            raise OrtError(f"onnxruntime cannot load {path.name}: {first_line(e)}") from e
        used = session.get_providers()
        if used[0] != self.providers[0]:
            log.warning("onnxruntime: %s unavailable at run time; running on %s", self.providers[0], used[0])
        return OrtStep(session, self.device)

    def load_or_build(self, spec: StepSpec, flow_hw: tuple[int, int] | None = None) -> CacheResult:
        """Loads the session of ``spec`` from the cache, exporting and optimising it first if needed."""
        key = self.session_key(spec)
        if self.progress is not None:
            state = "cached" if self.cache.check(key) is None else "exporting"
            size = "x".join(map(str, spec.input_shapes[0][-2:][::-1]))
            self.progress(f"onnxruntime {spec.name} step {size} ({self.provider}): {state}")
        result = self.cache.get_or_build(
            key,
            lambda path: self._build(spec, path),
            self._load,
            extra={
                "inputs": list(spec.input_names),
                "outputs": [self.output_of(spec), *spec.output_names[1:]],
            },
        )
        self.results.append(result)
        log.info("onnxruntime %s step: %s %s", spec.name, result.status, result.path)
        image_hw = tuple(spec.input_shapes[0][-2:])
        self._steps[(spec.name, image_hw, flow_hw if "flow" in spec.input_names else None)] = result.value
        return result

    def prepare(self, image_hw: tuple[int, int], flow_hw: tuple[int, int] | None = None) -> None:
        with torch.inference_mode(False):
            for spec in step_specs(self.model, image_hw, flow_hw):
                fhw = tuple(spec.example_inputs[2].shape[-2:]) if "flow" in spec.input_names else None
                if (spec.name, tuple(image_hw), fhw) not in self._steps:
                    self.load_or_build(spec, fhw)

    def _step(self, name: str, image: Tensor, flow: Tensor | None) -> OrtStep:
        image_hw = (int(image.shape[-2]), int(image.shape[-1]))
        flow_hw = (int(flow.shape[-2]), int(flow.shape[-1])) if flow is not None else None
        step = self._steps.get((name, image_hw, flow_hw))
        if step is None:  # a size prepare() did not see: export it now (seconds; cached for the next start)
            with torch.inference_mode(False):
                (spec,) = step_specs(self.model, image_hw, flow_hw, steps=(name,))
            self.load_or_build(spec, flow_hw)
            step = self._steps[(name, image_hw, flow_hw)]
        return step

    def key_step(self, image: Tensor) -> tuple[Tensor, State]:
        step = self._step("key", image, None)
        logits, *state = step({"image": image})
        return logits, dict(zip(step.state_keys, state, strict=True))

    def nonkey_step(
        self, image: Tensor, prev_image: Tensor, flow: Tensor, state: State
    ) -> tuple[Tensor, State]:
        motion = flow if self.model.uses_motion else None  # TDNet's steps take no motion
        step = self._step(nonkey_name(self.model, self.model.phase_of(state)), image, motion)
        if set(state) != set(step.state_keys):
            raise ValueError(
                f"state has keys {sorted(state)}, the non-key step wants {list(step.state_keys)}"
            )
        feeds = {"image": image, "prev_image": prev_image, "flow": flow}
        feeds.update((f"state_{k}", v) for k, v in state.items())
        logits, *new_state = step(feeds)
        return logits, dict(zip(step.state_keys, new_state, strict=True))
