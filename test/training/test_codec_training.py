"""Training on codec motion: clips never carry an I-frame as a non-key frame, flows come from the codec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidseg_ros.classes import SYNTH_TABLE
from vidseg_ros.cli import main
from vidseg_ros.data.datasets.bag import BagDataset
from vidseg_ros.data.synth import SynthConfig
from vidseg_ros.data.synth_bag import write_synth_bag
from vidseg_ros.runtime.checkpoint import load_checkpoint
from vidseg_ros.runtime.segmenter import Segmenter
from vidseg_ros.training.data import ClipSampler, load_sequence

pytest.importorskip("av")

TOPIC = "/camera/image_raw/h264"


@pytest.fixture(scope="module")
def h264_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("h264") / "street"
    write_synth_bag(
        path, SynthConfig(seed=5, frames=14, width=96, height=64), compressed="h264", gop=5, progress=False
    )
    return path


def test_clips_never_cross_an_i_frame():
    lengths, barriers = [30, 9], [[0, 12, 24], [0]]
    sampler = ClipSampler(lengths, batch=16, seed=1, min_distance=1, max_distance=11, barriers=barriers)
    seen = set()
    for step in range(60):
        distance, clips = sampler.sample(step)
        for clip in clips:
            frames = range(clip.start + 1, clip.start + distance + 1)
            assert clip.start + distance < lengths[clip.seq]
            assert not set(frames) & set(barriers[clip.seq])
            seen.add((clip.seq, clip.start, distance))
    assert any(start == 12 for _, start, _ in seen)  # a clip may start at an I-frame
    # Without barriers the draws are the same as before barriers existed.
    plain = ClipSampler(lengths, batch=16, seed=1, min_distance=1, max_distance=8)
    empty = ClipSampler(lengths, batch=16, seed=1, min_distance=1, max_distance=8, barriers=[[], []])
    assert [plain.sample(s) for s in range(5)] == [empty.sample(s) for s in range(5)]


def test_sequences_hold_codec_flows_and_i_frames(h264_bag, tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint("twnet"))
    seg = Segmenter(model, meta, device="cpu")
    data = BagDataset([h264_bag], SYNTH_TABLE, image_topic=TOPIC)
    assert data.video
    seq = load_sequence(data, data.sequences[0], seg, with_flow=True)
    assert seq.intra == (0, 5, 10)
    frames = list(data.iter_frames(data.sequences[0]))
    for i in range(1, len(frames)):
        if i in seq.intra:
            assert not seq.flows[i].any()
        else:
            torch.testing.assert_close(seq.flows[i], seg.codec_motion(frames[i].motion.flow)[0])
    assert seq.flows[1:].abs().sum() > 0  # the synthetic camera moves


def test_twnet_trains_on_an_h264_bag(h264_bag, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "twnet_codec.pt"
    args = ["train", "--method", "twnet", "--init", str(tiny_checkpoint("perframe")), "--bag", str(h264_bag)]
    args += ["--image-topic", TOPIC, "--steps", "3", "--batch", "2", "--key-interval", "5"]
    assert main([*args, "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    model, meta = load_checkpoint(out)
    assert meta.method == "twnet" and model.cfr_kind == "bottleneck"
    assert float(model.cfr.expand.weight.abs().sum()) > 0  # the correction learnt from codec-motion clips
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "x.pt"), "--augment", "full", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "video bags (codec motion) train in memory only" in err and len(err.splitlines()) == 1
