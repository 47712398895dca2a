"""Camera images as robots publish them (sensor_msgs/Image, sensor_msgs/CompressedImage) to RGB, without ROS.

Raw encodings are converted the way cv_bridge converts them to ``rgb8``: the same OpenCV colour codes (BT.601
video-range YUV, bilinear Bayer demosaicing) and the same 16 -> 8 bit scale (``convertTo`` with 255/65535, i.e.
``round(v / 257)``). Compressed images follow compressed_image_transport's ``format`` strings.

Decoding validates every field a publisher can get wrong (size, step, encoding, parity) and raises
:class:`ImageDecodeError` with a one-line reason, so callers can log it and skip the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class _Format:
    samples: int  # samples per pixel in a row (UYVY: 2, a Y or Bayer plane: 1)
    code: int | None  # OpenCV code from the native layout to RGB; None: already RGB
    depth: int = 1  # bytes per sample
    even: str = ""  # sizes that must be even: "w" (pixel pairs share chroma) or "wh" (2x2 blocks do)


# Bayer codes as cv_bridge maps them: OpenCV names a pattern by the pixels at row 1, columns 1 and 2 (counting
# from 0), so RGGB is OpenCV's "BG". test_imgcodec checks all four on flat colours.
_FORMATS: dict[str, _Format] = {
    "rgb8": _Format(3, None),
    "bgr8": _Format(3, cv2.COLOR_BGR2RGB),
    "rgba8": _Format(4, cv2.COLOR_RGBA2RGB),
    "bgra8": _Format(4, cv2.COLOR_BGRA2RGB),
    "mono8": _Format(1, cv2.COLOR_GRAY2RGB),
    "rgb16": _Format(3, None, 2),
    "bgr16": _Format(3, cv2.COLOR_BGR2RGB, 2),
    "mono16": _Format(1, cv2.COLOR_GRAY2RGB, 2),
    # "uyvy" and "yuyv": the names sensor_msgs gave the same byte orders in 2023 (cv_bridge knows only the old).
    "yuv422": _Format(2, cv2.COLOR_YUV2RGB_UYVY, even="w"),
    "uyvy": _Format(2, cv2.COLOR_YUV2RGB_UYVY, even="w"),
    "yuv422_yuy2": _Format(2, cv2.COLOR_YUV2RGB_YUY2, even="w"),
    "yuyv": _Format(2, cv2.COLOR_YUV2RGB_YUY2, even="w"),
    # step is the stride of the Y plane; height / 2 rows of V/U pairs with the same stride follow it, so
    # len(data) == step * height * 3 / 2 (camera_ros publishes libcamera's buffers this way).
    "nv21": _Format(1, cv2.COLOR_YUV2RGB_NV21, even="wh"),
    "bayer_rggb8": _Format(1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": _Format(1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": _Format(1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": _Format(1, cv2.COLOR_BayerGB2RGB),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_FORMATS)

#: cv_bridge's 16 -> 8 bit scale; convertScaleAbs rounds ``v * 255 / 65535`` to nearest, as convertTo does.
_SCALE_16_TO_8 = 255.0 / 65535.0

# BT.601 video range, as OpenCV's YUV <-> RGB codes for 4:2:2 and 4:2:0 use it.
_KR, _KB = 0.299, 0.114


class ImageDecodeError(ValueError):
    """A buffer that cannot be an image of the stated size and encoding."""


def _as_bytes(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _to_8bit(rows: np.ndarray, big_endian: bool) -> np.ndarray:
    """``[rows, 2 * n]`` bytes of 16-bit samples -> ``[rows, n]`` uint8, scaled as cv_bridge does."""
    words = np.ascontiguousarray(rows).view(">u2" if big_endian else "<u2")
    # astype to the native order swaps bytes only when the message's order differs from the host's.
    return cv2.convertScaleAbs(words.astype(np.uint16, copy=False), alpha=_SCALE_16_TO_8)


def decode_image(
    encoding: str,
    width: int,
    height: int,
    step: int,
    data: bytes | memoryview | np.ndarray,
    is_bigendian: bool | int = False,
) -> np.ndarray:
    """Return the image as a ``[height, width, 3]`` uint8 RGB array.

    ``step`` is honoured (rows may be padded); for ``nv21`` it is the Y plane's stride and the chroma rows that
    follow the Y plane use it too. ``is_bigendian`` matters only for the 16-bit encodings. For ``rgb8`` the
    result is a view of ``data``; copy it before the buffer is reused.

    Raises:
        ImageDecodeError: unknown encoding, zero size, a step smaller than a row, an odd size where chroma is
            shared (yuv422: width; nv21: width and height), or a data size other than ``step * rows``.
    """
    fmt = _FORMATS.get(encoding)
    if fmt is None:
        raise ImageDecodeError(
            f"unsupported encoding '{encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"zero-size image ({width}x{height})")
    row_bytes = width * fmt.samples * fmt.depth
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is smaller than a row of {width} {encoding} pixels ({row_bytes} bytes)"
        )
    if (width % 2 and "w" in fmt.even) or (height % 2 and "h" in fmt.even):
        what = "width and height" if fmt.even == "wh" else "width"
        raise ImageDecodeError(f"{encoding} needs an even {what}, got {width}x{height}")
    rows = height + height // 2 if fmt.even == "wh" else height
    buf = _as_bytes(data)
    needed = step * rows
    if buf.size != needed:
        # sensor_msgs/Image requires len(data) == step * height (nv21: * 3 / 2); anything else means a field lies.
        what = "truncated data" if buf.size < needed else "data larger than step * height"
        raise ImageDecodeError(
            f"{what}: {buf.size} bytes for {width}x{height} {encoding} with step {step} (expected {needed})"
        )
    plane = buf.reshape(rows, step)[:, :row_bytes]
    if fmt.depth == 2:
        plane = _to_8bit(plane, bool(is_bigendian))
    pixels = plane if fmt.samples == 1 else plane.reshape(rows, width, fmt.samples)
    if fmt.code is None:
        return pixels
    return cv2.cvtColor(pixels, fmt.code)


# ------------------------------------------------------------------------------------------------ encoding
def _yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float BT.601 video-range Y, U, V planes of an RGB image (the inverse of OpenCV's YUV -> RGB codes)."""
    r, g, b = (rgb[:, :, i].astype(np.float32) for i in range(3))
    luma = _KR * r + (1 - _KR - _KB) * g + _KB * b
    y = 16 + luma * (219 / 255)
    u = 128 + (b - luma) * (224 / 255 / (2 * (1 - _KB)))
    v = 128 + (r - luma) * (224 / 255 / (2 * (1 - _KR)))
    return y, u, v


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _pack_yuv(rgb: np.ndarray, encoding: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    need_h = encoding == "nv21"
    if w % 2 or (need_h and h % 2):
        raise ImageDecodeError(
            f"{encoding} needs an even {'width and height' if need_h else 'width'}, got {w}x{h}"
        )
    y, u, v = _yuv(rgb)
    if need_h:
        # 2x2 blocks share one V/U pair, stored interleaved (V first) below the Y plane.
        u, v = (c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v))
        chroma = np.stack([_u8(v), _u8(u)], axis=2).reshape(h // 2, w)
        return np.concatenate([_u8(y), chroma], axis=0)
    # Pixel pairs share one U and one V.
    u, v = (c.reshape(h, w // 2, 2).mean(axis=2) for c in (u, v))
    y2 = _u8(y).reshape(h, w // 2, 2)
    u8, v8 = _u8(u), _u8(v)
    if encoding in ("yuv422", "uyvy"):
        quads = [u8, y2[:, :, 0], v8, y2[:, :, 1]]
    else:
        quads = [y2[:, :, 0], u8, y2[:, :, 1], v8]
    return np.stack(quads, axis=2).reshape(h, 2 * w)


def _mosaic(rgb: np.ndarray, encoding: str) -> np.ndarray:
    pattern = encoding[len("bayer_") : -1].upper()  # e.g. "RGGB": row 0 then row 1 of each 2x2 block
    out = np.empty(rgb.shape[:2], np.uint8)
    for i, colour in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(colour)]
    return out


def encode_image(array: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """Pack an RGB ``[H, W, 3]`` (or mono ``[H, W]``) uint8 array as ``encoding``; returns ``(data, step)``.

    Mono encodings take the first channel of an RGB array. 16-bit samples are ``value * 257``, little-endian
    (``is_bigendian = 0``). YUV is BT.601 video range with chroma averaged over each pixel pair (yuv422) or
    2x2 block (nv21, whose step is the width). Bayer mosaics sample the pattern's channel at each pixel.
    """
    fmt = _FORMATS.get(encoding)
    if fmt is None:
        raise ImageDecodeError(f"unsupported encoding '{encoding}'")
    if array.dtype != np.uint8:
        raise ImageDecodeError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2 and encoding == "mono8":
        # A mask as mono8: its own bytes (the path through three channels took 0.55 ms at 640x480).
        out = np.ascontiguousarray(array)
        return out.tobytes(), out.shape[1]
    rgb = array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    if encoding.startswith("bayer_"):
        out = _mosaic(rgb, encoding)
    elif fmt.even:
        out = _pack_yuv(rgb, encoding)
    elif fmt.samples == 1:
        out = rgb[:, :, 0]
    else:
        out = rgb if encoding.startswith("rgb") else rgb[:, :, (2, 1, 0)]
        if fmt.samples == 4:
            out = np.concatenate([out, np.full((h, w, 1), 255, np.uint8)], axis=2)
    if fmt.depth == 2:
        out = (out.astype(np.uint16) * 257).astype("<u2")
    out = np.ascontiguousarray(out)
    return out.tobytes(), out.nbytes // out.shape[0]


# ---------------------------------------------------------------------------------------------- compressed
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
_CODECS = {"jpeg": "jpeg", "jpg": "jpeg", "mjpeg": "jpeg", "png": "png", "": ""}


def _parse_format(fmt: str) -> tuple[str, str]:
    """compressed_image_transport's ``format`` -> (codec, encoding of the array that was compressed).

    It writes ``"<source encoding>; <codec> compressed <target>"``: colour sources are converted to bgr8 (JPEG)
    or bgr8/bgr16 (PNG) first, JPEG turns everything else into mono8, and PNG leaves non-colour images (mono,
    Bayer) as they are with an empty target. Plain ``"jpeg"``/``"png"``/``""`` come from drivers that publish
    the camera's own stream; the target is then unknown (OpenCV's BGR for colour).
    """
    text = fmt.strip()
    if "compresseddepth" in text.lower():
        raise ImageDecodeError(f"compressedDepth images are depth maps, not camera images (format '{fmt}')")
    target = ""
    if ";" in text:
        source, _, rest = text.partition(";")
        words = rest.split()
        codec = words[0].lower() if words else ""
        target = words[2] if len(words) >= 3 and words[1] == "compressed" else source.strip()
    else:
        codec = text.lower()
    if codec not in _CODECS:
        raise ImageDecodeError(f"unsupported compressed format '{fmt}' (supported: jpeg, png)")
    return _CODECS[codec], target


def decode_compressed(format: str, data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (``format`` and ``data``) to ``[H, W, 3]`` uint8 RGB.

    The stream's magic bytes decide JPEG or PNG; ``format`` decides the channel order: the array that was
    compressed is in the target encoding of the format string (``"rgb8; jpeg compressed bgr8"``: BGR, as
    OpenCV decodes it), so the result is the publisher's picture whichever the source encoding was. 16-bit PNGs
    are scaled to 8 bits as :func:`decode_image` scales them; Bayer PNGs are demosaiced.

    Raises:
        ImageDecodeError: compressedDepth or an unknown codec, or data that is not a decodable JPEG or PNG.
    """
    _, target = _parse_format(format)
    buf = _as_bytes(data)
    head = buf[:8].tobytes()
    if not any(head.startswith(m) for m in _MAGIC):
        raise ImageDecodeError(
            f"not a JPEG or PNG stream: {buf.size} bytes starting {head[:4].hex() or '(empty)'}"
        )
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        kind = next(k for m, k in _MAGIC.items() if head.startswith(m))
        raise ImageDecodeError(f"corrupt {kind} data: OpenCV cannot decode these {buf.size} bytes")
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=_SCALE_16_TO_8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported {image.dtype} pixels in compressed image (format '{format}')")
    if image.ndim == 2:
        # PNG keeps Bayer mosaics (8 or 16 bit, the latter already scaled to 8) as they are: demosaic them.
        bayer = _FORMATS.get(target.removesuffix("16") + "8" if target.endswith("16") else target)
        code = bayer.code if bayer and target.startswith("bayer_") else cv2.COLOR_GRAY2RGB
        return cv2.cvtColor(image, code)
    rgb_order = target.startswith("rgb")  # an RGB array was compressed as is: OpenCV returns it unchanged
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB if rgb_order else cv2.COLOR_BGRA2RGB)
    return image if rgb_order else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_compressed(rgb: np.ndarray, format: str = "jpeg", quality: int = 95) -> tuple[str, bytes]:
    """Compress an RGB (or mono ``[H, W]``) uint8 image as compressed_image_transport does for rgb8 (mono8).

    Returns ``(format_string, data)``: ``"rgb8; jpeg compressed bgr8"`` / ``"rgb8; png compressed bgr8"`` (the
    transport converts colour to BGR before OpenCV encodes it, so the file holds the true colours), or
    ``"mono8; jpeg compressed mono8"`` / ``"mono8; png compressed "`` for mono. ``quality`` is the JPEG quality
    (the transport's default is 95); PNG uses its default level 3.
    """
    if format not in ("jpeg", "png"):
        raise ImageDecodeError(f"unsupported compression '{format}' (supported: jpeg, png)")
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise ImageDecodeError(f"expected uint8 RGB or mono pixels, got {rgb.dtype} {rgb.shape}")
    mono = rgb.ndim == 2
    pixels = rgb if mono else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if format == "jpeg":
        params, target = [cv2.IMWRITE_JPEG_QUALITY, int(quality)], "mono8" if mono else "bgr8"
    else:
        params, target = [cv2.IMWRITE_PNG_COMPRESSION, 3], "" if mono else "bgr8"
    ok, out = cv2.imencode(".jpg" if format == "jpeg" else ".png", pixels, params)
    if not ok:
        raise ImageDecodeError(f"OpenCV could not encode a {rgb.shape} image as {format}")
    return f"{'mono8' if mono else 'rgb8'}; {format} compressed {target}", out.tobytes()
