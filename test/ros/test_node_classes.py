"""seg_node over DDS follows the checkpoint's class set, and says when a checkpoint is synthetic-only."""

from __future__ import annotations

import json

import numpy as np
import torch
from harness import Harness, NodeProcess, frame

from vidseg_ros.data.datasets.cityscapes import cityscapes_classes
from vidseg_ros.models.registry import arch_config, build_model
from vidseg_ros.runtime.checkpoint import ModelMeta, save_checkpoint

T0 = 1_700_000_000_000_000_000


def checkpoint(path, classes, *, synthetic: bool):
    torch.manual_seed(0)
    model = build_model("perframe", backbone="mobilenetv2", width_mult=0.25, num_classes=len(classes))
    data = {"format": "cityscapes" if not synthetic else "bag", "synthetic": synthetic}
    meta = ModelMeta(model.method, arch_config(model), list(classes.names), classes.palette(),
                     input_size=[96, 64], recipe={"data": data})  # fmt: skip
    return save_checkpoint(path, model, meta)


def test_a_cityscapes_checkpoint_publishes_its_19_classes_and_palette(tmp_path):
    classes = cityscapes_classes()
    ckpt = checkpoint(tmp_path / "cs.pt", classes, synthetic=False)
    topic = "/vc/image"
    node = NodeProcess(topic, {"model.checkpoint": ckpt, "model.device": "cpu", "model.threads": 1})
    harness = Harness(topic, outputs=("mask", "color"))
    try:
        harness.wait_for_node(node)
        assert harness.wait_for(lambda: harness.messages("classes"))
        info = json.loads(harness.messages("classes")[0].data)
        assert [c["name"] for c in info["classes"]] == list(classes.names)
        assert [c["color"] for c in info["classes"]] == classes.palette()
        harness.clear()
        harness.publish(frame(T0, width=160, height=120))
        assert harness.wait_for(lambda: harness.messages("mask") and harness.messages("color"))
        ids = np.frombuffer(bytes(harness.messages("mask")[0].data), np.uint8).reshape(120, 160)
        rgb = np.frombuffer(bytes(harness.messages("color")[0].data), np.uint8).reshape(120, 160, 3)
        assert ids.max() < 19
        assert np.array_equal(rgb, np.array(classes.palette(), np.uint8)[ids])
        line = next(ln for ln in node.output.splitlines() if "loaded " in ln)
        assert "19 classes" in line and "SYNTHETIC" not in line
    finally:
        harness.close()
        node.stop()


def test_the_start_up_line_warns_about_a_synthetic_only_checkpoint(tmp_path):
    from vidseg_ros.classes import SYNTH_TABLE

    ckpt = checkpoint(tmp_path / "synth.pt", SYNTH_TABLE, synthetic=True)
    topic = "/vs/image"
    node = NodeProcess(topic, {"model.checkpoint": ckpt, "model.device": "cpu", "model.threads": 1})
    harness = Harness(topic, outputs=("mask",))
    try:
        harness.wait_for_node(node)
        line = next(ln for ln in node.output.splitlines() if "loaded " in ln)
        assert (
            "WARN" in line and "SYNTHETIC STREETS ONLY" in line and "will not segment a real camera" in line
        )
    finally:
        harness.close()
        node.stop()
