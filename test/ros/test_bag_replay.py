"""Bags end to end: generate, replay through seg_node with `vidseg demo`, record, read back independently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from vidseg_ros.data.synth import SynthConfig
from vidseg_ros.data.synth_bag import write_synth_bag


def _independent_read(path: Path) -> dict[str, list[int]]:
    """Header stamps per topic, read with mcap-ros2-support rather than rosbags."""
    stamps: dict[str, list[int]] = {}
    for mcap in sorted(path.glob("*.mcap")):
        with open(mcap, "rb") as f:
            for _, channel, _, msg in make_reader(
                f, decoder_factories=[DecoderFactory()]
            ).iter_decoded_messages():
                header = getattr(msg, "header", None)
                stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec if header else -1
                stamps.setdefault(channel.topic, []).append(stamp)
    return stamps


def _demo(bag: Path, out: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "vidseg_ros.cli",
        "demo",
        "--bag",
        str(bag),
        "--out",
        str(out),
        "--offline",
        "--checkpoint",
        str(checkpoint),
        "--rate",
        "2",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_replay_records_one_mask_per_frame_with_the_input_stamps(tmp_path, tiny_checkpoint):
    bag = tmp_path / "input"
    frames = write_synth_bag(bag, SynthConfig(seed=5, frames=20, width=160, height=120), progress=False)
    out = tmp_path / "out"
    proc = _demo(bag, out, tiny_checkpoint("netwarp"))

    inputs = _independent_read(bag)
    outputs = _independent_read(out / "demo_output")
    assert len(inputs["/camera/image_raw"]) == frames == 20
    assert outputs["/semantic_mask"] == inputs["/camera/image_raw"]
    assert outputs["/semantic_mask/timing"] == inputs["/camera/image_raw"]
    assert outputs["/semantic_mask/color"] == inputs["/camera/image_raw"]
    assert "/diagnostics" in outputs

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == summary["frames_out"] == 20 and summary["dropped"] == 0
    assert 0.0 <= summary["miou"] <= 1.0
    assert summary["input"]["transport"] == "raw"
    assert (out / "preview.png").stat().st_size > 0 and (out / "preview.gif").stat().st_size > 0
    assert "vidseg demo summary" in proc.stdout


def test_replay_of_a_compressed_bag_goes_to_the_node_as_recorded(tmp_path, tiny_checkpoint):
    """A JPEG bag as a robot records it: played on <base>/compressed, decoded by the node itself."""
    topic = "/camera/image_raw/compressed"
    bag = tmp_path / "input"
    cfg = SynthConfig(seed=6, frames=12, width=160, height=120)
    frames = write_synth_bag(bag, cfg, compressed="jpeg", progress=False)
    out = tmp_path / "out"
    proc = _demo(bag, out, tiny_checkpoint("netwarp"), "--image-topic", topic)

    inputs = _independent_read(bag)
    outputs = _independent_read(out / "demo_output")
    assert len(inputs[topic]) == frames == 12
    assert outputs["/semantic_mask"] == inputs[topic]
    assert outputs["/semantic_mask/timing"] == inputs[topic]
    log = (out / "seg_node.log").read_text()
    assert f"subscribed to {topic} (CompressedImage" in log, log

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == summary["frames_out"] == 12 and summary["dropped"] == 0
    assert summary["input"] == {
        "bag": str(bag),
        "image_topic": topic,
        "label_topic": "/camera/labels",
        "transport": "compressed",
    }
    assert 0.0 <= summary["miou"] <= 1.0  # the labels (raw mono8) paired with the decoded JPEG frames
    assert f"{topic} (compressed" in proc.stdout


def test_replayer_publishes_compressed_messages_byte_for_byte(tmp_path):
    import time

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    from vidseg_ros.data.bags import read_messages
    from vidseg_ros.ros.replay import Replayer, compressed_frames, node_input

    topic = "/camera/image_raw/compressed"
    bag = tmp_path / "input"
    write_synth_bag(bag, SynthConfig(seed=2, frames=4, width=64, height=48), compressed="png", progress=False)
    assert node_input(topic, "sensor_msgs/msg/CompressedImage") == ("/camera/image_raw", "compressed")
    recorded = [msg for _, _, msg in read_messages(bag, topic)]

    base = "/replay_test/image"  # a topic of its own: other tests' nodes may share the domain
    received: list[CompressedImage] = []
    listener = rclpy.create_node("replay_listener")
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    listener.create_subscription(CompressedImage, f"{base}/compressed", received.append, qos)
    replayer = Replayer(base, transport="compressed")
    try:
        deadline = time.monotonic() + 20
        while replayer.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            rclpy.spin_once(listener, timeout_sec=0.05)
        replayer.play(compressed_frames(bag, topic), rate=100.0)
        while len(received) < len(recorded) and time.monotonic() < deadline:
            rclpy.spin_once(listener, timeout_sec=0.05)
    finally:
        replayer.close()
        listener.destroy_node()
    assert len(received) == len(recorded) == 4
    for got, want in zip(received, recorded, strict=True):
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == (
            want.header.stamp.sec,
            want.header.stamp.nanosec,
        )
        assert got.header.frame_id == want.header.frame_id and got.format == want.format
        assert bytes(got.data) == bytes(want.data)
