"""Stream: reset rules, key-frame policy, and equality with an offline pass over the same frames."""

import numpy as np
import pytest
import torch

from vidseg_ros.runtime.checkpoint import load_checkpoint
from vidseg_ros.runtime.class_ids import first_max_ids
from vidseg_ros.runtime.segmenter import Segmenter, resize_image
from vidseg_ros.runtime.stream import Stream

S = 1_000_000_000


def _frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (h, w + 2 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, i : i + w]) for i in range(n)]  # a texture panning by 1 px per frame


def _stream(tiny_checkpoint, method: str, **kwargs) -> Stream:
    model, meta = load_checkpoint(tiny_checkpoint(method))
    return Stream(Segmenter(model, meta, **kwargs), max_gap_s=0.5)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"stamp_ns": -S // 5 - 1}, "backwards"),
        ({"stamp_ns": S}, "gap of"),
        ({"shape": (40, 64)}, "size changed"),
        ({"encoding": "bgr8"}, "encoding changed"),
        ({"frame_id": "other"}, "frame_id changed"),
    ],
)
def test_reset_rules(tiny_checkpoint, change, reason):
    stream = _stream(tiny_checkpoint, "netwarp")
    f0, f1 = _frames(2)
    assert stream.step(f0, 0, frame_id="cam").reset_reason is None
    r = stream.step(f1, S // 10, frame_id="cam")
    assert r.reset_reason is None and not r.is_key
    stamp = S // 10 + S // 10 + change.get("stamp_ns", 0)
    frame = np.zeros(change["shape"] + (3,), np.uint8) if "shape" in change else f0
    r = stream.step(
        frame, stamp, encoding=change.get("encoding", "rgb8"), frame_id=change.get("frame_id", "cam")
    )
    assert reason in r.reset_reason and r.is_key
    assert r.mask.shape == frame.shape[:2]
    assert stream.resets == 1


@pytest.mark.parametrize(
    ("method", "interval", "keys"),
    [
        ("perframe", None, [1] * 7),
        ("netwarp", None, [1] + [0] * 6),
        ("twnet", 3, [1, 0, 0, 1, 0, 0, 1]),
        ("tdnet", None, [1] + [0] * 6),
    ],
)
def test_key_frame_policy(tiny_checkpoint, method, interval, keys):
    model, meta = load_checkpoint(tiny_checkpoint(method))
    stream = Stream(Segmenter(model, meta, key_interval=interval))
    got = [int(stream.step(f, i * S // 10).is_key) for i, f in enumerate(_frames(7))]
    assert got == keys


@pytest.mark.parametrize("method", ["netwarp", "twnet"])
def test_stream_equals_offline_pass(tiny_checkpoint, method):
    """Frame-by-frame state carried by Stream gives the same logits as an explicit offline loop."""
    model, meta = load_checkpoint(tiny_checkpoint(method))
    seg = Segmenter(model, meta, key_interval=3 if method == "twnet" else None)
    stream = Stream(seg)
    frames = _frames(6)
    online = [stream.step(f, i * S // 10).mask for i, f in enumerate(frames)]

    prepared = [seg.prepare(f) for f in frames]
    offline, state = [], None
    with torch.inference_mode():
        for i, p in enumerate(prepared):
            if state is None or (method == "twnet" and i % 3 == 0):
                logits, state = model.key_step(p.image)
            else:
                flow = seg.motion(p, prepared[i - 1])
                logits, state = model.nonkey_step(p.image, prepared[i - 1].image, flow, state)
            offline.append(seg.to_mask(logits, frames[0].shape[:2]))
    for a, b in zip(online, offline, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mask_is_upsampled_to_input_resolution(tiny_checkpoint):
    stream = _stream(tiny_checkpoint, "perframe")
    r = stream.step(np.zeros((123, 77, 3), np.uint8), 0)
    assert r.mask.shape == (123, 77) and r.mask.dtype == np.uint8
    assert set(r.timings_ms) == {"preprocess", "motion", "inference", "postprocess"}


def test_resize_image_averages_when_shrinking_and_interpolates_when_enlarging():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 200  # one 2x2 block bright: area averaging keeps it as one pixel of 200, the rest 0
    img[0, 2] = 100  # one pixel of a block of four: averages to 25
    small = resize_image(img, (2, 2))
    np.testing.assert_array_equal(small[..., 0], [[200, 25], [0, 0]])
    assert np.shares_memory(resize_image(img, (4, 4)), img)  # already the size: no copy
    big = resize_image(small, (4, 4))
    assert big.shape == (4, 4, 3) and 0 < big[1, 2, 0] < 200  # bilinear: between the two neighbours


def test_mask_enlargement_is_centred_nearest(tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint("perframe"))
    seg = Segmenter(model, meta, input_size=(3, 2))  # logits at the inference size
    logits = torch.zeros(1, 3, 2, 3)
    for i, c in enumerate([0, 1, 2, 2, 1, 0]):
        logits[0, c, i // 3, i % 3] = 1.0
    mask = seg.to_mask(logits, (4, 6))
    np.testing.assert_array_equal(mask, np.repeat(np.repeat([[0, 1, 2], [2, 1, 0]], 2, 0), 2, 1))
    np.testing.assert_array_equal(seg.to_mask(logits, (2, 3)), [[0, 1, 2], [2, 1, 0]])


def test_native_logits_give_the_mask_of_the_upsampled_ones(tiny_checkpoint):
    """The CPU backends return stride-4 logits; the mask is that of the logits upsampled to inference size."""
    model, meta = load_checkpoint(tiny_checkpoint("perframe"))
    seg = Segmenter(model, meta, input_size=(96, 64))
    coarse = torch.randn(1, 9, 4, 6, generator=torch.Generator().manual_seed(3)) * 4
    native = torch.nn.functional.interpolate(coarse, size=(16, 24), mode="bilinear", align_corners=False)
    full = torch.nn.functional.interpolate(native, size=(64, 96), mode="bilinear", align_corners=False)
    for out_hw in ((64, 96), (480, 640), (30, 50)):
        mask = seg.to_mask(native, out_hw)
        assert mask.shape == out_hw
        np.testing.assert_array_equal(mask, seg.to_mask(full, out_hw))
    assert len(np.unique(seg.to_mask(native, (64, 96)))) > 3  # regions of several classes, not one


def test_first_max_ids_match_max_indices_ties_and_layouts(tiny_checkpoint):
    """The contiguous-logits arg-max (onnxruntime's layout) gives max()'s ids, the first class on ties."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(9, 30, 40, generator=g).round(decimals=1)  # rounding makes ties common
    scores[:, 0, 0] = 0.5  # all nine tied: class 0
    scores[3:, 0, 1] = 2.0  # classes 3..8 tied: class 3
    want = scores.max(dim=0).indices.to(torch.uint8)
    got = first_max_ids(scores)
    assert got.dtype == torch.uint8 and torch.equal(got, want) and got[0, 0] == 0 and got[0, 1] == 3
    model, meta = load_checkpoint(tiny_checkpoint("perframe"))
    seg = Segmenter(model, meta, input_size=(40, 30))
    contiguous = scores.unsqueeze(0)
    channels_last = contiguous.contiguous(memory_format=torch.channels_last)  # PyTorch's upsampled logits
    np.testing.assert_array_equal(seg.to_mask(contiguous, (30, 40)), want.numpy())
    np.testing.assert_array_equal(seg.to_mask(channels_last, (30, 40)), want.numpy())
    nan = torch.full((3, 1, 2), float("nan"))
    assert first_max_ids(nan).max() <= 2  # still a class id


def _codec(intra: bool, flow: np.ndarray | None = None, decode_ms: float = 2.5):
    from vidseg_ros.motion.codec import CodecFrame

    if not intra and flow is None:
        flow = np.zeros((2, 12, 16), np.float32)
    return CodecFrame(
        np.zeros((1, 1, 3), np.uint8),
        intra,
        None if intra else flow,
        0.0 if intra else 1.0,
        "I" if intra else "P",
        decode_ms,
    )


@pytest.mark.parametrize(
    ("method", "interval"), [("twnet", 3), ("netwarp", None), ("perframe", None), ("tdnet", None)]
)
def test_codec_motion_keys_on_i_frames_and_after_resets(tiny_checkpoint, method, interval):
    """With codec motion the I-frames are the key frames of the models that take motion, whatever their own
    interval; a reset still makes the next frame a key frame (TDNet's only ones: it takes no motion), and
    the decode time is the decode stage."""
    model, meta = load_checkpoint(tiny_checkpoint(method))
    stream = Stream(Segmenter(model, meta, key_interval=interval), max_gap_s=0.5)
    intra = [1, 0, 0, 0, 0, 1, 0, 0]
    stamps = [i * S // 10 for i in range(8)]
    stamps[7] += S  # a gap: reset before the last frame, which is a P-frame
    got = []
    for f, i, t in zip(_frames(8), intra, stamps, strict=True):
        r = stream.step(f, t, motion=_codec(bool(i)))
        got.append(int(r.is_key))
        assert r.timings_ms["decode"] == 2.5
    expected = {"perframe": [1] * 8, "tdnet": [1, 0, 0, 0, 0, 0, 0, 1]}.get(method, [1, 0, 0, 0, 0, 1, 0, 1])
    assert got == expected


def test_codec_flow_reaches_the_model(tiny_checkpoint):
    """A non-key frame warps with the codec's flow, not DIS: the same frames with another flow give another
    state (an untrained model's masks are all one class, so the carried features are compared)."""
    model, meta = load_checkpoint(tiny_checkpoint("twnet"))
    seg = Segmenter(model, meta, key_interval=12)
    f0, f1 = _frames(2)
    states = []
    for shift in (0.0, 3.0):
        stream = Stream(seg)
        stream.step(f0, 0, motion=_codec(True))
        r = stream.step(f1, S // 10, motion=_codec(False, np.full((2, 12, 16), shift, np.float32)))
        assert not r.is_key
        states.append(torch.cat([t.flatten() for _, t in sorted(stream._history.state.items())]))
    assert states[0].shape == states[1].shape and not torch.allclose(states[0], states[1])


def test_codec_frames_skip_the_flow_image_and_raw_frames_after_them_key(tiny_checkpoint):
    """Frames that bring their decoder's motion are not prepared for DIS; a raw frame after them has no previous
    image to compute DIS flow from, so it is a key frame, and the raw frame after it is not."""
    model, meta = load_checkpoint(tiny_checkpoint("twnet"))
    stream = Stream(Segmenter(model, meta, key_interval=12))
    f = _frames(4)
    keys = [stream.step(f[0], 0, motion=_codec(True)).is_key]
    keys.append(stream.step(f[1], S // 10, motion=_codec(False)).is_key)
    assert stream._history.frame.gray is None
    keys += [stream.step(x, (i + 2) * S // 10).is_key for i, x in enumerate(f[2:])]
    assert stream._history.frame.gray is not None
    assert keys == [True, False, True, False]
