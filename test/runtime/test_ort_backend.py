"""The onnxruntime backend: parity with PyTorch over recurrent chains, its session cache (hit, miss, stale,
corrupt), and how ``auto`` picks it on a CPU or falls back to PyTorch with the reason."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from runtime_models import METHODS, expected_steps, tiny_model

from vidseg_ros.config import SPECS
from vidseg_ros.models.fpn import model_output
from vidseg_ros.runtime import backends, ort_backend
from vidseg_ros.runtime.backends import (
    Backend,
    BackendUnavailable,
    EagerBackend,
    choose_backend,
    select_backend,
)
from vidseg_ros.runtime.ort_backend import OrtBackend, OrtKey, ort_cache, step_output
from vidseg_ros.runtime.segmenter import backend_request

pytest.importorskip("onnxruntime")

HW = (64, 96)
FLOW_HW = (32, 48)
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the steps exported to ONNX from here on (a cache hit exports nothing)."""
    calls: list[str] = []
    real = ort_backend.export_onnx

    def counting(spec, path, opset, **kwargs):
        calls.append(spec.name)
        real(spec, path, opset, **kwargs)

    monkeypatch.setattr(ort_backend, "export_onnx", counting)
    return calls


def _frames(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(1, 3, *HW, generator=g) for _ in range(n)]
    flows = [torch.randn(1, 2, *FLOW_HW, generator=g) * 2.0 for _ in range(n)]
    return images, flows


def _check_chain(backend: Backend, model, frames: int = 5) -> None:
    """Key frame then non-key frames (per-frame: key frames only), each side carrying its own state."""
    images, flows = _frames(frames)
    model = model.inference_form()  # the steps the backend exports, on the state it carries
    state = ref_state = None
    # PyTorch's CPU backend returns the logits at the classifier's size
    output = (
        step_output(backend.output, backend.provider, HW) if isinstance(backend, OrtBackend) else "native"
    )
    for t, image in enumerate(images):
        with torch.no_grad(), model_output("native" if output == "native" else "logits"):
            if t == 0 or model.method == "perframe":
                logits, state = backend.key_step(image)
                ref_logits, ref_state = model.key_step(image)
            else:
                logits, state = backend.nonkey_step(image, images[t - 1], flows[t], state)
                ref_logits, ref_state = model.nonkey_step(image, images[t - 1], flows[t], ref_state)
        assert logits.device.type == "cpu"
        if output != "labels":
            size = HW if output == "logits" else (HW[0] // 4, HW[1] // 4)
            assert logits.dtype == torch.float32 and logits.shape == (1, 9, *size)
            torch.testing.assert_close(logits, ref_logits, **TOL)
        else:  # the class ids of PyTorch's upsampled logits, bar near-ties
            assert logits.dtype == torch.uint8 and logits.shape == (1, 1, *HW)
            ref_ids = ref_logits.argmax(dim=1, keepdim=True).to(torch.uint8)
            assert (logits == ref_ids).float().mean().item() >= 0.999, t
        assert set(state) == set(ref_state), t
        torch.testing.assert_close(state, ref_state, **TOL)


@pytest.mark.parametrize("output", ["native", "labels", "logits"])
@pytest.mark.parametrize("method", METHODS)
def test_every_step_matches_torch_over_a_recurrent_chain(
    method: str, output: str, tmp_path: Path, exports
) -> None:
    model = tiny_model(method)
    backend = OrtBackend(model, threads=1, cache=ort_cache(tmp_path), output=output)
    assert isinstance(backend, Backend) and backend.name == "onnxruntime" and backend.device.type == "cpu"
    backend.prepare(HW, FLOW_HW)
    assert exports == expected_steps(method)
    _check_chain(backend, model)
    assert len(exports) == len(backend.results)  # the chain ran on the prepared sessions


def test_the_default_output_follows_the_provider_and_the_size(tmp_path: Path) -> None:
    """Class ids from the graph on a GPU and on small CPU frames; the classifier's logits on larger CPU frames,
    whose arg-max the segmenter takes for less; an explicit request wins."""
    assert step_output(None, "cpu", (240, 320)) == "labels" == step_output(None, "cpu", HW)
    assert step_output(None, "cpu", (360, 480)) == "native" == step_output(None, "cpu", (480, 640))
    assert step_output(None, "cuda", (480, 640)) == "labels" == step_output(None, "tensorrt", (480, 640))
    assert step_output("logits", "cpu", (480, 640)) == "logits"
    backend = OrtBackend(tiny_model("perframe"), threads=1, cache=ort_cache(tmp_path))
    assert backend.output is None
    with pytest.raises(ValueError, match="output must be one of logits|native|labels"):
        OrtBackend(tiny_model("perframe"), output="ids")


def test_warps_export_in_the_clamped_form(tmp_path: Path) -> None:
    """ORT's CPU GridSample is ~7x faster with zero padding, so the backend exports the warps' clamped form
    (border values through zero padding); the chain above checks that the values are PyTorch's."""
    onnx = pytest.importorskip("onnx")
    backend = OrtBackend(tiny_model("twnet"), threads=1, cache=ort_cache(tmp_path))
    backend.prepare(HW, FLOW_HW)
    (nonkey,) = [r.path for r in backend.results if r.path.name.startswith("ort_nonkey")]
    nodes = [n for n in onnx.load(str(nonkey)).graph.node if n.op_type == "GridSample"]
    modes = [a.s for n in nodes for a in n.attribute if a.name == "padding_mode"]
    assert modes == [b"zeros", b"zeros"]  # TWNet's two warps: the features and RGA's previous image


def test_returned_state_survives_the_next_run(tmp_path: Path) -> None:
    """Outputs are fresh tensors written by ORT in place, never views of a buffer the next run reuses."""
    backend = OrtBackend(tiny_model("netwarp"), threads=1, cache=ort_cache(tmp_path))
    images, flows = _frames(3)
    _, state0 = backend.key_step(images[0])
    logits1, state1 = backend.nonkey_step(images[1], images[0], flows[1], state0)
    kept = logits1.clone(), {k: v.clone() for k, v in state1.items()}
    logits2, state2 = backend.nonkey_step(images[2], images[1], flows[2], state1)
    torch.testing.assert_close((logits1, state1), kept, rtol=0, atol=0)
    assert logits1.data_ptr() != logits2.data_ptr()
    assert all(state1[k].data_ptr() != state2[k].data_ptr() for k in state1)


def test_unprepared_size_is_exported_on_first_use(tmp_path: Path, exports) -> None:
    model = tiny_model("twnet")
    backend = OrtBackend(model, threads=1, cache=ort_cache(tmp_path))
    _check_chain(backend, model, frames=3)
    assert exports == ["key", "nonkey"]


def test_cache_hit_loads_without_exporting(tmp_path: Path, exports) -> None:
    model = tiny_model("netwarp")
    first = OrtBackend(model, threads=1, cache=ort_cache(tmp_path), model_hash="ckpt-a")
    first.prepare(HW)
    assert [r.status for r in first.results] == ["built", "built"] and len(exports) == 2
    paths = [r.path for r in first.results]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert all(p.parent == tmp_path / "onnxruntime" and p.suffix == ".onnx" for p in paths)

    lines: list[str] = []
    again = OrtBackend(
        model, threads=1, cache=ort_cache(tmp_path), model_hash="ckpt-a", progress=lines.append
    )
    again.prepare(HW)
    assert [r.status for r in again.results] == ["hit", "hit"] and len(exports) == 2
    assert [r.path for r in again.results] == paths and [p.stat().st_mtime_ns for p in paths] == mtimes
    assert lines == [
        "onnxruntime key step 96x64 (cpu): cached",
        "onnxruntime nonkey step 96x64 (cpu): cached",
    ]
    _check_chain(again, model, frames=3)

    manifest = json.loads(paths[1].with_suffix(".json").read_text())
    key = manifest["key"]
    assert key["model_hash"] == "ckpt-a" and key["step"] == "nonkey" and key["opset"] == 17
    assert key["providers"] == ["CPUExecutionProvider"]
    assert key["onnxruntime_version"] == ort_backend.importlib.import_module("onnxruntime").__version__
    assert key["input_shapes"][:3] == [[1, 3, *HW], [1, 3, *HW], [1, 2, 32, 48]]
    assert key["hardware"] and key["code_hash"] == ort_backend.export_code_hash()


def test_cache_miss_on_another_shape_or_model(tmp_path: Path, exports) -> None:
    model = tiny_model("perframe")
    cache = ort_cache(tmp_path)
    OrtBackend(model, threads=1, cache=cache, model_hash="ckpt-a").prepare(HW)
    other_size = OrtBackend(model, threads=1, cache=cache, model_hash="ckpt-a")
    other_size.prepare((72, 104))
    other_model = OrtBackend(model, threads=1, cache=cache, model_hash="ckpt-b")
    other_model.prepare(HW)
    assert [r.status for r in (*other_size.results, *other_model.results)] == ["built", "built"]
    assert len(exports) == 3 and len(list(cache.root.glob("*.onnx"))) == 3
    # Without a checkpoint hash the weights' fingerprint keys the entry: other weights, another entry.
    a = OrtBackend(tiny_model("perframe", seed=1), threads=1, cache=cache)
    b = OrtBackend(tiny_model("perframe", seed=2), threads=1, cache=cache)
    assert a.model_hash != b.model_hash
    (spec,) = ort_backend.step_specs(a.model, HW)
    assert a.session_key(spec).slot() != b.session_key(spec).slot()


def test_key_fields_pick_the_slot_or_make_it_stale() -> None:
    key = OrtKey(
        "m",
        "key",
        "labels",
        ((1, 3, *HW),),
        17,
        ("CPUExecutionProvider",),
        "x86_64 cpu [avx2]",
        "1.0",
        "2.0",
        "c",
    )
    assert key.slot().startswith("ort_key-64x96-cpu-")
    # What is built (model, step, output, shapes, opset, provider, hardware) picks the slot; toolchain and code only
    # make the entry in it stale, so an upgrade replaces it instead of piling up next to it.
    slot_changes = ({"hardware": "aarch64 Cortex-A78AE [asimd]"}, {"opset": 18}, {"model_hash": "n"})
    for change in (*slot_changes, {"output": "logits"}, {"output": "native"}):
        assert OrtKey(**{**key.__dict__, **change}).slot() != key.slot()
    for change in ({"onnxruntime_version": "1.1"}, {"torch_version": "2.1"}, {"code_hash": "d"}):
        other = OrtKey(**{**key.__dict__, **change})
        assert other.slot() == key.slot() and other.digest() != key.digest()
    gpu = OrtKey(**{**key.__dict__, "providers": ("CUDAExecutionProvider", "CPUExecutionProvider")})
    assert gpu.slot().startswith("ort_key-64x96-cuda-")


def test_changed_model_code_makes_the_entry_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exports, caplog
) -> None:
    model = tiny_model("perframe")
    OrtBackend(model, threads=1, cache=ort_cache(tmp_path), model_hash="m").prepare(HW)
    monkeypatch.setattr(ort_backend, "export_code_hash", lambda: "edited-models")
    again = OrtBackend(model, threads=1, cache=ort_cache(tmp_path), model_hash="m")
    with caplog.at_level(logging.WARNING, logger="vidseg_ros.runtime.engine_cache"):
        again.prepare(HW)
    assert again.results[0].status == "rebuilt" and again.results[0].reason.startswith("stale: code_hash")
    assert len(exports) == 2 and "stale entry" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "unparsable"])
def test_corrupt_entry_is_rebuilt_never_loaded(tmp_path: Path, damage: str, exports, caplog) -> None:
    model = tiny_model("netwarp")
    first = OrtBackend(model, threads=1, cache=ort_cache(tmp_path), model_hash="m")
    first.prepare(HW)
    path = first.results[1].path  # the non-key step
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        # Garbage whose size and checksum the manifest vouches for: only the loader can tell.
        path.write_bytes(b"\x00not an onnx model" * (len(data) // 18))
        manifest_path = path.with_suffix(".json")
        manifest = json.loads(manifest_path.read_text())
        manifest.update(size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        manifest_path.write_text(json.dumps(manifest))
    loaded: list[Path] = []
    again = OrtBackend(model, threads=1, cache=ort_cache(tmp_path), model_hash="m")
    real_load = again._load
    again._load = lambda p: loaded.append(p) or real_load(p)  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="vidseg_ros.runtime.engine_cache"):
        again.prepare(HW)
    assert [r.status for r in again.results] == ["hit", "rebuilt"]
    expected = "artifact is" if damage == "truncated" else "loader failed"
    assert expected in again.results[1].reason and f"corrupt entry {path.stem}" in caplog.text
    assert exports == ["key", "nonkey", "nonkey"]
    # A truncated file is never handed to ORT; garbage that checksums is tried once, then rebuilt.
    assert loaded.count(path) == (2 if damage == "unparsable" else 1)
    assert again.cache.check(again.session_key(ort_backend.step_specs(model, HW)[1])) is None
    _check_chain(again, model, frames=3)


# ------------------------------------------------------------------------------------------------ selection
def test_auto_on_this_cpu_picks_onnxruntime_and_says_why(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("auto prefers the GPU backends here")
    model = tiny_model("netwarp")
    backend, reason = select_backend("auto", model, threads=1, cache_dir=tmp_path, prepare=(HW, FLOW_HW))
    assert isinstance(backend, OrtBackend) and backend.reason == reason
    assert reason.startswith("auto: ") and "no CUDA device; onnxruntime importable" in reason
    assert reason.endswith("-> onnxruntime") and backend.threads == 1
    assert [r.status for r in backend.results] == ["built", "built"]
    assert all(r.path.parent == tmp_path / "onnxruntime" for r in backend.results)
    backend, reason = select_backend("auto", model, cpu_only=True, cache_dir=tmp_path, prepare=(HW, FLOW_HW))
    assert reason == "auto: cpu only; onnxruntime importable -> onnxruntime"
    assert [r.status for r in backend.results] == ["hit", "hit"]


def test_auto_without_onnxruntime_runs_torch_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    model = tiny_model("perframe")
    backend, reason = select_backend("auto", model, cpu_only=True, prepare=(HW, None))
    assert isinstance(backend, EagerBackend) and backend.name == "cpu"
    assert reason.startswith("auto: cpu only; onnxruntime not importable (") and reason.endswith(") -> cpu")
    with pytest.raises(BackendUnavailable) as err:
        select_backend("onnxruntime", model)
    assert str(err.value).startswith("backend 'onnxruntime' requested but onnxruntime not importable (")
    assert str(err.value).endswith("; install the [onnx] extra or use backend auto")


def test_auto_falls_back_to_torch_when_the_export_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog
) -> None:
    def broken(spec, path, opset, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::grid_sampler' to ONNX failed\nlong traceback")

    monkeypatch.setattr(ort_backend, "export_onnx", broken)
    model = tiny_model("netwarp")
    with caplog.at_level(logging.WARNING, logger="vidseg_ros.runtime.backends"):
        backend, reason = select_backend("auto", model, cpu_only=True, cache_dir=tmp_path, prepare=(HW, None))
    assert isinstance(backend, EagerBackend)
    assert reason.endswith(
        "-> onnxruntime; onnxruntime failed (Exporting the operator 'aten::grid_sampler' to ONNX failed) -> cpu"
    )
    assert "onnxruntime backend failed" in caplog.text and "falling back to cpu" in caplog.text
    assert not list((tmp_path / "onnxruntime").glob("*.onnx"))  # nothing half-built was installed
    with pytest.raises(RuntimeError, match="grid_sampler"):
        select_backend("onnxruntime", model, cache_dir=tmp_path, prepare=(HW, None))


def test_explicit_requests_and_gpu_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_backend("onnxruntime") == (
        "onnxruntime",
        "fp32",
        "requested onnxruntime (CPUExecutionProvider)",
    )
    with pytest.raises(ValueError, match="supports precision fp32, got 'fp16'"):
        choose_backend("onnxruntime", "fp16")
    monkeypatch.setattr(backends, "cuda_device_name", lambda: None)
    with pytest.raises(BackendUnavailable) as err:
        choose_backend("onnxruntime-cuda")
    message = str(err.value)
    assert "has no CUDAExecutionProvider (install the [ort-gpu] extra" in message
    assert message.endswith("and no CUDA device is available; use backend auto") and "\n" not in message
    # With onnxruntime-gpu and a GPU (both faked: nothing here runs on one).
    ort = ort_backend.importlib.import_module("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ort_backend.ORT_PROVIDERS["tensorrt"]))
    monkeypatch.setattr(backends, "cuda_device_name", lambda: "Orin")
    assert choose_backend("onnxruntime-tensorrt")[2] == (
        "requested onnxruntime-tensorrt on 'Orin' "
        "(TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider)"
    )
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
            OrtBackend(tiny_model("perframe"), provider="cuda")
    with pytest.raises(ValueError, match="opset >= 17"):
        OrtBackend(tiny_model("perframe"), opset=16)


def test_node_parameters_map_to_requests() -> None:
    assert SPECS["model.backend"].check("onnxruntime") is None
    assert backend_request("cpu", "onnxruntime") == "onnxruntime"
    assert backend_request("cpu", "auto") == "auto"  # with cpu_only: onnxruntime, else torch
    assert backend_request("cpu", "torch") == "cpu"
    if not torch.cuda.is_available():
        assert backend_request("auto", "onnxruntime") == "onnxruntime"
        with pytest.raises(RuntimeError, match="no CUDA device"):
            backend_request("cuda", "onnxruntime")
