import numpy as np
import pytest

from vidseg_ros.imgcodec import SUPPORTED_ENCODINGS, ImageDecodeError, decode_image, encode_image


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_round_trip_every_encoding(rgb, encoding):
    data, step = encode_image(rgb, encoding)
    out = decode_image(encoding, 7, 5, step, data)
    expected = np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(out, expected)


def test_channel_order_is_honoured():
    # One pure-red pixel in each layout must decode to red.
    layouts = {"rgb8": [255, 0, 0], "bgr8": [0, 0, 255], "rgba8": [255, 0, 0, 7], "bgra8": [0, 0, 255, 7]}
    for encoding, pixel in layouts.items():
        out = decode_image(encoding, 1, 1, len(pixel), bytes(pixel))
        assert out[0, 0].tolist() == [255, 0, 0], encoding


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_padded_rows(rgb, encoding):
    data, step = encode_image(rgb, encoding)
    rows = np.frombuffer(data, np.uint8).reshape(5, step)
    padded = np.concatenate([rows, np.full((5, 13), 99, np.uint8)], axis=1)
    out = decode_image(encoding, 7, 5, step + 13, padded.tobytes())
    np.testing.assert_array_equal(out, decode_image(encoding, 7, 5, step, data))


@pytest.mark.parametrize(
    ("encoding", "width", "height", "step", "size", "match"),
    [
        ("yuv422", 7, 5, 21, 105, "unsupported encoding"),
        ("rgb8", 0, 5, 21, 0, "zero-size"),
        ("rgb8", 7, 0, 21, 0, "zero-size"),
        ("rgb8", 7, 5, 20, 100, "smaller than a row"),
        ("rgb8", 7, 5, 21, 104, "truncated"),
        ("rgb8", 7, 4, 21, 105, "larger than"),  # height that lies
        ("rgb8", 8, 5, 21, 105, "smaller than a row"),  # width that lies
    ],
)
def test_bad_buffers_raise_with_reason(encoding, width, height, step, size, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(encoding, width, height, step, bytes(size))
