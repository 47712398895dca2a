"""A quick ``vidseg bench`` on tiny sizes: every documented JSON key, the chart, the targets, real seg_nodes, and
PyTorch and onnxruntime side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vidseg_ros.cli import main as vidseg
from vidseg_ros.runtime.hardware import cpu_identity
from vidseg_ros.tools.bench import METHODS, STAGES, compared_names, repeats_for, synthetic_frames, time_colour
from vidseg_ros.tools.bench_measure import compare

TOP_KEYS = {
    "format",
    "machine",
    "config",
    "models",
    "io",
    "netwarp_extra",
    "dis_fraction",
    "tdnet_split",
    "colour",
    "node_overhead",
    "node_latency",
    "targets",
    "backends",
    "comparison",
    "node_compare",
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
        "TDNet per frame with a full cache",
        "Node overhead",
        "Colour + overlay",
        "Targets",
    ):
        assert heading in printed

    result = json.loads(out.read_text())
    assert set(result) == TOP_KEYS and result["format"] == "vidseg-bench/1"
    assert result["machine"]["cpu"] == cpu_identity() and result["machine"]["cpu"] in printed
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
        split = result["tdnet_split"][size]
        assert set(split) == {"subnetwork_ms", "attention_ms", "head_ms"} and min(split.values()) > 0
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
    assert ("colour_overlay_p50", "768x576") in names and ("tdnet_vs_perframe", "128x64") in names
    assert ("netwarp_vs_perframe_excl_flow", "128x64") in names and (
        "twnet_avg_vs_perframe",
        "128x64",
    ) in names
    assert all(isinstance(t["pass"], bool) for t in result["targets"])
    assert printed.count("PASS") + printed.count("MISS") >= len(result["targets"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_side_by_side(result, printed)


def _check_side_by_side(result: dict, printed: str) -> None:
    """On this CPU, auto times PyTorch (the baseline) and onnxruntime in the same run, and feeds two seg_nodes."""
    names = ["cpu", "onnxruntime"]
    assert result["config"]["backend"] == "onnxruntime" and result["config"]["compare"] == names
    assert "Backends side by side" in printed
    assert list(result["backends"]) == names
    for name, run in result["backends"].items():
        assert run["backend"] == name and run["precision"] == "fp32" and run["reason"]
        assert set(run["models"]) == {"96x64", "128x64"}
    # The legacy keys carry the main backend's figures.
    assert result["models"] == result["backends"]["onnxruntime"]["models"]
    comp = result["comparison"]
    assert comp["backends"] == names and set(comp["sizes"]) == {"96x64", "128x64"}
    twnet = comp["sizes"]["128x64"]["twnet"]
    assert set(twnet["avg_ms"]) == set(names)
    assert twnet["ratio"]["onnxruntime"]["nonkey"] == pytest.approx(
        twnet["nonkey_ms"]["onnxruntime"] / twnet["nonkey_ms"]["cpu"]
    )
    assert "nonkey" not in comp["sizes"]["96x64"]["perframe"]["ratio"]["onnxruntime"]
    by_backend = {(t["name"], t["size"], t.get("backend")) for t in result["targets"]}
    for name in names:
        assert ("twnet_avg_vs_perframe", "128x64", name) in by_backend
    limits = {(t["name"], t.get("backend")): t["limit"] for t in result["targets"]}
    assert limits[("twnet_avg_vs_perframe", "onnxruntime")] == 0.5
    assert limits[("twnet_avg_vs_perframe", "cpu")] == 0.6
    assert result["node_latency"]["backend"] == "onnxruntime"
    for method in ("netwarp", "twnet"):
        node = result["node_compare"][method]
        assert "skipped" not in node, node
        assert node["backends"] == names and node["size"] == "96x64" and node["frames"] == 3
        assert node["answered"] == {"cpu": 3, "onnxruntime": 3} and node["answered_fraction"] == 1.0
        assert node["ratio"] == pytest.approx(
            node["total_p50_ms"]["onnxruntime"] / node["total_p50_ms"]["cpu"]
        )
        assert 0.995 <= node["agreement_min"] <= node["agreement_mean"] <= 1.0
    agreement = [t for t in result["targets"] if t["name"] == "node_mask_agreement"]
    assert len(agreement) == 2 and all(t["op"] == ">=" and t["pass"] for t in agreement)
    assert "seg_node twnet at 96x64" in printed


def test_compared_names() -> None:
    pytest.importorskip("onnxruntime")
    assert compared_names("onnxruntime", "auto") == (["cpu", "onnxruntime"], None)
    assert compared_names("cpu", "auto") == (["cpu", "onnxruntime"], None)
    assert compared_names("cpu", "none") == (["cpu"], "--compare none")
    names, why = compared_names("tensorrt", "auto")
    assert names == ["tensorrt"] and "not a CPU backend" in why
    # The baseline is PyTorch on the CPU whenever it is timed.
    assert compared_names("onnxruntime", "cpu") == (["cpu", "onnxruntime"], None)
    assert compared_names("cuda", "onnxruntime,cpu") == (["cpu", "cuda", "onnxruntime"], None)
    assert compared_names("cpu", "cpu")[1] == "--compare cpu adds nothing to cpu"


def test_compare_ratios_divide_by_the_baseline() -> None:
    def row(key: float, nonkey: float | None) -> dict:
        avg = key if nonkey is None else nonkey
        return {
            "key_ms": key,
            "nonkey_ms": nonkey,
            "avg_ms": avg,
            "avg_model_only_ms": avg,
            "total_ms": avg + 1,
        }

    models = {
        "cpu": {"perframe": row(20.0, None), "twnet": row(20.0, 8.0)},
        "onnxruntime": {"perframe": row(8.0, None), "twnet": row(8.0, 6.0)},
    }
    out = compare(models, ["cpu", "onnxruntime"])
    assert out["twnet"]["nonkey_ms"] == {"cpu": 8.0, "onnxruntime": 6.0}
    assert out["twnet"]["ratio"]["onnxruntime"] == pytest.approx(
        {"key": 0.4, "nonkey": 0.75, "avg": 0.75, "total": 7 / 9}
    )
    assert set(out["perframe"]["ratio"]["onnxruntime"]) == {"key", "avg", "total"}


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


def test_unknown_compare_backend_fails_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert vidseg(["bench", "--sizes", "64x48", "--node-frames", "0", "--compare", "cpu,tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "vidseg bench: error: --compare takes auto, none or backends from cpu|cuda|tensorrt|onnxruntime, "
        "got 'tpu'"
    )
