import cv2
import numpy as np
import pytest

from vidseg_ros.imgcodec import (
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image,
)

LOSSLESS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "rgb16", "bgr16", "mono16")
YUV = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv", "nv21")
BAYER = ("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8")
MONO = ("mono8", "mono16")
H, W = 48, 64


def one_line_error(call, match: str) -> str:
    with pytest.raises(ImageDecodeError, match=match) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def smooth() -> np.ndarray:
    """A blurred colour image: chroma subsampling and demosaicing lose little on it."""
    coarse = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(image, (0, 0), 6.0)  # values 28..236, neighbours differ by up to 11


@pytest.fixture(scope="module")
def grey(smooth) -> np.ndarray:
    return np.repeat(smooth[:, :, :1], 3, axis=2)


def test_every_encoding_is_covered_here():
    assert set(SUPPORTED_ENCODINGS) == set(LOSSLESS) | set(YUV) | set(BAYER)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_round_trip_every_encoding(smooth, grey, encoding):
    source = grey if encoding in MONO else smooth
    data, step = encode_image(source, encoding)
    out = decode_image(encoding, W, H, step, data)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(int) - source)
    if encoding in LOSSLESS:
        np.testing.assert_array_equal(out, source)
    elif encoding in YUV:
        # Video-range quantisation plus chroma shared by 2 (nv21: 2x2) pixels; on this image OpenCV's own
        # RGB -> I420 -> RGB is off by up to 11 (mean 1.8).
        assert err.max() <= 10 and err.mean() < 2, (err.max(), err.mean())
    else:
        # Bilinear demosaicing interpolates two of three channels; the outermost pixels see no full 3x3 block.
        assert err[1:-1, 1:-1].max() <= 3 and err.mean() < 0.5, (err.max(), err.mean())


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_a_single_channel_array_encodes_as_its_grey_image(grey, encoding):
    """A mask ``[H, W]`` packs as the grey RGB image of it does (mono8 takes its bytes as they are)."""
    view = grey[:, :, 0]  # not contiguous: every third byte
    data, step = encode_image(view, encoding)
    assert (data, step) == encode_image(grey, encoding)
    if encoding == "mono8":
        assert data == np.ascontiguousarray(view).tobytes() and step == W


@pytest.mark.parametrize("encoding", [e for e in SUPPORTED_ENCODINGS if e not in MONO])
def test_pure_colours_keep_their_channel(encoding):
    for colour in ([255, 0, 0], [0, 255, 0], [0, 0, 255]):
        flat = np.empty((4, 6, 3), np.uint8)
        flat[:] = colour
        data, step = encode_image(flat, encoding)
        out = decode_image(encoding, 6, 4, step, data)
        assert np.abs(out.astype(int) - colour).max() <= 3, (encoding, colour, out[1, 1])


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GBRG", "GRBG"])
def test_bayer_pattern_names(pattern):
    # Built here, not by encode_image: each pixel takes the channel the pattern names at its 2x2 position.
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[:8, :8], rgb[:8, 8:], rgb[8:, :8], rgb[8:, 8:] = (
        (200, 90, 20),
        (30, 180, 240),
        (250, 250, 0),
        (5, 60, 10),
    )
    mosaic = np.empty((16, 16), np.uint8)
    for i, colour in enumerate(pattern):
        dy, dx = divmod(i, 2)
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(colour)]
    out = decode_image(f"bayer_{pattern.lower()}8", 16, 16, 16, mosaic.tobytes())
    for ys, xs in ((slice(1, 7), slice(1, 7)), (slice(1, 7), slice(9, 15)), (slice(9, 15), slice(1, 7))):
        np.testing.assert_array_equal(out[ys, xs], rgb[ys, xs])
    np.testing.assert_array_equal(out[9:15, 9:15], rgb[9:15, 9:15])


def test_known_yuv_bytes():
    # Video range: Y 16 is black and 235 white; U = V = 128 is grey.
    white_black = bytes([128, 235, 128, 16])  # UYVY: U Y0 V Y1
    out = decode_image("yuv422", 2, 1, 4, white_black)
    assert out.tolist() == [[[255, 255, 255], [0, 0, 0]]]
    out = decode_image("yuv422_yuy2", 2, 1, 4, bytes([235, 128, 16, 128]))  # YUYV: Y0 U Y1 V
    assert out.tolist() == [[[255, 255, 255], [0, 0, 0]]]
    nv21 = bytes([235, 16, 235, 16]) + bytes([128, 128])  # 2x2 Y plane, then one V/U pair
    out = decode_image("nv21", 2, 2, 2, nv21)
    assert out[:, 0].tolist() == [[255, 255, 255]] * 2 and out[:, 1].tolist() == [[0, 0, 0]] * 2


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_padded_rows(smooth, encoding):
    data, step = encode_image(smooth, encoding)
    rows = np.frombuffer(data, np.uint8).reshape(-1, step)  # nv21: the chroma rows are padded too
    padded = np.concatenate([rows, np.full((rows.shape[0], 13), 99, np.uint8)], axis=1)
    out = decode_image(encoding, W, H, step + 13, padded.tobytes())
    np.testing.assert_array_equal(out, decode_image(encoding, W, H, step, data))


def test_rgb8_is_a_view_and_inputs_can_be_arrays(smooth):
    data, step = encode_image(smooth, "rgb8")
    buf = np.frombuffer(data, np.uint8)
    out = decode_image("rgb8", W, H, step, buf)
    assert np.shares_memory(out, buf)
    np.testing.assert_array_equal(
        decode_image("bgr8", W, H, step, memoryview(encode_image(smooth, "bgr8")[0])), smooth
    )


def test_16bit_scaling_is_cv_bridges_and_big_endian_is_honoured():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    # cv_bridge: convertTo(CV_8U, 255 / 65535), i.e. v / 257 rounded to nearest (no ties: 257 is odd).
    expected = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    little = decode_image("mono16", 256, 256, 512, values.astype("<u2").tobytes())
    np.testing.assert_array_equal(little[:, :, 0], expected)
    big = decode_image("mono16", 256, 256, 512, values.astype(">u2").tobytes(), is_bigendian=1)
    np.testing.assert_array_equal(big, little)
    rgb16 = np.stack([values, values[::-1], values.T], axis=2)
    for encoding, pixels in (("rgb16", rgb16), ("bgr16", rgb16[:, :, ::-1])):
        out = decode_image(encoding, 256, 256, 256 * 6, pixels.astype(">u2").tobytes(), is_bigendian=True)
        np.testing.assert_array_equal(out, ((rgb16.astype(np.uint32) + 128) // 257).astype(np.uint8))
    # 8-bit encodings ignore the flag.
    assert decode_image("rgb8", 1, 1, 3, bytes([1, 2, 3]), is_bigendian=1).tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize(
    ("encoding", "width", "height", "step", "size", "match"),
    [
        ("yuv420", 8, 4, 8, 48, "unsupported encoding 'yuv420' .*nv21"),
        ("rgb8", 0, 5, 21, 0, "zero-size"),
        ("rgb8", 7, 0, 21, 0, "zero-size"),
        ("rgb8", 7, 5, 20, 100, "smaller than a row"),
        ("rgb8", 7, 5, 21, 104, "truncated"),
        ("rgb8", 7, 4, 21, 105, "larger than"),  # height that lies
        ("rgb8", 8, 5, 21, 105, "smaller than a row"),  # width that lies
        ("rgb16", 4, 2, 23, 46, "smaller than a row of 4 rgb16 pixels \\(24 bytes\\)"),
        ("yuv422", 8, 2, 15, 30, "smaller than a row of 8 yuv422 pixels \\(16 bytes\\)"),
        ("yuv422", 7, 2, 14, 28, "yuv422 needs an even width, got 7x2"),
        ("yuyv", 7, 2, 14, 28, "yuyv needs an even width"),
        ("nv21", 8, 5, 8, 56, "nv21 needs an even width and height, got 8x5"),
        ("nv21", 7, 4, 8, 48, "nv21 needs an even width and height, got 7x4"),
        ("nv21", 8, 4, 8, 32, "truncated data: 32 bytes .* \\(expected 48\\)"),  # the chroma plane is missing
        ("nv21", 8, 4, 8, 49, "larger than"),
        ("bayer_rggb8", 8, 4, 8, 31, "truncated"),
        ("mono16", 8, 4, 16, 65, "larger than"),
    ],
)
def test_bad_buffers_raise_one_line_with_reason(encoding, width, height, step, size, match):
    one_line_error(lambda: decode_image(encoding, width, height, step, bytes(size)), match)


def test_encode_rejects_odd_yuv_sizes_and_unknown_encodings(smooth):
    one_line_error(lambda: encode_image(smooth[:, :31], "yuv422"), "yuv422 needs an even width")
    one_line_error(lambda: encode_image(smooth[:23], "nv21"), "nv21 needs an even width and height")
    one_line_error(lambda: encode_image(smooth, "yuv420"), "unsupported encoding")


# ---------------------------------------------------------------------------------------------- compressed
def transport(rgb: np.ndarray, source: str, codec: str, target: str) -> tuple[str, bytes]:
    """What compressed_image_transport publishes: the image converted to ``target``, then imencode'd."""
    if target.startswith("bgr"):
        pixels = rgb[:, :, ::-1]
    elif target.startswith("rgb"):
        pixels = rgb  # old publishers: an RGB array handed to OpenCV as is
    elif target.startswith("bayer"):
        pixels = np.frombuffer(encode_image(rgb, target)[0], np.uint8).reshape(rgb.shape[:2])
    else:
        pixels = rgb[:, :, 0]
    if target.endswith("16"):
        pixels = pixels.astype(np.uint16) * 257
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", np.ascontiguousarray(pixels))
    assert ok
    # PNG names no target for non-colour images (mono, Bayer): they are compressed unchanged.
    shown = "" if codec == "png" and not target.startswith(("rgb", "bgr")) else target
    return f"{source}; {codec} compressed {shown}", data.tobytes()


PNG_FORMATS = [
    ("rgb8", "bgr8"),
    ("bgr8", "bgr8"),
    ("rgba8", "bgr8"),
    ("yuv422", "bgr8"),
    ("rgb8", "rgb8"),
    ("rgb16", "bgr16"),
    ("mono8", "mono8"),
    ("mono16", "mono16"),
]


@pytest.mark.parametrize(("source", "target"), PNG_FORMATS)
def test_png_round_trip_is_exact(smooth, grey, source, target):
    image = grey if target.startswith("mono") else smooth
    fmt, data = transport(image, source, "png", target)
    np.testing.assert_array_equal(decode_compressed(fmt, data), image)


def test_png_of_a_bayer_mosaic_is_demosaiced(smooth):
    fmt, data = transport(smooth, "bayer_grbg8", "png", "bayer_grbg8")
    assert fmt == "bayer_grbg8; png compressed "
    raw, step = encode_image(smooth, "bayer_grbg8")
    expected = decode_image("bayer_grbg8", W, H, step, raw)
    np.testing.assert_array_equal(decode_compressed(fmt, data), expected)
    mosaic16 = np.frombuffer(raw, np.uint8).reshape(H, W).astype(np.uint16) * 257
    data16 = cv2.imencode(".png", mosaic16)[1]
    np.testing.assert_array_equal(decode_compressed("bayer_grbg16; png compressed ", data16), expected)


def test_plain_and_sniffed_formats(smooth):
    bgr = np.ascontiguousarray(smooth[:, :, ::-1])
    png, jpeg = cv2.imencode(".png", bgr)[1].tobytes(), cv2.imencode(".jpg", bgr)[1].tobytes()
    for fmt in ("png", "PNG", ""):
        np.testing.assert_array_equal(decode_compressed(fmt, png), smooth)
    for fmt in ("jpeg", "jpg", "MJPEG", ""):
        assert np.abs(decode_compressed(fmt, np.frombuffer(jpeg, np.uint8)).astype(int) - smooth).mean() < 3
    rgba = cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))[1].tobytes()
    np.testing.assert_array_equal(decode_compressed("png", rgba), smooth)


@pytest.mark.parametrize(
    ("source", "target"),
    [("rgb8", "bgr8"), ("bgr8", "bgr8"), ("yuv422", "bgr8"), ("mono8", "mono8"), ("mono16", "mono8")],
)
def test_jpeg_is_close(smooth, grey, source, target):
    image = grey if target == "mono8" else smooth
    fmt, data = transport(image, source, "jpeg", target)
    assert fmt == f"{source}; jpeg compressed {target}"
    assert np.abs(decode_compressed(fmt, data).astype(int) - image).mean() < 3


def test_red_is_red_for_every_format_string():
    red = np.zeros((16, 16, 3), np.uint8)
    red[:, :, 0] = 255
    cases = [transport(red, s, "png", t) for s, t in PNG_FORMATS if not t.startswith("mono")]
    cases += [transport(red, s, "jpeg", "bgr8") for s in ("rgb8", "bgr8", "rgba8", "bgra8")]
    cases += [encode_compressed(red, "jpeg"), encode_compressed(red, "png")]
    bgr = red[:, :, ::-1].copy()
    cases += [
        (f, cv2.imencode(ext, bgr)[1].tobytes())
        for f, ext in (("jpeg", ".jpg"), ("png", ".png"), ("", ".png"))
    ]
    for fmt, data in cases:
        out = decode_compressed(fmt, data)
        assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 4, (fmt, out[8, 8])


def test_encode_compressed_writes_the_transports_strings(smooth, grey):
    fmt, data = encode_compressed(smooth, "jpeg")
    assert fmt == "rgb8; jpeg compressed bgr8" and data[:3] == b"\xff\xd8\xff"
    fmt, data = encode_compressed(smooth, "png")
    assert fmt == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(decode_compressed(fmt, data), smooth)
    assert encode_compressed(grey[:, :, 0], "jpeg")[0] == "mono8; jpeg compressed mono8"
    fmt, data = encode_compressed(grey[:, :, 0], "png")
    assert fmt == "mono8; png compressed "
    np.testing.assert_array_equal(decode_compressed(fmt, data), grey)
    low = encode_compressed(smooth, "jpeg", quality=20)[1]
    assert len(low) < len(encode_compressed(smooth, "jpeg")[1])
    one_line_error(lambda: encode_compressed(smooth, "tiff"), "unsupported compression 'tiff'")


def test_16bit_png_scales_like_raw(smooth):
    wide = smooth.astype(np.uint16) * 251 + 77  # not a multiple of 257: rounding matters
    fmt = "rgb16; png compressed bgr16"
    out = decode_compressed(fmt, cv2.imencode(".png", np.ascontiguousarray(wide[:, :, ::-1]))[1])
    raw = decode_image("rgb16", W, H, W * 6, wide.astype("<u2").tobytes())
    np.testing.assert_array_equal(out, raw)


@pytest.mark.parametrize(
    ("fmt", "data", "match"),
    [
        (
            "16UC1; compressedDepth png",
            b"\x00" * 12 + b"\x89PNG\r\n\x1a\n",
            "compressedDepth images are depth maps",
        ),
        ("32FC1; compressedDepth", b"\x00" * 20, "compressedDepth"),
        ("rgb8; tiff compressed ", b"II*\x00", "unsupported compressed format 'rgb8; tiff compressed '"),
        ("h264", b"\x00\x00\x00\x01", "unsupported compressed format 'h264' \\(supported: jpeg, png\\)"),
        ("jpeg", b"", "not a JPEG or PNG stream: 0 bytes"),
        ("jpeg", b"GIF89a" + bytes(20), "not a JPEG or PNG stream: 26 bytes starting 47494638"),
        ("png", b"\x89PNG\r\n\x1a\n" + bytes(range(64)), "corrupt png data"),
        ("", b"\xff\xd8\xff" + b"\x17" * 64, "corrupt jpeg data"),
    ],
)
def test_bad_compressed_images_raise_one_line(fmt, data, match):
    one_line_error(lambda: decode_compressed(fmt, data), match)


def test_truncated_png_is_rejected(smooth):
    fmt, data = encode_compressed(smooth, "png")
    one_line_error(lambda: decode_compressed(fmt, data[: len(data) // 2]), "corrupt png data")
