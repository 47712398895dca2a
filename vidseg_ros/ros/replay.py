"""Replay a bag into a running seg_node over DDS and record what it publishes, as ``ros2 bag play`` and
``ros2 bag record`` would, with send and receive times kept for end-to-end latency.

Raw bags are played as rgb8 Images on the node's input topic. CompressedImage bags are played as recorded
(format string and JPEG/PNG bytes untouched) on ``<input>/compressed``, where image_transport puts them and
where seg_node listens with ``input.transport:=compressed``: the node decodes what the camera sent.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image

from vidseg_ros.data.bags import (
    COMPRESSED_IMAGE_TYPE,
    COMPRESSED_SUFFIX,
    IMAGE_TYPE,
    read_messages,
    stamp_to_ns,
)
from vidseg_ros.ros.convert import make_image

#: topic (relative to the node's namespace) -> (message class, ROS type name) recorded from seg_node.
RECORDED = {
    "semantic_mask": (Image, "sensor_msgs/msg/Image"),
    "semantic_mask/color": (Image, "sensor_msgs/msg/Image"),
    "semantic_mask/timing": (DiagnosticArray, "diagnostic_msgs/msg/DiagnosticArray"),
    "/diagnostics": (DiagnosticArray, "diagnostic_msgs/msg/DiagnosticArray"),
}


#: input.transport of seg_node for each image message type a bag can hold.
TRANSPORTS = {IMAGE_TYPE: "raw", COMPRESSED_IMAGE_TYPE: "compressed"}


@dataclass(frozen=True)
class CompressedFrame:
    """A CompressedImage as recorded: compressed_image_transport's format string, the stream and frame_id."""

    format: str
    data: bytes
    frame_id: str = "camera"


def node_input(bag_topic: str, msgtype: str) -> tuple[str, str]:
    """Where seg_node's ``image`` must point to receive ``bag_topic``, and its ``input.transport``.

    A compressed topic is named ``<base>/compressed`` by image_transport; the node is remapped to the base and
    adds ``/compressed`` itself. A compressed topic without that suffix is played on ``<topic>/compressed``.

    Raises:
        ValueError: ``msgtype`` is not sensor_msgs/msg/Image or CompressedImage.
    """
    transport = TRANSPORTS.get(msgtype)
    if transport is None:
        raise ValueError(f"topic {bag_topic} carries {msgtype}, not {IMAGE_TYPE} or {COMPRESSED_IMAGE_TYPE}")
    if transport == "compressed":
        return bag_topic.removesuffix(COMPRESSED_SUFFIX) or bag_topic, transport
    return bag_topic, transport


def compressed_frames(bag: str | Path, topic: str) -> list[tuple[int, CompressedFrame]]:
    """``(header stamp ns, CompressedFrame)`` of every CompressedImage on ``topic``, in bag order.

    Raises:
        BagError: Missing or unreadable bag.
    """
    return [
        (stamp_to_ns(m.header.stamp), CompressedFrame(m.format, bytes(m.data), m.header.frame_id))
        for _, _, m in read_messages(bag, topic)
    ]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT, as Ctrl-C sends it (seg_node shuts down cleanly on it); killed after ``timeout`` s. The exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def seg_node_executable() -> str | None:
    """The ``seg_node`` installed beside this Python (a venv), else the one on PATH."""
    exe = Path(sys.executable).parent / "seg_node"
    return str(exe) if exe.exists() else shutil.which("seg_node")


@dataclass
class Recording:
    """Serialized messages per topic as (receive time, log time ns, CDR bytes), and image send times."""

    messages: dict[str, list[tuple[float, int, bytes]]] = field(default_factory=dict)
    sent: dict[int, float] = field(default_factory=dict)

    def decoded(self, topic: str) -> list[tuple[float, object]]:
        kind = RECORDED[topic][0]
        return [(t, deserialize_message(raw, kind)) for t, _, raw in self.messages.get(topic, [])]


class Replayer:
    """Publishes frames at their recorded rate and records seg_node's outputs.

    Args:
        image_topic: The node's input (what its ``image`` is remapped to).
        transport: ``"raw"``: rgb8 Images on ``image_topic``; ``"compressed"``: CompressedImages on
            ``image_topic/compressed``.
        frame_id: ``header.frame_id`` of raw frames (compressed frames keep their own).
    """

    def __init__(
        self, image_topic: str = "/camera/image_raw", *, transport: str = "raw", frame_id: str = "camera"
    ) -> None:
        if transport not in ("raw", "compressed"):
            raise ValueError(f"transport must be raw or compressed, got {transport!r}")
        self.node: Node = rclpy.create_node("vidseg_replay")
        self.frame_id = frame_id
        self.transport = transport
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        if transport == "compressed":
            self.topic = image_topic + COMPRESSED_SUFFIX
            self.pub = self.node.create_publisher(CompressedImage, self.topic, reliable)
        else:
            self.topic = image_topic
            self.pub = self.node.create_publisher(Image, self.topic, reliable)
        self.recording = Recording()
        self._lock = threading.Lock()
        for topic, (kind, _) in RECORDED.items():
            qos = 10 if topic == "/diagnostics" else reliable
            self.node.create_subscription(kind, topic, self._recorder(topic), qos, raw=True)
        self.executor = rclpy.executors.SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self._spinner.start()

    def _recorder(self, topic: str):
        def record(raw: bytes) -> None:
            with self._lock:
                self.recording.messages.setdefault(topic, []).append((time.monotonic(), time.time_ns(), raw))

        return record

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.recording.messages.get(topic, []))

    def wait_for_subscriber(self, timeout: float, alive=lambda: True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if self.pub.get_subscription_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def play(
        self,
        frames: Iterable[tuple[int, np.ndarray | CompressedFrame]],
        *,
        rate: float = 1.0,
        progress=None,
    ) -> None:
        """Publish ``(stamp_ns, frame)`` pairs, spaced by their stamp differences divided by ``rate``.

        Frames are RGB arrays for the raw transport and :class:`CompressedFrame` for the compressed one.
        """
        start_wall = first_stamp = None
        for stamp_ns, frame in frames:
            if start_wall is None:
                start_wall, first_stamp = time.monotonic(), stamp_ns
            due = start_wall + (stamp_ns - first_stamp) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = self._message(stamp_ns, frame)
            self.recording.sent[stamp_ns] = time.monotonic()
            self.pub.publish(msg)
            if progress is not None:
                progress.update(1)

    def _message(self, stamp_ns: int, frame: np.ndarray | CompressedFrame) -> Image | CompressedImage:
        from std_msgs.msg import Header

        compressed = isinstance(frame, CompressedFrame)
        if compressed != (self.transport == "compressed"):
            raise TypeError(f"a {type(frame).__name__} cannot be played with the {self.transport} transport")
        header = Header(frame_id=frame.frame_id if compressed else self.frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        if not compressed:
            return make_image(header, frame, "rgb8")
        msg = CompressedImage(header=header, format=frame.format)
        msg.data = frame.data
        return msg

    def drain(self, expected: int, timeout: float, quiet_s: float = 1.5) -> None:
        """Wait until ``expected`` masks arrived, or none arrived for ``quiet_s``, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        last, last_change = self.count("semantic_mask"), time.monotonic()
        while time.monotonic() < deadline:
            n = self.count("semantic_mask")
            if n >= expected:
                return
            if n != last:
                last, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                return
            time.sleep(0.05)

    def close(self) -> None:
        # The spin thread leaves spin() before the node goes: a node destroyed under a spinning executor races
        # with it (rclpy issue 968), and once left a test's spin thread looping with the GIL held.
        self.executor.shutdown(timeout_sec=10)
        self._spinner.join(timeout=10)
        self.node.destroy_node()
