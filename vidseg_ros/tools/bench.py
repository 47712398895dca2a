"""``vidseg bench``: per-frame vs NetWarp vs TWNet, the node's stages and its end-to-end latency, in one run.

Everything is timed on the current machine in one process (plus one ``seg_node`` child), so the ratios compare
like with like. Times are medians over repeats (p50); "inference" is the model step alone, and the ratios to
per-frame divide by the per-frame model step at the same size.

JSON written with ``--json`` (format ``vidseg-bench/1``)::

    machine        platform, cores, torch version and threads, load average at start and end
    config         sizes (WxH), repeats per size, backbone, width_mult, key_interval, flow_downscale, models,
                   backend, precision, backend_reason, device
    models         {size: {method: {key_ms, nonkey_ms, flow_ms, avg_ms, stages_ms}}}; avg_ms is the mean model
                   time per frame at key_interval (non-key frames include flow); stages_ms is the average
                   frame split into decode, preprocess, flow, inference, postprocess, publish
    io             {size: {decode_ms, encode_ms, publish_ms, total_ms, samples}}  (real rclpy publisher)
    netwarp_extra  {size: {flow_ms, flowcnn_warp_ms, extra_ms, fraction_of_perframe}}
    dis_fraction   {size: DIS flow time / per-frame model time}
    node_overhead  decode + encode + publish p50 at the first size, without the model
    colour         {size: {colorize_ms, overlay_ms, total_ms, samples, cv_threads}} at the sizes plus 768x576:
                   palette.colorize and palette.overlay p50 on a full-size mask of ids enlarged from 1/4 size
                   (total: both, what the node spends when both topics are subscribed), one OpenCV thread
    node_latency   seg_node child: publish -> mask received p50/p90, node stage p50s, bare Stream.step p50
                   and the difference; or {"skipped": reason}
    targets        [{name, size, value, limit, pass, detail}] for the issue's four targets and colour + overlay
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidseg_ros.tools.export import parse_size

FORMAT = "vidseg-bench/1"
METHODS = ("perframe", "netwarp", "twnet")
REF_PIXELS = 640 * 480
DEFAULT_WIDTH = 0.5
STAGES = ("decode", "preprocess", "flow", "inference", "postprocess", "publish")
COLOUR_SIZE = (768, 576)  # the camera size of the colour + overlay target
COLOUR_LIMIT_MS = 2.0


def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(s) for s in text.split(",") if s.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, help="Write the results as JSON to this file.")
    p.add_argument("--plot", type=Path, help="PNG bar chart (default: the JSON path with .png, if --json).")
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=_sizes("640x480,1024x512,2048x1024"),
        help="Comma-separated WxH sizes (default 640x480,1024x512,2048x1024; the last is Cityscapes' full "
        "1024x2048 HxW). The first size is the reference of the DIS and node targets.",
    )
    p.add_argument(
        "--repeats", type=int, default=10, help="Timed repeats at 640x480; larger sizes get fewer (min 3)."
    )
    p.add_argument("--backbone", default="mobilenetv2", choices=("mobilenetv2", "resnet18"))
    p.add_argument(
        "--width-mult",
        type=float,
        help=f"MobileNetV2 width (default: the checkpoints', else {DEFAULT_WIDTH}).",
    )
    p.add_argument("--checkpoint-dir", type=Path, help="Where to look for <method>_<backbone>_*.pt.")
    p.add_argument("--key-interval", type=int, default=12, help="TWNet/NetWarp key interval for averages.")
    p.add_argument("--flow-downscale", type=int, default=2, help="As the node's motion.flow_downscale.")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads; 0: torch's default, or 1 when the machine is already busy.",
    )
    p.add_argument(
        "--backend", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"), help="Where the steps run."
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="Step precision.")
    p.add_argument("--node-frames", type=int, default=30, help="Frames sent to seg_node (0: skip the node).")


# ------------------------------------------------------------------------------------------------ helpers
def p50(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def synthetic_frames(w: int, h: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """A textured scene panning 3 px right and 1 px down per frame, so DIS has real motion to find."""
    import cv2

    rng = np.random.default_rng(seed)
    pad = 3 * n + 8
    big = (w + 2 * pad, h + 2 * pad)
    coarse = rng.integers(0, 256, (big[1] // 16 + 2, big[0] // 16 + 2, 3), dtype=np.uint8)
    scene = cv2.resize(coarse, big, interpolation=cv2.INTER_CUBIC)
    scene = np.clip(scene.astype(np.int16) + rng.integers(-20, 21, scene.shape), 0, 255).astype(np.uint8)
    return [
        np.ascontiguousarray(scene[pad + t : pad + t + h, pad + 3 * t : pad + 3 * t + w]) for t in range(n)
    ]


def repeats_for(size: tuple[int, int], repeats: int) -> int:
    scaled = round(repeats * REF_PIXELS / (size[0] * size[1]))
    return max(min(3, repeats), min(repeats, scaled))


@dataclass
class Loaded:
    model: Any
    meta: Any
    source: str
    checkpoint: Path | None


def load_models(args: argparse.Namespace) -> dict[str, Loaded]:
    """Shipped (or --checkpoint-dir) checkpoints of the requested architecture, else untrained models."""
    from vidseg_ros.classes import SYNTH_CLASSES, SYNTH_PALETTE
    from vidseg_ros.models.registry import build_model
    from vidseg_ros.runtime.checkpoint import CheckpointError, ModelMeta, load_checkpoint, packaged_checkpoint

    folder = args.checkpoint_dir or packaged_checkpoint("x").parent
    width = args.width_mult if args.backbone == "mobilenetv2" else 1.0
    out = {}
    for method in METHODS:
        found = None
        for path in sorted(folder.glob(f"{method}_{args.backbone}_*.pt")):
            try:
                model, meta = load_checkpoint(path)
            except CheckpointError as e:
                print(f"  ignoring {path.name}: {e}")
                continue
            # Without --width-mult the first checkpoint sets the width; all methods must share it.
            width = meta.arch.get("width_mult", 1.0) if width is None else width
            if meta.arch.get("width_mult", 1.0) == width:
                found = Loaded(model, meta, path.name, path)
                break
            print(f"  ignoring {path.name}: width_mult {meta.arch.get('width_mult')} != {width}")
        if found is None:
            width = DEFAULT_WIDTH if width is None else width
            model = build_model(
                method, backbone=args.backbone, width_mult=width, num_classes=len(SYNTH_CLASSES)
            )
            arch = {"method": method, **model.config()}
            meta = ModelMeta(method, arch, list(SYNTH_CLASSES), [list(c) for c in SYNTH_PALETTE])
            found = Loaded(model.eval(), meta, "untrained (timing does not depend on weights)", None)
        out[method] = found
    return out


# ------------------------------------------------------------------------------------------ measurements
def time_models(
    loaded: dict[str, Loaded],
    backends: dict[str, Any],
    size: tuple[int, int],
    repeats: int,
    args: argparse.Namespace,
    bar: Any,
) -> dict[str, dict[str, list[float]]]:
    """Per method: lists of preprocess, flow, key/nonkey inference and postprocess times (ms).

    The segmenter does what the node does around the model (upload, resize, DIS, arg-max, download); the
    steps run on the selected backend. CUDA work is synchronised before each clock read.
    """
    import torch

    from vidseg_ros.runtime.segmenter import Segmenter
    from vidseg_ros.runtime.steps import default_flow_hw

    w, h = size
    frames = synthetic_frames(w, h, repeats + 2)
    segs = {}
    for m, x in loaded.items():
        backend = backends[m]
        backend.prepare((h, w), default_flow_hw((h, w), args.flow_downscale))
        segs[m] = Segmenter(
            x.model, x.meta, device=backend.device, input_size=size, flow_downscale=args.flow_downscale
        )
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in segs}

    def add(method: str, name: str, seconds: float) -> None:
        samples[method].setdefault(name, []).append(seconds * 1e3)

    def clock(device: Any) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    # Repeat 0 warms up (allocator, oneDNN primitives for these shapes) and is not recorded.
    for r in range(repeats + 1):
        for method, seg in segs.items():  # interleaved, so drift of the machine hits all methods alike
            backend, dev = backends[method], seg.device
            prev = seg.prepare(frames[r])
            t0 = clock(dev)
            cur = seg.prepare(frames[r + 1])
            t1 = clock(dev)
            logits, state = backend.key_step(cur.image)
            t2 = clock(dev)
            seg.to_mask(logits, (h, w))
            t3 = clock(dev)
            if r:
                add(method, "preprocess", t1 - t0)
                add(method, "key", t2 - t1)
                add(method, "postprocess", t3 - t2)
            else:
                samples[method]["gflop_key"] = [_gflop(seg.model.key_step, cur.image)]
            if seg.uses_motion:
                t0 = clock(dev)
                flow = seg.motion(cur, prev)
                t1 = clock(dev)
                backend.nonkey_step(cur.image, prev.image, flow, state)
                t2 = clock(dev)
                if r:
                    add(method, "flow", t1 - t0)
                    add(method, "nonkey", t2 - t1)
                else:
                    args_nk = (cur.image, prev.image, flow, state)
                    samples[method]["gflop_nonkey"] = [_gflop(seg.model.nonkey_step, *args_nk)]
        bar.update(1)
    return samples


def time_colour(size: tuple[int, int], samples: int = 50) -> dict[str, Any]:
    """p50 of colouring a full-size mask and of the overlay, as the node runs them per published frame.

    One OpenCV thread: the target is per core, and a pool on cores busy with inference measures the neighbours.
    """
    import cv2

    from vidseg_ros.classes import SYNTH_PALETTE
    from vidseg_ros.palette import colorize, overlay, palette_lut

    w, h = size
    rgb, lut = synthetic_frames(w, h, 1)[0], palette_lut(SYNTH_PALETTE)
    # Ids at a quarter of the size, enlarged as Segmenter.to_mask enlarges them: regions, not noise.
    small = (rgb[::4, ::4, 0] // 29).astype(np.uint8)
    mask = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    times: dict[str, list[float]] = {"colorize_ms": [], "overlay_ms": []}
    try:
        for i in range(samples + 2):  # two warm-up rounds
            t0 = time.perf_counter()
            colorize(mask, lut)
            t1 = time.perf_counter()
            overlay(rgb, mask, lut, 0.5)
            t2 = time.perf_counter()
            if i >= 2:
                times["colorize_ms"].append((t1 - t0) * 1e3)
                times["overlay_ms"].append((t2 - t1) * 1e3)
    finally:
        cv2.setNumThreads(threads)
    out = {name: p50(v) for name, v in times.items()}
    return {**out, "total_ms": out["colorize_ms"] + out["overlay_ms"], "samples": samples, "cv_threads": 1}


def _gflop(step: Any, *inputs: Any) -> float:
    """Multiply-adds x 2 of convolutions and matmuls (what FLOP counts usually mean), in GFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        step(*inputs)
    return counter.get_total_flops() / 1e9


def summarise(samples: dict[str, dict[str, list[float]]], io: dict[str, float], k: int) -> dict[str, Any]:
    out = {}
    for method, s in samples.items():
        key = p50(s["key"])
        flow = p50(s["flow"]) if "flow" in s else 0.0
        nonkey = p50(s["nonkey"]) if "nonkey" in s else key
        # Every k-th frame is a key frame; the others run the non-key step on flow.
        avg_inf = (key + (k - 1) * nonkey) / k if "nonkey" in s else key
        avg_flow = flow * (k - 1) / k
        stages = {
            "decode": io["decode_ms"],
            "preprocess": p50(s["preprocess"]),
            "flow": avg_flow,
            "inference": avg_inf,
            "postprocess": p50(s["postprocess"]),
            "publish": io["encode_ms"] + io["publish_ms"],
        }
        gk = s["gflop_key"][0]
        gn = s["gflop_nonkey"][0] if "gflop_nonkey" in s else gk
        out[method] = {
            "gflop_key": gk,
            "gflop_nonkey": gn if "nonkey" in s else None,
            "gflop_avg": (gk + (k - 1) * gn) / k,
            "key_ms": key,
            "nonkey_ms": nonkey if "nonkey" in s else None,
            "flow_ms": flow if "flow" in s else None,
            "avg_ms": avg_inf + avg_flow,
            "avg_model_only_ms": avg_inf,
            "stages_ms": stages,
            "total_ms": sum(stages.values()),
            "samples": len(s["key"]),
        }
    return out


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    models, ref = result["models"], result["config"]["sizes"][0]
    out = []

    def target(name: str, size: str, value: float, limit: float, unit: str, detail: str) -> None:
        ok = bool(np.isfinite(value) and value <= limit)
        out.append(
            {
                "name": name,
                "size": size,
                "value": value,
                "limit": limit,
                "unit": unit,
                "pass": ok,
                "detail": detail,
            }
        )

    for size, m in models.items():
        pf = m["perframe"]["key_ms"]
        target("netwarp_vs_perframe_excl_flow", size, m["netwarp"]["nonkey_ms"] / pf, 1.15, "x",
               "NetWarp non-key step / per-frame step")  # fmt: skip
        target("twnet_avg_vs_perframe", size, m["twnet"]["avg_ms"] / pf, 0.6, "x",
               f"TWNet mean per frame at key interval {result['config']['key_interval']} incl. flow / per-frame")  # fmt: skip
    target("dis_vs_perframe", ref, result["dis_fraction"][ref], 0.15, "x", "DIS flow / per-frame step")
    target(
        "node_overhead_p50", ref, result["node_overhead"]["total_ms"], 3.0, "ms", "decode + encode + publish"
    )
    size = "x".join(map(str, COLOUR_SIZE))
    target("colour_overlay_p50", size, result["colour"][size]["total_ms"], COLOUR_LIMIT_MS, "ms",
           "colorize + overlay, 1 OpenCV thread")  # fmt: skip
    return out


def print_report(result: dict[str, Any]) -> None:
    cfg, models = result["config"], result["models"]
    k = cfg["key_interval"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}" if v >= 1 else f"{v:.2f}"

    print(
        f"\nModel steps, ms (p50); avg@{k}: mean per frame with a key frame every {k}, non-key frames incl. flow;"
    )
    print("ratios to the per-frame step; GFLOP: conv/matmul multiply-adds x2")
    head = ("key", "non-key", "flow", f"avg@{k}", "nk/pf", "avg/pf", "GFLOP k", "GFLOP nk", "FLOPavg/pf")
    print(f"{'size':10} {'method':9}" + "".join(f"{c:>11}" for c in head))
    for size, m in models.items():
        pf, pf_flop = m["perframe"]["key_ms"], m["perframe"]["gflop_key"]
        for method, r in m.items():
            nk = r["nonkey_ms"] or r["key_ms"]
            cells = [f(r["key_ms"]), f(r["nonkey_ms"]), f(r["flow_ms"]), f(r["avg_ms"])]
            cells += [f"{nk / pf:.2f}x", f"{r['avg_ms'] / pf:.2f}x", f"{r['gflop_key']:.3g}"]
            cells += [
                "-" if r["gflop_nonkey"] is None else f"{r['gflop_nonkey']:.3g}",
                f"{r['gflop_avg'] / pf_flop:.2f}x",
            ]
            print(f"{size:10} {method:9}" + "".join(f"{c:>11}" for c in cells))
    print("\nAverage frame by stage, ms (p50; decode/publish from the rclpy measurement at that size)")
    print(f"{'size':10} {'method':9} " + " ".join(f"{s:>11}" for s in STAGES) + f" {'total':>8}")
    for size, m in models.items():
        for method, r in m.items():
            print(
                f"{size:10} {method:9} "
                + " ".join(f"{f(r['stages_ms'][s]):>11}" for s in STAGES)
                + f" {f(r['total_ms']):>8}"
            )
    print("\nNetWarp extra cost per frame (flow + FlowCNN + warp + fusion), ms")
    for size, x in result["netwarp_extra"].items():
        print(f"{size:10} flow {f(x['flow_ms'])} + FlowCNN/warp {f(x['flowcnn_warp_ms'])} = {f(x['extra_ms'])}"
              f" = {100 * x['fraction_of_perframe']:.1f}% of per-frame")  # fmt: skip
    for size, frac in result["dis_fraction"].items():
        print(f"DIS flow at {size}: {100 * frac:.1f}% of the per-frame step")
    io = result["node_overhead"]
    print(f"\nNode overhead without the model at {io['size']} (p50): decode {io['decode_ms']:.3f} + encode "
          f"{io['encode_ms']:.3f} + publish {io['publish_ms']:.3f} = {io['total_ms']:.3f} ms")  # fmt: skip
    print(f"\nColour + overlay per published frame, ms (p50, 1 OpenCV thread; target <= {COLOUR_LIMIT_MS:g} at "
          f"{COLOUR_SIZE[0]}x{COLOUR_SIZE[1]})")  # fmt: skip
    print(f"{'size':10} {'colorize':>9} {'overlay':>9} {'total':>9}")
    for size, c in result["colour"].items():
        verdict = ""
        if size == "x".join(map(str, COLOUR_SIZE)):
            verdict = "  PASS" if c["total_ms"] <= COLOUR_LIMIT_MS else "  MISS"
        print(f"{size:10} {c['colorize_ms']:9.3f} {c['overlay_ms']:9.3f} {c['total_ms']:9.3f}{verdict}")
    nl = result["node_latency"]
    if "skipped" in nl:
        print(f"Node end-to-end: skipped ({nl['skipped']})")
    else:
        st = nl["node_stages_p50_ms"]
        print(f"Node end-to-end, {nl['method']} at {nl['size']}, {nl['frames']} frames: publish -> mask p50 "
              f"{nl['e2e_p50_ms']:.1f} ms (p90 {nl['e2e_p90_ms']:.1f}); node's own total p50 {st.get('total', float('nan')):.1f};"
              f" bare Stream.step p50 {nl['bare_step_p50_ms']:.1f}; overhead {nl['overhead_p50_ms']:.1f} ms")  # fmt: skip
    print("\nTargets")
    for t in result["targets"]:
        unit = "ms" if t["unit"] == "ms" else "x"
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['name']:30} {t['size']:10} {t['value']:.3f}{unit} <= {t['limit']:g}{unit}"
              f"  ({t['detail']})")  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, cfg = result["models"], result["config"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (size, m) in zip(axes[0], models.items(), strict=True):
        bottom = np.zeros(len(m))
        for i, stage in enumerate(STAGES):
            vals = np.array([r["stages_ms"][stage] for r in m.values()])
            ax.bar(list(m), vals, bottom=bottom, color=colors[i], label=stage)
            bottom += vals
        for x, total in enumerate(bottom):
            ax.text(x, total, f"{total:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(size)
        ax.set_ylabel(f"ms per frame (avg, key every {result['config']['key_interval']})")
    axes[0][0].legend(fontsize=7)
    verdicts = ", ".join(
        f"{t['name']}@{t['size']} {'PASS' if t['pass'] else 'MISS'}" for t in result["targets"]
    )
    fig.suptitle(
        "\n".join(
            [
                f"vidseg bench: {result['machine']['summary']}, {cfg['backend']} {cfg['precision']} on {cfg['device']}",
                *textwrap.wrap(verdicts, 120),
            ]
        ),
        fontsize=7,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- main
#: DIS refuses smaller images (OpenCV asserts on the pyramid); 12x12 passes with every preset.
DIS_MIN_SIDE = 12


def _output_problem(path: Path, option: str) -> str | None:
    """Why ``path`` cannot be written at the end of the run (its folder is created now), or None."""
    if path.is_dir():
        return f"{option} {path} is a folder, not a file"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{option} {path}: cannot create its folder ({e.strerror or e})"
    if not os.access(path.parent, os.W_OK):
        return f"{option} {path}: its folder is not writable"
    return None


def _request_problem(args: argparse.Namespace) -> str | None:
    """The first option that would fail the run (minutes in, for the output paths), or None."""
    if args.key_interval < 1 or args.repeats < 1 or not args.sizes or args.threads < 0:
        return "--key-interval/--repeats must be >= 1, --threads >= 0, --sizes non-empty"
    if args.flow_downscale < 1:
        return f"--flow-downscale must be >= 1, got {args.flow_downscale}"
    if args.width_mult is not None and not args.width_mult > 0:
        return f"--width-mult must be > 0, got {args.width_mult:g}"
    for w, h in args.sizes:
        fw, fh = w // args.flow_downscale, h // args.flow_downscale
        if min(fw, fh) < DIS_MIN_SIDE:
            return (
                f"--sizes {w}x{h} with --flow-downscale {args.flow_downscale} gives {fw}x{fh} flow; DIS needs at "
                f"least {DIS_MIN_SIDE}x{DIS_MIN_SIDE}"
            )
    if args.checkpoint_dir is not None and not args.checkpoint_dir.is_dir():
        return f"--checkpoint-dir {args.checkpoint_dir} is not a folder"
    png = args.plot or (args.json.with_suffix(".png") if args.json else None)
    for path, option in ((args.json, "--json"), (png, "--plot")):
        problem = path and _output_problem(path, option)
        if problem:
            return problem
    return None


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from vidseg_ros.runtime.backends import BackendUnavailable, select_backend
    from vidseg_ros.runtime.checkpoint import file_hash

    problem = _request_problem(args)
    if problem:
        print(f"vidseg bench: error: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    threads_note = "--threads" if args.threads else "torch default"
    if not args.threads and torch.get_num_threads() > 1 and load >= 0.5 * cores:
        # Other work on the cores stalls every multi-threaded op at its barrier (10-100x here): the timings
        # would measure the neighbours. One thread per process keeps the ratios meaningful.
        args.threads = 1
        threads_note = f"auto: load average {load:.1f} on {cores} cores, so 1 thread; --threads N overrides"
    if args.threads:
        torch.set_num_threads(args.threads)
    label = [f"{w}x{h}" for w, h in args.sizes]
    reps = {lab: repeats_for(size, args.repeats) for lab, size in zip(label, args.sizes, strict=True)}
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": cores,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "threads_note": threads_note,
        "loadavg_start": [load, *os.getloadavg()[1:]],
    }
    machine["summary"] = f"{cores} cores, torch {torch.__version__} ({machine['threads']} threads)"
    print(f"vidseg bench on {machine['summary']} [{threads_note}]")
    try:
        loaded = load_models(args)
    except ValueError as e:  # an architecture build_model refuses
        print(f"vidseg bench: error: {e}", file=sys.stderr)
        return 2
    for method, x in loaded.items():
        print(f"  {method:9} {x.source}")
    try:
        backends = {
            m: select_backend(
                args.backend,
                x.model,
                precision=args.precision,
                model_hash=file_hash(x.checkpoint) if x.checkpoint else None,
                progress=print,
            )[0]
            for m, x in loaded.items()
        }
    except (BackendUnavailable, ValueError) as e:
        print(f"vidseg bench: error: {e}", file=sys.stderr)
        return 2
    backend = backends["perframe"]
    print(f"  backend {backend.name} ({backend.precision}) on {backend.device}: {backend.reason}")
    result: dict[str, Any] = {
        "format": FORMAT,
        "machine": machine,
        "config": {
            "sizes": label,
            "repeats": reps,
            "backbone": args.backbone,
            "width_mult": loaded["perframe"].meta.arch.get("width_mult"),
            "key_interval": args.key_interval,
            "flow_downscale": args.flow_downscale,
            "models": {m: x.source for m, x in loaded.items()},
            "backend": backend.name,
            "precision": backend.precision,
            "backend_reason": backend.reason,
            "device": str(backend.device),
        },
        "models": {},
        "io": {},
        "netwarp_extra": {},
        "dis_fraction": {},
        "colour": {},
    }
    from vidseg_ros.ros.bench_node import RosIO, node_latency

    io = RosIO()
    try:
        with tqdm(total=sum(r + 1 for r in reps.values()), desc="bench", unit="round") as bar:
            for lab, size in zip(label, args.sizes, strict=True):
                bar.set_description(f"bench {lab}")
                samples = time_models(loaded, backends, size, reps[lab], args, bar)
                io_result = io.time_io(size, samples=200)
                models = summarise(samples, io_result, args.key_interval)
                result["io"][lab], result["models"][lab] = io_result, models
                pf, nw = models["perframe"]["key_ms"], samples["netwarp"]
                flow = p50(samples["netwarp"]["flow"] + samples["twnet"]["flow"])
                cnn = max(0.0, p50(nw["nonkey"]) - p50(nw["key"]))
                result["netwarp_extra"][lab] = {
                    "flow_ms": flow,
                    "flowcnn_warp_ms": cnn,
                    "extra_ms": flow + cnn,
                    "fraction_of_perframe": (flow + cnn) / pf,
                }
                result["dis_fraction"][lab] = flow / pf
        result["node_overhead"] = {"size": label[0], **result["io"][label[0]]}
        for size in dict.fromkeys([*args.sizes, COLOUR_SIZE]):  # the bench sizes, then the target's
            result["colour"]["x".join(map(str, size))] = time_colour(size)
        if args.node_frames > 0:
            print(f"seg_node end to end at {label[0]} ({args.node_frames} frames)...", flush=True)
            result["node_latency"] = node_latency(loaded["netwarp"], args.sizes[0], args, io)
        else:
            result["node_latency"] = {"skipped": "--node-frames 0"}
    finally:
        io.close()
    machine["loadavg_end"] = list(os.getloadavg())
    machine["wall_s"] = round(time.monotonic() - started, 1)
    result["targets"] = evaluate_targets(result)
    print_report(result)
    print(
        f"\n(load average {machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end; {machine['wall_s']:.0f} s)"
    )
    png = args.plot or (args.json.with_suffix(".png") if args.json else None)
    try:
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.json}")
        if png:
            plot(result, png)
            print(f"wrote {png}")
    except OSError as e:  # checked at the start, but the disk can fill or the folder go in the meantime
        print(
            f"vidseg bench: error: cannot write {e.filename or args.json}: {e.strerror or e}", file=sys.stderr
        )
        return 2
    return 0
