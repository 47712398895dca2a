"""ONNX export of the flat step functions (:mod:`vidseg_ros.runtime.steps`): the one exporter behind the
onnxruntime backend and ``vidseg export --format onnx``.

It lives in the runtime, not in :mod:`vidseg_ros.tools.export`, because the backend builds its sessions from
it at run time; the command-line tool only adds checks and a manifest around it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from vidseg_ros.models.fpn import model_output
from vidseg_ros.motion.warp import warp_padding
from vidseg_ros.runtime.steps import StepSpec


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
        output: The first output (:data:`~vidseg_ros.models.fpn.MODEL_OUTPUTS`, see
            :func:`~vidseg_ros.models.fpn.model_output`): ``logits`` at the image's size, ``native`` at the
            classifier's own, or ``labels``, the class ids (uint8 ``[1, 1, H, W]``).
    """
    import torch

    # The TorchScript exporter (dynamo=False) keeps this free of onnxscript.
    output_names = list(spec.output_names)
    if output == "labels":
        output_names[0] = "labels"
    with warnings.catch_warnings(), warp_padding(warp), model_output(output):
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
