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
    write_synth_bag,
)
from vidseg_ros.data.synth import SynthConfig, generate

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
