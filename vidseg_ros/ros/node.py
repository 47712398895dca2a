"""``seg_node``: the lifecycle node that segments a camera stream.

configure loads the model (once, before anything subscribes) and creates the publishers; activate subscribes
and starts the worker. The subscription callback only stores the newest frame; one worker thread runs the
model, so a frame that arrives while the worker is busy replaces the waiting one and is counted as dropped.
With ``realtime: false`` every frame is processed in order instead (bag evaluation).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from vidseg_ros.config import SPECS, NodeConfig
from vidseg_ros.imgcodec import ImageDecodeError
from vidseg_ros.motion.codec import CodecError, CodecFrame
from vidseg_ros.palette import blend, colorize, palette_lut
from vidseg_ros.ros.convert import compressed_to_rgb, image_to_rgb, make_image, time_to_ns
from vidseg_ros.ros.params import declare_all, read_all
from vidseg_ros.ros.video_input import (
    VIDEO_SUFFIX,
    VIDEO_TYPE,
    VideoInput,
    VideoInputError,
    video_message_class,
)
from vidseg_ros.runtime.backends import BackendUnavailable, select_backend
from vidseg_ros.runtime.checkpoint import CheckpointError, file_hash, load_checkpoint, resolve_checkpoint
from vidseg_ros.runtime.segmenter import Segmenter, backend_request, cpu_threads
from vidseg_ros.runtime.stats import OK, WARN, NodeStats
from vidseg_ros.runtime.steps import default_flow_hw
from vidseg_ros.runtime.stream import Stream

_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN}


class SegNode(LifecycleNode):
    """Subscribes to ``image``; publishes ``semantic_mask`` (+ ``/color``, ``/overlay``, ``/timing``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vidseg", **kwargs)
        declare_all(self)
        self.config: NodeConfig = read_all(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.stats = NodeStats(window_s=self.config["diagnostics.window_s"])
        self.stream: Stream | None = None
        self.segmenter: Segmenter | None = None
        self._lut = None
        self._checkpoint_name = ""
        self._pubs: dict[str, Any] = {}
        self._sub = None
        self._diag_timer = None
        self._type_timer = None
        self._worker: threading.Thread | None = None
        self._cond = threading.Condition()
        self._pending: tuple[Any, CodecFrame | None, float] | None = None
        #: H.264 input: the message type and the decoder (input.transport h264 only).
        self._video_type: type | None = None
        self._video: VideoInput | None = None
        self._running = False
        self._warned: dict[str, float] = {}

    # ---------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in SPECS}
        try:
            new = self.config.updated(changes)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.config = new
        if self.segmenter is not None and "twnet.key_interval" in changes:
            self._apply_key_interval()
        if self.stream is not None:
            self.stream.max_gap_s = new["temporal.max_gap_s"]
        self.stats.window_s = new["diagnostics.window_s"]
        return SetParametersResult(successful=True)

    def _apply_key_interval(self) -> None:
        assert self.segmenter is not None
        override = self.config["twnet.key_interval"]
        if self.segmenter.model.method == "twnet":
            self.segmenter.key_interval = override or self.segmenter.model.key_interval

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.config
        threads = cpu_threads(cfg["model.threads"])
        torch.set_num_threads(threads)
        try:
            if cfg["input.transport"] == "h264":
                self._video_type, self._video = video_message_class(), VideoInput()
            path = resolve_checkpoint(cfg["model.checkpoint"])
            model, meta = load_checkpoint(path)
            w, h = cfg["model.width"] or meta.input_size[0], cfg["model.height"] or meta.input_size[1]
            downscale = cfg["motion.flow_downscale"]
            backend, reason = select_backend(
                backend_request(cfg["model.device"], cfg["model.backend"]),
                model,
                precision=cfg["model.precision"],
                cpu_only=cfg["model.device"] == "cpu",
                threads=threads,
                cache_dir=cfg["model.engine_cache"] or None,
                model_hash=file_hash(path),
                # Builds or loads engines (TensorRT, onnxruntime) before the node subscribes, not on frame 1.
                prepare=((h, w), default_flow_hw((h, w), downscale)),
                progress=self.get_logger().info,
            )
        except (CheckpointError, BackendUnavailable, VideoInputError, RuntimeError, ValueError) as e:
            self.get_logger().error(f"cannot start: {e}")
            return TransitionCallbackReturn.FAILURE
        self.segmenter = Segmenter(model, meta, backend=backend, input_size=(w, h), flow_downscale=downscale)
        self._apply_key_interval()
        self.stream = Stream(self.segmenter, max_gap_s=cfg["temporal.max_gap_s"])
        self._lut = palette_lut(meta.palette)
        self._checkpoint_name = path.name
        out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for key, topic, kind in (
            ("mask", "semantic_mask", Image),
            ("color", "semantic_mask/color", Image),
            ("overlay", "semantic_mask/overlay", Image),
            ("timing", "semantic_mask/timing", DiagnosticArray),
        ):
            self._pubs[key] = self.create_publisher(kind, topic, out_qos)
        self._pubs["diagnostics"] = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self._pubs["classes"] = self.create_publisher(String, "semantic_mask/classes", latched)
        classes = [
            {"id": i, "name": n, "color": list(c)}
            for i, (n, c) in enumerate(zip(meta.classes, meta.palette, strict=True))
        ]
        self._pubs["classes"].publish(String(data=json.dumps({"classes": classes, "model": meta.name})))
        line = (
            f"loaded {meta.name} from {path}: backend {backend.name} ({backend.precision}) on {backend.device} "
            f"because {reason}; input {w}x{h}, key interval {self.segmenter.key_interval}, {threads} CPU thread(s)"
        )
        if meta.synthetic_only:
            self.get_logger().warning(
                f"{line}; {len(meta.classes)} classes, TRAINED ON SYNTHETIC STREETS ONLY: it serves the demo and "
                "the tests and will not segment a real camera (train one: README, 'Train on real data')"
            )
        else:
            self.get_logger().info(f"{line}; {len(meta.classes)} classes")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.config
        realtime = cfg["realtime"]
        reliability = (
            ReliabilityPolicy.RELIABLE
            if cfg["qos.reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        # Offline processing must not lose frames in the DDS reader either, hence KEEP_ALL.
        history = HistoryPolicy.KEEP_LAST if realtime else HistoryPolicy.KEEP_ALL
        qos = QoSProfile(depth=cfg["qos.depth"], history=history, reliability=reliability)
        if not realtime and reliability != ReliabilityPolicy.RELIABLE:
            self.get_logger().warning(
                "realtime is false but qos.reliability is best_effort: frames can be lost"
            )
        self._running = True
        if realtime:
            self._worker = threading.Thread(target=self._work, name="vidseg-worker", daemon=True)
            self._worker.start()
        kind, topic = self._input_topic()
        self._sub = self.create_subscription(kind, topic, self._on_image, qos)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._type_timer = self.create_timer(1.0, self._check_input_type)
        self.get_logger().info(
            f"subscribed to {self._sub.topic_name} ({kind.__name__}, {cfg['qos.reliability']}, "
            f"{'realtime: newest frame only' if realtime else 'every frame in order'})"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        for timer in (self._diag_timer, self._type_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._diag_timer = self._type_timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs.clear()
        self.stream = self.segmenter = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> None:
        with self._cond:
            self._running = False
            self._pending = None
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=2.0)
            self._worker = None

    # ---------------------------------------------------------------- input
    def _input_topic(self) -> tuple[type, str]:
        """The message type and topic of ``input.transport``: ``image``, or ``<image>/compressed`` (remapped
        base name first, as image_transport resolves it)."""
        if self.config["input.transport"] == "compressed":
            return CompressedImage, f"{self.resolve_topic_name('image')}/compressed"
        if self._video_type is not None:
            return self._video_type, f"{self.resolve_topic_name('image')}{VIDEO_SUFFIX}"
        return Image, "image"

    def _check_input_type(self) -> None:
        """Warns once (per problem) when the input topic's publishers carry another type, naming the fix."""
        kind, _ = self._input_topic()
        topic = self._sub.topic_name if self._sub is not None else ""
        want = {Image: "sensor_msgs/msg/Image", CompressedImage: "sensor_msgs/msg/CompressedImage"}.get(
            kind, VIDEO_TYPE
        )
        found = {info.topic_type for info in self.get_publishers_info_by_topic(topic)} - {want}
        for other in sorted(found):
            if other == "sensor_msgs/msg/CompressedImage":
                base = topic.removesuffix("/compressed")
                fix = (
                    f"set input.transport:=compressed (launch: transport:=compressed) and remap image:={base}"
                )
            elif other == "sensor_msgs/msg/Image" and kind is CompressedImage:
                fix = "set input.transport:=raw, or remap image to the base of a compressed topic"
            else:
                fix = "remap image to a sensor_msgs/Image topic (or its /compressed form with transport compressed)"
            self._warn(f"type:{other}", f"{topic} has publishers of {other}, not {want}, so no frame arrives: {fix}",
                       period_s=float("inf"))  # fmt: skip
        if kind is Image and not self.get_publishers_info_by_topic(topic):
            # The common case of a robot that records or streams only compressed images.
            compressed = f"{topic}/compressed"
            if any(i.topic_type == "sensor_msgs/msg/CompressedImage"
                   for i in self.get_publishers_info_by_topic(compressed)):  # fmt: skip
                self._warn("type:compressed-only", f"{topic} has no publisher, but {compressed} has "
                           "CompressedImage publishers: set input.transport:=compressed (launch: "
                           "transport:=compressed)", period_s=float("inf"))  # fmt: skip

    # ---------------------------------------------------------------- frames
    def _on_image(self, msg: Any) -> None:
        now = time.monotonic()
        video = self._video
        self.stats.on_input(now, time_to_ns(msg.timestamp if video is not None else msg.header.stamp))
        frame = None
        if video is not None:  # every access unit is decoded, in order, even if it will not be segmented
            try:
                frame = video.decode(msg)
            except CodecError as e:
                self.stats.on_skip()
                self._warn("decode", f"skipping video from '{msg.frame_id}': {e}")
                return
        if not self.config["realtime"]:
            self._process(msg, frame, now)
            return
        with self._cond:
            if self._pending is not None:
                self.stats.on_drop(now)
                if video is not None:
                    video.dropped()
            self._pending = (msg, frame, now)
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._running and self._pending is None:
                    self._cond.wait(timeout=0.5)
                if not self._running:
                    return
                msg, frame, received = self._pending
                self._pending = None
            self._process(msg, frame, received)

    def _warn(self, kind: str, text: str, period_s: float = 2.0) -> None:
        """A warning rate-limited per kind, so one bad publisher cannot flood the log."""
        now = time.monotonic()
        last = self._warned.get(kind)
        if last is None or now - last >= period_s:
            self._warned[kind] = now
            self.get_logger().warning(text)

    def _process(self, msg: Any, frame: CodecFrame | None, received: float) -> None:
        """Segments one frame: an image message, or a video message with its decoded ``frame``."""
        stream, lut = self.stream, self._lut
        if stream is None or lut is None:
            return
        t0 = time.perf_counter()
        if frame is not None:
            rgb, encoding = frame.rgb, str(msg.format)
            header = Header(stamp=msg.timestamp, frame_id=msg.frame_id)
            if self._video is not None and self._video.take_gap():
                stream.reset()  # frames went unsegmented: this frame's vectors point at one the model never saw
        else:
            header = msg.header
            compressed = isinstance(msg, CompressedImage)
            try:
                rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
            except ImageDecodeError as e:
                self.stats.on_skip()
                self._warn("decode", f"skipping image from '{msg.header.frame_id}': {e}")
                return
            encoding = msg.format if compressed else msg.encoding
        t1 = time.perf_counter()
        stamp = time_to_ns(header.stamp)
        try:
            result = stream.step(rgb, stamp, encoding=encoding, frame_id=header.frame_id, motion=frame)
        except (RuntimeError, ValueError) as e:
            # A failure inside the model must not kill the node; the next frame starts from a key frame.
            stream.reset()
            self.stats.on_skip()
            self._warn("model", f"model step failed, state reset: {e}")
            return
        if result.reset_reason:
            self.stats.on_reset()
            self._warn("reset", f"temporal state reset: {result.reset_reason}", period_s=0.0)
        t2 = time.perf_counter()
        self._pubs["mask"].publish(make_image(header, result.mask, "mono8"))
        cfg = self.config
        color_pub, overlay_pub = self._pubs["color"], self._pubs["overlay"]
        want_color = cfg["publish.color"] and color_pub.get_subscription_count() > 0
        want_overlay = cfg["publish.overlay"] and overlay_pub.get_subscription_count() > 0
        if want_color or want_overlay:
            colours = colorize(result.mask, lut)  # once, shared by both topics
            if want_color:
                color_pub.publish(make_image(header, colours, "rgb8"))
            if want_overlay:
                blended = blend(rgb, colours, cfg["publish.overlay_alpha"])
                overlay_pub.publish(make_image(header, blended, "rgb8"))
        t3 = time.perf_counter()

        # Video: decode is the decoder's time (in the callback); the total counts it.
        stages = {"decode": (t1 - t0) * 1e3, **result.timings_ms, "publish": (t3 - t2) * 1e3}
        stages["total"] = (t3 - t0) * 1e3 + (frame.decode_ms if frame is not None else 0.0)
        self._publish_timing(header, stages, result.is_key, result.reset_reason)
        latency_ms = (self.get_clock().now().nanoseconds - stamp) / 1e6
        self.stats.on_output(time.monotonic(), latency_ms, (time.monotonic() - received) * 1e3, stages)

    def _publish_timing(
        self, header: Header, stages: dict[str, float], is_key: bool, reset: str | None
    ) -> None:
        arr = DiagnosticArray()
        arr.header = header
        values = [KeyValue(key=f"{k}_ms", value=f"{v:.3f}") for k, v in stages.items()]
        values.append(KeyValue(key="key_frame", value=str(is_key).lower()))
        values.append(KeyValue(key="reset", value=reset or ""))
        arr.status = [DiagnosticStatus(level=DiagnosticStatus.OK, name="vidseg: frame timing", values=values)]
        self._pubs["timing"].publish(arr)

    def _publish_diagnostics(self) -> None:
        seg = self.segmenter
        if seg is None:
            return
        report = self.stats.report(
            time.monotonic(),
            expected_rate=self.config["diagnostics.expected_rate"],
            drop_warn_ratio=self.config["diagnostics.drop_warn_ratio"],
            pause_s=self.config["temporal.max_gap_s"],
        )
        values = dict(report.values)
        values.update(
            backend=seg.backend.name,
            backend_reason=seg.backend.reason,
            precision=seg.backend.precision,
            device=str(seg.device),
            model=seg.meta.name,
            checkpoint=self._checkpoint_name,
            key_interval=str(seg.key_interval),
            input_size="x".join(map(str, seg.input_size)),
        )
        status = DiagnosticStatus(
            level=_LEVELS[report.level],
            name=f"{self.get_name()}: segmentation",
            message=report.message,
            hardware_id=str(seg.device),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._pubs["diagnostics"].publish(arr)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``seg_node``; returns the process exit code."""
    rclpy.init(args=args)
    node: SegNode | None = None
    try:
        try:
            node = SegNode()
        except (ValueError, ParameterException) as e:
            print(f"seg_node: invalid parameter: {e}", file=sys.stderr)
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if node.config["autostart"]:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1
            node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node._stop_worker()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
