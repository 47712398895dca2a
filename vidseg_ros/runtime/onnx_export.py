"""ONNX export of the flat step functions (:mod:`vidseg_ros.runtime.steps`): the one exporter behind the
onnxruntime backend and ``vidseg export --format onnx``.

It lives in the runtime, not in :mod:`vidseg_ros.tools.export`, because the backend builds its sessions from
it at run time; the command-line tool only adds checks and a manifest around it.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from vidseg_ros.models.fpn import fused_labels
from vidseg_ros.motion.warp import warp_padding
from vidseg_ros.runtime.steps import StepSpec


def export_onnx(
    spec: StepSpec, path: Path, opset: int, *, warp: str = "border", labels: bool = False
) -> None:
    """Writes one flat step function to ``path`` with static shapes.

    Args:
        spec: The step, its input/output names and example inputs.
        path: The ``.onnx`` file to write.
        opset: ONNX opset (GridSample needs 16 or later).
        warp: How the warps export (:data:`~vidseg_ros.motion.warp.WARP_PADDINGS`): ``border`` is a
            ``GridSample`` with border padding, the form TensorRT and half precision want; ``clamped`` gives
            the same values through zero padding, which ONNX Runtime's CPU kernel runs about 7x faster.
        labels: Output the class ids (``labels``, uint8 ``[1, 1, H, W]``, see
            :func:`~vidseg_ros.models.fpn.fused_labels`) in place of the logits.
    """
    import torch

    # The TorchScript exporter (dynamo=False) keeps this free of onnxscript.
    output_names = list(spec.output_names)
    if labels:
        output_names[0] = "labels"
    ids = fused_labels() if labels else contextlib.nullcontext()
    with warnings.catch_warnings(), warp_padding(warp), ids:
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
