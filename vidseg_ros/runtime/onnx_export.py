"""ONNX export of the flat step functions (:mod:`vidseg_ros.runtime.steps`): the one exporter behind the
onnxruntime backend and ``vidseg export --format onnx``.

It lives in the runtime, not in :mod:`vidseg_ros.tools.export`, because the backend builds its sessions from
it at run time; the command-line tool only adds checks and a manifest around it.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from vidseg_ros.models.fpn import fused_labels, native_logits
from vidseg_ros.motion.warp import warp_padding
from vidseg_ros.runtime.steps import StepSpec

#: What a step's first output can be (see :func:`export_onnx`).
STEP_OUTPUTS = ("logits", "native", "labels")


def export_onnx(
    spec: StepSpec, path: Path, opset: int, *, warp: str = "border", output: str = "logits"
) -> None:
    """Writes one flat step function to ``path`` with static shapes.

    Args:
        spec: The step, its input/output names and example inputs.
        path: The ``.onnx`` file to write.
        opset: ONNX opset (GridSample needs 16 or later).
        warp: How the warps export (:data:`~vidseg_ros.motion.warp.WARP_PADDINGS`): ``border`` is a
            ``GridSample`` with border padding, the form TensorRT and half precision want; ``clamped`` gives
            the same values through zero padding, which ONNX Runtime's CPU kernel runs about 7x faster.
        output: The first output (:data:`STEP_OUTPUTS`): ``logits`` at the image's size; ``native``, the
            logits at the classifier's own size (:func:`~vidseg_ros.models.fpn.native_logits`); ``labels``,
            the class ids (uint8 ``[1, 1, H, W]``, :func:`~vidseg_ros.models.fpn.fused_labels`).
    """
    import torch

    if output not in STEP_OUTPUTS:
        raise ValueError(f"output must be one of {'|'.join(STEP_OUTPUTS)}, got {output!r}")
    # The TorchScript exporter (dynamo=False) keeps this free of onnxscript.
    output_names = list(spec.output_names)
    if output == "labels":
        output_names[0] = "labels"
    form = {"logits": contextlib.nullcontext, "native": native_logits, "labels": fused_labels}[output]()
    with warnings.catch_warnings(), warp_padding(warp), form:
        # The tracer warns about Python ints taken from shapes: they are static by design here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module.eval(),
            spec.example_inputs,
            str(path),
            input_names=list(spec.input_names),
            output_names=output_names,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
