"""Camera inputs over real DDS: every encoding and both compressed formats against the rgb8 reference of the
same frame, the wrong-type warning, and the estimate of frames lost before the node."""

from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from harness import Harness, NodeProcess, compressed, stamp_of
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from vidseg_ros.data.synth import SynthConfig, generate
from vidseg_ros.imgcodec import SUPPORTED_ENCODINGS
from vidseg_ros.ros.convert import make_image

T0 = 1_700_000_000_000_000_000
STEP = 100_000_000
#: The shipped per-frame model: trained on these streets, so its masks are stable under small input changes
#: and a near-match of lossy inputs means something. Per frame, so a mask depends on its frame alone.
PARAMS = {"model.checkpoint": "perframe_mobilenetv2_synth.pt", "model.device": "cpu", "model.threads": 1}
LOSSLESS = {"rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16"}
GREY = {"mono8", "mono16"}


@pytest.fixture(scope="module")
def street() -> np.ndarray:
    # Camera-sized: demosaicing and chroma subsampling act at this size, then the node shrinks it to 320x240.
    return next(iter(generate(SynthConfig(seed=11, frames=1, width=640, height=480))))[0]


def header(i: int) -> Header:
    h = Header(frame_id="camera")
    h.stamp.sec, h.stamp.nanosec = divmod(T0 + i * STEP, 1_000_000_000)
    return h


def masks_of(harness: Harness, sent: dict[int, str]) -> dict[str, np.ndarray]:
    assert harness.wait_for(lambda: len(harness.messages("mask")) >= len(sent), timeout=30)
    out = {}
    for m in harness.messages("mask"):
        out[sent[stamp_of(m)]] = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width)
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.fixture(scope="module")
def raw_masks(street) -> dict[str, np.ndarray]:
    """One node on raw input: the street frame in every encoding, plus its grey version as rgb8."""
    topic = "/vi/raw"
    node = NodeProcess(topic, {**PARAMS, "realtime": False, "qos.reliability": "reliable"})
    harness = Harness(topic, outputs=("mask",))
    try:
        harness.wait_for_node(node)
        harness.clear()
        sent = {}
        grey = np.repeat(street.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2)
        for i, (name, image, encoding) in enumerate(
            [("reference", street, "rgb8"), ("grey reference", grey, "rgb8")]
            + [(enc, grey if enc in GREY else street, enc) for enc in SUPPORTED_ENCODINGS]
        ):
            sent[T0 + i * STEP] = name
            harness.publish(make_image(header(i), image, encoding))
        return masks_of(harness, sent)
    finally:
        harness.close()
        node.stop()


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_every_encoding_gives_the_reference_mask(raw_masks, encoding):
    mask = raw_masks[encoding]
    if encoding in LOSSLESS:
        assert np.array_equal(mask, raw_masks["reference"])
    elif encoding in GREY:  # a grey picture: the same frame as rgb8 with three equal channels
        assert np.array_equal(mask, raw_masks["grey reference"])
    else:  # chroma subsampling (YUV) and demosaicing (Bayer) change pixels a little
        assert agreement(mask, raw_masks["reference"]) > 0.97, encoding


def test_compressed_transport_matches_the_raw_reference(raw_masks, street):
    topic = "/vi/cmp"
    node = NodeProcess(topic, {**PARAMS, "input.transport": "compressed", "realtime": False,
                               "qos.reliability": "reliable"})  # fmt: skip
    harness = Harness(topic, outputs=("mask",), compressed=True)
    try:
        harness.wait_for_node(node)
        assert f"subscribed to {topic}/compressed (CompressedImage" in node.output
        harness.clear()
        harness.publish(compressed(header(0), street, "png"))
        harness.publish(compressed(header(1), street, "jpeg"))
        masks = masks_of(harness, {T0: "png", T0 + STEP: "jpeg"})
        assert np.array_equal(masks["png"], raw_masks["reference"])  # lossless
        assert agreement(masks["jpeg"], raw_masks["reference"]) > 0.97
        timing = next(ln for ln in node.output.splitlines() if "loaded" in ln)
        assert timing  # the node came up on compressed input with the same model
    finally:
        harness.close()
        node.stop()


def warnings_while_publishing(
    node_topic: str, compressed_topic: str, street: np.ndarray, text: str
) -> list[str]:
    """Starts a raw-transport node on ``node_topic``, publishes JPEG CompressedImage on ``compressed_topic``
    until the node logs ``text`` (at most 30 s), and returns the node's log lines that contain it."""
    node = NodeProcess(node_topic, PARAMS)
    harness = Harness(f"{node_topic}/unused", outputs=())
    pub = harness.node.create_publisher(
        CompressedImage, compressed_topic, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and text not in node.output:
            pub.publish(compressed(header(0), street, "jpeg"))
            time.sleep(0.2)
        return [ln for ln in node.output.splitlines() if text in ln]
    finally:
        harness.close()
        node.stop()


def test_a_compressed_topic_on_a_raw_subscription_is_named_with_the_fix(street):
    topic = "/vi/wrong/compressed"  # the mistake: remapping image onto a .../compressed topic
    lines = warnings_while_publishing(topic, topic, street, "has publishers of")
    assert len(lines) == 1, lines  # once, not per frame
    assert "sensor_msgs/msg/CompressedImage" in lines[0] and "input.transport:=compressed" in lines[0]
    assert "image:=/vi/wrong" in lines[0] and "WARN" in lines[0]


def test_a_raw_subscription_hints_at_a_compressed_only_camera(street):
    topic = "/vi/only"  # transport raw, but the camera publishes only .../compressed
    lines = warnings_while_publishing(topic, f"{topic}/compressed", street, "has no publisher")
    assert len(lines) == 1, lines
    assert f"{topic}/compressed" in lines[0] and "input.transport:=compressed" in lines[0]


def test_frames_withheld_upstream_are_estimated_on_diagnostics(street):
    topic = "/vi/loss"
    params = {**PARAMS, "diagnostics.drop_warn_ratio": 0.2, "realtime": False, "qos.reliability": "reliable"}
    node = NodeProcess(topic, params)
    harness = Harness(topic, outputs=("mask",))
    try:
        harness.wait_for_node(node)
        time.sleep(5.5)  # let the warm-up frames leave the diagnostics window
        withheld = [i for i in range(40) if i % 10 in (3, 4, 5, 6)]
        for i in range(40):
            if i not in withheld:
                harness.publish(make_image(header(i), street, "rgb8"))
                time.sleep(0.05)
        sent = time.monotonic()
        assert harness.wait_for(
            lambda: any(t > sent + 0.5 for t, _ in harness.timed("diagnostics")), timeout=10
        )
        status = next(
            s
            for _, d in reversed(harness.timed("diagnostics"))
            for s in d.status
            if s.name.endswith("segmentation")
        )
        values = {kv.key: kv.value for kv in status.values}
        assert int(values["upstream_lost_in_window"]) == len(withheld)
        assert float(values["stamp_period_ms"]) == pytest.approx(STEP / 1e6)
        assert values["dropped_frames"] == "0"
        assert status.level == DiagnosticStatus.WARN and "lost before the node" in status.message
    finally:
        harness.close()
        node.stop()
