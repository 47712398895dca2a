"""Channel padding of an exported ONNX graph for ONNX Runtime's blocked (NCHWc) CPU kernels.

On x86, ORT's CPU optimiser moves convolutions to a channel-blocked layout (blocks of 16 channels with
AVX-512, 8 with AVX2) where it can. A tensor whose channel count is not a multiple of the block falls out of
it: ORT computes the producing convolution at the padded width, converts the result back to plain NCHW, and
runs every consumer on the slow plain kernels. The MobileNetV2 ×0.5 encoder has one such tensor (8 channels
at stride 2), whose 1x1 expansion to 48 channels then took 2.1 of the per-frame model's 25.7 ms at 640x480;
TDNet's ×0.25 sub-networks have 8-channel tensors at strides 2 to 8.

:func:`pad_channels` widens those tensors in the graph itself, with channels that are zero or never read:

- a convolution's extra output channels have zero weights and zero bias;
- a consumer convolution gets zero weights for the extra input channels; a depthwise one gets extra groups
  with zero weights, so the extra channels stay zero;
- ``Relu``, ``Clip`` and ``Add``/``Sub``/``Mul`` of two tensors widened alike keep the extra channels finite,
  and nothing that mixes channels reads them except through zero weights;
- every other consumer, and every graph output, gets the real channels back through one ``Slice``.

So the graph computes the same values (up to the order of float additions), and ORT keeps the whole encoder
in its blocked layout.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from vidseg_ros.runtime.hardware import cpu_info

#: Element-wise ops whose output is widened like their inputs when every tensor input is.
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul"})
#: Ops of one tensor input that map zero channels to finite values, channel by channel.
_UNARY = frozenset({"Relu", "Clip"})
_SUFFIX = "__vidseg_pad"


def nchwc_block(machine: str, flags: frozenset[str] | set[str]) -> int:
    """Channel block of ORT's NCHWc CPU kernels on this CPU; 0 where ORT has none (not x86)."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return 0
    if "avx512f" in flags:
        return 16
    return 8 if "avx" in flags or "avx2" in flags else 0


def host_block() -> int:
    """:func:`nchwc_block` of the CPU this runs on."""
    return nchwc_block(platform.machine(), cpu_info()[1])


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def _pad_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths)


class _Padder:
    """One pass over a topologically sorted graph (as every exported graph is)."""

    def __init__(self, onnx: Any, model: Any, block: int) -> None:
        self.onnx, self.graph, self.block = onnx, model.graph, block
        self.inits = {t.name: t for t in self.graph.initializer}
        self.widened: dict[str, tuple[int, int]] = {}  # tensor -> (real channels, padded channels)
        self.sliced: dict[str, str] = {}  # widened tensor -> its real channels
        self.nodes: list[Any] = []
        self.convs = 0
        self.readers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for t in node.input:
                self.readers.setdefault(t, []).append(node)

    def takes_wide(self, node: Any) -> bool:
        """Whether ``node`` can read a widened tensor (else it would only read it through a ``Slice``)."""
        if node.op_type != "Conv":
            return node.op_type in _UNARY or node.op_type in _ELEMENTWISE
        if len(node.input) < 2 or node.input[1] not in self.inits:
            return False
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return group == 1 or tuple(self.inits[node.input[1]].dims[:2]) == (group, 1)

    def array(self, name: str) -> np.ndarray:
        return self.onnx.numpy_helper.to_array(self.inits[name])

    def add_init(self, name: str, value: np.ndarray) -> str:
        new = f"{name}{_SUFFIX}"
        self.graph.initializer.append(self.onnx.numpy_helper.from_array(value, new))
        self.inits[new] = self.graph.initializer[-1]
        return new

    def real(self, tensor: str) -> str:
        """``tensor`` with only its real channels (one shared ``Slice`` per widened tensor)."""
        if tensor not in self.widened:
            return tensor
        if tensor not in self.sliced:
            channels = self.widened[tensor][0]
            bounds = [
                self.add_init(f"{tensor}_{what}", np.array([v], np.int64))
                for what, v in (("starts", 0), ("ends", channels), ("axes", 1))
            ]
            out = f"{tensor}{_SUFFIX}_real"
            self.nodes.append(self.onnx.helper.make_node("Slice", [tensor, *bounds], [out]))
            self.sliced[tensor] = out
        return self.sliced[tensor]

    def conv(self, node: Any) -> bool:
        """Widens ``node``'s inputs and output where it can; False if it cannot take a widened input."""
        inputs = list(node.input)
        if len(inputs) < 2 or inputs[1] not in self.inits:
            return False
        if len(inputs) > 2 and inputs[2] and inputs[2] not in self.inits:
            return False
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = self.array(inputs[1])
        bias = self.array(inputs[2]) if len(inputs) > 2 and inputs[2] else None
        out_channels = weight.shape[0]
        x = inputs[0]
        if group == 1:
            if x in self.widened:
                weight = _pad_axis(weight, 1, self.widened[x][1])
            # Widened only for a reader that keeps it so: a classifier whose logits go on to a resize stays.
            wide = any(self.takes_wide(r) for r in self.readers.get(node.output[0], ()))
            width = _round_up(out_channels, self.block) if wide else out_channels
        elif weight.shape[1] == 1 and group == out_channels and x in self.widened:  # depthwise
            width = self.widened[x][1]
            for a in node.attribute:
                if a.name == "group":
                    a.i = width
        else:
            return x not in self.widened  # a grouped convolution: only its real channels
        if width != out_channels:
            weight = _pad_axis(weight, 0, width)
            bias = _pad_axis(bias if bias is not None else np.zeros(out_channels, weight.dtype), 0, width)
            self.widened[node.output[0]] = (out_channels, width)
            self.convs += 1
        if weight.shape != tuple(self.inits[inputs[1]].dims):
            node.input[1] = self.add_init(inputs[1], weight)
        if bias is not None and bias.shape[0] != out_channels:
            if len(node.input) > 2 and node.input[2]:
                node.input[2] = self.add_init(node.input[2], bias)
            else:
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = self.add_init(f"{node.output[0]}_bias", bias)
        return True

    def visit(self, node: Any) -> None:
        op = node.op_type
        if op == "Conv" and self.conv(node):
            pass
        elif op in _UNARY and node.input[0] in self.widened:
            self.widened[node.output[0]] = self.widened[node.input[0]]
        elif (
            op in _ELEMENTWISE
            and {self.widened.get(t) for t in node.input} - {None}
            and all(self.widened.get(t) == self.widened.get(node.input[0]) for t in node.input)
        ):
            self.widened[node.output[0]] = self.widened[node.input[0]]
        else:
            for i, t in enumerate(node.input):
                node.input[i] = self.real(t)
        self.nodes.append(node)

    def run(self) -> int:
        for node in list(self.graph.node):
            self.visit(node)
        for out in self.graph.output:  # the interface keeps its names and real shapes
            if out.name in self.widened:
                inner = f"{out.name}{_SUFFIX}_wide"
                for node in self.nodes:
                    node.input[:] = [inner if t == out.name else t for t in node.input]
                    node.output[:] = [inner if t == out.name else t for t in node.output]
                self.widened[inner] = self.widened.pop(out.name)
                if out.name in self.sliced:
                    self.sliced[inner] = self.sliced.pop(out.name)
                self.nodes.append(self.onnx.helper.make_node("Identity", [self.real(inner)], [out.name]))
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        del self.graph.value_info[:]  # intermediate shapes changed; ORT infers them again
        used = {t for node in self.nodes for t in node.input}
        kept = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        return self.convs


def pad_channels(model: Any, block: int) -> int:
    """Widens, in place, the tensors of ``model`` (an ``onnx.ModelProto``) made by convolutions to multiples of
    ``block`` channels (see the module docstring); returns how many convolutions were widened."""
    import onnx
    import onnx.numpy_helper  # noqa: F401 - the submodule must be loaded

    if block <= 1:
        return 0
    return _Padder(onnx, model, block).run()


def pad_file(path: Path, block: int) -> int:
    """:func:`pad_channels` on the model saved at ``path``, rewritten in place when anything was widened."""
    if block <= 1:
        return 0
    import onnx

    model = onnx.load(path)
    widened = pad_channels(model, block)
    if widened:
        onnx.save(model, path)
    return widened
