"""A quick ``vidseg bench`` on tiny sizes: every documented JSON key, the chart, the targets, a real seg_node."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vidseg_ros.cli import main as vidseg
from vidseg_ros.tools.bench import METHODS, STAGES, repeats_for, synthetic_frames, time_colour

TOP_KEYS = {
    "format",
    "machine",
    "config",
    "models",
    "io",
    "netwarp_extra",
    "dis_fraction",
    "colour",
    "node_overhead",
    "node_latency",
    "targets",
}


def test_bench_smoke(nudged_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A shipped-style checkpoint for one method; the others fall back to untrained models of the same width.
    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    shutil.copy(nudged_checkpoint("perframe"), ckpt_dir / "perframe_mobilenetv2_synth.pt")
    out = tmp_path / "bench.json"
    args = ["bench", "--sizes", "96x64,128x64", "--repeats", "2", "--width-mult", "0.25", "--threads", "1"]
    args += ["--node-frames", "3", "--checkpoint-dir", str(ckpt_dir), "--json", str(out)]
    assert vidseg(args) == 0
    printed = capsys.readouterr().out
    for heading in (
        "Model steps",
        "Average frame by stage",
        "NetWarp extra cost",
        "Node overhead",
        "Colour + overlay",
        "Targets",
    ):
        assert heading in printed

    result = json.loads(out.read_text())
    assert set(result) == TOP_KEYS and result["format"] == "vidseg-bench/1"
    assert result["config"]["sizes"] == ["96x64", "128x64"] and result["config"]["width_mult"] == 0.25
    assert result["config"]["models"]["perframe"] == "perframe_mobilenetv2_synth.pt"
    assert result["config"]["models"]["twnet"].startswith("untrained")
    assert result["config"]["backend_reason"].startswith("auto: ") and result["config"]["device"]
    for size in ("96x64", "128x64"):
        assert set(result["models"][size]) == set(METHODS)
        for method, r in result["models"][size].items():
            assert set(r["stages_ms"]) == set(STAGES)
            assert r["key_ms"] > 0 and r["avg_ms"] > 0 and r["samples"] == 2
            assert (r["nonkey_ms"] is None) == (method == "perframe")
        assert set(result["io"][size]) >= {"decode_ms", "encode_ms", "publish_ms", "total_ms"}
        assert result["netwarp_extra"][size]["extra_ms"] >= result["netwarp_extra"][size]["flow_ms"] > 0
        assert 0 < result["dis_fraction"][size]
    assert result["node_overhead"]["size"] == "96x64" and result["node_overhead"]["total_ms"] > 0
    # Colour + overlay at the bench sizes and at the target's camera size.
    assert list(result["colour"]) == ["96x64", "128x64", "768x576"]
    for c in result["colour"].values():
        assert c["colorize_ms"] > 0 and c["overlay_ms"] > 0 and c["cv_threads"] == 1
        assert c["total_ms"] == pytest.approx(c["colorize_ms"] + c["overlay_ms"])
    latency = result["node_latency"]
    assert "skipped" not in latency, latency
    assert latency["frames"] == 3 and latency["e2e_p50_ms"] > 0 and latency["bare_step_p50_ms"] > 0
    assert {"decode", "inference", "publish", "total"} <= set(latency["node_stages_p50_ms"])
    names = [(t["name"], t["size"]) for t in result["targets"]]
    assert ("dis_vs_perframe", "96x64") in names and ("node_overhead_p50", "96x64") in names
    assert ("colour_overlay_p50", "768x576") in names
    assert ("netwarp_vs_perframe_excl_flow", "128x64") in names and (
        "twnet_avg_vs_perframe",
        "128x64",
    ) in names
    assert all(isinstance(t["pass"], bool) for t in result["targets"])
    assert printed.count("PASS") + printed.count("MISS") >= len(result["targets"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_repeats_scale_with_pixels_and_frames_move() -> None:
    assert repeats_for((640, 480), 10) == 10
    assert repeats_for((1024, 512), 10) == 6
    assert repeats_for((2048, 1024), 10) == 3
    assert repeats_for((96, 64), 2) == 2 and repeats_for((2048, 1024), 2) == 2
    a, b = synthetic_frames(64, 48, 2)
    assert a.shape == (48, 64, 3) and a.dtype.name == "uint8"
    # The scene pans 3 px right and 1 px down per frame.
    assert (a[1:, 3:] == b[:-1, :-3]).all() and not (a == b).all()


def test_time_colour_keys_and_restores_opencv_threads() -> None:
    import cv2

    before = cv2.getNumThreads()
    c = time_colour((64, 48), samples=3)
    assert set(c) == {"colorize_ms", "overlay_ms", "total_ms", "samples", "cv_threads"} and c["samples"] == 3
    assert c["total_ms"] >= c["overlay_ms"] > 0 and cv2.getNumThreads() == before
