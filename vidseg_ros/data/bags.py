"""ROS 2 bag reading and writing with ``rosbags`` (pure Python: no ROS installation, no rclpy).

Bags are written as rosbag2 directories (``metadata.yaml`` plus one ``.mcap`` or ``.db3`` file) with CDR
serialisation, embedded message definitions and offered QoS profiles, so ``ros2 bag play`` replays them.

>>> with BagWriter("/tmp/example_bag") as bag:                                   # doctest: +SKIP
...     bag.write_image("/camera/image_raw", stamp_ns, "camera", rgb, "rgb8")
...     bag.write_compressed_image("/camera/image_raw/compressed", stamp_ns, "camera", rgb, "jpeg")
...     bag.write("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", {"header": {"stamp": stamp_ns}}, stamp_ns)
>>> for frame in read_frames("/tmp/example_bag"):                               # doctest: +SKIP
...     print(frame.stamp_ns, frame.image.shape, frame.labels is None)
"""

from __future__ import annotations

import sqlite3
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import (
    Nodetype,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from ..errors import first_line
from ..imgcodec import ImageDecodeError, decode_compressed, decode_image, encode_compressed, encode_image
from ..motion.codec import CodecError, CodecFrame, PacketDecoder

#: Header stamp of the first synthetic frame (2023-11-14T22:13:20Z); a fixed epoch keeps bags reproducible.
SYNTH_EPOCH_NS = 1_700_000_000 * 10**9
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
#: Foxglove's video message (one H.264 access unit each; no header, its own timestamp and frame_id).
COMPRESSED_VIDEO_TYPE = "foxglove_msgs/msg/CompressedVideo"
_COMPRESSED_VIDEO_MSG = "builtin_interfaces/Time timestamp\nstring frame_id\nuint8[] data\nstring format\n"
#: What ``vidseg synth --codec h264`` appends to the image topic.
VIDEO_SUFFIX = "/h264"
#: What image_transport appends to a camera's base topic for the compressed transport.
COMPRESSED_SUFFIX = "/compressed"
#: ``custom_data`` key of ``metadata.yaml`` that marks a bag rendered by ``vidseg synth``.
SYNTHETIC_KEY = "vidseg.synthetic"
_STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# rmw's "infinite" duration, as ``ros2 bag record`` writes it into metadata.yaml.
_INFINITE = QosTime(9223372036, 854775807)
#: What the bag says its publishers offered: reliable and volatile, the rclcpp/rclpy default profile.
DEFAULT_QOS = Qos(
    history=QosHistory.KEEP_LAST,
    depth=10,
    reliability=QosReliability.RELIABLE,
    durability=QosDurability.VOLATILE,
    deadline=_INFINITE,
    lifespan=_INFINITE,
    liveliness=QosLiveliness.AUTOMATIC,
    liveliness_lease_duration=_INFINITE,
    avoid_ros_namespace_conventions=False,
)
_NUMPY = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
    "uint64": np.uint64, "float32": np.float32, "float64": np.float64,
}  # fmt: skip


class BagError(Exception):
    """A bag that cannot be read or written (missing path, bad storage, undecodable message)."""


# What rosbags lets through from a damaged file besides its own errors (found by flipping bytes of mcap and
# sqlite3 bags): bogus lengths, non-UTF-8 strings, short structs, a damaged database.
_CORRUPT = (AnyReaderError, SerdeError, ValueError, OverflowError, IndexError, KeyError, struct.error,
            sqlite3.Error, EOFError)  # fmt: skip


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The ROS 2 Jazzy message types bundled with rosbags, plus foxglove_msgs/msg/CompressedVideo (also used
    as fallback when reading)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg(_COMPRESSED_VIDEO_MSG, COMPRESSED_VIDEO_TYPE))
    return store


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/msg/Time`` to integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _default(store: Typestore, node: int, spec: Any) -> Any:
    if node == Nodetype.BASE:
        name = spec[0]
        if name in ("string", "wstring"):
            return ""
        return False if name == "bool" else (0.0 if name.startswith("float") else 0)
    if node == Nodetype.NAME:
        return build_message(store, spec, {})
    sub, length = spec
    if sub[0] == Nodetype.BASE and sub[1][0] in _NUMPY:
        return np.zeros(length if node == Nodetype.ARRAY else 0, _NUMPY[sub[1][0]])
    return [_default(store, *sub) for _ in range(length)] if node == Nodetype.ARRAY else []


def _convert(store: Typestore, node: int, spec: Any, value: Any) -> Any:
    if node == Nodetype.BASE:
        return value
    if node == Nodetype.NAME:
        if spec == "builtin_interfaces/msg/Time" and isinstance(value, (int, np.integer)):
            value = {"sec": int(value) // 1_000_000_000, "nanosec": int(value) % 1_000_000_000}
        return build_message(store, spec, value)
    sub = spec[0]
    if sub[0] == Nodetype.BASE and sub[1][0] in _NUMPY:
        return np.asarray(value, _NUMPY[sub[1][0]])
    return [_convert(store, *sub, v) for v in value]


def build_message(store: Typestore, msgtype: str, value: Mapping[str, Any] | object) -> object:
    """Builds a message object of ``msgtype`` from a (nested) dict; objects are returned unchanged.

    Missing fields get ROS defaults (0, "", empty arrays); ``builtin_interfaces/msg/Time`` fields also
    accept integer nanoseconds.

    Raises:
        BagError: Unknown message type or field name.
    """
    if not isinstance(value, Mapping):
        return value
    if msgtype not in store.fielddefs:
        raise BagError(f"unknown message type {msgtype!r}")
    fields = store.fielddefs[msgtype][1]
    names = {name for name, _ in fields}
    if extra := set(value) - names:
        raise BagError(f"{msgtype} has no field(s) {sorted(extra)} (fields: {sorted(names)})")
    kwargs = {}
    for name, (node, spec) in fields:
        kwargs[name] = (
            _convert(store, node, spec, value[name]) if name in value else _default(store, node, spec)
        )
    return store.types[msgtype](**kwargs)


class BagWriter:
    """Writes a rosbag2 directory; use as a context manager. Topics are registered on first use.

    Args:
        path: Bag directory to create (must not exist).
        storage: ``"mcap"`` or ``"sqlite3"``.
        qos: Offered QoS profile recorded for every topic.
        version: rosbag2 metadata version (9 is what ROS 2 Jazzy writes).
    """

    def __init__(
        self, path: str | Path, storage: str = "mcap", *, qos: Qos = DEFAULT_QOS, version: int = 9
    ) -> None:
        if storage not in _STORAGES:
            raise BagError(f"unknown storage {storage!r} (expected one of {sorted(_STORAGES)})")
        self.path = Path(path)
        self.storage = storage
        self.qos = qos
        self._store = typestore()
        self._connections: dict[str, Any] = {}
        try:
            self._writer = Writer(self.path, version=version, storage_plugin=_STORAGES[storage])
        except WriterError as e:
            raise BagError(f"cannot create bag {self.path}: {e}") from e

    def __enter__(self) -> BagWriter:
        try:
            self._writer.open()
        except (WriterError, OSError) as e:
            raise BagError(f"cannot open bag {self.path} for writing: {e}") from e
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Close even after an error: a bag with the frames written so far beats an unreadable one.
        try:
            self._writer.close()
        except (WriterError, OSError) as e:
            if exc is None:
                raise BagError(f"cannot finish bag {self.path}: {e}") from e

    def _connection(self, topic: str, msgtype: str) -> Any:
        conn = self._connections.get(topic)
        if conn is None:
            try:
                conn = self._writer.add_connection(
                    topic, msgtype, typestore=self._store, offered_qos_profiles=[self.qos]
                )
            except (WriterError, KeyError) as e:
                raise BagError(f"cannot add topic {topic} of type {msgtype}: {e}") from e
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f"topic {topic} already carries {conn.msgtype}, not {msgtype}")
        return conn

    def write(self, topic: str, msgtype: str, msg: Mapping[str, Any] | object, stamp_ns: int) -> None:
        """Writes one message (a rosbags message object or a dict) with log time ``stamp_ns``."""
        conn = self._connection(topic, msgtype)
        try:
            raw = self._store.serialize_cdr(build_message(self._store, msgtype, msg), msgtype)
            self._writer.write(conn, int(stamp_ns), raw)
        except (SerdeError, WriterError, TypeError, ValueError, AttributeError) as e:
            raise BagError(f"cannot write {msgtype} to {topic}: {e}") from e

    def write_raw(self, topic: str, msgtype: str, data: bytes | memoryview, stamp_ns: int) -> None:
        """Writes an already CDR-serialised message (e.g. from ``rclpy.serialization``) with log time ``stamp_ns``."""
        conn = self._connection(topic, msgtype)
        try:
            self._writer.write(conn, int(stamp_ns), data)
        except WriterError as e:
            raise BagError(f"cannot write {msgtype} to {topic}: {e}") from e

    def set_custom_data(self, key: str, value: str) -> None:
        """Records ``key: value`` in the bag's ``metadata.yaml`` (``custom_data``, rosbag2 metadata 6+)."""
        self._writer.set_custom_data(key, value)

    def write_image(self, topic: str, stamp_ns: int, frame_id: str, array: np.ndarray, encoding: str) -> None:
        """Writes a ``sensor_msgs/msg/Image`` whose header stamp and log time are both ``stamp_ns``.

        ``array`` is RGB ``[H, W, 3]`` or mono ``[H, W]`` uint8; it is packed as ``encoding``.
        """
        try:
            data, step = encode_image(array, encoding)
        except ImageDecodeError as e:
            raise BagError(f"cannot encode image for {topic}: {e}") from e
        msg = {
            "header": {"stamp": int(stamp_ns), "frame_id": frame_id},
            "height": array.shape[0],
            "width": array.shape[1],
            "encoding": encoding,
            "is_bigendian": 0,
            "step": step,
            "data": np.frombuffer(data, np.uint8),
        }
        self.write(topic, IMAGE_TYPE, msg, stamp_ns)

    def write_compressed_image(
        self,
        topic: str,
        stamp_ns: int,
        frame_id: str,
        array: np.ndarray,
        format: str = "jpeg",
        quality: int = 95,
    ) -> None:
        """Writes a ``sensor_msgs/msg/CompressedImage`` whose header stamp and log time are both ``stamp_ns``.

        ``array`` is RGB ``[H, W, 3]`` or mono ``[H, W]`` uint8, compressed as compressed_image_transport does
        (``format`` ``"jpeg"`` or ``"png"``, the message's format string says e.g. ``"rgb8; jpeg compressed
        bgr8"``). ``quality`` is the JPEG quality. image_transport publishes on ``<base topic>/compressed``.
        """
        try:
            fmt, data = encode_compressed(array, format, quality)
        except ImageDecodeError as e:
            raise BagError(f"cannot compress image for {topic}: {e}") from e
        msg = {
            "header": {"stamp": int(stamp_ns), "frame_id": frame_id},
            "format": fmt,
            "data": np.frombuffer(data, np.uint8),
        }
        self.write(topic, COMPRESSED_IMAGE_TYPE, msg, stamp_ns)

    def write_video_unit(
        self, topic: str, stamp_ns: int, frame_id: str, data: bytes, fmt: str = "h264"
    ) -> None:
        """Writes one access unit as ``foxglove_msgs/msg/CompressedVideo`` (timestamp and log time ``stamp_ns``)."""
        msg = {
            "timestamp": int(stamp_ns),
            "frame_id": frame_id,
            "data": np.frombuffer(data, np.uint8),
            "format": fmt,
        }
        self.write(topic, COMPRESSED_VIDEO_TYPE, msg, stamp_ns)


def _open(path: str | Path) -> AnyReader:
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        return AnyReader([path], default_typestore=typestore())
    except (*_CORRUPT, OSError) as e:
        raise BagError(f"cannot open bag {path}: {first_line(e)}") from e


def read_messages(
    path: str | Path, topics: Iterable[str] | str | None = None
) -> Iterator[tuple[str, int, object]]:
    """Yields ``(topic, log_time_ns, message)`` in log-time order, optionally only for ``topics``.

    Raises:
        BagError: Missing or unreadable bag, or a message that cannot be deserialised.
    """
    wanted = {topics} if isinstance(topics, str) else (None if topics is None else set(topics))
    reader = _open(path)
    try:
        with reader:
            conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
            if not conns:
                return
            for conn, log_ns, raw in reader.messages(connections=conns):
                yield conn.topic, log_ns, reader.deserialize(raw, conn.msgtype)
    except (*_CORRUPT, OSError) as e:
        raise BagError(f"cannot read bag {path}: {first_line(e)}") from e


@dataclass
class BagFrame:
    """One camera frame from a bag: RGB image and, when the bag has them, its label ids.

    ``motion`` is the decoded frame with its codec motion (intra flag, flow, decode time) for
    ``foxglove_msgs/msg/CompressedVideo`` topics, else None.
    """

    stamp_ns: int
    frame_id: str
    image: np.ndarray
    labels: np.ndarray | None
    motion: CodecFrame | None = None


def _header(msg: Any) -> tuple[int, str]:
    """(stamp ns, frame_id) of an image message, or of a CompressedVideo (which has no header)."""
    if hasattr(msg, "header"):
        return stamp_to_ns(msg.header.stamp), msg.header.frame_id
    return stamp_to_ns(msg.timestamp), msg.frame_id


class _VideoTopic:
    """Decodes a CompressedVideo topic in order: one access unit per message, one frame out of each."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.decoder: PacketDecoder | None = None

    def __call__(self, msg: Any) -> CodecFrame:
        stamp = stamp_to_ns(msg.timestamp)
        fmt = str(msg.format).lower()
        try:
            if self.decoder is None:
                self.decoder = PacketDecoder(fmt)
            return self.decoder.decode_one(bytes(msg.data))
        except CodecError as e:
            raise BagError(f"undecodable video on {self.topic} at {stamp} ns: {e}") from e


def _decode(msg: Any, topic: str, mono: bool) -> np.ndarray:
    """An Image or CompressedImage message as RGB (or, for ``mono`` labels, ``[H, W]`` ids), copied."""
    stamp = stamp_to_ns(msg.header.stamp)
    compressed = hasattr(msg, "format")
    try:
        if compressed:
            if mono and "png" not in msg.format.lower():
                raise BagError(
                    f"labels on {topic} must be PNG-compressed (lossless), got format {msg.format!r}"
                )
            pixels = decode_compressed(msg.format, msg.data)
        else:
            encoding = "mono8" if mono and msg.encoding in ("8UC1", "mono8") else msg.encoding
            if mono and encoding != "mono8":
                raise BagError(f"labels on {topic} must be mono8 or 8UC1, got {msg.encoding!r}")
            pixels = decode_image(encoding, msg.width, msg.height, msg.step, msg.data, bool(msg.is_bigendian))
    except ImageDecodeError as e:
        raise BagError(f"undecodable image on {topic} at {stamp} ns: {e}") from e
    # Copy: the decoded array may be a view of the message buffer.
    return np.array(pixels[:, :, 0]) if mono else np.array(pixels)


def read_frames(
    path: str | Path,
    *,
    image_topic: str = "/camera/image_raw",
    label_topic: str = "/camera/labels",
    max_pending: int = 64,
) -> Iterator[BagFrame]:
    """Yields the frames of ``image_topic`` in order, each paired with the label image of equal stamp.

    Labels are None when the bag has no ``label_topic`` or no label with that stamp arrives within
    ``max_pending`` images.

    Raises:
        BagError: Missing bag, no such image topic, a topic of another message type, or undecodable images.
    """
    info = bag_info(path)
    if image_topic not in info["topics"]:
        raise BagError(f"bag {path} has no topic {image_topic} (topics: {sorted(info['topics'])})")
    has_labels = label_topic in info["topics"]
    for topic in (image_topic, label_topic) if has_labels else (image_topic,):
        kinds = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE) + (
            (COMPRESSED_VIDEO_TYPE,) if topic == image_topic else ()
        )
        if info["types"][topic] not in kinds:
            raise BagError(
                f"topic {topic} of bag {path} carries {info['types'][topic]}, not {' or '.join(kinds)}"
            )
    video = _VideoTopic(image_topic) if info["types"][image_topic] == COMPRESSED_VIDEO_TYPE else None
    pending: deque[tuple[int, Any]] = deque()  # (stamp, image message) in bag order, waiting for labels
    labels: OrderedDict[int, np.ndarray] = OrderedDict()  # stamp -> labels that arrived first

    def flush(force: bool) -> Iterator[BagFrame]:
        # Frames leave in image order; the oldest waits for its label until max_pending images queue up.
        while pending:
            stamp, msg = pending[0]
            if not (stamp in labels or force or not has_labels or len(pending) > max_pending):
                return
            pending.popleft()
            motion = video(msg) if video is not None else None
            image = motion.rgb if motion is not None else _decode(msg, image_topic, False)
            yield BagFrame(stamp, _header(msg)[1], image, labels.pop(stamp, None), motion)

    topics = [image_topic, label_topic] if has_labels else [image_topic]
    for topic, _, msg in read_messages(path, topics):
        stamp = _header(msg)[0]
        if topic == image_topic:
            pending.append((stamp, msg))
        else:
            labels[stamp] = _decode(msg, label_topic, True)
            while len(labels) > max_pending:
                labels.popitem(last=False)
        yield from flush(False)
    yield from flush(True)


def bag_info(path: str | Path) -> dict[str, Any]:
    """Summary of a bag: ``topics`` (name -> message count), ``types`` (name -> type), times and totals.

    ``start_ns``/``end_ns`` are the log times of the first and last message; ``duration_ns`` spans them.
    """
    reader = _open(path)
    try:
        with reader:
            topics = reader.topics
            # rosbags' end_time lies one nanosecond after the last message.
            start, end = (reader.start_time, reader.end_time - 1) if reader.message_count else (0, 0)
            return {
                "path": str(path),
                "topics": {name: int(t.msgcount) for name, t in topics.items()},
                "types": {name: t.msgtype for name, t in topics.items()},
                "message_count": int(reader.message_count),
                "start_ns": int(start),
                "end_ns": int(end),
                "duration_ns": int(end - start),
                "duration_s": (end - start) / 1e9,
            }
    except (*_CORRUPT, OSError) as e:
        raise BagError(f"cannot read bag {path}: {first_line(e)}") from e


def custom_data(path: str | Path) -> dict[str, str]:
    """The ``custom_data`` of a rosbag2 directory's ``metadata.yaml`` (empty when it has none)."""
    import yaml

    meta = Path(path) / "metadata.yaml"
    try:
        doc = yaml.safe_load(meta.read_text())
        info = doc["rosbag2_bagfile_information"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    data = info.get("custom_data") if isinstance(info, dict) else None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


__all__ = [
    "BagError",
    "BagFrame",
    "BagWriter",
    "COMPRESSED_IMAGE_TYPE",
    "COMPRESSED_SUFFIX",
    "COMPRESSED_VIDEO_TYPE",
    "VIDEO_SUFFIX",
    "DEFAULT_QOS",
    "IMAGE_TYPE",
    "SYNTHETIC_KEY",
    "SYNTH_EPOCH_NS",
    "bag_info",
    "build_message",
    "custom_data",
    "read_frames",
    "read_messages",
    "stamp_to_ns",
    "typestore",
]
