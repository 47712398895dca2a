"""``vidseg export``: step functions as ONNX files, or TensorRT engines built ahead of time.

``--format onnx`` writes one ONNX file per step function of the checkpoint's model (per-frame: key, with a
model card beside it, so the file runs as a foreign per-frame model; NetWarp, TWNet and GRFP: key and non-key) with the recurrent state as explicit inputs and outputs, checks each against
onnxruntime, runs a short recurrent chain through onnxruntime (state outputs fed back as inputs) against
PyTorch, and writes ``manifest.json`` describing inputs, outputs, preprocessing and the measured errors.

``--backend tensorrt`` builds the engines the node's ``tensorrt`` backend will look up, into the same cache,
so the node starts in seconds instead of building for minutes on its first frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FORMAT = "vidseg-onnx-export/1"
CHAIN_FRAMES = 5


class ExportError(Exception):
    """An export request that cannot be carried out (option or output path); one line for the user."""


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 640x480, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="", help="Checkpoint (default: the shipped NetWarp model).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--format", choices=("onnx",), help="Write ONNX files (for trtexec, Jetson, ORT).")
    what.add_argument("--backend", choices=("tensorrt",), help="Build TensorRT engines into the cache.")
    p.add_argument("--out", type=Path, default=Path("export_out"), help="ONNX output folder.")
    p.add_argument("--size", type=parse_size, help="Inference size WxH (default: the checkpoint's).")
    p.add_argument(
        "--flow-downscale", type=int, default=2, help="As the node's motion.flow_downscale (default 2)."
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17).")
    p.add_argument("--tolerance", type=float, default=1e-4, help="Max relative error vs PyTorch.")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16", help="TensorRT precision.")
    p.add_argument("--cache-dir", type=Path, help="Engine cache (default: $VIDSEG_ENGINE_CACHE or ~/.cache).")


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|``: the error relative to the output's own scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-12)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_run(session: Any, names: tuple[str, ...], inputs: tuple[Any, ...]) -> list[np.ndarray]:
    """Runs a step session on tensors, feeding only inputs the graph kept."""
    wanted = {i.name for i in session.get_inputs()}
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=True) if n in wanted}
    return session.run(None, feeds)


def verify_step(session: Any, spec: Any) -> dict[str, float]:
    """Relative error of every output of one step on its example inputs."""
    import torch

    with torch.no_grad():
        expected = spec.module(*spec.example_inputs)
    got = ort_run(session, spec.input_names, spec.example_inputs)
    return {
        name: relative_error(g, e.cpu().numpy())
        for name, g, e in zip(spec.output_names, got, expected, strict=True)
    }


def verify_chain(sessions: dict[str, Any], specs: dict[str, Any], frames: int = CHAIN_FRAMES) -> list[float]:
    """Key frame then non-key frames (phases in turn), each runtime carrying its *own* state; worst error per
    frame."""
    import torch

    key = specs["key"]
    nonkey = [name for name in specs if name != "key"]  # in phase order
    image0 = key.example_inputs[0]
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(image0.shape, generator=g) for _ in range(frames)]
    errors = []
    torch_state: tuple = ()
    ort_state: tuple = ()
    for t, image in enumerate(images):
        if t == 0 or not nonkey:
            names, torch_in, ort_in = key.input_names, (image,), (image,)
            module, session = key.module, sessions["key"]
        else:
            name = nonkey[t % len(nonkey)]
            spec = specs[name]
            head: tuple = (image,)
            if "flow" in spec.input_names:
                head = (image, images[t - 1], torch.randn(spec.example_inputs[2].shape, generator=g) * 2.0)
            names, module, session = spec.input_names, spec.module, sessions[name]
            torch_in = head + torch_state
            ort_in = head + tuple(torch.from_numpy(s) for s in ort_state)
        with torch.no_grad():
            expected = [o.cpu() for o in module(*torch_in)]
        got = ort_run(session, names, ort_in)
        errors.append(max(relative_error(o, e.numpy()) for o, e in zip(got, expected, strict=True)))
        torch_state, ort_state = tuple(expected[1:]), tuple(got[1:])
    return errors


def _load(args: argparse.Namespace) -> tuple[Any, Any, Path, tuple[int, int]]:
    from vidseg_ros.runtime.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    model, meta = load_checkpoint(path)
    w, h = args.size or tuple(meta.input_size)
    return model, meta, path, (int(h), int(w))


def card_of(meta: Any, image_hw: tuple[int, int]) -> Any:
    """The model card of an exported per-frame step: its classes, input size and normalisation."""
    from vidseg_ros.runtime.foreign import ModelCard

    return ModelCard(
        classes=tuple(meta.classes),
        colors=tuple(tuple(int(v) for v in c) for c in meta.palette),
        width=image_hw[1],
        height=image_hw[0],
        channel_order="rgb",
        scale=1 / 255,
        mean=tuple(meta.mean),
        std=tuple(meta.std),
        output="logits",
    )


def _run_onnx(args: argparse.Namespace) -> int:
    import onnx
    import onnxruntime
    import torch
    from tqdm import tqdm

    from vidseg_ros.runtime.checkpoint import file_hash
    from vidseg_ros.runtime.foreign import write_card
    from vidseg_ros.runtime.onnx_export import export_onnx
    from vidseg_ros.runtime.steps import default_flow_hw, step_specs

    if args.opset < 17:
        raise ExportError(f"--opset must be >= 17 (GridSample and friends), got {args.opset}")
    model, meta, ckpt, image_hw = _load(args)
    flow_hw = default_flow_hw(image_hw, args.flow_downscale)
    specs = {s.name: s for s in step_specs(model, image_hw, flow_hw)}
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output folder {out}: {e.strerror or e}") from e
    h, w = image_hw
    steps: dict[str, Any] = {}
    sessions = {}
    ok = True
    for name, spec in tqdm(specs.items(), desc="export onnx", unit="step"):
        path = out / f"{meta.method}_{name}_{w}x{h}.onnx"
        start = time.monotonic()
        export_onnx(spec, path, args.opset)
        onnx.checker.check_model(str(path))
        sessions[name] = ort_session(path)
        errors = verify_step(sessions[name], spec)
        worst = max(errors.values())
        ok &= worst <= args.tolerance
        tqdm.write(
            f"  {name:7s} -> {path}  max relative error vs PyTorch {worst:.2e}  ({time.monotonic() - start:.1f} s)"
        )
        steps[name] = {
            "file": path.name,
            "inputs": [
                {"name": n, "shape": list(t.shape), "dtype": "float32"}
                for n, t in zip(spec.input_names, spec.example_inputs, strict=True)
            ],
            "outputs": list(spec.output_names),
            "max_rel_error": errors,
            "sha256": file_hash(path),
        }
    card = None
    if list(steps) == ["key"]:  # a per-frame model is a foreign per-frame model too: give it its card
        card = write_card(out / steps["key"]["file"], card_of(meta, image_hw)).name
        tqdm.write(f"  model card -> {out / card}  (model.checkpoint:={out / steps['key']['file']} runs it)")
    chain = verify_chain(sessions, specs)
    ok &= max(chain) <= args.tolerance
    print(f"  recurrent chain over {len(chain)} frames (state fed back): max relative error {max(chain):.2e}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_hash(ckpt),
        "method": meta.method,
        "arch": meta.arch,
        "input_size": [w, h],
        "flow_size": [flow_hw[1], flow_hw[0]],
        "state_keys": list(specs["key"].state_keys),
        "opset": args.opset,
        "preprocess": {"mean": meta.mean, "std": meta.std, "scale": 1 / 255, "layout": "NCHW RGB"},
        "classes": meta.classes,
        "palette": meta.palette,
        "steps": steps,
        "card": card,
        "chain_max_rel_error": chain,
        "tolerance": args.tolerance,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(steps)} step(s) and {out / 'manifest.json'}")
    if not ok:
        print(
            f"vidseg export: error: ONNX outputs differ from PyTorch by more than {args.tolerance:g}",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_tensorrt(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidseg_ros.runtime.backends import BackendUnavailable, choose_backend
    from vidseg_ros.runtime.checkpoint import file_hash
    from vidseg_ros.runtime.engine_cache import EngineCache
    from vidseg_ros.runtime.steps import default_flow_hw, step_specs
    from vidseg_ros.runtime.trt_backend import TRT_SUFFIX, TensorRTBackend

    try:
        _, precision, _ = choose_backend("tensorrt", args.precision)
    except BackendUnavailable as e:
        print(f"vidseg export: {e}", file=sys.stderr)
        return 2
    model, meta, ckpt, image_hw = _load(args)
    cache = EngineCache(args.cache_dir, suffix=TRT_SUFFIX)
    try:
        # The cache would create it at the first engine, minutes into the build.
        cache.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create engine cache {cache.root}: {e.strerror or e}") from e
    backend = TensorRTBackend(model, precision=precision, cache=cache, model_hash=file_hash(ckpt))
    specs = step_specs(backend.model, image_hw, default_flow_hw(image_hw, args.flow_downscale))
    h, w = image_hw
    print(f"building TensorRT engines for {meta.name} at {w}x{h} {precision} into {cache.root}")
    with tqdm(specs, desc="tensorrt", unit="engine") as bar:
        for spec in bar:
            state = (
                "cached" if cache.check(backend.engine_key(spec)) is None else "building, can take minutes"
            )
            bar.set_postfix_str(f"{spec.name}: {state}")
            result = backend.load_or_build(spec)
            took = f" in {result.build_s:.0f} s" if result.status != "hit" else ""
            tqdm.write(f"  {spec.name:7s} {result.status}{took}: {result.path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Exports; returns 0, 1 when ONNX and PyTorch disagree, 2 for a bad checkpoint, option or output path."""
    from vidseg_ros.runtime.checkpoint import CheckpointError

    try:
        if args.flow_downscale < 1:
            raise ExportError(f"--flow-downscale must be >= 1, got {args.flow_downscale}")
        return _run_onnx(args) if args.format == "onnx" else _run_tensorrt(args)
    except (CheckpointError, ExportError) as e:
        print(f"vidseg export: error: {e}", file=sys.stderr)
        return 2
