"""Drive ``seg_node`` the way a user does: a separate process, real rclpy and Fast DDS in between."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from vidseg_ros.imgcodec import decode_image, encode_compressed
from vidseg_ros.ros.convert import make_image
from vidseg_ros.ros.replay import stop_process

REPO = Path(__file__).resolve().parents[2]
#: Stamps of the frames sent while waiting for the node to answer (sec // 1000 identifies them).
WARMUP_STAMP = 1_600_000_000_000_000_000
CONFIG = REPO / "config" / "seg.yaml"


def seg_node_exe() -> str:
    exe = shutil.which("seg_node") or str(Path(sys.executable).parent / "seg_node")
    assert Path(exe).exists(), "seg_node is not installed; run `make setup`"
    return exe


class NodeProcess:
    """``seg_node --ros-args --params-file config/seg.yaml -r image:=TOPIC -p k:=v ...`` as a child process."""

    def __init__(
        self, image_topic: str, params: dict[str, object] | None = None, *, name: str = "vidseg"
    ) -> None:
        args = [seg_node_exe(), "--ros-args", "--params-file", str(CONFIG), "-r", f"image:={image_topic}"]
        if name != "vidseg":
            args += ["-r", f"__node:={name}"]
        for key, value in (params or {}).items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            args += ["-p", f"{key}:={text}"]
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def interrupt(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGINT, as Ctrl-C does; returns (exit code, seconds to exit)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def stop(self) -> None:
        stop_process(self.proc)
        self._reader.join(timeout=2)

    def start_failure(self, timeout: float = 60.0) -> str:
        """Waits for a node that must refuse to start; asserts it exits non-zero with exactly one error line and
        no traceback, and returns that line."""
        code = self.proc.wait(timeout=timeout)
        self.stop()
        assert code != 0
        errors = [line for line in self.lines if "ERROR" in line or "error" in line.lower()]
        assert len(errors) == 1, self.output
        assert "Traceback" not in self.output
        return errors[0]


class Harness:
    """A test-side node: publishes images reliably and records everything the segmentation node publishes."""

    OUTPUTS = {
        "mask": ("semantic_mask", Image),
        "color": ("semantic_mask/color", Image),
        "overlay": ("semantic_mask/overlay", Image),
        "timing": ("semantic_mask/timing", DiagnosticArray),
    }

    def __init__(
        self,
        image_topic: str,
        ns: str = "/",
        *,
        outputs: tuple[str, ...] = ("mask", "timing"),
        compressed: bool = False,
    ) -> None:
        self.node = rclpy.create_node(f"vidseg_test_{os.getpid()}_{abs(hash(image_topic)) % 10000}")
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        # compressed: publish CompressedImage on <image_topic>/compressed, as image_transport does.
        self.compressed = compressed
        kind, topic = (CompressedImage, f"{image_topic}/compressed") if compressed else (Image, image_topic)
        self.pub = self.node.create_publisher(kind, topic, reliable)
        self.image_topic = image_topic
        self.received: dict[str, list[tuple[float, object]]] = defaultdict(list)
        self._lock = threading.Lock()
        prefix = ns.rstrip("/")
        for key in outputs:
            topic, kind = self.OUTPUTS[key]
            self.node.create_subscription(kind, f"{prefix}/{topic}", self._recorder(key), reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._recorder("diagnostics"), 10)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.node.create_subscription(
            String, f"{prefix}/semantic_mask/classes", self._recorder("classes"), latched
        )
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _recorder(self, key: str) -> Callable[[object], None]:
        def record(msg: object) -> None:
            header = getattr(msg, "header", None)
            # Answers to warm-up frames are kept apart: reliable delivery can bring one back seconds late.
            warmup = header is not None and header.stamp.sec // 1000 == WARMUP_STAMP // 10**12
            with self._lock:
                self.received["warmup" if warmup else key].append((time.monotonic(), msg))

        return record

    def messages(self, key: str) -> list:
        with self._lock:
            return [m for _, m in self.received[key]]

    def timed(self, key: str) -> list[tuple[float, object]]:
        with self._lock:
            return list(self.received[key])

    def clear(self) -> None:
        """Forget what was received, except the latched class list (it is sent once per subscriber)."""
        with self._lock:
            for key in list(self.received):
                if key != "classes":
                    del self.received[key]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def wait_for_node(self, node: NodeProcess, timeout: float = 90.0) -> None:
        """Until the node subscribes to our image topic (its model is loaded by then) and answers a frame."""
        ok = self.wait_for(
            lambda: self.pub.get_subscription_count() > 0 or node.proc.poll() is not None, timeout=timeout
        )
        assert ok and node.proc.poll() is None, f"seg_node did not come up:\n{node.output}"
        # Discovery of the node's publishers can lag its subscription: send frames until a mask reaches us.
        for i in range(100):
            self.publish(frame(WARMUP_STAMP + i * 100_000_000))
            if self.wait_for(lambda: self.messages("warmup"), timeout=0.3):
                return
        raise AssertionError(f"no mask came back from seg_node:\n{node.output}")

    def publish(self, msg: Image | CompressedImage) -> None:
        """Publishes ``msg``; a raw Image sent to a compressed harness goes out PNG-compressed."""
        if self.compressed and isinstance(msg, Image):
            rgb = decode_image(msg.encoding, msg.width, msg.height, msg.step, msg.data)
            msg = compressed(msg.header, rgb, "png")
        self.pub.publish(msg)

    def close(self) -> None:
        # As ros/replay.py's close: the spin thread leaves spin() before the node is destroyed.
        self.executor.shutdown(timeout_sec=10)
        self._thread.join(timeout=10)
        self.node.destroy_node()


def frame(
    stamp_ns: int, *, width: int = 128, height: int = 96, encoding: str = "rgb8", frame_id: str = "camera"
) -> Image:
    """A textured test image with the given header, packed as ``encoding``."""
    rng = np.random.default_rng(stamp_ns % 2**32)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return make_image(header, rgb, encoding)


def compressed(header: Header, rgb: np.ndarray, fmt: str) -> CompressedImage:
    """A CompressedImage of ``rgb`` as compressed_image_transport writes it (``fmt``: jpeg or png)."""
    msg = CompressedImage()
    msg.header = header
    msg.format, data = encode_compressed(rgb, fmt)
    msg.data = data
    return msg


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def timing_values(msg: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}
