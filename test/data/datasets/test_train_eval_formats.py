"""``vidseg train`` and ``vidseg eval`` on each format, as a user runs them: fixtures in the published layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from layouts import make_camvid, make_cityscapes, make_folder, write_index

from vidseg_ros.cli import main
from vidseg_ros.data.datasets import open_dataset
from vidseg_ros.runtime.checkpoint import read_checkpoint

TINY = ["--size", "64x32", "--width-mult", "0.25", "--decoder-channels", "16"]
RUN = ["--threads", "1", "--no-progress", "--batch", "2"]


def train(*args: str | Path) -> int:
    return main(["train", *map(str, args), *RUN])


def build(fmt: str, root: Path) -> None:
    if fmt == "cityscapes":
        make_cityscapes(root, split="train", snippets=(("aachen", 0, 19), ("bochum", 3, 19)), size=(128, 64))
        make_cityscapes(
            root,
            split="val",
            snippets=(("frankfurt", 0, 294), ("frankfurt", 0, 576)),
            size=(128, 64),
            seed=50,
        )
    elif fmt == "camvid":
        make_camvid(root, split="train", labelled=(("0001TP", 6690), ("0001TP", 6720)), size=(96, 72))
        make_camvid(root, split="val", labelled=(("0016E5", 390),), size=(96, 72), seed=50)
    else:
        make_folder(root, split="train", sequences=2, frames=10, label_every=3, size=(96, 64))
        make_folder(
            root, split="val", sequences=1, frames=8, label_every=4, size=(96, 64), seed=50, video=True
        )


@pytest.mark.parametrize("fmt", ["cityscapes", "camvid", "folder"])
def test_train_both_stages_then_eval_the_split(fmt, tmp_path):
    root = tmp_path / fmt
    build(fmt, root)
    data = ["--dataset", fmt, "--data-root", root]
    pf, nw = tmp_path / "pf.pt", tmp_path / "nw.pt"
    # Workers prepare augmented clips in other processes for the per-frame stage, in-process for NetWarp.
    assert train(*data, "--method", "perframe", "--steps", 3, "--out", pf, *TINY, "--workers", 1) == 0
    assert train(*data, "--method", "netwarp", "--init", pf, "--steps", 2, "--out", nw, "--workers", 0) == 0
    classes = open_dataset(fmt, root, "train").classes
    meta, _ = read_checkpoint(nw)
    assert meta.classes == list(classes.names) and meta.palette == classes.palette()
    assert meta.recipe["data"] == {"format": fmt, "source": meta.recipe["data"]["source"], "split": "train",
                                   "augment": "full", "synthetic": False}  # fmt: skip
    out = tmp_path / "eval.json"
    args = ["eval", *map(str, data), "--split", "val", "--checkpoint", str(pf), "--checkpoint", str(nw)]
    assert main([*args, "--json", str(out), "--threads", "1", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    val = open_dataset(fmt, root, "val")
    for r in report["results"]:
        assert r["labelled_frames"] == val.labelled_count()
        assert r["frames"] == sum(len(s.frames) for s in val.sequences)
        assert list(r["per_class_iou"]) == list(classes.names)
        assert r["miou"] is not None and r["tc"] is not None  # TC over every frame, labelled or not
        assert len(r["per_sequence"]) == len(val.sequences)


def test_cityscapes_snippets_run_whole_and_score_the_20th_frame(tmp_path):
    root = make_cityscapes(tmp_path / "cs", split="val", snippets=(("frankfurt", 0, 294),), size=(128, 64))
    ds = open_dataset("cityscapes", root, "val")
    seq = ds.sequences[0]
    assert seq.frames == tuple(range(275, 305)) and seq.labelled == (294,)
    labelled = [f.number for f in ds.iter_frames(seq) if f.labels is not None]
    assert labelled == [294]


def test_per_frame_works_without_the_sequence_folder_and_video_methods_say_why_not(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs", split="train", size=(128, 64), with_sequence=False)
    data = ["--dataset", "cityscapes", "--data-root", root]
    pf = tmp_path / "pf.pt"
    assert train(*data, "--method", "perframe", "--steps", 2, "--out", pf, *TINY, "--workers", 0) == 0
    capsys.readouterr()
    assert train(*data, "--method", "netwarp", "--init", pf, "--steps", 1, "--out", tmp_path / "nw.pt") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "leftImg8bit_sequence" in err


def test_a_bad_label_found_by_a_worker_is_one_line(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs", split="train", snippets=(("aachen", 0, 19),), size=(128, 64))
    bad = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    write_index(bad, np.full((64, 128), 40, np.uint8))
    code = train("--dataset", "cityscapes", "--data-root", root, "--method", "perframe", "--steps", 2,
                 "--out", tmp_path / "x.pt", *TINY, "--workers", 1, "--class-weights", "none")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(bad) in err and "40" in err


def test_eval_refuses_a_checkpoint_of_other_classes(tmp_path, capsys, tiny_checkpoint):
    root = make_cityscapes(tmp_path / "cs", split="val", snippets=(("lindau", 0, 19),), size=(128, 64))
    args = [
        "eval",
        "--dataset",
        "cityscapes",
        "--data-root",
        str(root),
        "--checkpoint",
        str(tiny_checkpoint()),
    ]
    assert main([*args, "--json", str(tmp_path / "x.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "9 classes" in err and "19" in err


def test_init_of_other_classes_is_refused(tmp_path, capsys, tiny_checkpoint):
    root = make_camvid(tmp_path / "cv", size=(96, 72))
    code = train("--dataset", "camvid", "--data-root", root, "--method", "netwarp", "--init", tiny_checkpoint(),
                 "--steps", 1, "--out", tmp_path / "x.pt")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "train stage 1" in err


def test_labels_without_their_preceding_frames_are_left_out_with_one_line(tmp_path, capsys):
    root = make_cityscapes(
        tmp_path / "cs", split="train", snippets=(("aachen", 0, 19), ("aachen", 1, 19)), size=(128, 64)
    )
    (root / "leftImg8bit_sequence/train/aachen/aachen_000001_000018_leftImg8bit.png").unlink()
    data = ["--dataset", "cityscapes", "--data-root", root]
    pf = tmp_path / "pf.pt"
    assert train(*data, "--method", "perframe", "--steps", 1, "--out", pf, *TINY, "--workers", 0) == 0
    assert "lack" not in capsys.readouterr().out  # a per-frame model needs no frames before the label
    assert (
        train(
            *data,
            "--method",
            "netwarp",
            "--init",
            pf,
            "--steps",
            1,
            "--out",
            tmp_path / "nw.pt",
            "--workers",
            0,
        )
        == 0
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "lack" in ln]
    assert len(lines) == 1 and "1 of 2 labelled frames" in lines[0] and "aachen_000001_000019" in lines[0]
    assert "no frame 18" in lines[0]
