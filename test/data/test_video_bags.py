"""H.264 camera bags (foxglove_msgs/msg/CompressedVideo) and video files: round trip, I-frame keying, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from vidseg_ros.cli import main
from vidseg_ros.data.bags import SYNTH_EPOCH_NS, BagError, BagWriter, bag_info, read_frames
from vidseg_ros.data.synth import SynthConfig, generate
from vidseg_ros.data.synth_bag import write_synth_bag
from vidseg_ros.motion.codec import CELL, H264Encoder

av = pytest.importorskip("av")

CFG = SynthConfig(seed=4, frames=10, width=96, height=72, fps=10.0)
STAMPS = [SYNTH_EPOCH_NS + k * 100_000_000 for k in range(CFG.frames)]
TOPIC = "/camera/image_raw/h264"
GOP = 4


@pytest.fixture(scope="module")
def expected():
    return list(generate(CFG))


@pytest.fixture(scope="module")
def h264_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("h264") / "bag"
    assert write_synth_bag(path, CFG, compressed="h264", gop=GOP, progress=False) == CFG.frames
    return path


def test_h264_bag_round_trip(h264_bag, expected):
    assert bag_info(h264_bag)["types"] == {
        TOPIC: "foxglove_msgs/msg/CompressedVideo",
        "/camera/labels": "sensor_msgs/msg/Image",
    }
    got = list(read_frames(h264_bag, image_topic=TOPIC))
    assert [f.stamp_ns for f in got] == STAMPS and {f.frame_id for f in got} == {"camera"}
    # The key frames are exactly the I-frames: every GOP frames, nothing else.
    assert [i for i, f in enumerate(got) if f.motion.intra] == list(range(0, CFG.frames, GOP))
    for frame, (rgb, labels) in zip(got, expected, strict=True):
        assert np.array_equal(frame.labels, labels)  # labels stay lossless
        assert frame.image.shape == rgb.shape and frame.image is frame.motion.rgb
        error = np.abs(frame.image.astype(np.int16) - rgb.astype(np.int16))
        assert error.mean() < 6.0  # libx264 at crf 20; a channel swap or shifted frame is far above
        if not frame.motion.intra:
            assert frame.motion.flow.shape == (2, 72 // CELL, 96 // CELL) and frame.motion.decode_ms > 0


def test_h264_bag_reads_with_independent_reader(h264_bag):
    """What a Foxglove or ROS user's reader sees: schema, stamps and a stream PyAV decodes on its own."""
    with open(h264_bag / "bag.mcap", "rb") as f:
        decoded = list(
            make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(topics=[TOPIC])
        )
    assert len(decoded) == CFG.frames
    ctx = av.CodecContext.create("h264", "r")
    for (schema, _, message, msg), stamp in zip(decoded, STAMPS, strict=True):
        assert schema.name == "foxglove_msgs/msg/CompressedVideo" and message.log_time == stamp
        assert msg.timestamp.sec * 10**9 + msg.timestamp.nanosec == stamp and msg.format == "h264"
        assert len(ctx.decode(av.Packet(bytes(msg.data)))) == 1  # one access unit, one frame


def test_undecodable_video_message_is_one_line_bag_error(tmp_path):
    path = tmp_path / "bag"
    enc = H264Encoder(96, 72)
    frame = np.zeros((72, 96, 3), np.uint8)
    with BagWriter(path) as bag:
        bag.write_video_unit(TOPIC, 1, "camera", enc.encode(frame)[0][:20])  # a truncated I-frame
    with pytest.raises(BagError) as err:
        list(read_frames(path, image_topic=TOPIC))
    assert TOPIC in str(err.value) and len(str(err.value).splitlines()) == 1


def test_cli_synth_and_eval_key_on_the_i_frames(tmp_path, tiny_checkpoint, capsys):
    bag = tmp_path / "bag"
    args = ["synth", "--seed", "4", "--frames", "10", "--size", "96x72", "--fps", "10", "--out", str(bag)]
    assert main([*args, "--codec", "h264", "--gop", "4", "--no-progress"]) == 0
    assert f"h264 video (GOP 4) on {TOPIC}" in capsys.readouterr().out
    report = tmp_path / "eval.json"
    ckpts = [str(tiny_checkpoint("twnet")), str(tiny_checkpoint("perframe"))]
    cmd = ["eval", "--bag", str(bag), "--image-topic", TOPIC, "--json", str(report), "--no-progress"]
    assert main([*cmd, "--checkpoint", ckpts[0], "--checkpoint", ckpts[1]]) == 0
    twnet, perframe = json.loads(report.read_text())["results"]
    assert twnet["key_frames"] == 3 and twnet["nonkey_frames"] == 7  # I-frames 0, 4, 8: not K=12
    assert perframe["key_frames"] == 10 and twnet["labelled_frames"] == 10
    # The decode is charged to both alike (the frames were decoded once).
    assert twnet["stage_ms"]["decode"] == perframe["stage_ms"]["decode"] > 0


def _write_mp4(path, frames, gop):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))


def test_cli_eval_video_file_is_an_unlabelled_run(tmp_path, tiny_checkpoint, expected, capsys):
    video = tmp_path / "street.mp4"
    _write_mp4(video, [rgb for rgb, _ in expected], gop=5)
    report = tmp_path / "eval.json"
    cmd = ["eval", "--video", str(video), "--json", str(report), "--no-progress"]
    assert main([*cmd, "--checkpoint", str(tiny_checkpoint("twnet"))]) == 0
    doc = json.loads(report.read_text())
    (result,) = doc["results"]
    assert doc["data"]["dataset"] == "video" and doc["data"]["videos"] == [str(video)]
    assert result["frames"] == CFG.frames and result["labelled_frames"] == 0 and result["miou"] is None
    assert result["key_frames"] == 2 and result["ms_per_frame"] > 0 and result["stage_ms"]["decode"] > 0
    assert "n/a" in capsys.readouterr().out  # no mIoU without labels


def test_cli_eval_rejects_a_bad_video_and_mixed_sources(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    ckpt = str(tiny_checkpoint("twnet"))
    assert main(["eval", "--video", str(bad), "--json", str(tmp_path / "r.json"), "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot open video" in err and len(err.splitlines()) == 1
    args = ["eval", "--video", str(bad), "--bag", str(tmp_path), "--json", str(tmp_path / "r.json")]
    assert main([*args, "--checkpoint", ckpt]) == 2
    assert "give one of --bag" in capsys.readouterr().err
