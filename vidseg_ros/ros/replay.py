"""Replay a bag into a running seg_node over DDS and record what it publishes, as ``ros2 bag play`` and
``ros2 bag record`` would, with send and receive times kept for end-to-end latency.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image

from vidseg_ros.ros.convert import make_image

#: topic (relative to the node's namespace) -> (message class, ROS type name) recorded from seg_node.
RECORDED = {
    "semantic_mask": (Image, "sensor_msgs/msg/Image"),
    "semantic_mask/color": (Image, "sensor_msgs/msg/Image"),
    "semantic_mask/timing": (DiagnosticArray, "diagnostic_msgs/msg/DiagnosticArray"),
    "/diagnostics": (DiagnosticArray, "diagnostic_msgs/msg/DiagnosticArray"),
}


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
    """Publishes frames on ``image_topic`` at their recorded rate and records seg_node's outputs."""

    def __init__(self, image_topic: str = "/camera/image_raw", *, frame_id: str = "camera") -> None:
        self.node: Node = rclpy.create_node("vidseg_replay")
        self.frame_id = frame_id
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Image, image_topic, reliable)
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

    def play(self, frames: Iterable[tuple[int, object]], *, rate: float = 1.0, progress=None) -> None:
        """Publish ``(stamp_ns, rgb)`` pairs, spaced by their stamp differences divided by ``rate``."""
        from std_msgs.msg import Header

        start_wall = first_stamp = None
        for stamp_ns, rgb in frames:
            if start_wall is None:
                start_wall, first_stamp = time.monotonic(), stamp_ns
            due = start_wall + (stamp_ns - first_stamp) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            header = Header(frame_id=self.frame_id)
            header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            msg = make_image(header, rgb, "rgb8")
            self.recording.sent[stamp_ns] = time.monotonic()
            self.pub.publish(msg)
            if progress is not None:
                progress.update(1)

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
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
