"""``vidseg eval``: run checkpoints online over a dataset split or labelled bags and compare them.

Examples::

    vidseg eval --dataset cityscapes --data-root ROOT --split val --checkpoint pf.pt --checkpoint nw.pt --json out.json
    vidseg eval --checkpoint perframe.pt --checkpoint twnet.pt --bag bags/test \\
        --json eval.json --plot eval.png --key-distance

Each checkpoint runs over each sequence (a bag, a Cityscapes snippet, a video) frame by frame through ``runtime.Stream`` (as the node does); the
checkpoints are interleaved frame by frame, so their times compare within the run. The JSON holds, per
checkpoint: ``miou``, ``tc``, ``trimap_iou``, ``per_class_iou`` (name -> IoU, null for a class with neither
ground truth nor prediction, left out of the mean), ``per_class_tc`` (name -> TC, whose mean is ``tc``: which
classes flicker), ``labelled_frames``, ``ms_per_frame``, ``ms_key``,
``ms_nonkey``, ``ms_p95``, ``stage_ms``, ``per_sequence`` and, with ``--key-distance``, ``key_distance``
(``{"0": {"miou", "per_class_iou", "frames"}, "1": ...}``). ``--label-propagation`` adds a top-level
``label_propagation`` (the same per-distance layout, for ground truth carried by the flow alone). Markdown
tables go to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vidseg_ros.tools.synth import parse_size
from vidseg_ros.tools.train import add_data_arguments, unwritable


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the ``eval`` options to ``p``."""
    p.add_argument(
        "--checkpoint", dest="checkpoints", action="append", required=True, help="checkpoint (repeatable)"
    )
    add_data_arguments(p, split="val")
    p.add_argument(
        "--video",
        dest="videos",
        type=Path,
        action="append",
        help="video file (repeatable; H.264, MPEG-4, ...): an unlabelled run (timings and TC), keyed on its "
        "I-frames with the codec's motion vectors",
    )
    p.add_argument("--json", type=Path, required=True, help="write the results here")
    p.add_argument("--plot", type=Path, help="write a PNG comparison plot here")
    p.add_argument("--key-interval", type=int, help="override TWNet's key interval (like twnet.key_interval)")
    p.add_argument(
        "--key-distance", action="store_true", help="also report mIoU per distance from the key frame"
    )
    p.add_argument(
        "--label-propagation",
        action="store_true",
        help="also warp each key frame's labels along the flow alone (no model) and report per-class IoU per "
        "distance: which classes the motion itself fails on",
    )
    p.add_argument(
        "--size", type=parse_size, metavar="WxH", help="inference size (default: the checkpoint's)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument(
        "--backend",
        type=_backend_list,
        help="run each checkpoint on each of these backends, interleaved, comma-separated (cpu, cuda, "
        "tensorrt, onnxruntime, auto; e.g. cpu,onnxruntime); default: PyTorch on --device",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--flow-downscale", type=int, default=2, help="flow at size / N (default: 2, as the node)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _backend_list(text: str) -> list[str]:
    from vidseg_ros.runtime.backends import REQUESTS

    names = list(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    bad = [b for b in names if b not in REQUESTS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"backends must be from {','.join(REQUESTS)}, got {text!r}")
    return names


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """``| method | mIoU | TC | trimap IoU | ms/frame | key ms | non-key ms |`` (IoUs in %)."""
    lines = [
        "| method | mIoU | TC | trimap IoU | ms/frame | key ms | non-key ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = f"{r['method']} ({r['name']}, K={r['key_interval']})"
        lines.append(
            f"| {name} | {_pct(r['miou'])} | {_pct(r['tc'])} | {_pct(r['trimap_iou'])} | "
            f"{_ms(r['ms_per_frame'])} | {_ms(r['ms_key'])} | {_ms(r['ms_nonkey'])} |"
        )
    return "\n".join(lines)


def class_table(results: Sequence[dict[str, Any]], label: str = "class", key: str = "per_class_iou") -> str:
    """Per-class IoU (or another per-class score, ``key``) in %, one column per result:
    ``| class | name1 | name2 | ... |``."""
    lines = [
        f"| {label} | " + " | ".join(r["name"] for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for cls in results[0][key]:
        cells = " | ".join(_pct(r[key].get(cls)) for r in results)
        lines.append(f"| {cls} | {cells} |")
    return "\n".join(lines)


def propagation_table(propagation: dict[str, Any]) -> str:
    """Per-class IoU (%) of labels carried by the flow alone, at a few distances from the key frame."""
    curve = propagation["key_distance"]
    if not curve:
        return "(no non-key frames to carry labels to)"
    measured = sorted(curve, key=int)
    distances = dict.fromkeys([measured[0], measured[len(measured) // 2], measured[-1]])
    columns = [{"name": f"d={d}", "per_class_iou": curve[d]["per_class_iou"]} for d in distances]
    return class_table(columns, label="class (labels carried by the flow)")


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Bar chart of mIoU, TC and trimap IoU per checkpoint; mIoU vs key distance when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in results if r.get("key_distance")]
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    metrics = (("miou", "mIoU"), ("tc", "TC"), ("trimap_iou", "trimap IoU"))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        xs = [m + (i - (len(results) - 1) / 2) * width for m in range(len(metrics))]
        ys = [100 * (r[key] or 0.0) for key, _ in metrics]
        ax.bar(xs, ys, width, label=f"{r['method']} ({r['name']})")
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title("accuracy and temporal consistency")
    ax.legend(fontsize="small")
    if curves:
        ax = axes[0][1]
        for r in curves:
            points = sorted(
                (int(d), v["miou"]) for d, v in r["key_distance"].items() if v["miou"] is not None
            )
            style = {"color": f"C{results.index(r)}", "label": f"{r['method']} ({r['name']})"}
            if len(points) == 1:  # every frame is a key frame (per-frame model): a reference level
                ax.axhline(100 * points[0][1], linestyle="--", **style)
            else:
                ax.plot([d for d, _ in points], [100 * v for _, v in points], marker="o", **style)
        ax.set_xlabel("frames since the last key frame")
        ax.set_ylabel("mIoU %")
        ax.set_title("error accumulation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Evaluates every checkpoint on the data; returns 0, or 2 for a bad checkpoint, dataset or option."""
    import torch

    from vidseg_ros.classes import ClassTable, LabelError, load_classes_yaml
    from vidseg_ros.data.datasets import open_dataset
    from vidseg_ros.data.datasets.bag import BagDataset
    from vidseg_ros.data.datasets.video import VideoFileDataset
    from vidseg_ros.models.twnet import DEFAULT_KEY_INTERVAL
    from vidseg_ros.runtime.checkpoint import CheckpointError, read_meta, resolve_checkpoint
    from vidseg_ros.runtime.segmenter import pick_device
    from vidseg_ros.training.evaluate import evaluate_checkpoints, propagate_labels

    if args.key_interval is not None and args.key_interval < 1:
        print(f"vidseg eval: error: --key-interval must be >= 1, got {args.key_interval}", file=sys.stderr)
        return 2
    sources = sum((bool(args.bags), args.dataset is not None, bool(args.videos)))
    if sources != 1 or (args.dataset and not args.data_root):
        print(
            "vidseg eval: error: give one of --bag (repeatable), --dataset with --data-root, or --video",
            file=sys.stderr,
        )
        return 2
    if args.flow_downscale < 1:
        print(
            f"vidseg eval: error: --flow-downscale must be >= 1, got {args.flow_downscale}", file=sys.stderr
        )
        return 2
    for path in (args.json, args.plot):
        if path is not None and (problem := unwritable(path)):
            print(f"vidseg eval: error: cannot write {path}: {problem}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.dataset:
            data = open_dataset(args.dataset, args.data_root, args.split)
        else:
            # Bags' labels hold train ids of --classes, else of the first checkpoint (videos: its classes).
            if args.classes:
                table = load_classes_yaml(args.classes)
            else:
                meta = read_meta(resolve_checkpoint(args.checkpoints[0]))
                table = ClassTable.simple(meta.classes, meta.palette)
            if args.videos:
                data = VideoFileDataset(args.videos, table)
            else:
                data = BagDataset(
                    args.bags, table, image_topic=args.image_topic, label_topic=args.label_topic
                )
        results = evaluate_checkpoints(
            args.checkpoints,
            data,
            device=pick_device(args.device),
            input_size=args.size,
            key_interval=args.key_interval,
            key_distance=args.key_distance,
            flow_downscale=args.flow_downscale,
            progress=args.progress,
            backends=args.backend,
        )
        propagation = None
        if args.label_propagation:
            propagation = propagate_labels(
                data,
                input_size=tuple(results[0]["input_size"]),
                classes=list(results[0]["per_class_iou"]),
                key_interval=args.key_interval or DEFAULT_KEY_INTERVAL,
                flow_downscale=args.flow_downscale,
                progress=args.progress,
            )
    except (CheckpointError, LabelError, RuntimeError, ValueError) as e:
        print(f"vidseg eval: error: {e}", file=sys.stderr)
        return 2
    report = {
        "data": {
            "dataset": args.dataset or ("video" if args.videos else "bag"),
            "root": str(args.data_root) if args.dataset else None,
            "split": args.split if args.dataset else None,
            "bags": [str(b) for b in args.bags or []],
            "videos": [str(v) for v in args.videos or []],
        },  # fmt: skip
        "size": list(args.size) if args.size else None,
        "key_interval": args.key_interval,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "results": results,
    }
    if propagation is not None:
        report["label_propagation"] = propagation
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    print(markdown_table(results))
    print()
    print(class_table(results))
    print()
    print(class_table(results, label="class (TC)", key="per_class_tc"))
    if propagation is not None:
        print()
        print(propagation_table(propagation))
    return 0
