"""``vidseg synth``'s bags: a rendered street sequence with ground truth, as a camera would have recorded it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..motion.codec import H264Encoder
from .bags import COMPRESSED_SUFFIX, SYNTH_EPOCH_NS, SYNTHETIC_KEY, VIDEO_SUFFIX, BagWriter

if TYPE_CHECKING:
    from .synth import SynthConfig


def write_synth_bag(
    path: str | Path,
    cfg: SynthConfig,
    *,
    storage: str = "mcap",
    image_topic: str = "/camera/image_raw",
    label_topic: str = "/camera/labels",
    frame_id: str = "camera",
    compressed: str | None = None,
    gop: int = 12,
    progress: bool = True,
) -> int:
    """Renders a synthetic sequence into a bag: rgb8 images and mono8 labels with identical stamps.

    Stamps start at :data:`SYNTH_EPOCH_NS` and are spaced ``1 / cfg.fps``; each message's log time equals
    its header stamp. Returns the number of frames written.

    With ``compressed`` ``jpeg`` or ``png`` the images are ``sensor_msgs/CompressedImage`` on
    ``<image_topic>/compressed``, as a camera recorded through image_transport's compressed transport; with
    ``h264`` they are ``foxglove_msgs/msg/CompressedVideo`` on ``<image_topic>/h264`` (libx264, an I-frame
    every ``gop`` frames, no B-frames, one access unit per message). The labels stay lossless mono8 Images on
    ``label_topic`` (ground truth is not camera output, and compression would change class ids).

    Args:
        path: Bag directory to create (must not exist).
        cfg: A :class:`vidseg_ros.data.synth.SynthConfig`.
        storage: ``"mcap"`` or ``"sqlite3"``.
        image_topic: Topic of the RGB images.
        label_topic: Topic of the label images.
        frame_id: ``header.frame_id`` of both.
        compressed: None for rgb8 Images, else ``"jpeg"``, ``"png"`` or ``"h264"``.
        gop: I-frame interval of ``h264``.
        progress: Show a tqdm progress bar on stderr.

    Raises:
        BagError: The bag cannot be created or written.
        ValueError: An invalid ``cfg`` or ``compressed``.
    """
    from tqdm import tqdm

    from .synth import generate  # deferred: reading bags should not import the renderer

    if compressed not in (None, "jpeg", "png", "h264"):
        raise ValueError(f"unknown compression {compressed!r} (expected jpeg, png or h264)")
    frames = generate(cfg)  # validates cfg before the bag directory is created
    encoder = (
        H264Encoder(cfg.width, cfg.height, gop=gop, fps=round(cfg.fps)) if compressed == "h264" else None
    )
    suffix = {None: "", "h264": VIDEO_SUFFIX}.get(compressed, COMPRESSED_SUFFIX)
    topic = image_topic + suffix
    count = 0
    with (
        BagWriter(path, storage) as bag,
        tqdm(total=cfg.frames, unit="frame", disable=not progress, desc="synth") as bar,
    ):
        bag.set_custom_data(SYNTHETIC_KEY, f"vidseg synth seed {cfg.seed}")
        for rgb, labels in frames:
            stamp = SYNTH_EPOCH_NS + round(count * 1e9 / cfg.fps)
            if encoder is not None:
                for unit in encoder.encode(rgb):  # one per frame: no B-frames, no encoder delay
                    bag.write_video_unit(topic, stamp, frame_id, unit)
            elif compressed:
                bag.write_compressed_image(topic, stamp, frame_id, rgb, compressed)
            else:
                bag.write_image(topic, stamp, frame_id, rgb, "rgb8")
            bag.write_image(label_topic, stamp, frame_id, labels, "mono8")
            count += 1
            bar.update(1)
    return count
