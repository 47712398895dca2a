"""seg_node over real rclpy and Fast DDS, started as a separate process exactly as a user starts it."""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from harness import Harness, NodeProcess, frame, stamp_of, timing_values
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters

from vidseg_ros.imgcodec import SUPPORTED_ENCODINGS

T0 = 1_700_000_000_000_000_000
STEP = 100_000_000  # 10 Hz stamps


@pytest.fixture(scope="module")
def running(tiny_checkpoint):
    """One node (tiny per-frame model) shared by the tests that do not need their own."""
    topic = "/vt/image"
    params = {"model.checkpoint": tiny_checkpoint("perframe"), "model.device": "cpu", "model.threads": 2}
    node = NodeProcess(topic, params)
    harness = Harness(topic, outputs=("mask", "color", "overlay", "timing"))
    try:
        harness.wait_for_node(node)
        yield node, harness
    finally:
        harness.close()
        node.stop()


def _send_and_wait(harness: Harness, msgs, expect: int, timeout: float = 20.0) -> list:
    harness.clear()
    for m in msgs:
        harness.publish(m)
        time.sleep(0.15)  # slower than the model: nothing is dropped here
    harness.wait_for(lambda: len(harness.messages("mask")) >= expect, timeout)
    time.sleep(0.3)
    return harness.messages("mask")


def test_start_up_line_names_the_model_backend_and_threads(running):
    node, _ = running
    line = next((ln for ln in node.output.splitlines() if "loaded " in ln), "")
    # model.backend auto on model.device cpu: onnxruntime where it imports (test_node_ort.py has the details).
    backend = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "cpu"
    assert f"backend {backend}" in line and "2 CPU thread(s)" in line, node.output


def test_masks_keep_header_and_size_for_every_encoding(running):
    node, harness = running
    sent = [
        frame(T0 + i * STEP, width=100 + 4 * i, height=60 + 2 * i, encoding=enc, frame_id=f"cam_{enc}")
        for i, enc in enumerate(SUPPORTED_ENCODINGS)
    ]
    masks = _send_and_wait(harness, sent, len(sent))
    assert len(masks) == len(sent), node.output
    for src, mask in zip(sent, masks, strict=True):
        assert mask.header == src.header
        assert (mask.width, mask.height, mask.encoding, mask.step) == (
            src.width,
            src.height,
            "mono8",
            src.width,
        )
        assert max(mask.data) < 9  # class ids of the 9-class model
    harness.wait_for(
        lambda: all(len(harness.messages(k)) >= len(sent) for k in ("color", "overlay", "timing"))
    )
    for key in ("color", "overlay"):
        out = harness.messages(key)
        assert [m.header for m in out] == [s.header for s in sent], key
        assert all(m.encoding == "rgb8" and m.step == 3 * m.width for m in out)
    timings = harness.messages("timing")
    assert [t.header for t in timings] == [s.header for s in sent]
    values = timing_values(timings[-1])
    for key in (
        "decode_ms",
        "motion_ms",
        "inference_ms",
        "postprocess_ms",
        "publish_ms",
        "total_ms",
        "key_frame",
    ):
        assert key in values
    assert float(values["total_ms"]) >= float(values["inference_ms"]) > 0


def _corrupt(kind: str, stamp: int):
    msg = frame(stamp)
    if kind == "truncated":
        msg.data = bytes(msg.data)[:-7]
    elif kind == "short_step":
        msg.step = msg.width * 3 - 1
    elif kind == "lying_width":
        msg.width += 5
    elif kind == "lying_height":
        msg.height += 3
    elif kind == "unknown_encoding":
        msg.encoding = "yuv420"
    elif kind == "zero_size":
        msg.width = msg.height = msg.step = 0
        msg.data = b""
    return msg


@pytest.mark.parametrize(
    "kind", ["truncated", "short_step", "lying_width", "lying_height", "unknown_encoding", "zero_size"]
)
def test_bad_input_is_skipped_and_next_frame_answered(running, kind):
    node, harness = running
    bad = _corrupt(kind, T0 + 50 * STEP)
    good = frame(T0 + 51 * STEP)
    masks = _send_and_wait(harness, [bad, good], 1)
    assert [stamp_of(m) for m in masks] == [stamp_of(good)], node.output
    assert node.proc.poll() is None
    assert "skipping image" in node.output


def test_resolution_change_resets_state_and_is_answered(running):
    node, harness = running
    sent = [
        frame(T0 + (60 + i) * STEP, width=w, height=h)
        for i, (w, h) in enumerate([(128, 96), (128, 96), (80, 60)])
    ]
    masks = _send_and_wait(harness, sent, 3)
    assert [(m.width, m.height) for m in masks] == [(128, 96), (128, 96), (80, 60)]
    resets = [timing_values(t)["reset"] for t in harness.messages("timing")]
    assert "size changed" in resets[-1]
    assert "temporal state reset: size changed" in node.output


def test_stamp_going_backwards_resets_state(running):
    node, harness = running
    sent = [frame(T0 + 100 * STEP), frame(T0 + 101 * STEP), frame(T0 + 20 * STEP)]
    _send_and_wait(harness, sent, 3)
    resets = [timing_values(t)["reset"] for t in harness.messages("timing")]
    assert resets[1] == "" and "backwards" in resets[2]


def test_classes_are_latched(running):
    _, harness = running
    assert harness.wait_for(lambda: harness.messages("classes"))
    info = json.loads(harness.messages("classes")[0].data)
    assert [c["name"] for c in info["classes"]][:2] == ["road", "sidewalk"]
    assert all(len(c["color"]) == 3 for c in info["classes"])


def test_diagnostics_carry_documented_keys(running):
    _, harness = running
    assert harness.wait_for(lambda: harness.messages("diagnostics"), timeout=5)
    status = next(
        s for d in harness.messages("diagnostics") for s in d.status if s.name == "vidseg: segmentation"
    )
    keys = {kv.key for kv in status.values}
    expected = {
        "input_rate_hz",
        "output_rate_hz",
        "dropped_frames",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_max_ms",
        "node_latency_p50_ms",
        "backend",
        "device",
        "model",
        "mean_inference_ms",
        "mean_total_ms",
    }
    assert expected <= keys, keys - expected


def _set_parameter(harness: Harness, name: str, value) -> tuple[bool, str]:
    client = harness.node.create_client(SetParameters, "/vidseg/set_parameters")
    try:
        assert client.wait_for_service(timeout_sec=10)
        pv = ParameterValue()
        if isinstance(value, float):
            pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
        else:
            pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
        future = client.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name, value=pv)]))
        assert harness.wait_for(future.done, timeout=10)
        result = future.result().results[0]
        return result.successful, result.reason
    finally:
        harness.node.destroy_client(client)


def test_bad_parameter_updates_are_rejected_with_a_reason(running):
    _, harness = running
    ok, reason = _set_parameter(harness, "model.device", "cuda")
    assert not ok and "read-only" in reason.lower()
    ok, reason = _set_parameter(harness, "publish.overlay_alpha", 2.0)
    assert not ok and reason
    ok, reason = _set_parameter(harness, "diagnostics.expected_rate", 2.5)
    assert ok, reason


def test_overload_keeps_latency_bounded_and_counts_drops(tiny_checkpoint):
    """Publishing at 3x the model's rate: the node keeps the newest frame, drops the rest and says so."""
    topic = "/vt_load/image"
    # A larger inference size makes the tiny model slow enough to overload on purpose. Reliable QoS and a deep
    # DDS history, so that every frame reaches the node's callback (none is overwritten inside DDS) and each one
    # is either answered or counted as dropped by the node.
    params = {
        "model.checkpoint": tiny_checkpoint("perframe"),
        "model.device": "cpu",
        "model.width": 640,
        "model.height": 480,
        "qos.reliability": "reliable",
        "qos.depth": 100,
        # At 3x the model's rate about two thirds are dropped; a threshold well below that keeps the WARN
        # check independent of how many frames a noisy machine happens to answer.
        "diagnostics.drop_warn_ratio": 0.2,
    }
    node = NodeProcess(topic, params, name="vidseg_load")
    harness = Harness(topic)
    try:
        harness.wait_for_node(node)
        for i in range(8):  # measure the model's own rate, after the first frames have warmed it up
            harness.publish(frame(T0 + i * STEP, width=320, height=240))
            # Mask and timing travel on separate topics: wait for both, so neither lands after clear().
            assert harness.wait_for(
                lambda i=i: len(harness.messages("timing")) > i and len(harness.messages("mask")) > i
            )
        model_ms = min(float(timing_values(t)["total_ms"]) for t in harness.messages("timing")[3:])
        harness.clear()

        def load_status() -> DiagnosticStatus | None:
            statuses = [
                s
                for d in harness.messages("diagnostics")
                for s in d.status
                if s.name.startswith("vidseg_load:")
            ]
            return statuses[-1] if statuses else None

        def dropped(status: DiagnosticStatus) -> int:
            return int({kv.key: kv.value for kv in status.values}["dropped_frames"])

        # Warm-up frames sent while the first (slow) step ran may have been dropped: count from here on.
        assert harness.wait_for(lambda: load_status() is not None, timeout=5)
        dropped_before = dropped(load_status())
        harness.clear()
        period = model_ms / 3 / 1e3
        msgs = [frame(T0 + (100 + i) * STEP, width=320, height=240) for i in range(int(3.0 / period))]
        sent: dict[int, float] = {}
        start = time.monotonic()
        for k, msg in enumerate(msgs):
            time.sleep(max(0.0, start + k * period - time.monotonic()))
            sent[stamp_of(msg)] = time.monotonic()
            harness.publish(msg)
        end = time.monotonic()
        harness.wait_for(lambda: any(t > end + 1.0 for t, _ in harness.timed("diagnostics")), timeout=5)
        masks = harness.timed("mask")
        # About a third is answered at 3x the model's rate; the bound leaves room for a noisy machine.
        assert 0 < len(masks) < 0.6 * len(sent), (len(masks), len(sent), model_ms)
        latencies = [t - sent[stamp_of(m)] for t, m in masks]
        # A queue would make latency grow with every frame, to about 2 s by the end of 3 s at 3x the model's
        # rate; keeping only the newest bounds it by ~2 model steps. That bound holds for nine masks in ten:
        # on this 2-core machine one mask in a run has stalled for 0.37 s (against a 0.35 s bound) while the
        # rest took 0.03 s, twice in the suites of two sessions.
        assert np.percentile(latencies, 90) < 4 * model_ms / 1e3 + 0.25, (model_ms, latencies)
        assert max(latencies) < 1.0, (model_ms, latencies)
        stamps = [stamp_of(m) for _, m in masks]
        assert stamps == sorted(stamps)
        status = load_status()
        assert status is not None
        assert dropped(status) - dropped_before == len(sent) - len(masks)
        assert status.level == DiagnosticStatus.WARN and "dropping" in status.message
    finally:
        harness.close()
        node.stop()


def test_offline_mode_processes_every_frame_in_order(tiny_checkpoint):
    topic = "/vt_offline/image"
    node = NodeProcess(
        topic,
        {
            "model.checkpoint": tiny_checkpoint("perframe"),
            "realtime": False,
            "qos.reliability": "reliable",
            "model.device": "cpu",
        },
        name="vidseg_offline",
    )
    harness = Harness(topic)
    try:
        harness.wait_for_node(node)
        sent = [frame(T0 + i * STEP) for i in range(40)]
        for m in sent:
            harness.publish(m)  # as fast as possible: far faster than the model
        assert harness.wait_for(lambda: len(harness.messages("mask")) >= len(sent), timeout=60), node.output
        assert [stamp_of(m) for m in harness.messages("mask")] == [stamp_of(m) for m in sent]
    finally:
        harness.close()
        node.stop()


def test_sigint_exits_cleanly_within_two_seconds(tiny_checkpoint):
    topic = "/vt_sigint/image"
    node = NodeProcess(topic, {"model.checkpoint": tiny_checkpoint("perframe")}, name="vidseg_sigint")
    harness = Harness(topic)
    try:
        harness.wait_for_node(node)
        harness.publish(frame(T0))
        harness.wait_for(lambda: harness.messages("mask"))
        code, seconds = node.interrupt()
        assert code == 0, node.output
        assert seconds < 2.0
        assert "Traceback" not in node.output
    finally:
        harness.close()
        node.stop()


@pytest.mark.parametrize("problem", ["missing", "corrupt", "unknown_model"])
def test_bad_checkpoint_fails_at_start_with_one_line(tmp_path, problem, tiny_checkpoint):
    import torch

    path = tmp_path / "model.pt"
    if problem == "corrupt":
        path.write_bytes(b"not a checkpoint" * 10)
    elif problem == "unknown_model":
        payload = torch.load(tiny_checkpoint("perframe"), weights_only=True)
        payload["meta"]["method"] = "no_such_method"
        torch.save(payload, path)
    line = NodeProcess("/vt_bad/image", {"model.checkpoint": path}, name="vidseg_bad").start_failure()
    assert "cannot start" in line and str(path) in line


@pytest.mark.parametrize(
    ("method", "params", "keys"),
    [
        ("perframe", {}, [True] * 6),
        ("netwarp", {}, [True] + [False] * 5),
        ("twnet", {"twnet.key_interval": 3}, [True, False, False, True, False, False]),
        ("grfp", {}, [True] + [False] * 5),
    ],
)
def test_each_method_runs_over_dds_with_its_key_frame_policy(tiny_checkpoint, method, params, keys):
    topic = f"/vt_{method}/image"
    node = NodeProcess(
        topic,
        {
            "model.checkpoint": tiny_checkpoint(method),
            "realtime": False,
            "qos.reliability": "reliable",
            **params,
        },
        name=f"vidseg_{method}",
    )
    harness = Harness(topic)
    try:
        harness.wait_for_node(node)
        sent = [frame(T0 + i * STEP) for i in range(len(keys))]
        for m in sent:
            harness.publish(m)
        assert harness.wait_for(
            lambda: min(len(harness.messages("timing")), len(harness.messages("mask"))) >= len(sent),
            timeout=60,
        ), node.output
        timings = harness.messages("timing")
        assert [stamp_of(t) for t in timings] == [stamp_of(m) for m in sent]
        assert [timing_values(t)["key_frame"] == "true" for t in timings] == keys
        if method != "perframe":
            assert all(
                float(timing_values(t)["motion_ms"]) > 0 for t, k in zip(timings, keys, strict=True) if not k
            )
        assert [stamp_of(m) for m in harness.messages("mask")] == [stamp_of(m) for m in sent]
    finally:
        harness.close()
        node.stop()
