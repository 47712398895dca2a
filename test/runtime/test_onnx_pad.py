"""Channel padding of exported graphs (runtime/onnx_pad.py): same outputs through ONNX Runtime, the same
interface, and convolutions that ORT's blocked CPU kernels take."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_models import tiny_model
from torch import nn

from vidseg_ros.runtime.onnx_export import export_onnx
from vidseg_ros.runtime.onnx_pad import host_block, nchwc_block, pad_channels, pad_file
from vidseg_ros.runtime.steps import step_specs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BLOCK = 16


class Narrow(nn.Module):
    """Narrow tensors in every position the pass handles: a plain and a depthwise convolution, ReLU6, a
    residual sum, a product, a grouped convolution and ops that must see the real channels only (a mean over
    channels, a concatenation, an upsampling and a graph output that is also read inside the graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.expand = nn.Conv2d(8, 24, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(24 + 8, 9, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.clamp(self.stem(x), 0.0, 6.0)
        b = torch.relu(self.dw(a)) + a
        c = self.expand(b * a)
        g = self.grouped(b)
        norm = c - c.mean(dim=1, keepdim=True)
        up = nn.functional.interpolate(g, size=norm.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([norm, up], dim=1)), b


def _export(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = Narrow().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "narrow.onnx"
    torch.onnx.export(
        model, (torch.randn(1, 3, 32, 48),), str(path), input_names=["image"],
        output_names=["logits", "state"], opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def _session(model, optimized: Path | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
        so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _interface(model) -> list:
    return [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in (*model.graph.input,
            *model.graph.output)]  # fmt: skip


def test_widened_graph_computes_the_same_outputs_through_the_same_interface(tmp_path: Path) -> None:
    plain = onnx.load(_export(tmp_path))
    padded = copy.deepcopy(plain)
    widened = pad_channels(padded, BLOCK)
    assert widened == 3  # stem, depthwise, expand (24 -> 32): read by ops that keep them wide
    onnx.checker.check_model(padded)
    assert _interface(padded) == _interface(plain)
    image = np.random.default_rng(1).standard_normal((1, 3, 32, 48)).astype(np.float32)
    want = _session(plain).run(None, {"image": image})
    got = _session(padded).run(None, {"image": image})
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    # Every convolution now makes whole blocks, except the grouped one, which reads the real channels, and the
    # head, whose logits are only sliced (a graph output).
    inits = {t.name: t for t in padded.graph.initializer}
    outs = {
        n.name or n.output[0]: inits[n.input[1]].dims[0] for n in padded.graph.node if n.op_type == "Conv"
    }
    assert sorted(c % BLOCK for c in outs.values()) == [0, 0, 0, 8, 9]
    # The widened graph leaves no initializer behind that no node reads.
    used = {t for n in padded.graph.node for t in n.input}
    assert all(t.name in used for t in padded.graph.initializer)


@pytest.mark.skipif(not host_block(), reason="ONNX Runtime has no blocked CPU kernels here")
@pytest.mark.parametrize("name", ["perframe", "tdnet"])
def test_ort_converts_layouts_less_often_in_a_widened_model(tmp_path: Path, name: str) -> None:
    """A MobileNetV2 x0.25 model has 8-channel tensors; widened, ORT converts between layouts less often.

    That needs 16-channel blocks (AVX-512). With AVX2's 8-channel blocks every tensor of the model is already
    whole blocks, and the pass must leave the graph as it is.
    """
    (spec,) = step_specs(tiny_model(name).inference_form(), (64, 96), None, steps=("key",))
    export_onnx(spec, tmp_path / "step.onnx", 17)
    plain = onnx.load(tmp_path / "step.onnx")
    padded = copy.deepcopy(plain)
    widened = pad_channels(padded, host_block())
    if host_block() % BLOCK:
        assert widened == 0 and padded == plain
        pytest.skip(f"no tensor of the x0.25 model is narrower than this CPU's {host_block()}-channel block")
    assert widened > 0

    def reorders(model, name: str) -> int:
        _session(model, tmp_path / name)  # ORT writes the graph it optimised for this CPU
        return sum(n.op_type.startswith("Reorder") for n in onnx.load(tmp_path / name).graph.node)

    assert reorders(padded, "padded_opt.onnx") < reorders(plain, "plain_opt.onnx")


def test_pad_file_rewrites_in_place_and_block_one_changes_nothing(tmp_path: Path) -> None:
    path = _export(tmp_path)
    before = path.read_bytes()
    assert pad_file(path, 1) == 0 and pad_channels(onnx.load(path), 0) == 0
    assert path.read_bytes() == before
    assert pad_file(path, BLOCK) == 3
    assert pad_channels(onnx.load(path), BLOCK) == 0  # already whole blocks


@pytest.mark.parametrize(
    ("machine", "flags", "block"),
    [
        ("x86_64", {"avx", "avx2", "avx512f"}, 16),
        ("AMD64", {"avx", "avx2"}, 8),
        ("x86_64", {"sse4_2"}, 0),
        ("aarch64", {"asimd", "avx512f"}, 0),
    ],
)
def test_block_follows_the_cpu(machine: str, flags: set[str], block: int) -> None:
    assert nchwc_block(machine, flags) == block
