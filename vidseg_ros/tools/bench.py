"""``vidseg bench``: per-frame vs NetWarp vs TWNet, PyTorch vs onnxruntime, the node's stages and its end-to-end
latency, in one run.

Everything is timed on the current machine in one process (plus ``seg_node`` children), so the ratios compare
like with like. Times are medians over repeats (p50); a step's time (key_ms, nonkey_ms) runs until its class
ids are on the host, because the onnxruntime backend returns ids where PyTorch returns logits; the ratios to
per-frame divide by the per-frame step at the same size and on the same backend. On a CPU the run times
PyTorch (``cpu``) and onnxruntime side by side by default, interleaved round by round (``--compare``).

The work is split into :mod:`~vidseg_ros.tools.bench_measure` (models and timing),
:mod:`~vidseg_ros.tools.bench_report` (targets, report, chart) and :mod:`vidseg_ros.ros.bench_node` (rclpy
and the ``seg_node`` children).

JSON written with ``--json`` (format ``vidseg-bench/1``; keys marked + were added later, the rest unchanged)::

    machine        platform, cores, torch version and threads, load average at start and end; + cpu: the CPU's
                   model and vector extensions (ONNX Runtime's cache key)
    config         sizes (WxH), repeats per size, backbone, width_mult, key_interval, flow_downscale, models,
                   backend, precision, backend_reason, device (of --backend, the main backend);
                   + compare: the backend names timed side by side (baseline first)
    models         {size: {method: {key_ms, nonkey_ms, flow_ms, avg_ms, stages_ms}}} of the main backend; avg_ms
                   is the mean model time per frame at key_interval (non-key frames include flow); stages_ms is
                   the average frame split into decode, preprocess, flow, inference, postprocess, publish
  + backends       {name: {backend, precision, reason, device, models}}: every timed backend, the main one
                   included; models as above
  + comparison     {backends: [baseline, other...], sizes: {size: {method: {key_ms, nonkey_ms, avg_ms,
                   avg_model_only_ms, total_ms: {backend: ms}, ratio: {other: {key, nonkey, avg, total}}}}}},
                   or {skipped: reason} when one backend is timed
    io             {size: {decode_ms, encode_ms, publish_ms, total_ms, samples}}  (real rclpy publisher)
    netwarp_extra  {size: {flow_ms, flowcnn_warp_ms, extra_ms, fraction_of_perframe}}  (main backend)
    dis_fraction   {size: DIS flow time / per-frame model time}
    tdnet_split    {size: {subnetwork_ms, attention_ms, head_ms}}: TDNet's parts for a frame with a full cache,
                   PyTorch eager on the main backend's device
    node_overhead  decode + encode + publish p50 at the first size, without the model
    colour         {size: {colorize_ms, overlay_ms, total_ms, samples, cv_threads}} at the sizes plus 768x576:
                   palette.colorize and palette.overlay p50 on a full-size mask of ids enlarged from 1/4 size
                   (total: both, what the node spends when both topics are subscribed), one OpenCV thread
    node_latency   seg_node child on the main backend: publish -> mask received p50/p90, node stage p50s, bare
                   Stream.step p50 on the same backend and the difference (+ backend); or {"skipped": reason}
  + node_compare   {method: {size, backends, frames, answered, answered_fraction, total_p50_ms, stages_p50_ms,
                   e2e_p50_ms, ratio, agreement_mean, agreement_min}} for NetWarp and TWNet at the first size: a
                   PyTorch and an onnxruntime seg_node fed the same frames in turn; or {"skipped": reason}
    targets        [{name, size, value, limit, unit, pass, detail, + op, + backend}]: the issue targets per
                   backend (NetWarp and TWNet ratios), DIS, node overhead, colour + overlay and the seg_node
                   comparison
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from vidseg_ros.errors import first_line
from vidseg_ros.tools.bench_measure import (
    COLOUR_SIZE,
    METHODS,
    STAGES,
    Loaded,
    compare,
    load_models,
    p50,
    repeats_for,
    summarise,
    synthetic_frames,
    time_colour,
    time_models,
    time_tdnet_split,
)
from vidseg_ros.tools.bench_report import evaluate_targets, plot, print_report
from vidseg_ros.tools.export import parse_size

__all__ = [
    "METHODS",
    "STAGES",
    "Loaded",
    "add_arguments",
    "repeats_for",
    "run",
    "synthetic_frames",
    "time_colour",
]

FORMAT = "vidseg-bench/1"
BACKEND_CHOICES = ("auto", "cpu", "cuda", "tensorrt", "onnxruntime")
#: The CPU backends ``--compare auto`` puts side by side: PyTorch eager (the baseline) and onnxruntime.
CPU_PAIR = ("cpu", "onnxruntime")
#: DIS refuses smaller images (OpenCV asserts on the pyramid); 12x12 passes with every preset.
DIS_MIN_SIDE = 12


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
        help="MobileNetV2 width (default: the checkpoints', else 0.5).",
    )
    p.add_argument("--checkpoint-dir", type=Path, help="Where to look for <method>_<backbone>_*.pt.")
    p.add_argument("--key-interval", type=int, default=12, help="TWNet/NetWarp key interval for averages.")
    p.add_argument("--flow-downscale", type=int, default=2, help="As the node's motion.flow_downscale.")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch and onnxruntime intra-op threads; 0: torch's default, or 1 when the machine is already busy.",
    )
    p.add_argument(
        "--backend", default="auto", choices=BACKEND_CHOICES, help="Where the steps run (main backend)."
    )
    p.add_argument(
        "--compare",
        default="auto",
        help="Backends timed side by side with --backend, comma-separated (cpu, onnxruntime, cuda, tensorrt), "
        "or none. auto: PyTorch cpu and onnxruntime when the main backend runs on the CPU and onnxruntime "
        "imports. The first is the baseline of the ratios (cpu when present).",
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="Step precision.")
    p.add_argument("--node-frames", type=int, default=30, help="Frames sent to seg_node (0: skip the node).")


# ------------------------------------------------------------------------------------------------- checks
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
    unknown = [b for b in args.compare.split(",") if b.strip() not in (*BACKEND_CHOICES[1:], "auto", "none")]
    if unknown:
        return (
            f"--compare takes auto, none or backends from {'|'.join(BACKEND_CHOICES[1:])}, got {unknown[0]!r}"
        )
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


# --------------------------------------------------------------------------------------------- backends
def compared_names(main: str, request: str) -> tuple[list[str], str | None]:
    """The backends to time, baseline first, and why only the main one when that is all.

    Args:
        main: Name of the main backend (``select_backend``'s pick for ``--backend``).
        request: ``--compare``: ``auto``, ``none`` or a comma-separated list.
    """
    from vidseg_ros.runtime.ort_backend import onnxruntime_problem

    if request.strip() == "none":
        return [main], "--compare none"
    if request.strip() == "auto":
        if main not in CPU_PAIR:
            return [main], f"main backend {main} is not a CPU backend; pass --compare to add others"
        problem = onnxruntime_problem()
        return ([main], problem) if problem else (list(CPU_PAIR), None)
    names = list(dict.fromkeys([main, *(b.strip() for b in request.split(",") if b.strip() != "auto")]))
    names.sort(key=lambda n: n != "cpu")  # PyTorch on the CPU is the baseline when it is there
    return names, None if len(names) > 1 else f"--compare {request} adds nothing to {main}"


def build_runs(
    loaded: dict[str, Loaded], names: list[str], main: dict[str, Any], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """``{name: {method: backend}}``: the main backends as built, the others built now on copies of the models."""
    from vidseg_ros.runtime.backends import select_backend
    from vidseg_ros.runtime.checkpoint import file_hash

    main_name = main["perframe"].name
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == main_name:
            runs[name] = main
            continue
        precision = args.precision if name in ("cuda", "tensorrt") else "fp32"
        runs[name] = {
            # A copy: a backend moves its model to its own device, and the main backend keeps using the original.
            m: select_backend(
                name,
                copy.deepcopy(x.model),
                precision=precision,
                model_hash=file_hash(x.checkpoint) if x.checkpoint else None,
                progress=print,
            )[0]
            for m, x in loaded.items()
        }
    return runs


def _backend_entry(backend: Any) -> dict[str, Any]:
    return {
        "backend": backend.name,
        "precision": backend.precision,
        "reason": backend.reason,
        "device": str(backend.device),
        "models": {},
    }


# ------------------------------------------------------------------------------------------------- main
def _fail(message: str) -> int:
    print(f"vidseg bench: error: {message}", file=sys.stderr)
    return 2


def _machine(args: argparse.Namespace) -> dict[str, Any]:
    """Platform facts; sets one thread when the machine is already busy and --threads was not given."""
    import torch

    from vidseg_ros.runtime.hardware import cpu_identity

    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    threads_note = "--threads" if args.threads else "torch default"
    if not args.threads and torch.get_num_threads() > 1 and load >= 0.5 * cores:
        # Other work on the cores stalls every multi-threaded op at its barrier (10-100x here): the timings
        # would measure the neighbours. One thread per process keeps the ratios meaningful.
        args.threads = 1
        threads_note = f"auto: load average {load:.1f} on {cores} cores, so 1 thread; --threads N overrides"
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        # Ratios between backends and methods move from one CPU to another, not only their times.
        "cpu": cpu_identity(),
        "cores": cores,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "threads_note": threads_note,
        "loadavg_start": [load, *os.getloadavg()[1:]],
    }
    machine["summary"] = (
        f"{cores} cores of {machine['cpu']}, torch {torch.__version__} ({machine['threads']} threads)"
    )
    return machine


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidseg_ros.runtime.backends import BackendUnavailable, select_backend
    from vidseg_ros.runtime.checkpoint import file_hash

    problem = _request_problem(args)
    if problem:
        return _fail(problem)
    started = time.monotonic()
    machine = _machine(args)
    label = [f"{w}x{h}" for w, h in args.sizes]
    reps = {lab: repeats_for(size, args.repeats) for lab, size in zip(label, args.sizes, strict=True)}
    print(f"vidseg bench on {machine['summary']} [{machine['threads_note']}]")
    try:
        loaded = load_models(args)
    except ValueError as e:  # an architecture build_model refuses
        return _fail(str(e))
    for method, x in loaded.items():
        print(f"  {method:9} {x.source}")
    try:
        main = {
            m: select_backend(
                args.backend,
                x.model,
                precision=args.precision,
                model_hash=file_hash(x.checkpoint) if x.checkpoint else None,
                progress=print,
            )[0]
            for m, x in loaded.items()
        }
        backend = main["perframe"]
        names, alone = compared_names(backend.name, args.compare)
        runs = build_runs(loaded, names, main, args)
    except (BackendUnavailable, ValueError, RuntimeError) as e:
        return _fail(first_line(e))
    print(f"  backend {backend.name} ({backend.precision}) on {backend.device}: {backend.reason}")
    for name in names:
        if name != backend.name:
            b = runs[name]["perframe"]
            print(f"  side by side: {b.name} ({b.precision}) on {b.device}: {b.reason}")
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
            "compare": names,
        },
        "models": {},
        "backends": {name: _backend_entry(runs[name]["perframe"]) for name in names},
        "comparison": {"skipped": alone} if alone else {"backends": names, "sizes": {}},
        "io": {},
        "netwarp_extra": {},
        "dis_fraction": {},
        "tdnet_split": {},
        "colour": {},
    }
    from vidseg_ros.ros.bench_node import RosIO, node_compare, node_latency

    io = RosIO()
    try:
        with tqdm(total=sum(r + 1 for r in reps.values()), desc="bench", unit="round") as bar:
            for lab, size in zip(label, args.sizes, strict=True):
                bar.set_description(f"bench {lab}")
                samples = time_models(loaded, runs, size, reps[lab], args, bar)
                io_result = io.time_io(size, samples=200)
                result["io"][lab] = io_result
                for name in names:
                    result["backends"][name]["models"][lab] = summarise(
                        samples[name], io_result, args.key_interval
                    )
                models = result["models"][lab] = result["backends"][backend.name]["models"][lab]
                if not alone:
                    result["comparison"]["sizes"][lab] = compare(
                        {n: result["backends"][n]["models"][lab] for n in names}, names
                    )
                main_samples = samples[backend.name]
                pf, nw = models["perframe"]["key_ms"], main_samples["netwarp"]
                flow = p50(main_samples["netwarp"]["flow"] + main_samples["twnet"]["flow"])
                cnn = max(0.0, p50(nw["nonkey"]) - p50(nw["key"]))
                result["netwarp_extra"][lab] = {
                    "flow_ms": flow,
                    "flowcnn_warp_ms": cnn,
                    "extra_ms": flow + cnn,
                    "fraction_of_perframe": (flow + cnn) / pf,
                }
                result["dis_fraction"][lab] = flow / pf
                result["tdnet_split"][lab] = time_tdnet_split(loaded["tdnet"].model, size, reps[lab])
        result["node_overhead"] = {"size": label[0], **result["io"][label[0]]}
        for size in dict.fromkeys([*args.sizes, COLOUR_SIZE]):  # the bench sizes, then the target's
            result["colour"]["x".join(map(str, size))] = time_colour(size)
        if args.node_frames > 0:
            print(f"seg_node end to end at {label[0]} ({args.node_frames} frames)...", flush=True)
            result["node_latency"] = node_latency(loaded["netwarp"], args.sizes[0], args, io, main["netwarp"])
            if set(CPU_PAIR) <= set(names):
                videos = {m: loaded[m] for m in ("netwarp", "twnet")}
                result["node_compare"] = node_compare(videos, args.sizes[0], args, io, CPU_PAIR)
            else:
                result["node_compare"] = {"skipped": f"needs backends {' and '.join(CPU_PAIR)} side by side"}
        else:
            result["node_latency"] = {"skipped": "--node-frames 0"}
            result["node_compare"] = {"skipped": "--node-frames 0"}
    finally:
        io.close()
    machine["loadavg_end"] = list(os.getloadavg())
    machine["wall_s"] = round(time.monotonic() - started, 1)
    result["targets"] = evaluate_targets(result)
    print_report(result)
    print(
        f"\n(load average {machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end; {machine['wall_s']:.0f} s)"
    )
    return _write(result, args)


def _write(result: dict[str, Any], args: argparse.Namespace) -> int:
    png = args.plot or (args.json.with_suffix(".png") if args.json else None)
    try:
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.json}")
        if png:
            plot(result, png)
            print(f"wrote {png}")
    except OSError as e:  # checked at the start, but the disk can fill or the folder go in the meantime
        return _fail(f"cannot write {e.filename or args.json}: {e.strerror or e}")
    return 0
