"""seg_node on the onnxruntime backend over real DDS: asked for explicitly, and picked by ``auto`` on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
from harness import Harness, NodeProcess, frame, stamp_of

from vidseg_ros.imgcodec import decode_image
from vidseg_ros.runtime.backends import EagerBackend
from vidseg_ros.runtime.checkpoint import load_checkpoint
from vidseg_ros.runtime.segmenter import Segmenter
from vidseg_ros.runtime.stream import Stream

pytest.importorskip("onnxruntime")

T0 = 1_700_000_000_000_000_000
STEP = 100_000_000  # 10 Hz stamps
FRAMES = 5


def _torch_masks(checkpoint, sent) -> list[np.ndarray]:
    """The masks PyTorch eager gives for the same frames, through the node's own Stream code."""
    model, meta = load_checkpoint(checkpoint)
    stream = Stream(Segmenter(model, meta, backend=EagerBackend(model)))
    out = []
    for msg in sent:
        rgb = decode_image(msg.encoding, msg.width, msg.height, msg.step, msg.data)
        out.append(stream.step(rgb, stamp_of(msg), encoding=msg.encoding, frame_id=msg.header.frame_id).mask)
    return out


def _masks_match_torch(
    harness: Harness, node: NodeProcess, checkpoint, sent
) -> tuple[list, list[np.ndarray]]:
    """Publishes ``sent`` and waits for a mask per frame; each carries its frame's header and equals the mask
    PyTorch eager gives through Stream. Returns the node's masks and PyTorch's."""
    for msg in sent:
        harness.publish(msg)
    assert harness.wait_for(lambda: len(harness.messages("mask")) >= len(sent), timeout=60), node.output
    masks = harness.messages("mask")
    assert [m.header for m in masks] == [m.header for m in sent]
    want = _torch_masks(checkpoint, sent)
    for got, expected in zip(masks, want, strict=True):
        ids = np.frombuffer(bytes(got.data), np.uint8).reshape(got.height, got.width)
        assert (ids == expected).mean() >= 0.999
    return masks, want


def _cpu_params(checkpoint, backend: str) -> dict:
    """One thread on the CPU, every frame processed (no dropping), reliable QoS."""
    return {
        "model.checkpoint": checkpoint,
        "model.device": "cpu",
        "model.backend": backend,
        "model.threads": 1,
        "realtime": False,
        "qos.reliability": "reliable",
    }


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("onnxruntime", "requested onnxruntime (CPUExecutionProvider)"),
        ("auto", "auto: cpu only; onnxruntime importable -> onnxruntime"),
    ],
)
def test_node_segments_with_onnxruntime(tiny_checkpoint, backend: str, reason: str) -> None:
    topic = f"/vt_ort_{backend}/image"
    checkpoint = tiny_checkpoint("netwarp")
    node = NodeProcess(topic, _cpu_params(checkpoint, backend), name=f"vidseg_ort_{backend}")
    harness = Harness(topic)
    try:
        harness.wait_for_node(node)
        line = next((ln for ln in node.lines if "loaded " in ln), "")
        assert "backend onnxruntime (fp32) on cpu" in line and f"because {reason};" in line, node.output
        assert "1 CPU thread(s)" in line
        assert "onnxruntime key step 96x64 (cpu)" in node.output  # the session load/export is logged

        # Key frame, then non-key frames carrying state through ORT: the same masks as PyTorch's.
        sent = [frame(T0 + i * STEP, frame_id="cam_ort") for i in range(FRAMES)]
        masks, _ = _masks_match_torch(harness, node, checkpoint, sent)
        assert all((m.width, m.height, m.encoding) == (128, 96, "mono8") for m in masks)

        def status_values() -> dict[str, str] | None:
            for d in reversed(harness.messages("diagnostics")):
                for s in d.status:
                    if s.name == f"vidseg_ort_{backend}: segmentation":
                        return {kv.key: kv.value for kv in s.values}
            return None

        assert harness.wait_for(lambda: status_values() is not None, timeout=5)
        values = status_values()
        assert values["backend"] == "onnxruntime" and values["backend_reason"] == reason
    finally:
        harness.close()
        node.stop()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_node_runs_tdnet(tiny_checkpoint, backend: str) -> None:
    """TDNet through the node: every frame answered with its header, the sub-networks taking turns with the
    cache filling after three frames, and the masks those of the same frames through Stream in PyTorch."""
    topic = f"/vt_tdnet_{backend}/image"
    checkpoint = tiny_checkpoint("tdnet", decoder_channels=16)
    node = NodeProcess(topic, _cpu_params(checkpoint, backend), name=f"vidseg_tdnet_{backend}")
    harness = Harness(topic)
    frames = 7  # key (path 0), then paths 1, 2, 3 (the cache is full from the fourth frame on), 0, 1, 2
    try:
        harness.wait_for_node(node)
        if backend == "onnxruntime":
            for step in ("key", "nonkey0", "nonkey1", "nonkey2", "nonkey3"):  # one session per sub-network
                assert f"onnxruntime {step} step 96x64 (cpu)" in node.output, node.output
        sent = [frame(T0 + i * STEP, frame_id="cam_td") for i in range(frames)]
        _, want = _masks_match_torch(harness, node, checkpoint, sent)
        assert len({w.tobytes() for w in want}) > 1  # the masks change from frame to frame
    finally:
        harness.close()
        node.stop()
