"""Labelled bags as a dataset: topics, class tables, the synthetic marker and one-line errors, via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from vidseg_ros.classes import SYNTH_TABLE, ClassTable
from vidseg_ros.cli import main
from vidseg_ros.data.bags import SYNTH_EPOCH_NS, BagWriter
from vidseg_ros.data.datasets import DatasetError
from vidseg_ros.data.datasets.bag import BagDataset
from vidseg_ros.data.synth import SynthConfig, generate
from vidseg_ros.data.synth_bag import write_synth_bag
from vidseg_ros.runtime.checkpoint import read_checkpoint

TINY = [
    "--size",
    "64x48",
    "--width-mult",
    "0.25",
    "--decoder-channels",
    "16",
    "--threads",
    "1",
    "--no-progress",
]


def cityscapes_ids_bag(path, frames: int = 6, image_topic: str = "/cam/image", label_topic: str = "/cam/gt"):
    """A recorded-style bag whose labels hold 19 Cityscapes-like train ids (synth ids spread over 0..18)."""
    spread = np.array(
        [0, 1, 2, 8, 10, 5, 7, 13, 11], np.uint8
    )  # road .. person at their Cityscapes train ids
    with BagWriter(path) as bag:
        for i, (rgb, labels) in enumerate(generate(SynthConfig(seed=4, frames=frames, width=64, height=48))):
            stamp = SYNTH_EPOCH_NS + i * 50_000_000
            bag.write_image(image_topic, stamp, "cam", rgb, "rgb8")
            bag.write_image(label_topic, stamp, "cam", spread[labels], "mono8")
    return path


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "synth"
    write_synth_bag(path, SynthConfig(seed=2, frames=6, width=64, height=48), progress=False)
    return path


def test_bag_sequences_labels_and_synthetic_marker(synth_bag, tmp_path):
    ds = BagDataset([synth_bag], SYNTH_TABLE)
    seq = ds.sequences[0]
    assert seq.frames == tuple(range(6)) and seq.labelled == seq.frames and ds.synthetic
    assert seq.fps == pytest.approx(15.0, rel=0.01)
    frames = list(ds.iter_frames(seq))
    assert [f.number for f in frames] == list(range(6))
    assert np.array_equal(ds.read_frames(seq, [3])[0], frames[3].image)
    assert np.array_equal(ds.read_labels(seq, 3), frames[3].labels)
    assert [c.frames for c in ds.clips(2)][:2] == [(0, 1, 2), (1, 2, 3)]
    recorded = cityscapes_ids_bag(tmp_path / "rec")
    assert not BagDataset(
        [recorded], _cityscapes_like(), image_topic="/cam/image", label_topic="/cam/gt"
    ).synthetic


def _cityscapes_like() -> ClassTable:
    return ClassTable.simple([f"c{i}" for i in range(19)], [(i, i, i) for i in range(19)])


def test_ids_outside_the_classes_give_one_line_not_an_index_error(tmp_path, capsys):
    bag = cityscapes_ids_bag(tmp_path / "rec")
    args = ["train", "--method", "perframe", "--bag", str(bag), "--image-topic", "/cam/image"]
    code = main([*args, "--label-topic", "/cam/gt", "--out", str(tmp_path / "x.pt"), "--steps", "1", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(bag) in err and "13" in err and "0-8" in err and "IndexError" not in err


def test_a_missing_topic_lists_the_bags_topics(synth_bag, tmp_path, capsys):
    args = ["train", "--method", "perframe", "--bag", str(synth_bag), "--image-topic", "/nope"]
    assert main([*args, "--out", str(tmp_path / "x.pt"), "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "/nope" in err
        and "/camera/image_raw" in err
        and "/camera/labels" in err
    )


def test_a_bag_without_labels_on_the_topic(synth_bag):
    with pytest.raises(DatasetError, match="no labels on /other") as e:
        BagDataset([synth_bag], SYNTH_TABLE, label_topic="/other")
    assert "\n" not in str(e.value)


def test_train_and_eval_a_19_class_bag_with_classes_yaml(tmp_path):
    """Topics and classes.yaml through the CLI; the checkpoint carries the 19 names and palette."""
    bag = cityscapes_ids_bag(tmp_path / "rec", frames=8)
    table = _cityscapes_like()
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(table.to_yaml_dict()))
    data = ["--bag", str(bag), "--image-topic", "/cam/image", "--label-topic", "/cam/gt"]
    out = tmp_path / "pf.pt"
    code = main(["train", "--method", "perframe", *data, "--classes", str(tmp_path / "classes.yaml"),
                 "--out", str(out), "--steps", "3", "--batch", "2", *TINY])  # fmt: skip
    assert code == 0
    meta, state = read_checkpoint(out)
    assert meta.classes == list(table.names) and meta.palette == table.palette()
    assert meta.recipe["data"]["format"] == "bag" and meta.recipe["data"]["synthetic"] is False
    assert next(v for k, v in state.items() if k.endswith("classifier.weight")).shape[0] == 19
    # NetWarp from it: the bag is read with --init's classes, no --classes needed.
    nw = tmp_path / "nw.pt"
    assert main(["train", "--method", "netwarp", *data, "--init", str(out), "--out", str(nw), "--steps", "2",
                 "--batch", "2", "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    report = tmp_path / "eval.json"
    assert main(["eval", *data, "--checkpoint", str(out), "--checkpoint", str(nw), "--json", str(report),
                 "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    results = json.loads(report.read_text())["results"]
    for r in results:
        assert list(r["per_class_iou"]) == list(table.names) and r["labelled_frames"] == 8
        # Null only for classes without ground truth (and without prediction), left out of the mean.
        nulls = {n for n, v in r["per_class_iou"].items() if v is None}
        assert nulls and nulls <= {f"c{i}" for i in (3, 4, 6, 9, 12, 14, 15, 16, 17, 18)}
        scored = [v for v in r["per_class_iou"].values() if v is not None]
        assert r["miou"] == pytest.approx(sum(scored) / len(scored))
