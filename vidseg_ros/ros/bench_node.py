"""The ROS half of ``vidseg bench``: decode/encode/publish through a real rclpy publisher, and the end-to-end
latency of a ``seg_node`` child process against the bare model step.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from vidseg_ros.ros.replay import seg_node_executable
from vidseg_ros.tools.bench import Loaded, p50, synthetic_frames


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

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def _bare_step_ms(
    loaded: Loaded, size: tuple[int, int], frames: list[np.ndarray], flow_downscale: int
) -> float:
    """p50 of ``Stream.step`` (preprocess to mask) in this process: the node's work without ROS around it."""
    from vidseg_ros.runtime.segmenter import Segmenter
    from vidseg_ros.runtime.stream import Stream

    stream = Stream(Segmenter(loaded.model, loaded.meta, input_size=size, flow_downscale=flow_downscale))
    times = []
    for i, rgb in enumerate(frames):
        t0 = time.perf_counter()
        stream.step(rgb, 1_000_000_000 + i * 33_333_333, frame_id="camera")
        times.append((time.perf_counter() - t0) * 1e3)
    return p50(times[3:])


def node_latency(
    loaded: Loaded, size: tuple[int, int], args: argparse.Namespace, io: RosIO
) -> dict[str, Any]:
    """Starts ``seg_node`` as a child and sends frames one at a time (each waits for its mask), so the latency
    has no queueing in it; compares it with ``Stream.step`` of the same model in this process."""
    import signal
    import subprocess
    import tempfile
    import threading

    import torch
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from vidseg_ros.ros.convert import make_image
    from vidseg_ros.runtime.checkpoint import save_checkpoint

    exe = seg_node_executable()
    if exe is None:
        return {"skipped": "seg_node is not installed"}
    w, h = size
    frames = synthetic_frames(w, h, args.node_frames + 3, seed=1)
    ns = f"{io.ns}/node"
    received: dict[int, float] = {}
    timings: dict[int, dict[str, float]] = {}
    cond = threading.Condition()

    def stamp_of(header: Any) -> int:
        return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec

    def on_mask(msg: Image) -> None:
        now = time.perf_counter()
        with cond:
            received[stamp_of(msg.header)] = now
            cond.notify_all()

    def on_timing(msg: DiagnosticArray) -> None:
        values = {kv.key[:-3]: float(kv.value) for kv in msg.status[0].values if kv.key.endswith("_ms")}
        timings[stamp_of(msg.header)] = values

    def message(i: int) -> tuple[int, Image]:
        stamp = 1_700_000_000 * 1_000_000_000 + i * 33_333_333  # 30 Hz stamps: no gap resets the state
        header = Header(frame_id="camera")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return stamp, make_image(header, frames[i % len(frames)], "rgb8")

    with ExitStack() as stack:
        ckpt = loaded.checkpoint
        if ckpt is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            ckpt = save_checkpoint(tmp / f"{loaded.meta.method}.pt", loaded.model, loaded.meta, half=False)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node = io.node
        pub = node.create_publisher(Image, f"{ns}/image", reliable)
        subs = [
            node.create_subscription(Image, f"{ns}/semantic_mask", on_mask, reliable),
            node.create_subscription(DiagnosticArray, f"{ns}/semantic_mask/timing", on_timing, reliable),
        ]
        executor = SingleThreadedExecutor(context=io.context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()

        def teardown() -> None:
            executor.shutdown(timeout_sec=2)
            spinner.join(timeout=2)
            for sub in subs:
                node.destroy_subscription(sub)
            node.destroy_publisher(pub)

        stack.callback(teardown)
        log = stack.enter_context(tempfile.TemporaryFile("w+"))
        params = {
            "model.checkpoint": str(ckpt),
            "model.width": w,
            "model.height": h,
            "model.device": "cpu",
            "motion.flow_downscale": args.flow_downscale,
            "qos.reliability": "reliable",
            "publish.color": "false",
            "publish.overlay": "false",
            # The same thread count as the bare Stream.step it is compared with.
            "model.threads": torch.get_num_threads(),
        }
        cmd = [exe, "--ros-args", "-r", f"__ns:={ns}"]
        for key, value in params.items():
            cmd += ["-p", f"{key}:={value}"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        stack.callback(stop)

        def failure(what: str) -> dict[str, Any]:
            log.seek(0)
            tail = [line for line in log.read().splitlines() if line.strip()][-3:]
            return {"skipped": f"{what}: {' | '.join(tail) or 'no output'}"}

        def send(i: int, timeout: float) -> tuple[int, float] | None:
            stamp, msg = message(i)
            sent = time.perf_counter()
            pub.publish(msg)
            with cond:
                return (stamp, sent) if cond.wait_for(lambda: stamp in received, timeout) else None

        deadline = time.monotonic() + 120
        i = 0
        while pub.get_subscription_count() == 0 or send(i, 0.5) is None:
            # Until subscribed and a mask came back: discovery of the node's publisher lags its subscription.
            i += 1
            if proc.poll() is not None or time.monotonic() > deadline:
                return failure(f"seg_node did not answer (exit code {proc.poll()})")
            time.sleep(0.05)
        send(i + 1, 30), send(i + 2, 30)  # the first non-key frames allocate: not timed
        latencies, stamps = [], []
        for j in range(i + 3, i + 3 + args.node_frames):
            answer = send(j, 30)
            if answer is None:
                return failure("a mask did not come back within 30 s")
            latencies.append((received[answer[0]] - answer[1]) * 1e3)
            stamps.append(answer[0])
        time.sleep(0.2)  # timing messages trail their masks
    stages: dict[str, list[float]] = {}
    for stamp in stamps:
        for key, value in timings.get(stamp, {}).items():
            stages.setdefault(key, []).append(value)
    bare = _bare_step_ms(loaded, size, frames, args.flow_downscale)
    e2e = p50(latencies)
    return {
        "method": loaded.meta.method,
        "size": f"{w}x{h}",
        "frames": len(latencies),
        "e2e_p50_ms": e2e,
        "e2e_p90_ms": float(np.percentile(latencies, 90)),
        "node_stages_p50_ms": {k: p50(v) for k, v in stages.items()},
        "bare_step_p50_ms": bare,
        "overhead_p50_ms": e2e - bare,
    }


# ------------------------------------------------------------------------------------------------ report
