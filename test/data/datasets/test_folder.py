"""The folder format: image frames or one video per sequence, classes.yaml, labels by frame number, errors."""

from __future__ import annotations

import pickle
import shutil

import cv2
import numpy as np
import pytest
import yaml
from layouts import make_folder, one_line_error, write_index, write_rgb, write_synth_classes, write_video
from PIL import Image

from vidseg_ros.classes import SYNTH_CLASSES, load_classes_yaml
from vidseg_ros.data.datasets import folder as folder_mod
from vidseg_ros.data.datasets import open_dataset
from vidseg_ros.data.datasets.folder import FolderDataset, video_info
from vidseg_ros.data.synth import SynthConfig, generate


@pytest.fixture(scope="module")
def images_root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    # 40 frames: MPEG-4 puts a keyframe every 12, so seeks land between keyframes too.
    return make_folder(tmp_path_factory.mktemp("video"), sequences=1, frames=40, label_every=5, video=True)


@pytest.fixture
def copy(images_root, tmp_path):
    return shutil.copytree(images_root, tmp_path / "folder")


def rgb_file(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def decode_all(path):
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return out
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_image_frames_clips_by_number(images_root):
    ds = open_dataset("folder", images_root, "train")
    assert [(s.name, s.frames, s.labelled, s.fps) for s in ds.sequences] == [
        ("seq00", tuple(range(12)), (0, 4, 8), 30.0),
        ("seq01", tuple(range(12)), (0, 4, 8), 30.0),
    ]
    assert ds.classes.names == SYNTH_CLASSES and ds.frame_id(ds.sequences[1]) == "seq01"
    clips = ds.clips(3)
    assert [(c.sequence, c.frames) for c in clips] == [
        (i, w) for i in (0, 1) for w in ((1, 2, 3, 4), (5, 6, 7, 8))
    ]
    seq = ds.sequences[1]
    for n, image in zip((5, 6, 7, 8), ds.read_frames(seq, [5, 6, 7, 8]), strict=True):
        assert np.array_equal(image, rgb_file(images_root / f"train/seq01/frames/{n:06d}.png"))
    labels = ds.read_labels(seq, 8)
    assert np.array_equal(labels, np.array(Image.open(images_root / "train/seq01/labels/000008.png")))
    assert 0 < len(np.unique(labels)) <= len(SYNTH_CLASSES)


def test_frame_numbers_are_the_last_digits_and_gaps_are_cuts(tmp_path):
    write_synth_classes(tmp_path / "classes.yaml", fps=10)
    folder = tmp_path / "val/cam2_run"
    frames = list(generate(SynthConfig(seed=4, frames=8, width=48, height=32)))
    numbers = [100, 101, 102, 103, 110, 111, 112, 113]  # a cut after 103
    for n, (rgb, _) in zip(numbers, frames, strict=True):
        write_rgb(folder / "frames" / f"cam2_frame{n:04d}.jpg", rgb)
    write_index(folder / "labels" / "0103.png", frames[3][1])
    write_index(folder / "labels" / "lbl_0112.png", frames[6][1])
    ds = FolderDataset(tmp_path, "val")
    seq = ds.sequences[0]
    assert seq.frames == tuple(numbers) and seq.labelled == (103, 112) and seq.fps == 10.0
    assert [c.frames for c in ds.clips(2)] == [(101, 102, 103), (110, 111, 112)]
    assert [c.frames for c in ds.clips(3)] == [(100, 101, 102, 103)]
    assert [f.number for f in ds.iter_frames(seq, chunk=3)] == numbers


def test_video_frames_match_a_sequential_decode(video_root):
    ds = FolderDataset(video_root, "train")
    seq = ds.sequences[0]
    path = video_root / "train/seq00/video.mp4"
    decoded = decode_all(path)
    assert seq.frames == tuple(range(len(decoded))) == tuple(range(40))
    assert seq.labelled == (0, 5, 10, 15, 20, 25, 30, 35) and seq.fps == 30.0
    # Seeks to random starts (inside and across GOPs, backwards too) give the sequential decode's frames.
    rng = np.random.default_rng(0)
    for start in [*rng.integers(0, 36, 12), 35, 0, 13, 12, 11]:
        numbers = list(range(int(start), int(start) + 4))
        for n, image in zip(numbers, ds.read_frames(seq, numbers), strict=True):
            assert np.array_equal(image, decoded[n]), f"frame {n} after seeking to {start}"
    online = list(ds.iter_frames(seq))
    assert all(np.array_equal(f.image, decoded[f.number]) for f in online) and len(online) == 40
    assert [f.number for f in online if f.labels is not None] == list(seq.labelled)
    # Lossy video, exact labels: frames stay close to the rendered ones.
    rendered = [rgb for rgb, _ in generate(SynthConfig(seed=0, frames=40, width=96, height=64))]
    assert np.abs(online[20].image.astype(int) - rendered[20]).mean() < 12
    # Workers get a copy without open decoders, which reopens on use.
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.read_frames(seq, [21])[0], decoded[21])


def test_video_count_does_not_trust_the_container(video_root, monkeypatch):
    class Overcounting:
        def __init__(self, cap):
            self.cap = cap

        def get(self, prop):
            return self.cap.get(prop) + (7 if prop == cv2.CAP_PROP_FRAME_COUNT else 0)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    real_open = folder_mod._open
    monkeypatch.setattr(folder_mod, "_open", lambda path: Overcounting(real_open(path)))
    monkeypatch.setattr(folder_mod, "_COUNTS", {})
    assert video_info(video_root / "train/seq00/video.mp4") == (40, 30.0)


def test_video_label_beyond_the_last_frame(video_root, tmp_path):
    root = shutil.copytree(video_root, tmp_path / "v")
    label = root / "train/seq00/labels/000040.png"
    shutil.copy(root / "train/seq00/labels/000035.png", label)
    msg = one_line_error(FolderDataset, root, "train")
    assert str(label) in msg and "40 frames" in msg


def test_avi_video_and_fps_from_the_video(tmp_path):
    write_synth_classes(tmp_path / "classes.yaml")
    frames = list(generate(SynthConfig(seed=2, frames=6, width=48, height=32)))
    write_video(tmp_path / "train/a/clip.AVI", (rgb for rgb, _ in frames), fps=12.5)
    write_index(tmp_path / "train/a/labels/5.png", frames[5][1])
    ds = FolderDataset(tmp_path, "train")
    assert ds.sequences[0].frames == tuple(range(6)) and ds.sequences[0].fps == 12.5
    assert np.array_equal(
        ds.read_frames(ds.sequences[0], [4, 5])[1], decode_all(tmp_path / "train/a/clip.AVI")[5]
    )


def test_fps_key_is_read_and_checked(copy):
    doc = yaml.safe_load((copy / "classes.yaml").read_text())
    doc["fps"] = 15
    (copy / "classes.yaml").write_text(yaml.safe_dump(doc))
    assert len(load_classes_yaml(copy / "classes.yaml")) == len(SYNTH_CLASSES)
    assert {s.fps for s in FolderDataset(copy, "train").sequences} == {15.0}
    doc["fps"] = "fast"
    (copy / "classes.yaml").write_text(yaml.safe_dump(doc))
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(copy / "classes.yaml") in msg and "fps" in msg


def test_bad_classes_yaml_is_one_line(copy):
    doc = yaml.safe_load((copy / "classes.yaml").read_text())
    del doc["classes"][3]["color"]
    (copy / "classes.yaml").write_text(yaml.safe_dump(doc))
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(copy / "classes.yaml") in msg and "color" in msg and "vegetation" in msg
    (copy / "classes.yaml").unlink()
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(copy / "classes.yaml") in msg


def test_label_value_out_of_range_names_file_and_value(copy):
    path = copy / "train/seq00/labels/000004.png"
    raw = np.array(Image.open(path))
    raw[0, :3] = 9
    write_index(path, raw)
    ds = FolderDataset(copy, "train")
    msg = one_line_error(ds.read_labels, ds.sequences[0], 4)
    assert str(path) in msg and "9" in msg


def test_label_without_frame_and_duplicates(copy):
    frames = copy / "train/seq01/frames"
    (frames / "000008.png").unlink()
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(copy / "train/seq01/labels/000008.png") in msg and "8" in msg

    shutil.copy(frames / "000007.png", frames / "000008.png")
    shutil.copy(frames / "000007.png", frames / "img_0007.jpg")
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(frames / "000007.png") in msg and str(frames / "img_0007.jpg") in msg
    (frames / "img_0007.jpg").unlink()

    labels = copy / "train/seq01/labels"
    (labels / "000004.jpg").write_bytes(b"")
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(labels / "000004.jpg") in msg and ".png" in msg


def test_sequence_folders_need_frames_or_one_video(copy):
    seq = copy / "train/seq00"
    (seq / "a.mp4").write_bytes(b"")
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(seq) in msg and "frames/" in msg and "a.mp4" in msg
    (seq / "b.webm").write_bytes(b"")
    shutil.rmtree(seq / "frames")
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(seq) in msg and "a.mp4" in msg and "b.webm" in msg
    (seq / "b.webm").unlink()
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(seq / "a.mp4") in msg and "cannot open" in msg
    (seq / "a.mp4").unlink()
    msg = one_line_error(FolderDataset, copy, "train")
    assert str(seq) in msg and "neither frames/ nor a video" in msg


def test_missing_split_and_empty_split(copy, tmp_path):
    msg = one_line_error(FolderDataset, copy, "val")
    assert str(copy / "val") in msg
    (copy / "val").mkdir()
    msg = one_line_error(FolderDataset, copy, "val")
    assert str(copy / "val") in msg and "no sequence folders" in msg
    for labels in (copy / "train").glob("*/labels"):
        shutil.rmtree(labels)
    msg = one_line_error(FolderDataset, copy, "train")
    assert "no label files" in msg and str(copy / "train") in msg
    assert str(tmp_path / "nowhere") in one_line_error(FolderDataset, tmp_path / "nowhere", "train")
