"""The ROS half of ``vidseg bench``: decode/encode/publish through a real rclpy publisher, the end-to-end latency
of a ``seg_node`` child against the bare model step, and a PyTorch and an onnxruntime ``seg_node`` side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from vidseg_ros.ros.convert import time_to_ns
from vidseg_ros.ros.replay import seg_node_executable, stop_process
from vidseg_ros.tools.bench_measure import Loaded, p50, synthetic_frames

#: The node's ``model.backend`` for each backend name of the bench.
NODE_BACKEND = {"cpu": "torch", "cuda": "torch", "tensorrt": "tensorrt", "onnxruntime": "onnxruntime"}
#: How long a child may take to answer its first frame (it may export and optimise ONNX steps first).
START_TIMEOUT_S = 180.0
FRAME_TIMEOUT_S = 30.0


class RosIO:
    """A real rclpy context, node and publisher: decode, encode and publish as the node does them."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.ns = f"/vidseg_bench_{os.getpid()}"
        self.node = rclpy.create_node(f"vidseg_bench_{os.getpid()}", context=self.context)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.mask_pub = self.node.create_publisher(Image, f"{self.ns}/io_mask", qos)

    def time_io(self, size: tuple[int, int], samples: int) -> dict[str, Any]:
        from std_msgs.msg import Header

        from vidseg_ros.ros.convert import image_to_rgb, make_image

        w, h = size
        rgb = synthetic_frames(w, h, 1)[0]
        msg = make_image(Header(frame_id="camera"), rgb, "rgb8")
        mask = (rgb[:, :, 0] // 32).astype(np.uint8)
        times: dict[str, list[float]] = {"decode_ms": [], "encode_ms": [], "publish_ms": [], "total_ms": []}
        for i in range(samples + 3):
            t0 = time.perf_counter()
            image_to_rgb(msg)
            t1 = time.perf_counter()
            out = make_image(msg.header, mask, "mono8")
            t2 = time.perf_counter()
            self.mask_pub.publish(out)
            t3 = time.perf_counter()
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                if i >= 3:  # the first calls warm up the type support and allocator
                    times[name].append(dt * 1e3)
        return {**{name: p50(v) for name, v in times.items()}, "samples": samples}

    def spin(self, stack: ExitStack) -> None:
        """Spins the node in a thread until ``stack`` closes."""
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(self.node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()

        def stop() -> None:
            executor.shutdown(timeout_sec=2)
            spinner.join(timeout=2)

        stack.callback(stop)

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def stamp_ns(i: int) -> int:
    """The stamp of frame ``i``: 30 Hz from a fixed start, so no gap resets the temporal state."""
    return 1_700_000_000 * 1_000_000_000 + i * 33_333_333


class NodeChild:
    """One ``seg_node`` child in its own namespace, fed one frame at a time through the bench's rclpy node.

    It records, per stamp, when the mask came back, the mask itself (``keep_masks``) and the node's stage times
    from its timing topic. Everything it creates is torn down by ``stack``, the child first.
    """

    def __init__(
        self, io: RosIO, stack: ExitStack, ns: str, params: dict[str, Any], *, keep_masks: bool = False
    ) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.received: dict[int, float] = {}
        self.masks: dict[int, np.ndarray] = {}
        self.timings: dict[int, dict[str, float]] = {}
        self.cond = threading.Condition()
        self.keep_masks = keep_masks
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node = io.node
        self.pub = node.create_publisher(Image, f"{ns}/image", reliable)
        subs = [
            node.create_subscription(Image, f"{ns}/semantic_mask", self._on_mask, reliable),
            node.create_subscription(
                DiagnosticArray, f"{ns}/semantic_mask/timing", self._on_timing, reliable
            ),
        ]

        def destroy() -> None:
            for sub in subs:
                node.destroy_subscription(sub)
            node.destroy_publisher(self.pub)

        stack.callback(destroy)
        self.log = stack.enter_context(tempfile.TemporaryFile("w+"))
        cmd = [str(seg_node_executable()), "--ros-args", "-r", f"__ns:={ns}"]
        for key, value in params.items():
            cmd += ["-p", f"{key}:={value}"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        stack.callback(self._stop)

    def _on_mask(self, msg: Any) -> None:
        now = time.perf_counter()
        with self.cond:
            stamp = time_to_ns(msg.header.stamp)
            self.received[stamp] = now
            if self.keep_masks:
                rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
                self.masks[stamp] = rows[:, : msg.width]
            self.cond.notify_all()

    def _on_timing(self, msg: Any) -> None:
        values = {kv.key[:-3]: float(kv.value) for kv in msg.status[0].values if kv.key.endswith("_ms")}
        self.timings[time_to_ns(msg.header.stamp)] = values

    def _stop(self) -> None:
        stop_process(self.proc)

    def send(self, stamp: int, msg: Any, timeout: float) -> float | None:
        """Publishes ``msg`` and waits for its mask; the publish -> mask latency in ms, or None on timeout."""
        sent = time.perf_counter()
        self.pub.publish(msg)
        with self.cond:
            if not self.cond.wait_for(lambda: stamp in self.received, timeout):
                return None
            return (self.received[stamp] - sent) * 1e3

    def wait_ready(self, message: Any, deadline: float) -> int | None:
        """Sends warm-up frames ``message(i)`` until a mask comes back; the next frame index, or None on failure.

        Discovery of the node's publisher lags its subscription, and the child may build its engines first.
        Any mask counts, also a late one: a step slower than the 0.5 s wait (large sizes on PyTorch) must not
        keep the warm-up going until the deadline.
        """
        i = 0
        while not self.received:
            if self.pub.get_subscription_count() > 0:
                self.send(*message(i), 0.5)
                i += 1
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return i

    def failure(self, what: str) -> dict[str, Any]:
        self.log.seek(0)
        tail = [line for line in self.log.read().splitlines() if line.strip()][-3:]
        return {"skipped": f"{what}: {' | '.join(tail) or 'no output'}"}

    def stage_p50(self, stamps: list[int]) -> dict[str, float]:
        """Median of each node stage over the frames ``stamps`` (timing messages trail their masks)."""
        stages: dict[str, list[float]] = {}
        for stamp in stamps:
            for key, value in self.timings.get(stamp, {}).items():
                stages.setdefault(key, []).append(value)
        return {k: p50(v) for k, v in stages.items()}


def _node_params(
    loaded: Loaded, ckpt: Path, size: tuple[int, int], args: argparse.Namespace, backend: str
) -> dict:
    import torch

    return {
        "model.checkpoint": str(ckpt),
        "model.width": size[0],
        "model.height": size[1],
        "model.device": "cpu" if backend in ("cpu", "onnxruntime") else "cuda",
        "model.backend": NODE_BACKEND[backend],
        "motion.flow_downscale": args.flow_downscale,
        "qos.reliability": "reliable",
        "publish.color": "false",
        "publish.overlay": "false",
        # The same thread count as the in-process measurements it is compared with.
        "model.threads": torch.get_num_threads(),
    }


def _frames_and_messages(size: tuple[int, int], n: int) -> tuple[list[np.ndarray], Any]:
    from std_msgs.msg import Header

    from vidseg_ros.ros.convert import make_image

    frames = synthetic_frames(size[0], size[1], n, seed=1)

    def message(i: int) -> tuple[int, Any]:
        header = Header(frame_id="camera")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns(i), 1_000_000_000)
        return stamp_ns(i), make_image(header, frames[i % len(frames)], "rgb8")

    return frames, message


def _checkpoint(loaded: Loaded, stack: ExitStack) -> Path:
    """The model's checkpoint file, written to a temporary folder for an untrained model."""
    from vidseg_ros.runtime.checkpoint import save_checkpoint

    if loaded.checkpoint is not None:
        return loaded.checkpoint
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    return save_checkpoint(tmp / f"{loaded.meta.method}.pt", loaded.model, loaded.meta, half=False)


def _bare_step_ms(
    loaded: Loaded, backend: Any, size: tuple[int, int], frames: list[np.ndarray], flow_downscale: int
) -> float:
    """p50 of ``Stream.step`` (preprocess to mask) in this process on ``backend``: the node's work without ROS."""
    from vidseg_ros.runtime.segmenter import Segmenter
    from vidseg_ros.runtime.stream import Stream

    seg = Segmenter(
        loaded.model, loaded.meta, backend=backend, input_size=size, flow_downscale=flow_downscale
    )
    stream = Stream(seg)
    times = []
    for i, rgb in enumerate(frames):
        t0 = time.perf_counter()
        stream.step(rgb, stamp_ns(i), frame_id="camera")
        times.append((time.perf_counter() - t0) * 1e3)
    return p50(times[3:])


def node_latency(
    loaded: Loaded, size: tuple[int, int], args: argparse.Namespace, io: RosIO, backend: Any
) -> dict[str, Any]:
    """Starts ``seg_node`` on ``backend`` as a child and sends frames one at a time (each waits for its mask),
    so the latency has no queueing in it; compares it with ``Stream.step`` on the same backend in this process."""
    if seg_node_executable() is None:
        return {"skipped": "seg_node is not installed"}
    frames, message = _frames_and_messages(size, args.node_frames + 3)
    with ExitStack() as stack:
        params = _node_params(loaded, _checkpoint(loaded, stack), size, args, backend.name)
        child = NodeChild(io, stack, f"{io.ns}/node", params)
        io.spin(stack)  # after the child: the executor stops before its subscriptions go
        i = child.wait_ready(message, time.monotonic() + START_TIMEOUT_S)
        if i is None:
            return child.failure(f"seg_node did not answer (exit code {child.proc.poll()})")
        for j in (i, i + 1):  # the first steps after the warm-up allocate: untimed
            child.send(*message(j), FRAME_TIMEOUT_S)
        latencies, stamps = [], []
        for j in range(i + 2, i + 2 + args.node_frames):
            stamp, msg = message(j)
            latency = child.send(stamp, msg, FRAME_TIMEOUT_S)
            if latency is None:
                return child.failure(f"a mask did not come back within {FRAME_TIMEOUT_S:g} s")
            latencies.append(latency)
            stamps.append(stamp)
        time.sleep(0.2)  # timing messages trail their masks
        stages = child.stage_p50(stamps)
    bare = _bare_step_ms(loaded, backend, size, frames, args.flow_downscale)
    e2e = p50(latencies)
    return {
        "method": loaded.meta.method,
        "backend": backend.name,
        "size": f"{size[0]}x{size[1]}",
        "frames": len(latencies),
        "e2e_p50_ms": e2e,
        "e2e_p90_ms": float(np.percentile(latencies, 90)),
        "node_stages_p50_ms": stages,
        "bare_step_p50_ms": bare,
        "overhead_p50_ms": e2e - bare,
    }


def node_compare(
    loaded: dict[str, Loaded],
    size: tuple[int, int],
    args: argparse.Namespace,
    io: RosIO,
    backends: tuple[str, str],
) -> dict[str, Any]:
    """The user's view of two backends, per method of ``loaded``: one ``seg_node`` child per method and backend
    (all started at once), each frame sent to one backend's node, answered, then to the other's, so they never
    compete for the cores and drift hits both alike.

    Per method it reports the median per-frame ``total`` each node measures itself (decode to publish), the
    publish -> mask latency, how many frames each answered, and how many mask pixels agree with the baseline's
    (``backends[0]``); or ``{"skipped": reason}``.
    """
    if seg_node_executable() is None:
        return {"skipped": "seg_node is not installed"}
    _, message = _frames_and_messages(size, args.node_frames + 3)
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        children: dict[str, dict[str, NodeChild]] = {}
        for method, x in loaded.items():
            ckpt = _checkpoint(x, stack)
            children[method] = {
                name: NodeChild(
                    io,
                    stack,
                    f"{io.ns}/{method}_{name}",
                    _node_params(x, ckpt, size, args, name),
                    keep_masks=True,
                )
                for name in backends
            }
        io.spin(stack)  # after the children: the executor stops before their subscriptions go
        # Every child answers before any is timed: a child still starting (loading or exporting its model)
        # would take the cores from the pair being timed. In one run, ONNX Runtime's NetWarp took 41.1 ms a
        # frame while the TWNet children started, and 33.5-35.0 ms in six rounds after.
        deadline = time.monotonic() + START_TIMEOUT_S
        first: dict[str, int] = {}
        for method, pair in children.items():
            for name, child in pair.items():
                ready = child.wait_ready(message, deadline)
                if ready is None:
                    out[method] = child.failure(
                        f"the {name} seg_node did not answer (exit code {child.proc.poll()})"
                    )
                    break
                first[method] = max(first.get(method, 0), ready)
        for method, pair in children.items():
            if method not in out:
                out[method] = _compare_pair(pair, message, first[method], args.node_frames)
                out[method].update({"method": method, "size": f"{size[0]}x{size[1]}"})
    return out


def _compare_pair(children: dict[str, NodeChild], message: Any, first: int, frames: int) -> dict[str, Any]:
    """Feeds the same frames to both children in turn, from after frame ``first``; see :func:`node_compare`."""
    # A gap in the stamps resets both nodes' state, so the timed frames start from a key frame on both.
    base = first + 100
    latencies: dict[str, list[float]] = {name: [] for name in children}
    stamps = []
    for j in range(base, base + frames):
        stamp, msg = message(j)
        stamps.append(stamp)
        for name, child in children.items():
            latency = child.send(stamp, msg, FRAME_TIMEOUT_S)
            if latency is not None:
                latencies[name].append(latency)
    time.sleep(0.2)  # timing messages trail their masks
    stages = {name: child.stage_p50(stamps) for name, child in children.items()}
    totals = {name: s.get("total", float("nan")) for name, s in stages.items()}
    names = list(children)
    ref, other = (children[name].masks for name in names)
    agreement = [float((ref[s] == other[s]).mean()) for s in stamps if s in ref and s in other]
    answered = {name: len(v) for name, v in latencies.items()}
    return {
        "backends": names,
        "frames": frames,
        "answered": answered,
        "answered_fraction": min(answered.values()) / frames,
        "total_p50_ms": totals,
        "stages_p50_ms": stages,
        "e2e_p50_ms": {name: p50(v) for name, v in latencies.items()},
        "ratio": totals[names[1]] / totals[names[0]],
        "agreement_mean": float(np.mean(agreement)) if agreement else float("nan"),
        "agreement_min": float(min(agreement)) if agreement else float("nan"),
    }
