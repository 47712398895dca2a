"""Bags end to end: generate, replay through seg_node with `vidseg demo`, record, read back independently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from vidseg_ros.data.bags import write_synth_bag
from vidseg_ros.data.synth import SynthConfig


def _independent_read(path: Path) -> dict[str, list[int]]:
    """Header stamps per topic, read with mcap-ros2-support rather than rosbags."""
    stamps: dict[str, list[int]] = {}
    for mcap in sorted(path.glob("*.mcap")):
        with open(mcap, "rb") as f:
            for _, channel, _, msg in make_reader(
                f, decoder_factories=[DecoderFactory()]
            ).iter_decoded_messages():
                header = getattr(msg, "header", None)
                stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec if header else -1
                stamps.setdefault(channel.topic, []).append(stamp)
    return stamps


def test_replay_records_one_mask_per_frame_with_the_input_stamps(tmp_path, tiny_checkpoint):
    bag = tmp_path / "input"
    frames = write_synth_bag(bag, SynthConfig(seed=5, frames=20, width=160, height=120), progress=False)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "vidseg_ros.cli",
        "demo",
        "--bag",
        str(bag),
        "--out",
        str(out),
        "--offline",
        "--checkpoint",
        str(tiny_checkpoint("netwarp")),
        "--rate",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    inputs = _independent_read(bag)
    outputs = _independent_read(out / "demo_output")
    assert len(inputs["/camera/image_raw"]) == frames == 20
    assert outputs["/semantic_mask"] == inputs["/camera/image_raw"]
    assert outputs["/semantic_mask/timing"] == inputs["/camera/image_raw"]
    assert outputs["/semantic_mask/color"] == inputs["/camera/image_raw"]
    assert "/diagnostics" in outputs

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == summary["frames_out"] == 20 and summary["dropped"] == 0
    assert 0.0 <= summary["miou"] <= 1.0
    assert (out / "preview.png").stat().st_size > 0 and (out / "preview.gif").stat().st_size > 0
    assert "vidseg demo summary" in proc.stdout
