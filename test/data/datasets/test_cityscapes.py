"""Cityscapes in its published layout: label ids, snippets found by frame number, per-frame fallback, errors."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label, labels
from layouts import SYNTH_TO_CITYSCAPES, make_cityscapes, one_line_error, write_index
from PIL import Image

from vidseg_ros.classes import IGNORE_INDEX
from vidseg_ros.data.datasets import open_dataset
from vidseg_ros.data.datasets.cityscapes import CityscapesDataset, cityscapes_classes

#: Two snippets of one sequence number, as in the real val split, plus another city.
VAL = (("frankfurt", 0, 294), ("frankfurt", 0, 576), ("lindau", 0, 19))


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cs"), split="val", snippets=VAL)


@pytest.fixture(scope="module")
def val(val_root):
    return open_dataset("cityscapes", val_root, "val")


@pytest.fixture
def val_copy(val_root, tmp_path):
    """A copy to break (the module's fixture stays intact)."""
    return shutil.copytree(val_root, tmp_path / "cs")


def frame_file(root, city, seq, n, folder="leftImg8bit_sequence", split="val"):
    return root / folder / split / city / f"{city}_{seq:06d}_{n:06d}_leftImg8bit.png"


def rgb_file(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def seq_named(ds, name):
    return next(s for s in ds.sequences if s.name == name)


def test_class_table_matches_cityscapesscripts():
    table = cityscapes_classes()
    lut = table.lut
    for label in labels:
        if label.id < 0:
            continue
        want = IGNORE_INDEX if label.trainId in (255, -1) else label.trainId
        assert lut[label.id] == want, label.name
        if want != IGNORE_INDEX:
            assert table.names[want] == label.name
            assert table.colors[want] == tuple(label.color)
            assert table.raw_ids[want] == label.id
    assert len(table) == 19
    assert sorted([*table.raw_ids, *table.ignore_ids]) == list(range(34))


def test_snippets_are_found_by_frame_number(val, val_root):
    assert [s.name for s in val.sequences] == [
        "frankfurt_000000_000294",
        "frankfurt_000000_000576",
        "lindau_000000_000019",
    ]
    first, second, lindau = val.sequences
    # One seq number, two snippets: each is its own sequence of 30 frames around its labelled frame.
    assert first.frames == tuple(range(275, 305)) and first.labelled == (294,)
    assert second.frames == tuple(range(557, 587)) and second.labelled == (576,)
    assert lindau.frames == tuple(range(0, 30)) and first.fps == 17.0
    assert val.frame_id(first) == "frankfurt" and val.frame_id(lindau) == "lindau"

    clips = val.clips(4)
    assert [(c.sequence, c.frames) for c in clips] == [
        (0, (290, 291, 292, 293, 294)),
        (1, (572, 573, 574, 575, 576)),
        (2, (15, 16, 17, 18, 19)),
    ]
    images = val.read_frames(first, clips[0].frames)
    for n, image in zip(clips[0].frames, images, strict=True):
        assert np.array_equal(image, rgb_file(frame_file(val_root, "frankfurt", 0, n)))
    # The two snippets are different videos: same offsets, different images.
    assert not np.array_equal(images[-1], val.read_frames(second, [576])[0])
    assert len(val.clips(19)) == 3
    assert "20 frames before them" in one_line_error(val.clips, 20)


def test_iter_frames_runs_the_snippet_with_labels_on_the_20th(val, val_root):
    seq = val.sequences[0]
    frames = list(val.iter_frames(seq, chunk=7))
    assert [f.number for f in frames] == list(range(275, 305))
    assert [f.number for f in frames if f.labels is not None] == [294]
    assert frames.index(next(f for f in frames if f.labels is not None)) == 19
    stamps = [f.stamp_ns for f in frames]
    assert all(b - a == round(1e9 / 17.0) for a, b in zip(stamps, stamps[1:], strict=False))
    assert all(f.frame_id == "frankfurt" for f in frames)
    assert np.array_equal(frames[3].image, rgb_file(frame_file(val_root, "frankfurt", 0, 278)))


def test_train_ids_follow_the_label_ids(val, val_root, tmp_path):
    seq = val.sequences[0]
    path = val.label_path(seq, 294)
    assert path.name == "frankfurt_000000_000294_gtFine_labelIds.png"
    raw = np.array(Image.open(path))
    assert set(np.unique(raw)) <= set(SYNTH_TO_CITYSCAPES)
    want = np.vectorize(lambda v: id2label[int(v)].trainId)(raw)
    assert np.array_equal(val.read_labels(seq, 294), want)

    copy = shutil.copytree(val_root, tmp_path / "cs")
    raw[0, 0], raw[0, 1], raw[0, 2] = 26, 4, 33
    write_index(copy / path.relative_to(val_root), raw)
    got = CityscapesDataset(copy, "val").read_labels(seq, 294)
    assert got[0, 0] == 13 and got[0, 1] == IGNORE_INDEX and got[0, 2] == 18


def test_label_id_outside_the_table_names_file_and_value(val_root, val_copy):
    path = val_copy / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    raw = np.array(Image.open(path))
    raw[5, 5] = 40
    write_index(path, raw)
    ds = CityscapesDataset(val_copy, "val")
    msg = one_line_error(ds.read_labels, ds.sequences[2], 19)
    assert str(path) in msg and "40" in msg


def test_per_frame_without_the_sequence_folder(tmp_path):
    root = make_cityscapes(tmp_path, split="train", with_sequence=False)
    ds = CityscapesDataset(root, "train")
    assert [(s.name, s.frames, s.labelled) for s in ds.sequences] == [
        ("aachen_000000_000019", (19,), (19,)),
        ("aachen_000001_000019", (19,), (19,)),
    ]
    clips = ds.clips(0)
    assert [c.frames for c in clips] == [(19,), (19,)]
    image = ds.read_frames(ds.sequences[1], [19])[0]
    assert np.array_equal(image, rgb_file(frame_file(root, "aachen", 1, 19, "leftImg8bit", "train")))
    assert ds.read_labels(ds.sequences[1], 19).shape == image.shape[:2]
    msg = one_line_error(ds.clips, 1)
    assert "leftImg8bit_sequence" in msg and "per-frame" in msg
    assert ds.missing_context() == msg


def test_labelled_frame_missing_from_its_snippet_falls_back_to_leftimg8bit(val_root, val_copy):
    frame_file(val_copy, "frankfurt", 0, 294).unlink()
    ds = CityscapesDataset(val_copy, "val")
    seq = ds.sequences[0]
    assert seq.frames == tuple(range(275, 305)) and ds.missing_context() is None
    images = ds.read_frames(seq, [293, 294, 295])
    assert np.array_equal(images[1], rgb_file(frame_file(val_root, "frankfurt", 0, 294, "leftImg8bit")))
    assert np.array_equal(images[0], rgb_file(frame_file(val_root, "frankfurt", 0, 293)))

    frame_file(val_copy, "frankfurt", 0, 294, "leftImg8bit").unlink()
    msg = one_line_error(CityscapesDataset, val_copy, "val")
    assert str(frame_file(val_copy, "frankfurt", 0, 294)) in msg
    assert str(frame_file(val_copy, "frankfurt", 0, 294, "leftImg8bit")) in msg


def test_decoy_files_next_to_the_labels_are_ignored(val, val_root):
    gt = val_root / "gtFine/val/frankfurt"
    assert (gt / "frankfurt_000000_000294_gtFine_color.png").is_file()
    assert (gt / "frankfurt_000000_000294_gtFine_instanceIds.png").is_file()
    assert len(val.sequences) == len(VAL)
    assert all(val.label_path(s, s.labelled[0]).name.endswith("_gtFine_labelIds.png") for s in val.sequences)


def test_missing_or_incomplete_layouts_are_one_line(val_copy, tmp_path):
    msg = one_line_error(CityscapesDataset, val_copy, "train")
    assert (
        "not found or incomplete" in msg
        and str(val_copy / "gtFine/train") in msg
        and "_gtFine_labelIds.png" in msg
    )

    (val_copy / "gtFine/test/berlin").mkdir(parents=True)
    (val_copy / "leftImg8bit/test/berlin").mkdir(parents=True)
    msg = one_line_error(CityscapesDataset, val_copy, "test")
    assert "found none" in msg and str(val_copy / "gtFine/test") in msg

    bad = val_copy / "gtFine/val/lindau/lindau_0_19_gtFine_labelIds.png"
    bad.write_bytes(b"")
    msg = one_line_error(CityscapesDataset, val_copy, "val")
    assert str(bad) in msg and "<city>_<seq:6 digits>_<frame:6 digits>" in msg
    bad.unlink()

    shutil.rmtree(val_copy / "leftImg8bit_sequence")
    shutil.rmtree(val_copy / "leftImg8bit")
    msg = one_line_error(CityscapesDataset, val_copy, "val")
    assert "not found or incomplete" in msg
    assert str(val_copy / "leftImg8bit_sequence/val") in msg and str(val_copy / "leftImg8bit/val") in msg

    assert "unknown split" in one_line_error(CityscapesDataset, val_copy, "training")
    assert "not found or incomplete" in one_line_error(CityscapesDataset, tmp_path / "nowhere", "val")
