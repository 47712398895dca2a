"""``vidseg synth``: render a synthetic street sequence with ground truth into a ROS 2 bag.

Example::

    vidseg synth --seed 3 --frames 120 --size 640x480 --out bags/street_3
    vidseg synth --seed 3 --compressed jpeg --out bags/street_3_jpeg   # images on /camera/image_raw/compressed
    vidseg synth --seed 3 --codec h264 --out bags/street_3_h264        # CompressedVideo on /camera/image_raw/h264
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from typing import Any

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """Parses ``WIDTHxHEIGHT`` (e.g. ``640x480``); raises argparse.ArgumentTypeError otherwise."""
    m = _SIZE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480")
    width, height = int(m.group(1)), int(m.group(2))
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: width and height must be at least 16")
    if width > 8192 or height > 8192:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: width and height must be at most 8192")
    return width, height


def _positive(kind: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``synth`` options to ``parser``."""
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    parser.add_argument(
        "--frames", type=_positive(int, "--frames"), default=60, help="number of frames (default: 60)"
    )
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument(
        "--size", type=parse_size, default=(640, 480), metavar="WxH", help="image size (default: 640x480)"
    )
    parser.add_argument(
        "--speed", type=_positive(float, "--speed"), default=1.0, help="motion speed multiplier (default: 1)"
    )
    parser.add_argument(
        "--fps", type=_positive(float, "--fps"), default=15.0, help="frame rate of the stamps (default: 15)"
    )
    parser.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default: mcap)"
    )
    parser.add_argument(
        "--image-topic",
        default="/camera/image_raw",
        help="RGB image topic; with --compressed the base topic, as image_transport names it",
    )
    parser.add_argument("--label-topic", default="/camera/labels", help="label image topic (mono8 class ids)")
    parser.add_argument(
        "--compressed",
        choices=("jpeg", "png"),
        help="write the images as sensor_msgs/CompressedImage (JPEG quality 95, or PNG) on IMAGE_TOPIC/compressed, "
        "as a camera recorded through image_transport; labels stay lossless mono8 Images",
    )
    parser.add_argument(
        "--codec",
        choices=("h264",),
        help="write the images as foxglove_msgs/msg/CompressedVideo on IMAGE_TOPIC/h264 (libx264, an I-frame "
        "every --gop frames, no B-frames, one access unit per message); labels stay lossless mono8 Images",
    )
    parser.add_argument("--gop", type=_positive(int, "--gop"), default=12, help="I-frame interval of --codec")
    parser.add_argument("--frame-id", default="camera", help="header.frame_id of both topics")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    """Writes the bag; prints a one-line summary. Returns 0 on success, 2 on a bad request."""
    from ..data.bags import BagError
    from ..data.synth import SynthConfig
    from ..data.synth_bag import write_synth_bag

    width, height = args.size
    if args.seed < 0:
        print(f"vidseg synth: error: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    if args.codec and args.compressed:
        print("vidseg synth: error: give --compressed or --codec, not both", file=sys.stderr)
        return 2
    cfg = SynthConfig(
        seed=args.seed, frames=args.frames, width=width, height=height, speed=args.speed, fps=args.fps
    )
    start = time.perf_counter()
    try:
        count = write_synth_bag(
            args.out,
            cfg,
            storage=args.storage,
            image_topic=args.image_topic,
            label_topic=args.label_topic,
            frame_id=args.frame_id,
            compressed=args.codec or args.compressed,
            gop=args.gop,
            progress=not args.no_progress,
        )
    except (BagError, ValueError) as e:
        print(f"vidseg synth: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    # Name the image topic when it is not the one every other command assumes by default.
    where = f", images {args.compressed} on {args.image_topic}/compressed" if args.compressed else ""
    if args.codec:
        where = f", {args.codec} video (GOP {args.gop}) on {args.image_topic}/{args.codec}"
    print(
        f"synth: wrote {count} frames of {width}x{height} (seed {args.seed}, speed {args.speed:g}, {args.fps:g} fps, "
        f"{args.storage}{where}) to {args.out} in {seconds:.1f} s"
    )
    return 0
