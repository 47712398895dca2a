"""seg_node over DDS with a foreign ONNX per-frame model and its model card, and with GRFP trained over it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from harness import Harness, NodeProcess, frame

from vidseg_ros.models.registry import build_model

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

T0 = 1_700_000_000_000_000_000
CLASSES = [{"name": f"thing{i}", "color": [40 * i, 255 - 40 * i, 7]} for i in range(5)]


def foreign_model(tmp_path, card_extra=None):
    """A 5-class per-frame network exported the way a user would (one input, scores out) with its card."""
    torch.manual_seed(0)
    model = build_model("perframe", backbone="mobilenetv2", width_mult=0.25, num_classes=5).eval()
    path = tmp_path / "user_model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), str(path), input_names=["pixel_values"],
                      output_names=["logits"], opset_version=17, dynamo=False)  # fmt: skip
    card = {"classes": CLASSES, "output": "logits",
            "input": {"width": 96, "height": 64, "channel_order": "rgb", "scale": 1 / 255,
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}  # fmt: skip
    card.update(card_extra or {})
    (tmp_path / "user_model.yaml").write_text(yaml.safe_dump(card))
    return path


def test_a_foreign_onnx_model_publishes_its_cards_classes_with_the_input_header(tmp_path):
    path = foreign_model(tmp_path)
    topic = "/vf/image"
    node = NodeProcess(topic, {"model.checkpoint": path, "model.threads": 1}, name="vidseg_foreign")
    harness = Harness(topic, outputs=("mask",))
    try:
        harness.wait_for_node(node)
        assert harness.wait_for(lambda: harness.messages("classes"))
        info = json.loads(harness.messages("classes")[0].data)
        assert info["classes"] == [{"id": i, **c} for i, c in enumerate(CLASSES)]
        assert info["model"] == "onnx_user_model"
        harness.clear()
        sent = [frame(T0 + i * 50_000_000, width=160, height=120, frame_id="cam_left") for i in range(3)]
        for n, msg in enumerate(sent, 1):
            harness.publish(msg)
            assert harness.wait_for(lambda n=n: len(harness.messages("mask")) == n), node.output
        masks = harness.messages("mask")
        assert [m.header for m in masks] == [s.header for s in sent]
        assert all((m.width, m.height, m.encoding) == (160, 120, "mono8") for m in masks)
        ids = np.frombuffer(bytes(masks[0].data), np.uint8)
        assert ids.max() < 5
        line = next(ln for ln in node.output.splitlines() if "loaded " in ln)
        assert "backend onnxruntime" in line and "own onnxruntime session" in line
    finally:
        harness.close()
        node.stop()


def test_an_invalid_card_stops_the_node_with_one_line(tmp_path):
    path = foreign_model(tmp_path, {"output": "scores"})
    line = NodeProcess("/vf_bad/image", {"model.checkpoint": path}, name="vidseg_foreign_bad").start_failure()
    assert "cannot start" in line and "output must be logits or probabilities" in line
