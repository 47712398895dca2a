"""The node's H.264 input (``input.transport: h264``): ``foxglove_msgs/msg/CompressedVideo`` on ``image/h264``.

A decoder cannot skip an access unit, so every message is decoded as it arrives, in the subscription callback,
even when the model is busy and the frame will not be segmented. A P-frame's vectors point at the frame
before it; when that frame was decoded but not segmented, the model holds no state for it, so the next frame
that is segmented starts from a key frame (:meth:`VideoInput.take_gap`). Nothing here imports rclpy: the
message type is imported only when the node asks for it, so a ROS install without foxglove_msgs runs every
other transport.
"""

from __future__ import annotations

from typing import Any

from vidseg_ros.motion.codec import CODECS, CodecError, CodecFrame, PacketDecoder

VIDEO_TYPE = "foxglove_msgs/msg/CompressedVideo"
#: What the node appends to the (remapped) ``image`` topic for H.264 input.
VIDEO_SUFFIX = "/h264"


class VideoInputError(RuntimeError):
    """H.264 input cannot work here (foxglove_msgs or PyAV missing)."""


def video_message_class() -> type:
    """``foxglove_msgs.msg.CompressedVideo``, after checking that PyAV can decode it.

    Raises:
        VideoInputError: One line naming what is missing and how to install it.
    """
    try:
        from foxglove_msgs.msg import CompressedVideo
    except ImportError as e:
        raise VideoInputError(
            f"input.transport h264 needs foxglove_msgs ({VIDEO_TYPE}), which is not installed: install "
            "ros-$ROS_DISTRO-foxglove-msgs (apt) or build foxglove_msgs in your workspace"
        ) from e
    try:
        import av  # noqa: F401
    except ImportError as e:
        raise VideoInputError("input.transport h264 needs PyAV to decode H.264: pip install av") from e
    return CompressedVideo


class VideoInput:
    """Decodes one CompressedVideo stream in arrival order and tracks frames the model did not see."""

    def __init__(self) -> None:
        self._decoder: PacketDecoder | None = None
        self._format = ""
        self._gap = False

    def decode(self, msg: Any) -> CodecFrame:
        """The frame of one message (one access unit).

        Raises:
            CodecError: An unsupported format, an undecodable unit, or a unit that is not exactly one frame.
                The next segmented frame is then a key frame.
        """
        fmt = str(msg.format).lower()
        if fmt not in CODECS:
            self._gap = True
            raise CodecError(f"format {msg.format!r} is not one of {', '.join(CODECS)}")
        if self._decoder is None or fmt != self._format:
            self._decoder, self._format = PacketDecoder(fmt), fmt
        try:
            return self._decoder.decode_one(bytes(msg.data))
        except CodecError:
            self._gap = True
            raise

    def dropped(self) -> None:
        """A decoded frame will not be segmented (the worker was busy)."""
        self._gap = True

    def take_gap(self) -> bool:
        """Whether frames went unsegmented since the last call (the state no longer matches the vectors)."""
        gap, self._gap = self._gap, False
        return gap
