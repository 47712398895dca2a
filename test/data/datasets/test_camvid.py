"""CamVid (SegNet layout) with extracted video frames: names, pairing by number, void, alignment, errors."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from layouts import SYNTH_TO_CAMVID, camvid_stem, make_camvid, one_line_error, write_index
from PIL import Image

from vidseg_ros.classes import IGNORE_INDEX
from vidseg_ros.data.datasets import open_dataset
from vidseg_ros.data.datasets.camvid import CamVidDataset, parse_name

LABELLED = (("0016E5", 390), ("0016E5", 420), ("Seq05VD", 30), ("0006R0", 1110))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_camvid(tmp_path_factory.mktemp("camvid"), labelled=LABELLED)


@pytest.fixture(scope="module")
def camvid(root):
    return open_dataset("camvid", root, "train")


@pytest.fixture
def copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / "camvid")


def rgb_file(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def shift_frames(folder, by):
    """Renumbers an extraction folder so file ``n + by`` holds what file ``n`` held."""
    files = sorted(folder.iterdir(), reverse=by > 0)
    for path in files:
        path.rename(folder / f"{int(path.stem) + by:06d}{path.suffix}")


@pytest.mark.parametrize(
    ("stem", "want"),
    [
        ("0001TP_006690", ("0001TP", 6690)),
        ("0006R0_f01110", ("0006R0", 1110)),
        ("Seq05VD_f00030", ("Seq05VD", 30)),
        ("0016E5_00390", ("0016E5", 390)),
        ("my_street_0012", ("my_street", 12)),
        ("0016E5", None),
        ("0016E5_f", None),
    ],
)
def test_parse_name(stem, want):
    assert parse_name(stem) == want


def test_builder_writes_the_published_names(root):
    names = sorted(p.name for p in (root / "train").iterdir())
    assert names == ["0006R0_f01110.png", "0016E5_00390.png", "0016E5_00420.png", "Seq05VD_f00030.png"]
    assert sorted(p.name for p in (root / "trainannot").iterdir()) == names
    assert camvid_stem("0001TP", 6690) == "0001TP_006690"


def test_labelled_frames_pair_with_video_frames_by_number(camvid, root):
    by_name = {s.name: s for s in camvid.sequences}
    assert sorted(by_name) == ["0006R0_001110", "0016E5_000390", "0016E5_000420", "Seq05VD_000030"]
    assert by_name["0016E5_000420"].frames == tuple(range(391, 421))
    assert by_name["0006R0_001110"].frames == tuple(range(1081, 1111))
    assert by_name["Seq05VD_000030"].frames == tuple(range(1, 31))
    assert all(s.fps == 30.0 and len(s.labelled) == 1 for s in camvid.sequences)
    assert camvid.missing_context() is None

    seq = by_name["0016E5_000420"]
    assert camvid.frame_id(seq) == "0016E5"
    images = camvid.read_frames(seq, [417, 418, 419, 420])
    for n, image in zip((417, 418, 419), images, strict=False):
        assert np.array_equal(image, rgb_file(root / "frames/0016E5" / f"{n:06d}.png"))
    assert np.array_equal(images[-1], rgb_file(root / "train/0016E5_00420.png"))
    # Frame 419 and the labelled 420 are neighbours in one video: alike, not equal.
    assert 0 < np.abs(images[-1].astype(int) - images[-2]).mean() < 40

    clips = camvid.clips(29)
    assert sorted(camvid.sequences[c.sequence].name for c in clips) == sorted(by_name)
    assert "30 frames before them" in one_line_error(camvid.clips, 30)


def test_labels_map_to_train_ids_with_void_ignored(camvid, root, tmp_path):
    seq = next(s for s in camvid.sequences if s.name == "Seq05VD_000030")
    path = camvid.label_path(seq, 30)
    assert path == root / "trainannot/Seq05VD_f00030.png"
    raw = np.array(Image.open(path))
    assert set(np.unique(raw)) <= set(SYNTH_TO_CAMVID)
    raw[:4, :4] = 11
    copy = shutil.copytree(root, tmp_path / "camvid")
    write_index(copy / "trainannot/Seq05VD_f00030.png", raw)
    got = CamVidDataset(copy, "train").read_labels(seq, 30)
    want = np.where(raw == 11, IGNORE_INDEX, raw)
    assert np.array_equal(got, want) and (got[:4, :4] == IGNORE_INDEX).all()
    assert got.max() == IGNORE_INDEX and got[got != IGNORE_INDEX].max() <= 10


def test_label_value_outside_the_table_names_file_and_value(copy):
    path = copy / "trainannot/0016E5_00390.png"
    raw = np.array(Image.open(path))
    raw[10, 10] = 12
    write_index(path, raw)
    ds = CamVidDataset(copy, "train")
    seq = next(s for s in ds.sequences if s.name == "0016E5_000390")
    msg = one_line_error(ds.read_labels, seq, 390)
    assert str(path) in msg and "12" in msg


def test_without_extracted_frames_it_works_per_frame(tmp_path):
    root = make_camvid(tmp_path, split="val", labelled=(("0001TP", 6690), ("0016E5", 390)), with_frames=False)
    ds = CamVidDataset(root, "val")
    assert [(s.name, s.frames) for s in ds.sequences] == [
        ("0001TP_006690", (6690,)),
        ("0016E5_000390", (390,)),
    ]
    assert [c.frames for c in ds.clips(0)] == [(6690,), (390,)]
    assert np.array_equal(
        ds.read_frames(ds.sequences[0], [6690])[0], rgb_file(root / "val/0001TP_006690.png")
    )
    msg = one_line_error(ds.clips, 1)
    assert (
        str(root / "frames") in msg and "0001TP, 0016E5" in msg and "ffmpeg" in msg and "scale=120:90" in msg
    )
    assert "per-frame" in msg


def test_a_sequence_without_extracted_frames_is_named(copy):
    shutil.rmtree(copy / "frames/Seq05VD")
    ds = CamVidDataset(copy, "train")
    assert next(s for s in ds.sequences if s.name == "Seq05VD_000030").frames == (30,)
    assert len(next(s for s in ds.sequences if s.name == "0016E5_000390").frames) == 30
    assert len(ds.clips(0)) == 4
    msg = one_line_error(ds.clips, 2)
    assert str(copy / "frames/Seq05VD") in msg and "ffmpeg -i Seq05VD.MXF" in msg


@pytest.mark.parametrize("by", [2, -2])
def test_frames_extracted_with_an_offset_are_caught(copy, by):
    shift_frames(copy / "frames/0016E5", by)
    msg = one_line_error(CamVidDataset, copy, "train")
    assert str(copy / "frames/0016E5") in msg and f"shifted by {by:+d}" in msg
    assert ("trim=start_frame=2" in msg) if by > 0 else ("-start_number 2" in msg)


def test_frames_of_another_size_are_an_error(copy):
    folder = copy / "frames/0006R0"
    for path in folder.iterdir():
        image = cv2.imread(str(path))
        cv2.imwrite(str(path), cv2.resize(image, (240, 180), interpolation=cv2.INTER_LINEAR))
    msg = one_line_error(CamVidDataset, copy, "train")
    assert (
        str(folder / "001110.png") in msg and "240x180" in msg and "120x90" in msg and "scale=120:90" in msg
    )

    # Only frames before the checked one differ: caught when they are read.
    shutil.rmtree(folder)
    path = copy / "frames/0016E5/000400.png"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (60, 45)))
    ds = CamVidDataset(copy, "train")
    seq = next(s for s in ds.sequences if s.name == "0016E5_000420")
    msg = one_line_error(ds.read_frames, seq, [399, 400, 401])
    assert str(path) in msg and "60x45" in msg


def test_missing_and_unpaired_files_are_one_line(copy):
    msg = one_line_error(CamVidDataset, copy, "val")
    assert str(copy / "val") in msg

    (copy / "trainannot/0016E5_00420.png").unlink()
    msg = one_line_error(CamVidDataset, copy, "train")
    assert str(copy / "train/0016E5_00420.png") in msg and str(copy / "trainannot/0016E5_00420.png") in msg

    shutil.copy(copy / "train/0016E5_00390.png", copy / "train/0016E5_00420.png")
    (copy / "train/0016E5_00390.png").unlink()
    msg = one_line_error(CamVidDataset, copy, "train")
    assert str(copy / "trainannot/0016E5_00390.png") in msg and "no labelled image" in msg

    shutil.rmtree(copy / "trainannot")
    msg = one_line_error(CamVidDataset, copy, "train")
    assert str(copy / "trainannot") in msg


def test_misnamed_and_duplicate_names_are_one_line(copy):
    for folder in ("train", "trainannot"):
        shutil.copy(copy / folder / "0016E5_00390.png", copy / folder / "README.png")
    msg = one_line_error(CamVidDataset, copy, "train")
    assert str(copy / "train/README.png") in msg
    for folder in ("train", "trainannot"):
        (copy / folder / "README.png").rename(copy / folder / "0016E5_0390.png")
    msg = one_line_error(CamVidDataset, copy, "train")
    assert "0016E5_0390.png" in msg and "0016E5_00390.png" in msg
