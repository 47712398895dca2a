"""sensor_msgs/Image <-> numpy, on top of the ROS-free :mod:`vidseg_ros.imgcodec`."""

from __future__ import annotations

from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from vidseg_ros.imgcodec import decode_compressed, decode_image, encode_image


def time_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (a header's stamp, a CompressedVideo's timestamp) in nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode a message to ``[H, W, 3]`` uint8 RGB; raises ImageDecodeError with a reason."""
    return decode_image(msg.encoding, msg.width, msg.height, msg.step, msg.data, bool(msg.is_bigendian))


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a JPEG or PNG message to ``[H, W, 3]`` uint8 RGB; raises ImageDecodeError with a reason."""
    return decode_compressed(msg.format, msg.data)


def make_image(header: Header, array: np.ndarray, encoding: str) -> Image:
    """A message with ``header`` copied (stamp and frame_id) and ``array`` packed as ``encoding``."""
    data, step = encode_image(array, encoding)
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = step
    msg.data = data
    return msg
