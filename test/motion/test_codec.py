"""Codec motion: block motion vectors to reverse flow, I-frame keying, and real H.264 / MPEG-4 decoding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vidseg_ros.motion.codec import (
    CELL,
    CodecError,
    H264Encoder,
    PacketDecoder,
    fill_missing,
    read_video,
    vectors_to_flow,
)
from vidseg_ros.motion.warp import warp

av = pytest.importorskip("av")

VTEST = Path(__file__).resolve().parents[3] / "shared" / "media" / "vtest.avi"
MV_DTYPE = np.dtype(
    [
        ("source", "<i4"),
        ("w", "u1"),
        ("h", "u1"),
        ("src_x", "<i2"),
        ("src_y", "<i2"),
        ("dst_x", "<i2"),
        ("dst_y", "<i2"),
        ("flags", "<u8"),
        ("motion_x", "<i4"),
        ("motion_y", "<i4"),
        ("motion_scale", "<u2"),
    ]
)


def _records(
    blocks: list[tuple[int, int, int, int, int, int]], scale: int = 4, source: int = -1
) -> np.ndarray:
    """(x, y, w, h, motion_x, motion_y) per block, top-left corner in pixels, motion in 1/scale pixels."""
    out = np.zeros(len(blocks), MV_DTYPE)
    for i, (x, y, w, h, mx, my) in enumerate(blocks):
        cx, cy = x + w // 2, y + h // 2
        out[i] = (source, w, h, cx + mx // scale, cy + my // scale, cx, cy, 0, mx, my, scale)
    return out


def _tile(width: int, height: int, size: int, mx: int, my: int) -> list[tuple[int, int, int, int, int, int]]:
    return [(x, y, size, size, mx, my) for y in range(0, height, size) for x in range(0, width, size)]


def test_global_shift_becomes_uniform_flow_on_the_cell_grid() -> None:
    # Quarter-pel vectors (-6, 10)/4 px = (-1.5, 2.5) px = (-0.375, 0.625) cells.
    flow, covered = vectors_to_flow(_records(_tile(64, 48, 16, -6, 10)), 48, 64)
    assert flow.shape == (2, 48 // CELL, 64 // CELL) and flow.dtype == np.float32 and covered.all()
    np.testing.assert_allclose(flow[0], -1.5 / CELL)
    np.testing.assert_allclose(flow[1], 2.5 / CELL)
    # Future references (B-frames) are not the previous frame: ignored.
    flow, covered = vectors_to_flow(_records(_tile(64, 48, 16, -6, 10), source=1), 48, 64)
    assert not covered.any() and not flow.any()


def test_moving_block_mixed_partitions_and_a_missing_intra_block() -> None:
    # Background 16x16 blocks still, except an 8x8-partitioned macroblock at (16, 16) whose four 8x8 parts
    # move by (+2, -1) px, and one intra macroblock at (48, 0) with no vector.
    blocks = [b for b in _tile(64, 32, 16, 0, 0) if (b[0], b[1]) not in ((16, 16), (48, 0))]
    blocks += [(16 + dx, 16 + dy, 8, 8, 8, -4) for dy in (0, 8) for dx in (0, 8)]
    flow, covered = vectors_to_flow(_records(blocks), 32, 64)
    cells = slice(16 // CELL, 32 // CELL)
    np.testing.assert_allclose(flow[0, cells, cells], 2 / CELL)
    np.testing.assert_allclose(flow[1, cells, cells], -1 / CELL)
    assert not flow[:, :, 8:].any()  # the still blocks
    assert not covered[0:4, 12:16].any() and covered.sum() == covered.size - 16
    filled = fill_missing(flow, covered)
    assert np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[:, covered], flow[:, covered])  # vectors are kept as they are
    # The intra block borders only still blocks: it is filled with no motion.
    np.testing.assert_allclose(filled[:, 0:4, 12:16], 0.0, atol=1e-6)


def test_fill_missing_takes_the_nearest_covered_vector() -> None:
    flow = np.zeros((2, 20, 20), np.float32)
    flow[:, :, :10] = np.array([1.0, -2.0], np.float32)[:, None, None]  # left half moves, right half still
    covered = np.ones((20, 20), bool)
    covered[5:8, 7:9] = False  # a hole near the left half's edge
    covered[12:15, 14:17] = False  # and one inside the still half
    flow[:, ~covered] = 99.0  # whatever is there is not used
    filled = fill_missing(flow, covered)
    np.testing.assert_array_equal(filled[:, covered], flow[:, covered])
    np.testing.assert_allclose(filled[:, 5:8, 7:9], np.array([1.0, -2.0])[:, None, None] * np.ones((2, 3, 2)))
    np.testing.assert_allclose(filled[:, 12:15, 14:17], 0.0)
    assert not fill_missing(flow, np.zeros((20, 20), bool)).any()


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((height, width, 3)) * 255).astype(np.uint8), (5, 5), 0)


def _encode_decode(frames: list[np.ndarray], gop: int = 12) -> list:
    enc = H264Encoder(frames[0].shape[1], frames[0].shape[0], gop=gop)
    dec = PacketDecoder("h264")
    out = []
    for frame in frames:
        for unit in enc.encode(frame):
            out += dec.decode(unit)
    for unit in enc.flush():
        out += dec.decode(unit)
    return out


def test_h264_global_shift_and_i_frame_keying() -> None:
    base = _texture(200, 400)
    # The view pans right by 3 px a frame: the content moves left, so each pixel was 3 px to its right.
    frames = [np.ascontiguousarray(base[20:180, 8 + 3 * t : 264 + 3 * t]) for t in range(27)]
    decoded = _encode_decode(frames, gop=12)
    assert len(decoded) == len(frames)
    assert [i for i, f in enumerate(decoded) if f.intra] == [0, 12, 24]
    assert {f.pict_type for f in decoded} == {"I", "P"}
    for f in decoded:
        if f.intra:
            assert f.flow is None and f.coverage == 0.0
            continue
        assert f.flow.shape == (2, 160 // CELL, 256 // CELL) and f.coverage > 0.9
        assert abs(float(np.median(f.flow[0])) * CELL - 3.0) <= 0.25
        assert abs(float(np.median(f.flow[1])) * CELL) <= 0.25
        np.testing.assert_array_equal(f.rgb.shape, (160, 256, 3))


def test_h264_moving_block_on_a_still_background() -> None:
    background, block = _texture(160, 256, seed=1), _texture(48, 48, seed=2)
    frames = []
    for t in range(6):
        frame = background.copy()
        x = 64 + 4 * t  # moves right 4 px a frame: its pixels were 4 px to the left
        frame[56:104, x : x + 48] = block
        frames.append(frame)
    decoded = _encode_decode(frames)
    for t, f in enumerate(decoded[1:], start=1):
        x = 64 + 4 * t
        inner = f.flow[:, 64 // CELL : 96 // CELL, (x + 8) // CELL : (x + 40) // CELL] * CELL
        assert abs(float(np.median(inner[0])) + 4.0) <= 0.5 and abs(float(np.median(inner[1]))) <= 0.5
        still = f.flow[:, :, 200 // CELL :] * CELL  # far from the block
        assert float(np.abs(still).max()) <= 0.5


def test_bad_packets_and_files_fail_with_one_line(tmp_path: Path) -> None:
    dec = PacketDecoder("h264")
    try:
        frames = dec.decode(b"\x00\x00\x00\x01" + b"\xff" * 64)
    except CodecError as e:
        assert "\n" not in str(e) and "h264" in str(e)
    else:
        assert frames == []  # FFmpeg may also just drop garbage
    with pytest.raises(CodecError, match="codec must be one of"):
        PacketDecoder("vp9")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(CodecError, match="cannot open video"):
        list(read_video(bad))
    with pytest.raises(CodecError, match="even frame size"):
        H264Encoder(65, 48)


@pytest.mark.skipif(not VTEST.exists(), reason="../shared/media/vtest.avi is not here")
def test_real_mpeg4_file_has_vectors_that_explain_the_motion() -> None:
    """vtest.avi (768x576 MPEG-4 street scene): its vectors warp the previous frame closer to the current one
    than the previous frame itself is, where things move."""
    frames = []
    for f in read_video(VTEST):
        frames.append(f)
        if len(frames) == 40:
            break
    assert frames[0].intra and frames[0].flow is None
    inter = [i for i, f in enumerate(frames) if not f.intra]
    assert len(inter) >= 30
    gains = []
    for i in inter:
        f, prev = frames[i], frames[i - 1]
        assert f.flow.shape == (2, 576 // CELL, 768 // CELL) and f.coverage > 0.5
        cur = torch.from_numpy(f.rgb).permute(2, 0, 1)[None].float()
        before = torch.from_numpy(prev.rgb).permute(2, 0, 1)[None].float()
        warped = warp(before, torch.from_numpy(f.flow)[None])
        moving = (cur - before).abs().mean(1) > 20  # pixels that change
        if moving.sum() < 500:
            continue
        plain = (cur - before).abs().mean(1)[moving].mean()
        compensated = (cur - warped).abs().mean(1)[moving].mean()
        gains.append(float(plain - compensated))
    assert len(gains) >= 10 and np.median(gains) > 0
