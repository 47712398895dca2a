"""The model half of ``vidseg bench``: checkpoints, synthetic frames, and the interleaved timing of every
method's steps on every compared backend (see :mod:`vidseg_ros.tools.bench` for the JSON it feeds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("perframe", "netwarp", "twnet", "grfp", "tdnet")
#: Shipped file names that do not start with ``<method>_<backbone>``.
FILE_STEMS = {"tdnet": "tdnet4"}
REF_PIXELS = 640 * 480
DEFAULT_WIDTH = 0.5
STAGES = ("decode", "preprocess", "flow", "inference", "postprocess", "publish")
COLOUR_SIZE = (768, 576)  # the camera size of the colour + overlay target

#: samples[backend][method][measure] -> times in ms (``gflop_*``: one value, in GFLOP).
Samples = dict[str, dict[str, dict[str, list[float]]]]


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
    from vidseg_ros.models.tdnet import DEFAULT_SUBNETWORK
    from vidseg_ros.runtime.checkpoint import CheckpointError, ModelMeta, load_checkpoint, packaged_checkpoint

    folder = args.checkpoint_dir or packaged_checkpoint("x").parent
    width = args.width_mult if args.backbone == "mobilenetv2" else 1.0
    out = {}
    for method in METHODS:
        found = None
        for path in sorted(folder.glob(f"{FILE_STEMS.get(method, method)}_{args.backbone}_*.pt")):
            try:
                model, meta = load_checkpoint(path)
            except CheckpointError as e:
                print(f"  ignoring {path.name}: {e}")
                continue
            # Without --width-mult the first checkpoint sets the width; all methods must share it.
            width = meta.arch.get("width_mult", 1.0) if width is None else width
            # TDNet's sub-networks are narrower than the others' network by design: their width is their own.
            if method == "tdnet" or meta.arch.get("width_mult", 1.0) == width:
                found = Loaded(model, meta, path.name, path)
                break
            print(f"  ignoring {path.name}: width_mult {meta.arch.get('width_mult')} != {width}")
        if found is None:
            width = DEFAULT_WIDTH if width is None else width
            arch = {"backbone": args.backbone, "width_mult": width}
            if method == "tdnet":
                arch = dict(DEFAULT_SUBNETWORK)
            model = build_model(method, num_classes=len(SYNTH_CLASSES), **arch)
            arch = {"method": method, **model.config()}
            meta = ModelMeta(method, arch, list(SYNTH_CLASSES), [list(c) for c in SYNTH_PALETTE])
            found = Loaded(model.eval(), meta, "untrained (timing does not depend on weights)", None)
        out[method] = found
    return out


# ------------------------------------------------------------------------------------------ measurements
def time_models(
    loaded: dict[str, Loaded],
    runs: dict[str, dict[str, Any]],
    size: tuple[int, int],
    repeats: int,
    args: argparse.Namespace,
    bar: Any,
) -> Samples:
    """Per backend and method: lists of preprocess, flow, key/nonkey inference and postprocess times (ms).

    Args:
        loaded: The models, per method.
        runs: ``{backend name: {method: backend}}``; every backend times every method.

    The segmenter does what the node does around the model (upload, resize, DIS, arg-max, download); the
    steps run on each backend. A step's time runs until its class ids are on the host (``key``, ``nonkey``):
    a backend may return ids in place of logits, so the arg-max is charged to every step alike;
    ``postprocess`` is that arg-max and download alone. Within a round every backend runs every method back
    to back, after one untimed step, so drift of the machine hits all of them alike and their ratios compare
    like with like. CUDA work is synchronised before each clock read.
    """
    import torch

    from vidseg_ros.runtime.segmenter import Segmenter
    from vidseg_ros.runtime.steps import step_names

    w, h = size
    frames = synthetic_frames(w, h, repeats + 2)
    segs: dict[tuple[str, str], Any] = {}
    for name, backends in runs.items():
        for method, x in loaded.items():
            seg = Segmenter(
                x.model, x.meta, backend=backends[method], input_size=size, flow_downscale=args.flow_downscale
            )
            seg.prepare_backend()
            segs[(name, method)] = seg
    samples: Samples = {name: {m: {} for m in loaded} for name in runs}

    def add(key: tuple[str, str], measure: str, seconds: float) -> None:
        samples[key[0]][key[1]].setdefault(measure, []).append(seconds * 1e3)

    def clock(device: Any) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    # Repeat 0 warms up (allocator, oneDNN primitives and ORT arenas for these shapes) and is not recorded.
    for r in range(repeats + 1):
        switched = None
        for key, seg in segs.items():
            dev = seg.device
            if key[0] != switched:
                # Runs of one runtime slow down the first step of the other that follows them (ORT's TWNet
                # non-key step took 14.3 ms right after PyTorch's, 12.2 ms in a run without PyTorch). One
                # untimed step absorbs the switch, so no measured step pays for it.
                seg.to_mask(seg.key_step(seg.prepare(frames[r]))[0], (h, w))
                switched = key[0]
            prev = seg.prepare(frames[r])
            t0 = clock(dev)
            cur = seg.prepare(frames[r + 1])
            t1 = clock(dev)
            logits, state = seg.key_step(cur)
            t2 = clock(dev)
            seg.to_mask(logits, (h, w))
            t3 = clock(dev)
            if r:
                add(key, "preprocess", t1 - t0)
                add(key, "key", t3 - t1)
                add(key, "postprocess", t3 - t2)
            nonkey = len(step_names(seg.model)) > 1
            if nonkey:
                t0 = clock(dev)
                flow = seg.motion(cur, prev) if seg.uses_motion else None
                t1 = clock(dev)
                # TDNet: the path after the key frame's, attention included (the step computes it always).
                nonkey_logits, _ = seg.nonkey_step(cur, prev, flow, state)
                seg.to_mask(nonkey_logits, (h, w))
                t2 = clock(dev)
                if r:
                    if seg.uses_motion:
                        add(key, "flow", t1 - t0)
                    add(key, "nonkey", t2 - t1)
            if not r and key[0] == next(iter(runs)):  # FLOPs are the model's: counted once per method
                form = seg.model.inference_form()  # what the backends run, on the state they carry
                counts = {"gflop_key": [_gflop(form.key_step, cur.image)]}
                if nonkey:
                    counts["gflop_nonkey"] = [_gflop(form.nonkey_step, cur.image, prev.image, flow, state)]
                for name in runs:
                    samples[name][key[1]].update(counts)
        bar.update(1)
    return samples


def time_tdnet_split(model: Any, size: tuple[int, int], repeats: int) -> dict[str, float]:
    """p50 ms of TDNet's parts for one frame with a full cache, in PyTorch eager on the model's device: the
    sub-network (encoder and decoder to stride 8), the attention (query/key/value and the chain) and the head
    (normalisation, stride-4 stage and classifier: the steps of the CPU backends end there, and the arg-max of
    the upsampled logits is the postprocess, which every model pays)."""
    import torch

    w, h = size
    device = next(model.parameters()).device
    image = torch.randn(1, 3, h, w, device=device)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    times: dict[str, list[float]] = {"subnetwork_ms": [], "attention_ms": [], "head_ms": []}
    with torch.inference_mode():
        _, state = model.key_step(image)
        for _ in range(model.phases - 1):  # fill the cache
            _, state = model.nonkey_step(image, None, None, state)
        path = model.phase_of(state)
        cache = [model.cached(state, name) for name in ("query", "key", "value")]
        for r in range(repeats + 1):  # round 0 warms up
            t0 = clock()
            group, c2 = model.subnetwork(path, image)
            t1 = clock()
            q, _, v = model.encodings[path](group)
            c = model.propagation(*cache, q)
            t2 = clock()
            model.head(path, v + c, c2)
            t3 = clock()
            if r:
                for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    times[name].append(seconds * 1e3)
    return {name: p50(v) for name, v in times.items()}


def _gflop(step: Any, *inputs: Any) -> float:
    """Multiply-adds x 2 of convolutions and matmuls (what FLOP counts usually mean), in GFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        step(*inputs)
    return counter.get_total_flops() / 1e9


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


def summarise(samples: dict[str, dict[str, list[float]]], io: dict[str, float], k: int) -> dict[str, Any]:
    """One backend's samples as ``{method: {key_ms, nonkey_ms, flow_ms, avg_ms, ..., stages_ms}}``."""
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
            "inference": avg_inf - p50(s["postprocess"]),
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


def compare(models: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Side by side at one size: ``{method: {measure: {backend: ms}, "ratio": {backend: {measure: x}}}}``.

    ``names[0]`` is the baseline; each ratio divides another backend's time by the baseline's.
    """
    base = names[0]
    out: dict[str, Any] = {}
    for method in models[base]:
        row: dict[str, Any] = {}
        for measure in ("key_ms", "nonkey_ms", "avg_ms", "avg_model_only_ms", "total_ms"):
            row[measure] = {n: models[n][method][measure] for n in names}
        row["ratio"] = {
            n: {
                m.removesuffix("_ms"): row[m][n] / row[m][base]
                for m in ("key_ms", "nonkey_ms", "avg_ms", "total_ms")
                if row[m][base]
            }
            for n in names[1:]
        }
        out[method] = row
    return out
