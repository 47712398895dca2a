"""The TensorRT backend's export -> compile -> cache -> load path, driven by a stand-in for torch_tensorrt."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from runtime_models import tiny_model

from vidseg_ros.runtime import trt_backend
from vidseg_ros.runtime.backend_api import Backend, BackendUnavailable
from vidseg_ros.runtime.engine_cache import EngineCache
from vidseg_ros.runtime.trt_backend import TensorRTBackend

NO_TRT = "torch_tensorrt not importable (not installed)"


class FakeTorchTensorRT(types.ModuleType):
    """Stands in for torch_tensorrt: 'compiles' an ExportedProgram to itself and saves it with torch.export."""

    __version__ = "0.0-test"

    def __init__(self, *, new_api: bool) -> None:
        super().__init__("torch_tensorrt")
        self.compiles: list[dict] = []
        self.dynamo = types.SimpleNamespace(compile=self._compile_new if new_api else self._compile_old)
        self.save = self._save

    def _compile_new(self, program, arg_inputs=None, *, use_explicit_typing=True, enable_autocast=False, low_precision_type=None, **kw):  # fmt: skip
        self.compiles.append({"explicit": use_explicit_typing, "autocast": enable_autocast, **kw})
        return program

    def _compile_old(self, program, inputs=None, *, enabled_precisions=None, **kw):
        self.compiles.append({"enabled_precisions": enabled_precisions, **kw})
        return program

    def _save(self, program, file_path, *, output_format="exported_program", arg_inputs=None, inputs=None):
        assert output_format == "exported_program" and arg_inputs is not None
        torch.export.save(program, file_path)


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTorchTensorRT:
    fake = FakeTorchTensorRT(new_api=True)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setattr(trt_backend, "torch_tensorrt_problem", lambda: None)
    env = {
        "torch_tensorrt_version": "0.0-test",
        "tensorrt_version": "10.0",
        "gpu_name": "Fake",
        "compute_capability": "8.7",
    }
    monkeypatch.setattr(trt_backend, "tensorrt_environment", lambda device=None: dict(env))
    return fake


def test_tensorrt_backend_compiles_caches_and_carries_state(
    fake_trt: FakeTorchTensorRT, tmp_path: Path
) -> None:
    model = tiny_model("twnet")
    cache = EngineCache(tmp_path, suffix=trt_backend.TRT_SUFFIX)
    lines: list[str] = []
    backend = TensorRTBackend(
        model, precision="fp16", cache=cache, model_hash="m1", device="cpu", progress=lines.append
    )
    assert isinstance(backend, Backend)
    backend.prepare((48, 64))
    assert [r.status for r in backend.results] == ["built", "built"] and len(fake_trt.compiles) == 2
    assert fake_trt.compiles[0] == {"explicit": True, "autocast": True}
    assert any("building" in line for line in lines)

    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 3, 48, 64, generator=g) for _ in range(4)]
    flows = [torch.randn(1, 2, 24, 32, generator=g) * 2 for _ in range(4)]
    _, state = backend.key_step(frames[0])
    form = model.inference_form()  # what the engines are built from
    with torch.no_grad():
        _, ref_state = form.key_step(frames[0])
        for t in range(1, 4):
            logits, state = backend.nonkey_step(frames[t], frames[t - 1], flows[t], state)
            ref_logits, ref_state = form.nonkey_step(frames[t], frames[t - 1], flows[t], ref_state)
            torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)

    # A second process with the same model, shapes and toolchain loads both engines, lazily on first use,
    # without compiling, and carries state through them just the same.
    again = TensorRTBackend(model, precision="fp16", cache=cache, model_hash="m1", device="cpu")
    _, state = again.key_step(frames[0])
    logits, state = again.nonkey_step(frames[1], frames[0], flows[1], state)
    assert [r.status for r in again.results] == ["hit", "hit"] and len(fake_trt.compiles) == 2
    with torch.no_grad():
        ref_logits, _ = model.nonkey_step(frames[1], frames[0], flows[1], model.key_step(frames[0])[1])
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_fp16_settings_follow_the_installed_api(monkeypatch: pytest.MonkeyPatch) -> None:
    new, old = FakeTorchTensorRT(new_api=True), FakeTorchTensorRT(new_api=False)
    assert trt_backend._precision_kwargs(new.dynamo.compile, "fp32") == {}
    assert trt_backend._precision_kwargs(new.dynamo.compile, "fp16") == {
        "use_explicit_typing": True,
        "enable_autocast": True,
        "low_precision_type": torch.float16,
    }
    assert trt_backend._precision_kwargs(old.dynamo.compile, "fp16") == {
        "enabled_precisions": {torch.float32, torch.float16}
    }


def test_tensorrt_backend_without_torch_tensorrt_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "torch_tensorrt_problem", lambda: NO_TRT)
    with pytest.raises(BackendUnavailable, match="not installed"):
        TensorRTBackend(tiny_model("perframe"), precision="fp32", device="cpu")
