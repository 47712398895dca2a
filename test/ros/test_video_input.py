"""The node's H.264 input: decoding in arrival order, unsegmented frames forcing a key frame, and the node's one
line when foxglove_msgs is missing (it is not on PyPI, so the working path cannot run over DDS here)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
from harness import NodeProcess

from vidseg_ros.motion.codec import CodecError, H264Encoder
from vidseg_ros.ros.convert import time_to_ns
from vidseg_ros.ros.video_input import VideoInput, VideoInputError, video_message_class

pytest.importorskip("av")
HAVE_FOXGLOVE = importlib.util.find_spec("foxglove_msgs") is not None


def _messages(n: int, gop: int = 4) -> list[SimpleNamespace]:
    """CompressedVideo-shaped messages (timestamp, frame_id, data, format) of a panning texture."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64 + 2 * n, 3), dtype=np.uint8)
    enc = H264Encoder(64, 48, gop=gop)
    out = []
    for i in range(n):
        (unit,) = enc.encode(np.ascontiguousarray(base[:, 2 * i : 2 * i + 64]))
        stamp = SimpleNamespace(sec=100 + i, nanosec=5)
        out.append(SimpleNamespace(timestamp=stamp, frame_id="cam", data=unit, format="h264"))
    return out


def test_every_unit_decodes_in_order_with_its_i_frames():
    video = VideoInput()
    frames = [video.decode(m) for m in _messages(9)]
    assert [f.intra for f in frames] == [i % 4 == 0 for i in range(9)]
    assert all(f.rgb.shape == (48, 64, 3) for f in frames) and not video.take_gap()
    assert time_to_ns(_messages(1)[0].timestamp) == 100 * 10**9 + 5


def test_bad_units_and_dropped_frames_make_the_next_frame_a_key_frame():
    msgs = _messages(6)
    video = VideoInput()
    video.decode(msgs[0])
    garbage = b"\x00\x00\x00\x01" + b"\xff" * 16  # a start code and no frame
    broken = SimpleNamespace(**{**vars(msgs[1]), "data": garbage})
    with pytest.raises(CodecError) as err:
        video.decode(broken)
    assert len(str(err.value).splitlines()) == 1
    assert video.take_gap() and not video.take_gap()  # reported once
    video.decode(msgs[2])
    video.dropped()
    assert video.take_gap()
    with pytest.raises(CodecError, match="format 'vp9'"):
        video.decode(SimpleNamespace(**{**vars(msgs[3]), "format": "vp9"}))
    assert video.take_gap()


@pytest.mark.skipif(HAVE_FOXGLOVE, reason="foxglove_msgs is installed here")
def test_missing_foxglove_msgs_is_named():
    with pytest.raises(
        VideoInputError, match="needs foxglove_msgs .*install ros-\\$ROS_DISTRO-foxglove-msgs"
    ):
        video_message_class()


@pytest.mark.skipif(HAVE_FOXGLOVE, reason="foxglove_msgs is installed here")
def test_node_without_foxglove_msgs_refuses_h264_with_one_line():
    node = NodeProcess("/vh/image", {"input.transport": "h264"}, name="vidseg_h264_missing")
    line = node.start_failure()
    assert "cannot start" in line and "foxglove_msgs" in line
