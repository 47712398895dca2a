"""The ``vidseg`` command: one CLI with subcommands, each implemented in ``vidseg_ros.tools.<name>``.

Subcommand modules are imported lazily so that ``vidseg synth`` does not pay for importing torch.
Each module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, str] = {
    "synth": "Generate a synthetic street-video bag with ground-truth labels.",
    "train": "Train per-frame, NetWarp or TWNet models on Cityscapes, CamVid, your own video or bags.",
    "eval": "Run checkpoints online over a dataset split or bags; report mIoU, trimap IoU, TC and timings.",
    "bench": "Time per-frame, NetWarp and TWNet and the node stages in one run.",
    "export": "Export step functions to ONNX or build TensorRT engines.",
    "demo": "Replay a bag (a synthetic one by default) through seg_node over DDS; write a preview and summary.",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported, to keep start-up fast.
        if name == wanted:
            module = importlib.import_module(f"vidseg_ros.tools.{name}")
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
