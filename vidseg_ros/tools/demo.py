"""``vidseg demo``: the product end to end, as a user runs it.

Generates a held-out synthetic bag if none exists, starts ``seg_node`` as its own process, replays the bag into
it over DDS at the recorded rate, records the node's outputs into a bag, writes a preview (PNG strip and GIF)
and prints a summary: frames in and out, drops, end-to-end latency and mIoU against the bag's labels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEMO_SEED = 9001  # never used for training: the demo is held-out data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="Output folder.")
    p.add_argument("--bag", type=Path, help="Input bag (default: OUT/demo_input, generated if missing).")
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
        return explicit
    for candidate in (Path("config/seg.yaml"), Path(sys.prefix) / "share/vidseg_ros/config/seg.yaml"):
        if candidate.exists():
            return candidate
    raise SystemExit("vidseg demo: cannot find config/seg.yaml; pass --config")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from tqdm import tqdm

    from vidseg_ros.data.bags import BagWriter, bag_info, read_frames, write_synth_bag
    from vidseg_ros.data.synth import SynthConfig
    from vidseg_ros.ros.replay import RECORDED, Replayer, seg_node_executable

    started = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    bag = args.bag or out / "demo_input"
    if not bag.exists():
        print(f"generating held-out demo bag {bag} (seed {DEMO_SEED}, {args.frames} frames)")
        write_synth_bag(bag, SynthConfig(seed=DEMO_SEED, frames=args.frames))
    frames = list(read_frames(bag))
    if not frames:
        raise SystemExit(f"vidseg demo: {bag} holds no images")

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    cmd = [
        seg_node_executable() or "seg_node",
        "--ros-args",
        "--params-file",
        str(_config_file(args.config)),
        "-r",
        "image:=/camera/image_raw",
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
    print("starting:", " ".join(cmd))
    with open(log_path, "w") as log:
        node = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    replayer = Replayer()
    try:
        if not replayer.wait_for_subscriber(timeout=120, alive=lambda: node.poll() is None):
            print(log_path.read_text(), file=sys.stderr)
            raise SystemExit("vidseg demo: seg_node did not come up (log above)")
        time.sleep(0.5)  # let the output subscriptions match before the first frame
        with tqdm(total=len(frames), desc="replaying", unit="frame") as bar:
            replayer.play(((f.stamp_ns, f.image) for f in frames), rate=args.rate, progress=bar)
        # Offline, every frame is answered, so wait for all of them; in real time the waiting frame can be
        # replaced, so stop once the answers dry up.
        remaining = max(10.0, args.timeout - (time.monotonic() - started))
        replayer.drain(len(frames), timeout=remaining, quiet_s=remaining if args.offline else 3.0)
        time.sleep(1.2)  # one more /diagnostics message covering the end of the replay
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node_code = node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            node_code = node.wait()
        replayer.close()
        rclpy.shutdown()

    recording = replayer.recording
    out_bag = out / "demo_output"
    if out_bag.exists():
        shutil.rmtree(out_bag)
    with BagWriter(out_bag) as writer:
        for topic, messages in recording.messages.items():
            name = topic if topic.startswith("/") else f"/{topic}"
            for _, log_ns, raw in messages:
                writer.write_raw(name, RECORDED[topic][1], raw, log_ns)
    summary = _summarise(frames, recording, node_code)
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
