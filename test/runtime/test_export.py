"""Every step function exports: torch.export in one graph at two sizes, and ONNX that onnxruntime runs to
within 1e-4 of PyTorch, recurrent state included, over consecutive frames; plus the ``vidseg export`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from runtime_models import METHODS, expected_steps, nonkey_step_name, tiny_model

from vidseg_ros.cli import main as vidseg
from vidseg_ros.models.base import POOLED_IMAGE
from vidseg_ros.runtime.checkpoint import load_checkpoint
from vidseg_ros.runtime.steps import step_specs
from vidseg_ros.tools.export import relative_error

ort = pytest.importorskip("onnxruntime")

RTOL = 1e-4
#: Two inference sizes (H, W); the second is not a multiple of the 32-pixel output stride.
SIZES = ((64, 96), (72, 104))


@pytest.mark.parametrize("image_hw", SIZES, ids=lambda hw: f"{hw[1]}x{hw[0]}")
@pytest.mark.parametrize("method", METHODS)
def test_torch_export_every_step(method: str, image_hw: tuple[int, int]) -> None:
    model = tiny_model(method)
    specs = step_specs(model, image_hw)
    assert [s.name for s in specs] == expected_steps(method)
    fresh = step_specs(model, image_hw, seed=7)
    for spec, other in zip(specs, fresh, strict=True):
        with torch.no_grad():
            program = torch.export.export(spec.module, spec.example_inputs, strict=False)
            module = program.module()
            # Other inputs of the same shapes: nothing of the example inputs got baked into the graph.
            for inputs in (spec.example_inputs, other.example_inputs):
                for got, want in zip(module(*inputs), spec.module(*inputs), strict=True):
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # One flat graph of aten ops: no submodule calls left, i.e. nothing fell back to Python.
        ops = {n.op for n in program.graph.nodes}
        assert ops <= {"placeholder", "call_function", "output", "get_attr"}, ops
        assert len(program.graph_signature.user_outputs) == len(spec.output_names)


@pytest.mark.parametrize(
    ("method", "step"), [("perframe", "key"), ("netwarp", "nonkey"), ("twnet", "nonkey")]
)
def test_no_graph_breaks_under_dynamo(method: str, step: str) -> None:
    """TorchDynamo (behind torch.compile and torch-tensorrt's tracer) captures the step as one graph.

    The key steps of NetWarp and TWNet run exactly the per-frame model's code (``PerFrameModel.features``),
    and NetWarp's non-key step runs it again with its fusion hooks, so these three cover every step.
    """
    torch._dynamo.reset()
    (spec,) = step_specs(tiny_model(method), SIZES[0], steps=(step,))
    with torch.no_grad():
        explained = torch._dynamo.explain(spec.module)(*spec.example_inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def _sessions(out: Path) -> tuple[dict, dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    sessions = {
        name: ort.InferenceSession(str(out / step["file"]), providers=["CPUExecutionProvider"])
        for name, step in manifest["steps"].items()
    }
    return manifest, sessions


def _close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape, what
    assert relative_error(got, want) <= RTOL, f"{what}: relative error {relative_error(got, want):.2e}"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()), err_msg=what)


@pytest.mark.parametrize("method", METHODS)
def test_onnx_matches_torch_over_five_frames(
    method: str, nudged_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = nudged_checkpoint(method)
    out = tmp_path / "onnx"
    # The per-frame model also covers --size: it is exported at 80x48 instead of the checkpoint's 96x64.
    w, h = (80, 48) if method == "perframe" else (96, 64)
    size = ["--size", f"{w}x{h}"] if method == "perframe" else []
    assert vidseg(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out), *size]) == 0
    printed = capsys.readouterr().out
    assert "max relative error vs PyTorch" in printed and "recurrent chain over 5 frames" in printed
    manifest, sessions = _sessions(out)
    assert manifest["opset"] >= 17 and manifest["input_size"] == [w, h]
    assert manifest["steps"]["key"]["inputs"][0]["shape"] == [1, 3, h, w]
    assert list(manifest["steps"]) == expected_steps(method)
    assert (manifest["card"] is not None) == (method == "perframe")  # only a per-frame model is a foreign one
    if "nonkey" in manifest["steps"]:
        graph = onnx.load(str(out / manifest["steps"]["nonkey"]["file"])).graph
        nodes = {n.op_type for n in graph.node}
        assert "GridSample" in nodes

    model = load_checkpoint(ckpt)[0].inference_form()  # the steps that were exported
    keys = manifest["state_keys"]
    g = torch.Generator().manual_seed(3)
    frames = [torch.randn(1, 3, h, w, generator=g) for _ in range(5)]
    torch_state: dict[str, torch.Tensor] = {}
    ort_state: list[np.ndarray] = []
    for t, image in enumerate(frames):
        with torch.no_grad():
            if t == 0 or method == "perframe":
                logits, torch_state = model.key_step(image)
                got = sessions["key"].run(None, {"image": image.numpy()})
            else:
                flow = torch.randn(1, 2, h // 2, w // 2, generator=g) * 3.0
                logits, torch_state = model.nonkey_step(image, frames[t - 1], flow, torch_state)
                feeds = {"image": image.numpy(), "prev_image": frames[t - 1].numpy(), "flow": flow.numpy()}
                # ORT gets its own state from the previous frame, never PyTorch's: errors would compound.
                feeds.update({f"state_{k}": s for k, s in zip(keys, ort_state, strict=True)})
                session = sessions[nonkey_step_name(method, t)]
                wanted = {i.name for i in session.get_inputs()}
                got = session.run(None, {k: v for k, v in feeds.items() if k in wanted})
        _close(got[0], logits, f"frame {t} logits")
        assert sorted(torch_state) == keys
        for k, state_out in zip(keys, got[1:], strict=True):
            _close(state_out, torch_state[k], f"frame {t} state {k}")
        ort_state = list(got[1:])
    if method != "perframe":
        # The state really carries history: it differs from what a key frame on the last image gives (except
        # the pooled copy of the last frame that GRFP, TWNet and NetWarp keep, and TDNet's next path, 1 both
        # times).
        with torch.no_grad():
            _, fresh = model.key_step(frames[-1])
        carried = [k for k in keys if k not in (POOLED_IMAGE, "phase")]
        assert carried and all(not torch.allclose(fresh[k], torch_state[k], atol=1e-3) for k in carried)


def test_export_rejects_old_opset_and_bad_size(nudged_checkpoint, tmp_path: Path, capsys) -> None:
    ckpt = str(nudged_checkpoint("perframe"))
    args = ["export", "--checkpoint", ckpt, "--format", "onnx", "--out", str(tmp_path), "--opset", "16"]
    assert vidseg(args) == 2
    assert ">= 17" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vidseg(["export", "--checkpoint", ckpt, "--format", "onnx", "--size", "64by48"])


def test_export_tensorrt_without_tensorrt_fails_in_one_line(nudged_checkpoint, capsys) -> None:
    from vidseg_ros.runtime.trt_backend import torch_tensorrt_problem

    if torch_tensorrt_problem() is None and torch.cuda.is_available():
        pytest.skip("torch-tensorrt and CUDA are present here")
    code = vidseg(["export", "--backend", "tensorrt", "--checkpoint", str(nudged_checkpoint("twnet"))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("vidseg export: backend 'tensorrt' requested but")
