"""ROS 2 bag round trips in tmp_path, checked with our reader and with an independent MCAP reader."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from vidseg_ros.cli import main
from vidseg_ros.data.bags import (
    SYNTH_EPOCH_NS,
    BagError,
    BagWriter,
    bag_info,
    read_frames,
    read_messages,
    typestore,
)
from vidseg_ros.data.synth import SynthConfig, generate
from vidseg_ros.data.synth_bag import write_synth_bag

CFG = SynthConfig(seed=3, frames=6, width=96, height=72, fps=10.0)
STAMPS = [SYNTH_EPOCH_NS + k * 100_000_000 for k in range(CFG.frames)]


@pytest.fixture(scope="module")
def expected():
    return list(generate(CFG))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_synth_bag_round_trip(tmp_path, storage, expected):
    path = tmp_path / "bag"
    assert write_synth_bag(path, CFG, storage=storage, progress=False) == CFG.frames
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    assert (path / "metadata.yaml").is_file() and (path / f"bag{suffix}").is_file()

    got = list(read_frames(path))
    assert [f.stamp_ns for f in got] == STAMPS
    for frame, (rgb, labels) in zip(got, expected, strict=True):
        assert frame.frame_id == "camera"
        assert np.array_equal(frame.image, rgb)
        assert frame.labels is not None and frame.labels.dtype == np.uint8
        assert np.array_equal(frame.labels, labels)

    info = bag_info(path)
    assert info["topics"] == {"/camera/image_raw": CFG.frames, "/camera/labels": CFG.frames}
    assert info["types"]["/camera/labels"] == "sensor_msgs/msg/Image"
    assert info["start_ns"] == STAMPS[0] and info["end_ns"] == STAMPS[-1]
    assert info["duration_ns"] == STAMPS[-1] - STAMPS[0]

    # Log time equals header stamp, and both topics carry the same stamps.
    seen: dict[str, list[int]] = {}
    for topic, log_ns, msg in read_messages(path):
        assert log_ns == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        seen.setdefault(topic, []).append(log_ns)
    assert seen["/camera/image_raw"] == seen["/camera/labels"] == STAMPS


def test_mcap_bag_reads_with_independent_reader(tmp_path, expected):
    path = tmp_path / "bag"
    write_synth_bag(path, CFG, progress=False)
    counts: dict[str, int] = {}
    stamps: dict[str, list[int]] = {}
    with open(path / "bag.mcap", "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        for schema, channel, message, msg in reader.iter_decoded_messages():
            assert schema.name == "sensor_msgs/msg/Image" and channel.message_encoding == "cdr"
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert message.log_time == stamp
            stamps.setdefault(channel.topic, []).append(stamp)
            if stamp == STAMPS[2] and channel.topic == "/camera/image_raw":
                assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 96, 72, 96 * 3)
                assert bytes(msg.data) == expected[2][0].tobytes()
            if stamp == STAMPS[2] and channel.topic == "/camera/labels":
                assert msg.encoding == "mono8" and bytes(msg.data) == expected[2][1].tobytes()
    assert counts == {"/camera/image_raw": CFG.frames, "/camera/labels": CFG.frames}
    assert stamps["/camera/image_raw"] == STAMPS


def test_metadata_is_what_ros2_bag_play_expects(tmp_path):
    path = tmp_path / "bag"
    write_synth_bag(path, SynthConfig(seed=1, frames=2, width=32, height=24), progress=False)
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap" and meta["message_count"] == 4
    for entry in meta["topics_with_message_count"]:
        topic = entry["topic_metadata"]
        assert topic["serialization_format"] == "cdr"
        assert topic["type_description_hash"].startswith("RIHS01_")
        (qos,) = topic["offered_qos_profiles"]
        assert qos["reliability"] == "reliable" and qos["durability"] == "volatile"


def test_messages_deserialise_with_ros_typesupport(tmp_path, expected):
    """Where ROS 2 Python packages are installed, rclpy's own CDR decoder must read our bytes."""
    serialization = pytest.importorskip("rclpy.serialization")
    image_type = pytest.importorskip("sensor_msgs.msg").Image
    path = tmp_path / "bag"
    write_synth_bag(path, CFG, progress=False)
    with open(path / "bag.mcap", "rb") as f:
        raw = [(c.topic, m.data) for _, c, m in make_reader(f).iter_messages(topics=["/camera/image_raw"])]
    assert len(raw) == CFG.frames
    msg = serialization.deserialize_message(raw[1][1], image_type)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(STAMPS[1], 10**9)
    assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == ("rgb8", 96, 72, "camera")
    assert bytes(msg.data) == expected[1][0].tobytes()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_generic_writer_round_trips_images_and_diagnostics(tmp_path, storage):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "bag"
    with BagWriter(path, storage) as bag:
        bag.write_image("/img", 1_000, "cam", rgb, "bgr8")
        diag = {
            "header": {"stamp": 2_500_000_001, "frame_id": "node"},
            "status": [
                {"level": 1, "name": "seg", "message": "slow", "values": [{"key": "fps", "value": "9.5"}]}
            ],
        }
        bag.write("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", diag, 2_500_000_001)
        store = typestore()
        note = store.types["std_msgs/msg/String"](data="pre-serialised")
        bag.write_raw(
            "/note", "std_msgs/msg/String", store.serialize_cdr(note, "std_msgs/msg/String"), 3_000_000_000
        )
    msgs = list(read_messages(path))
    assert [(t, ns) for t, ns, _ in msgs] == [
        ("/img", 1_000),
        ("/diagnostics", 2_500_000_001),
        ("/note", 3_000_000_000),
    ]
    assert msgs[2][2].data == "pre-serialised"
    status = msgs[1][2].status[0]
    assert (msgs[1][2].header.stamp.sec, msgs[1][2].header.stamp.nanosec) == (2, 500_000_001)
    assert (status.level, status.name, status.values[0].key, status.values[0].value) == (
        1,
        "seg",
        "fps",
        "9.5",
    )
    assert list(read_messages(path, topics="/diagnostics"))[0][0] == "/diagnostics"
    (frame,) = read_frames(path, image_topic="/img")
    assert frame.labels is None and frame.stamp_ns == 1_000 and frame.frame_id == "cam"
    assert np.array_equal(frame.image, rgb)  # bgr8 on the wire, RGB after decoding


def test_read_frames_pairs_by_stamp_not_by_arrival(tmp_path):
    rgb = [np.full((4, 6, 3), k * 40, np.uint8) for k in range(4)]
    lab = [np.full((4, 6), k, np.uint8) for k in range(4)]
    path = tmp_path / "bag"
    with BagWriter(path) as bag:
        # Header stamps 1..3; log times deliberately shuffle the order labels and images arrive in.
        bag.write_image("/camera/labels", 2, "cam", lab[2], "mono8")
        bag.write_image("/camera/image_raw", 1, "cam", rgb[1], "rgb8")
        bag.write_image("/camera/image_raw", 2, "cam", rgb[2], "rgb8")
        bag.write_image("/camera/image_raw", 3, "cam", rgb[3], "rgb8")  # never gets a label
        bag.write("/camera/labels", "sensor_msgs/msg/Image", _mono_msg(lab[1], stamp=1), 5)
    frames = list(read_frames(path))
    assert [f.stamp_ns for f in frames] == [1, 2, 3]
    assert np.array_equal(frames[0].labels, lab[1]) and np.array_equal(frames[1].labels, lab[2])
    assert frames[2].labels is None and np.array_equal(frames[2].image, rgb[3])


def _mono_msg(labels: np.ndarray, stamp: int) -> dict:
    h, w = labels.shape
    header = {"stamp": stamp, "frame_id": "cam"}
    return {"header": header, "height": h, "width": w, "encoding": "8UC1", "step": w, "data": labels.ravel()}


def test_writer_rejects_bad_requests(tmp_path):
    with BagWriter(tmp_path / "bag") as bag:
        bag.write_image("/img", 1, "cam", np.zeros((4, 4, 3), np.uint8), "rgb8")
        with pytest.raises(BagError, match="already carries"):
            bag.write("/img", "diagnostic_msgs/msg/DiagnosticArray", {}, 2)
        with pytest.raises(BagError, match="no field"):
            bag.write("/diag", "diagnostic_msgs/msg/DiagnosticArray", {"bogus": 1}, 2)
        with pytest.raises(BagError):
            bag.write_image("/img", 3, "cam", np.zeros((4, 4, 3), np.uint8), "32FC1")
    with pytest.raises(BagError, match="exists"):
        BagWriter(tmp_path / "bag")
    with pytest.raises(BagError, match="storage"):
        BagWriter(tmp_path / "other", storage="rosbag1")


def test_missing_bag_raises_bag_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BagError, match="not found"):
        bag_info(missing)
    with pytest.raises(BagError, match="not found"):
        list(read_messages(missing))
    with pytest.raises(BagError, match="not found"):
        list(read_frames(missing))


def test_read_frames_requires_the_image_topic(tmp_path):
    path = tmp_path / "bag"
    write_synth_bag(path, SynthConfig(seed=0, frames=1, width=32, height=24), progress=False)
    with pytest.raises(BagError, match="no topic /front"):
        list(read_frames(path, image_topic="/front"))


def test_cli_synth_writes_a_bag(tmp_path, capsys):
    out = tmp_path / "cli_bag"
    args = [
        "synth",
        "--seed",
        "2",
        "--frames",
        "3",
        "--size",
        "64x48",
        "--fps",
        "5",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "3 frames" in summary[0] and "64x48" in summary[0] and str(out) in summary[0]
    frames = list(read_frames(out))
    assert [f.image.shape for f in frames] == [(48, 64, 3)] * 3
    assert frames[1].stamp_ns - frames[0].stamp_ns == 200_000_000
    assert main(args) == 2  # refuses to overwrite


@pytest.mark.parametrize("size", ["640", "64by48", "0x48", "axb"])
def test_cli_synth_rejects_bad_size(tmp_path, size, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--size", size, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "WIDTHxHEIGHT" in err or "at least 16" in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ compressed camera bags
COMPRESSED_TOPIC = "/camera/image_raw/compressed"


@pytest.mark.parametrize(("fmt", "storage"), [("png", "mcap"), ("jpeg", "mcap"), ("png", "sqlite3")])
def test_compressed_synth_bag_round_trip(tmp_path, fmt, storage, expected):
    path = tmp_path / "bag"
    assert write_synth_bag(path, CFG, storage=storage, compressed=fmt, progress=False) == CFG.frames
    info = bag_info(path)
    # image_transport's naming: the camera's base topic plus /compressed; labels stay raw and lossless.
    assert info["types"] == {
        COMPRESSED_TOPIC: "sensor_msgs/msg/CompressedImage",
        "/camera/labels": "sensor_msgs/msg/Image",
    }
    formats = {msg.format for _, _, msg in read_messages(path, COMPRESSED_TOPIC)}
    assert formats == {f"rgb8; {fmt} compressed bgr8"}

    got = list(read_frames(path, image_topic=COMPRESSED_TOPIC))
    assert [f.stamp_ns for f in got] == STAMPS
    for frame, (rgb, labels) in zip(got, expected, strict=True):
        assert frame.image.shape == rgb.shape and frame.image.dtype == np.uint8
        if fmt == "png":
            assert np.array_equal(frame.image, rgb)
        else:
            # Quality 95 on a 96x72 street: about 2.7 on average; red and blue swapped would be about 9.
            error = np.abs(frame.image.astype(np.int16) - rgb.astype(np.int16))
            assert error.mean() < 4.0 and np.percentile(error, 99) < 40
        assert np.array_equal(frame.labels, labels)


def test_compressed_bag_reads_with_independent_reader(tmp_path, expected):
    import cv2

    path = tmp_path / "bag"
    write_synth_bag(path, CFG, compressed="png", progress=False)
    with open(path / "bag.mcap", "rb") as f:
        decoded = [
            (schema.name, channel.topic, message.log_time, msg)
            for schema, channel, message, msg in make_reader(
                f, decoder_factories=[DecoderFactory()]
            ).iter_decoded_messages(topics=[COMPRESSED_TOPIC])
        ]
    assert len(decoded) == CFG.frames
    for (schema, _, log_time, msg), (rgb, _), stamp in zip(decoded, expected, STAMPS, strict=True):
        assert schema == "sensor_msgs/msg/CompressedImage" and log_time == stamp
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        assert msg.header.frame_id == "camera"
        # What any image_transport subscriber does: OpenCV decodes BGR.
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(bgr[:, :, ::-1], rgb)


def test_png_compressed_labels_are_exact_and_jpeg_labels_refused(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 9, (6, 8), dtype=np.uint8)
    path = tmp_path / "bag"
    with BagWriter(path) as bag:
        bag.write_compressed_image("/cam/compressed", 7, "cam", rgb, "jpeg")
        bag.write_compressed_image("/labels/compressed", 7, "cam", labels, "png")
        bag.write_compressed_image("/jpeg_labels", 7, "cam", labels, "jpeg")
    (frame,) = read_frames(path, image_topic="/cam/compressed", label_topic="/labels/compressed")
    assert frame.stamp_ns == 7 and frame.frame_id == "cam" and frame.image.shape == (6, 8, 3)
    assert np.array_equal(frame.labels, labels)
    with pytest.raises(BagError, match="PNG-compressed"):
        list(read_frames(path, image_topic="/cam/compressed", label_topic="/jpeg_labels"))


def test_compressed_writer_rejects_bad_requests(tmp_path):
    with BagWriter(tmp_path / "bag") as bag:
        with pytest.raises(BagError, match="unsupported compression 'gif'"):
            bag.write_compressed_image("/img", 1, "cam", np.zeros((4, 4, 3), np.uint8), "gif")
        with pytest.raises(BagError, match="uint8"):
            bag.write_compressed_image("/img", 1, "cam", np.zeros((4, 4, 3), np.float32), "png")
        bag.write_image("/raw", 1, "cam", np.zeros((4, 4, 3), np.uint8), "rgb8")
        with pytest.raises(BagError, match="already carries"):
            bag.write_compressed_image("/raw", 2, "cam", np.zeros((4, 4, 3), np.uint8), "png")
    with pytest.raises(ValueError, match="gif"):
        write_synth_bag(tmp_path / "other", CFG, compressed="gif", progress=False)
    assert not (tmp_path / "other").exists()


def test_read_frames_refuses_topics_that_are_not_images(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path) as bag:
        bag.write_image("/img", 1, "cam", np.zeros((4, 4, 3), np.uint8), "rgb8")
        bag.write("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", {"header": {"stamp": 1}}, 1)
    for topics in ({"image_topic": "/diagnostics"}, {"image_topic": "/img", "label_topic": "/diagnostics"}):
        with pytest.raises(BagError, match="/diagnostics .* carries diagnostic_msgs/msg/DiagnosticArray"):
            list(read_frames(path, **topics))


def test_damaged_bags_raise_one_line_bag_errors(tmp_path):
    path = tmp_path / "bag"
    write_synth_bag(path, SynthConfig(seed=0, frames=1, width=32, height=24), progress=False)
    (path / "metadata.yaml").write_text("rosbag2_bagfile_information: [\n")  # YAML explains over 4 lines
    with pytest.raises(BagError) as err:
        bag_info(path)
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_cli_synth_writes_compressed_images(tmp_path, capsys, expected):
    out = tmp_path / "bag"
    args = ["synth", "--seed", "3", "--frames", "2", "--size", "96x72", "--fps", "10", "--out", str(out)]
    assert main([*args, "--compressed", "png", "--no-progress"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert f"png on {COMPRESSED_TOPIC}" in line
    frames = list(read_frames(out, image_topic=COMPRESSED_TOPIC))
    assert [np.array_equal(f.image, rgb) for f, (rgb, _) in zip(frames, expected, strict=False)] == [True] * 2


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_cli_eval_runs_on_a_compressed_bag(tmp_path, fmt, tiny_checkpoint, capsys):
    import json

    bag = tmp_path / "bag"
    write_synth_bag(bag, CFG, compressed=fmt, progress=False)
    report = tmp_path / "eval.json"
    ckpt = str(tiny_checkpoint("netwarp"))
    args = ["eval", "--checkpoint", ckpt, "--bag", str(bag), "--json", str(report), "--no-progress"]
    assert main([*args, "--image-topic", COMPRESSED_TOPIC]) == 0
    (result,) = json.loads(report.read_text())["results"]
    assert result["labelled_frames"] == CFG.frames
    assert 0.0 <= result["miou"] <= 1.0 and result["ms_per_frame"] > 0
    assert "| netwarp" in capsys.readouterr().out
