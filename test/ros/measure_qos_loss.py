"""Frames lost before the node: 100 frames of 640x480 at 30 Hz, best_effort vs reliable subscription.

Run from the repo root: .venv/bin/python test/ros/measure_qos_loss.py (the README quotes it).
"""

import sys
import time

sys.path.insert(0, "test/ros")
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from harness import Harness, NodeProcess, frame  # noqa: E402

rclpy.init()
T0 = 1_700_000_000_000_000_000
for reliability in ("best_effort", "reliable"):
    topic = f"/qos/{reliability}"
    params = {
        "model.checkpoint": "perframe_mobilenetv2_synth.pt",
        "model.device": "cpu",
        "qos.reliability": reliability,
        "diagnostics.window_s": 10.0,
    }
    node = NodeProcess(topic, params)
    h = Harness(topic, outputs=("mask",))
    try:
        h.wait_for_node(node)
        time.sleep(10.5)
        h.clear()
        start = time.monotonic()
        for i in range(100):
            h.publish(frame(T0 + i * 33_333_333, width=640, height=480))
            time.sleep(max(0.0, start + (i + 1) / 30 - time.monotonic()))
        time.sleep(2.0)
        st = sorted(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in h.messages("mask"))
        gaps = np.rint(np.diff(st) / 33_333_333).astype(int)
        print(
            reliability,
            "gap histogram (periods: count)",
            dict(zip(*np.unique(gaps, return_counts=True), strict=True)),
        )
        d = [s for _, a in h.timed("diagnostics") for s in a.status if s.name.endswith("segmentation")][-1]
        v = {kv.key: kv.value for kv in d.values}
        print(
            reliability,
            "frames_in",
            v["frames_in"],
            "upstream_lost_in_window",
            v["upstream_lost_in_window"],
            "ratio",
            v["upstream_loss_ratio"],
            "masks",
            len(h.messages("mask")),
            "dropped",
            v["dropped_frames"],
            d.message,
        )
    finally:
        h.close()
        node.stop()
rclpy.shutdown()
