"""``vidseg demo``: the product end to end, as a user runs it.

Generates a held-out synthetic bag if none is given, starts ``seg_node`` as its own process, replays the bag
into it over DDS at the recorded rate, records the node's outputs into a bag, writes a preview (PNG strip and
GIF) and prints a summary: frames in and out, drops, end-to-end latency and mIoU against the bag's labels.

The bag's camera topic may hold sensor_msgs/Image or sensor_msgs/CompressedImage (``--image-topic``). A
compressed bag is played as recorded on ``<base>/compressed`` and the node runs with
``input.transport:=compressed``, so it decodes the JPEG/PNG stream itself, as on a robot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_SEED = 9001  # never used for training: the demo is held-out data
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/labels"


class DemoError(Exception):
    """A request the demo cannot carry out; the message is the one line the user sees."""


@dataclass
class DemoInput:
    """The bag to play and how: decoded frames (preview, mIoU) and what goes on the wire."""

    bag: Path
    frames: list  # BagFrame, decoded, with labels where the bag has them
    payloads: list  # (stamp_ns, RGB array or CompressedFrame) in bag order
    node_topic: str  # what the node's ``image`` is remapped to
    transport: str  # the node's input.transport
    image_topic: str
    label_topic: str | None  # None: the bag has no labels (no mIoU)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="Output folder.")
    p.add_argument(
        "--bag", type=Path, help="Input bag (default: OUT/demo_input, a synthetic one generated if missing)."
    )
    p.add_argument(
        "--image-topic",
        default=DEFAULT_IMAGE_TOPIC,
        help="Camera topic of the bag: sensor_msgs/Image, or CompressedImage (e.g. /camera/image_raw/compressed, "
        f"played as recorded with input.transport:=compressed). Default {DEFAULT_IMAGE_TOPIC}.",
    )
    p.add_argument(
        "--label-topic",
        help=f"mono8 (or PNG) label topic for the mIoU (default {DEFAULT_LABEL_TOPIC}, if the bag has it).",
    )
    p.add_argument("--frames", type=int, default=90, help="Frames of the generated bag.")
    p.add_argument("--checkpoint", default="", help="Checkpoint (default: the shipped NetWarp model).")
    p.add_argument("--config", type=Path, help="Parameter file (default: config/seg.yaml).")
    p.add_argument("--rate", type=float, default=1.0, help="Replay speed factor.")
    p.add_argument(
        "--offline", action="store_true", help="Run the node with realtime:=false (every frame, in order)."
    )
    p.add_argument("--timeout", type=float, default=300.0, help="Give up after this many seconds.")


def _config_file(explicit: Path | None) -> Path:
    if explicit:
        if not explicit.is_file():
            raise DemoError(f"parameter file not found: {explicit}")
        return explicit
    for candidate in (Path("config/seg.yaml"), Path(sys.prefix) / "share/vidseg_ros/config/seg.yaml"):
        if candidate.exists():
            return candidate
    raise DemoError("cannot find config/seg.yaml; pass --config")


def _flatten(params: dict, prefix: str = "") -> dict:
    # ROS parameter files may nest ``model: {checkpoint: x}`` or spell it ``model.checkpoint: x``.
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def _node_params(path: Path) -> dict:
    """The seg_node parameters of a ROS parameter file, checked against their declared types and ranges.

    The node would refuse the same values, but only in its log; checking first gives the user one line.
    """
    import yaml

    from vidseg_ros.config import SPECS

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DemoError(f"cannot read parameter file {path}: {getattr(e, 'strerror', None) or e}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DemoError(f"parameter file {path} is not valid YAML{where}") from e
    if not isinstance(doc, dict):
        raise DemoError(f"parameter file {path} holds no 'NODE: ros__parameters:' mapping")
    params: dict = {}
    for node in doc.values():
        if isinstance(node, dict) and isinstance(node.get("ros__parameters"), dict):
            params.update(_flatten(node["ros__parameters"]))
    for name, value in params.items():
        reason = SPECS[name].check(value) if name in SPECS else None
        if reason:
            raise DemoError(f"parameter file {path}: {reason}")
    return params


def _check_checkpoint(path: str) -> None:
    from vidseg_ros.runtime.checkpoint import CheckpointError, read_meta, resolve_checkpoint

    try:
        read_meta(resolve_checkpoint(path))
    except CheckpointError as e:
        raise DemoError(str(e)) from e


def _load_input(args: argparse.Namespace, out: Path) -> DemoInput:
    """The bag to replay (generated when none is given), decoded, with its wire form and node remapping."""
    from vidseg_ros.data.bags import BagError, bag_info, read_frames
    from vidseg_ros.data.synth import SynthConfig
    from vidseg_ros.data.synth_bag import write_synth_bag
    from vidseg_ros.ros.replay import compressed_frames, node_input

    bag = args.bag or out / "demo_input"
    try:
        if args.bag is None and not bag.exists():
            print(f"generating held-out demo bag {bag} (seed {DEMO_SEED}, {args.frames} frames)")
            write_synth_bag(bag, SynthConfig(seed=DEMO_SEED, frames=args.frames))
        info = bag_info(bag)
        topics = sorted(info["topics"])
        for topic, what in ((args.image_topic, "--image-topic"), (args.label_topic, "--label-topic")):
            if topic is not None and topic not in info["topics"]:
                raise DemoError(f"bag {bag} has no topic {topic} ({what}; topics: {topics})")
        try:
            node_topic, transport = node_input(args.image_topic, info["types"][args.image_topic])
        except ValueError as e:
            raise DemoError(f"bag {bag}: {e} (--image-topic)") from e
        # Without --label-topic, labels are optional: a robot's bag has none, and then there is no mIoU.
        label_topic = args.label_topic or DEFAULT_LABEL_TOPIC
        label_topic = label_topic if label_topic in info["topics"] else None
        frames = list(read_frames(bag, image_topic=args.image_topic, label_topic=label_topic or ""))
        if transport == "compressed":
            payloads = compressed_frames(bag, args.image_topic)
        else:
            payloads = [(f.stamp_ns, f.image) for f in frames]
    except BagError as e:
        raise DemoError(str(e)) from e
    if not frames:
        raise DemoError(f"bag {bag} holds no images on {args.image_topic}")
    return DemoInput(bag, frames, payloads, node_topic, transport, args.image_topic, label_topic)


def _prepare(args: argparse.Namespace) -> tuple[Path, DemoInput]:
    """Checks everything a user can get wrong before a node starts; returns the parameter file and input."""
    for name, value in (("--frames", args.frames), ("--rate", args.rate), ("--timeout", args.timeout)):
        if not value > 0:
            raise DemoError(f"{name} must be > 0, got {value:g}")
    config = _config_file(args.config)
    params = _node_params(config)
    _check_checkpoint(args.checkpoint or str(params.get("model.checkpoint", "")))
    # A given bag is checked before OUT exists, so a typo leaves no folder behind; the generated one lives in OUT.
    demo = _load_input(args, args.out) if args.bag is not None else None
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create output folder {args.out}: {e.strerror or e}") from e
    return config, demo or _load_input(args, args.out)


def run(args: argparse.Namespace) -> int:
    """Runs the demo; returns 0, 1 when the node failed or answered nothing, 2 for a bad request."""
    try:
        config, demo = _prepare(args)
    except DemoError as e:
        print(f"vidseg demo: error: {e}", file=sys.stderr)
        return 2
    return _replay(args, config, demo)


def _replay(args: argparse.Namespace, config: Path, demo: DemoInput) -> int:
    import rclpy
    from tqdm import tqdm

    from vidseg_ros.data.bags import BagWriter, bag_info
    from vidseg_ros.ros.replay import RECORDED, Replayer, seg_node_executable, stop_process

    started = time.monotonic()
    out: Path = args.out
    frames = demo.frames
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    cmd = [
        seg_node_executable() or "seg_node",
        "--ros-args",
        "--params-file",
        str(config),
        "-r",
        f"image:={demo.node_topic}",
        "-p",
        f"input.transport:={demo.transport}",
        "-p",
        "qos.reliability:=reliable",
        "-p",
        "diagnostics.expected_rate:=1.0",
    ]
    if args.checkpoint:
        cmd += ["-p", f"model.checkpoint:={args.checkpoint}"]
    if args.offline:
        cmd += ["-p", "realtime:=false"]
    log_path = out / "seg_node.log"
    print(f"replaying {demo.image_topic} of {demo.bag} ({demo.transport}) into seg_node")
    print("starting:", " ".join(cmd))
    try:
        with open(log_path, "w") as log:
            node = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        print("vidseg demo: error: seg_node is not installed (run `make setup`)", file=sys.stderr)
        return 1
    rclpy.init()
    replayer = Replayer(demo.node_topic, transport=demo.transport)
    try:
        if not replayer.wait_for_subscriber(timeout=120, alive=lambda: node.poll() is None):
            lines = [line for line in log_path.read_text().splitlines() if line.strip()]
            last = f": {lines[-1].strip()}" if lines else ""
            print(f"vidseg demo: error: seg_node did not come up{last} (log: {log_path})", file=sys.stderr)
            return 1
        time.sleep(0.5)  # let the output subscriptions match before the first frame
        with tqdm(total=len(demo.payloads), desc="replaying", unit="frame") as bar:
            replayer.play(demo.payloads, rate=args.rate, progress=bar)
        # Offline, every frame is answered, so wait for all of them; in real time the waiting frame can be
        # replaced, so stop once the answers dry up.
        remaining = max(10.0, args.timeout - (time.monotonic() - started))
        replayer.drain(len(frames), timeout=remaining, quiet_s=remaining if args.offline else 3.0)
        time.sleep(1.2)  # one more /diagnostics message covering the end of the replay
    finally:
        node_code = stop_process(node)
        replayer.close()
        rclpy.shutdown()

    recording = replayer.recording
    out_bag = out / "demo_output"
    if out_bag.is_dir():
        shutil.rmtree(out_bag)
    with BagWriter(out_bag) as writer:
        for topic, messages in recording.messages.items():
            name = topic if topic.startswith("/") else f"/{topic}"
            for _, log_ns, raw in messages:
                writer.write_raw(name, RECORDED[topic][1], raw, log_ns)
    summary = _summarise(frames, recording, node_code)
    summary["input"] = {
        "bag": str(demo.bag),
        "image_topic": demo.image_topic,
        "label_topic": demo.label_topic,
        "transport": demo.transport,
    }
    summary["output_bag"] = {"path": str(out_bag), "topics": bag_info(out_bag)["topics"]}
    _preview(frames, recording, out)
    summary["seconds"] = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, out)
    return 0 if node_code == 0 and summary["frames_out"] > 0 else 1


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _summarise(frames, recording, node_code: int) -> dict:
    from vidseg_ros.classes import SYNTH_CLASSES
    from vidseg_ros.metrics import SequenceMetrics

    masks = recording.decoded("semantic_mask")
    by_stamp = {f.stamp_ns: f for f in frames}
    latencies = [1e3 * (t - recording.sent[_stamp(m)]) for t, m in masks if _stamp(m) in recording.sent]
    diag = [m for _, m in recording.decoded("/diagnostics")]
    node_values = {kv.key: kv.value for kv in diag[-1].status[0].values} if diag else {}
    timing = [
        {kv.key: kv.value for kv in m.status[0].values} for _, m in recording.decoded("semantic_mask/timing")
    ]

    metrics = SequenceMetrics(num_classes=len(SYNTH_CLASSES))
    for _, mask in masks:
        f = by_stamp.get(_stamp(mask))
        if f is not None and f.labels is not None:
            metrics.update(_mask_array(mask), f.labels, f.image)
    quality = {}
    if metrics.frames:
        full = metrics.summary(SYNTH_CLASSES)
        quality = {
            "miou": round(full["miou"], 4),
            "tc": round(full["tc"], 4),
            "per_class_iou": {k: round(v, 4) for k, v in full["per_class_iou"].items() if v is not None},
        }
    stages = {}
    for key in (
        "decode_ms",
        "preprocess_ms",
        "motion_ms",
        "inference_ms",
        "postprocess_ms",
        "publish_ms",
        "total_ms",
    ):
        vals = [float(t[key]) for t in timing if key in t]
        if vals:
            stages[key] = round(float(np.mean(vals)), 2)
    return {
        "model": node_values.get("model", "?"),
        "frames_in": len(recording.sent),
        "frames_out": len(masks),
        "dropped": len(recording.sent) - len(masks),
        "node_dropped_frames": int(node_values.get("dropped_frames", "0")),
        "key_frames": sum(t.get("key_frame") == "true" for t in timing),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1),
            "p95": round(float(np.percentile(latencies, 95)), 1),
        }
        if latencies
        else {},
        "mean_stage_ms": stages,
        **quality,
        "node_exit_code": node_code,
    }


def _mask_array(mask) -> np.ndarray:
    return np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.step)[:, : mask.width]


def _preview(frames, recording, out: Path) -> None:
    import cv2
    import imageio.v2 as imageio

    from vidseg_ros.classes import SYNTH_PALETTE
    from vidseg_ros.palette import colorize, palette_lut

    lut = palette_lut(SYNTH_PALETTE)
    by_stamp = {f.stamp_ns: f for f in frames}
    rows = []
    for _, mask in recording.decoded("semantic_mask"):
        f = by_stamp.get(_stamp(mask))
        if f is None:
            continue
        pred = _mask_array(mask)
        gt = colorize(f.labels, lut) if f.labels is not None else np.zeros_like(f.image)
        row = np.concatenate([f.image, colorize(pred, lut), gt], axis=1)
        rows.append(cv2.resize(row, (row.shape[1] // 2, row.shape[0] // 2), interpolation=cv2.INTER_AREA))
    if not rows:
        return
    picks = [rows[i] for i in np.linspace(0, len(rows) - 1, min(4, len(rows))).astype(int)]
    cv2.imwrite(str(out / "preview.png"), cv2.cvtColor(np.concatenate(picks, axis=0), cv2.COLOR_RGB2BGR))
    imageio.mimsave(out / "preview.gif", rows, duration=1 / 15, loop=0)


def _print_summary(s: dict, out: Path) -> None:
    lat = s.get("latency_ms", {})
    print("\n=== vidseg demo summary ===")
    print(f"model            {s['model']}")
    src = s["input"]
    labels = f", labels {src['label_topic']}" if src["label_topic"] else ", no labels (no mIoU)"
    print(f"input            {src['image_topic']} ({src['transport']}{labels})")
    print(
        f"frames in/out    {s['frames_in']} / {s['frames_out']}  (dropped {s['dropped']}, "
        f"node counted {s['node_dropped_frames']}, key frames {s['key_frames']})"
    )
    print(
        f"latency e2e      p50 {lat.get('p50', float('nan'))} ms, p95 {lat.get('p95', float('nan'))} ms "
        "(replayer publish -> mask received, over DDS)"
    )
    print(f"node stages      {', '.join(f'{k[:-3]} {v}' for k, v in s['mean_stage_ms'].items())} (ms, mean)")
    if "miou" in s:
        print(f"mIoU vs labels   {s['miou']:.3f}   TC {s['tc']:.3f}")
    print(
        f"outputs          {out / 'preview.png'}, {out / 'preview.gif'}, {s['output_bag']['path']}, "
        f"{out / 'summary.json'}"
    )
    print(f"took             {s['seconds']} s")
