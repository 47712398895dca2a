"""Backend selection without a GPU (availability probes monkeypatched) and the eager backends."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from runtime_models import tiny_model

from vidseg_ros.models.fpn import model_output
from vidseg_ros.runtime import backends
from vidseg_ros.runtime.backends import (
    BACKENDS,
    Backend,
    BackendUnavailable,
    CudaBackend,
    EagerBackend,
    choose_backend,
    select_backend,
)

NO_TRT = "torch_tensorrt not importable (not installed)"
NO_ORT = "onnxruntime not importable (not installed)"


def _machine(monkeypatch: pytest.MonkeyPatch, *, trt: bool, gpu: str | None, ort: bool = False) -> None:
    monkeypatch.setattr(backends, "torch_tensorrt_problem", lambda: None if trt else NO_TRT)
    monkeypatch.setattr(backends, "cuda_device_name", lambda: gpu)
    monkeypatch.setattr(backends, "onnxruntime_problem", lambda: None if ort else NO_ORT)


@pytest.mark.parametrize(
    ("trt", "gpu", "expected", "reason"),
    [
        (
            True,
            "NVIDIA Orin",
            "tensorrt",
            "auto: torch_tensorrt importable and CUDA device 'NVIDIA Orin' present -> tensorrt",
        ),
        (False, "NVIDIA Orin", "cuda", f"auto: {NO_TRT}; CUDA device 'NVIDIA Orin' present -> cuda"),
        (False, None, "cpu", f"auto: {NO_TRT}; no CUDA device; {NO_ORT} -> cpu"),
        (True, None, "cpu", f"auto: torch_tensorrt importable; no CUDA device; {NO_ORT} -> cpu"),
    ],
)
def test_auto_picks_the_best_available_and_says_why(
    monkeypatch: pytest.MonkeyPatch, trt: bool, gpu: str | None, expected: str, reason: str
) -> None:
    _machine(monkeypatch, trt=trt, gpu=gpu)
    assert choose_backend("auto") == (expected, "fp32", reason)
    # onnxruntime takes the CPU when it imports; with a GPU it changes nothing.
    _machine(monkeypatch, trt=trt, gpu=gpu, ort=True)
    if gpu:
        assert choose_backend("auto") == (expected, "fp32", reason)
    else:
        ort_reason = reason.replace(f"{NO_ORT} -> cpu", "onnxruntime importable -> onnxruntime")
        assert choose_backend("auto") == ("onnxruntime", "fp32", ort_reason)
    # model.device cpu keeps auto off the GPU whatever is installed.
    assert choose_backend("auto", cpu_only=True) == (
        "onnxruntime",
        "fp32",
        "auto: cpu only; onnxruntime importable -> onnxruntime",
    )


def test_auto_falls_back_to_fp32_where_the_precision_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, trt=False, gpu=None)
    name, precision, reason = choose_backend("auto", "fp16")
    assert (name, precision) == ("cpu", "fp32") and "precision fp16 not supported by cpu" in reason
    _machine(monkeypatch, trt=True, gpu="RTX 4090")
    assert choose_backend("auto", "bf16")[:2] == ("tensorrt", "fp32")
    assert choose_backend("auto", "fp16")[:2] == ("tensorrt", "fp16")
    _machine(monkeypatch, trt=False, gpu="RTX 4090")
    assert choose_backend("auto", "bf16")[:2] == ("cuda", "bf16")


def test_explicit_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, trt=False, gpu=None)
    assert choose_backend("cpu") == ("cpu", "fp32", "requested cpu")
    with pytest.raises(
        BackendUnavailable, match="^backend 'cuda' requested but no CUDA device is available$"
    ):
        choose_backend("cuda")
    with pytest.raises(BackendUnavailable) as err:
        choose_backend("tensorrt", "fp16")
    message = str(err.value)
    assert message.startswith(f"backend 'tensorrt' requested but {NO_TRT} and no CUDA device is available")
    assert "[tensorrt] extra" in message and "\n" not in message

    _machine(monkeypatch, trt=False, gpu="NVIDIA Orin")
    assert choose_backend("cuda", "bf16") == ("cuda", "bf16", "requested cuda on 'NVIDIA Orin'")
    with pytest.raises(
        BackendUnavailable,
        match="^" + re.escape(f"backend 'tensorrt' requested but {NO_TRT};"),
    ):
        choose_backend("tensorrt")
    _machine(monkeypatch, trt=True, gpu=None)
    with pytest.raises(BackendUnavailable, match="requested but no CUDA device"):
        choose_backend("tensorrt")
    _machine(monkeypatch, trt=True, gpu="NVIDIA Orin")
    assert choose_backend("tensorrt", "fp16")[:2] == ("tensorrt", "fp16")


def test_invalid_requests_are_rejected_early(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, trt=True, gpu="NVIDIA Orin")
    with pytest.raises(
        ValueError, match=re.escape("backend must be one of auto|cpu|cuda|tensorrt|onnxruntime|")
    ):
        choose_backend("gpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_backend("auto", "int8")
    with pytest.raises(ValueError, match="supports precision fp32, got 'fp16'"):
        choose_backend("cpu", "fp16")
    with pytest.raises(ValueError, match=re.escape("tensorrt supports precision fp32|fp16, got 'bf16'")):
        choose_backend("tensorrt", "bf16")


def test_real_probes_on_this_machine() -> None:
    """Whatever this machine has, auto resolves and explains itself."""
    name, _, reason = choose_backend("auto")
    assert name in BACKENDS and reason.startswith("auto: ") and reason.endswith(f"-> {name}")
    if not torch.cuda.is_available():
        assert name in ("onnxruntime", "cpu") and "no CUDA device" in reason


@pytest.mark.parametrize("method", ["netwarp", "twnet"])
def test_cpu_backend_runs_the_model_contract(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, trt=False, gpu=None)
    model = tiny_model(method)
    backend, reason = select_backend("auto", model, prepare=((64, 96), None))
    assert isinstance(backend, EagerBackend) and isinstance(backend, Backend)
    assert backend.reason == reason and backend.device.type == "cpu" and backend.precision == "fp32"
    image, prev, flow = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96), torch.randn(1, 2, 32, 48)
    logits, state = backend.key_step(prev)
    logits, new_state = backend.nonkey_step(image, prev, flow, state)
    with torch.no_grad(), model_output("native"):  # the CPU backend's logits are at the classifier's size
        ref_logits, _ = model.nonkey_step(image, prev, flow, model.key_step(prev)[1])
        form = model.inference_form()  # the state the backends carry (TWNet's is projected)
        _, ref_state = form.nonkey_step(image, prev, flow, form.key_step(prev)[1])
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(new_state, ref_state)


def test_cuda_backend_flat_path_on_cpu() -> None:
    """The cuda backend's flat-step plumbing (state keys learnt, flattened, restored), graphs off."""
    model = tiny_model("netwarp")
    backend = CudaBackend(model, device="cpu", cuda_graphs=False)
    assert isinstance(backend, Backend) and backend.name == "cuda"
    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 3, 64, 96, generator=g) for _ in range(3)]
    flow = torch.randn(1, 2, 32, 48, generator=g)
    with torch.no_grad():
        _, ref_state = model.key_step(frames[0])
    backend.prepare((64, 96))  # learns the state layout and runs both flat steps once
    assert [sig[0] for sig in backend._graphs] == ["key", "nonkey"]
    _, state = backend.key_step(frames[0])
    for t in (1, 2):
        logits, state = backend.nonkey_step(frames[t], frames[t - 1], flow, state)
        with torch.no_grad():
            ref_logits, ref_state = model.nonkey_step(frames[t], frames[t - 1], flow, ref_state)
        torch.testing.assert_close(logits, ref_logits)
        torch.testing.assert_close(state, ref_state)
    with pytest.raises(ValueError, match="supports precision"):
        CudaBackend(model, device="cpu", precision="int8")


def test_auto_falls_back_to_cuda_when_tensorrt_fails(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    _machine(monkeypatch, trt=True, gpu="NVIDIA Orin")

    class BrokenTRT:
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError("Conversion of aten.grid_sampler_2d failed\nlong traceback")

    class FakeCuda(EagerBackend):
        name = "cuda"

        def __init__(self, model, *, precision, reason, cuda_graphs) -> None:
            super().__init__(model, reason=reason)
            self.precision = precision

    monkeypatch.setattr(backends, "TensorRTBackend", BrokenTRT)
    monkeypatch.setattr(backends, "CudaBackend", FakeCuda)
    model = tiny_model("perframe")
    with caplog.at_level(logging.WARNING, logger="vidseg_ros.runtime.backends"):
        backend, reason = select_backend("auto", model, precision="fp16")
    assert isinstance(backend, FakeCuda) and backend.precision == "fp16"
    assert reason.endswith("-> tensorrt; tensorrt failed (Conversion of aten.grid_sampler_2d failed) -> cuda")
    assert "falling back to cuda" in caplog.text
    with pytest.raises(RuntimeError, match="grid_sampler"):
        select_backend("tensorrt", model)
