"""Class tables: raw label values to train ids, classes.yaml, and the one-line errors for bad labels."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from vidseg_ros.classes import IGNORE_INDEX, SYNTH_TABLE, ClassTable, LabelError, load_classes_yaml


def test_raw_values_map_to_train_ids_and_ignore():
    table = ClassTable(
        ("road", "car"), ((128, 64, 128), (0, 0, 142)), raw_ids=(7, 26), ignore_ids=(0, 1, 255)
    )
    raw = np.array([[7, 26, 0], [1, 255, 7]], np.uint8)
    assert table.to_train_ids(raw, "x.png").tolist() == [
        [0, 1, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 0],
    ]


def test_unknown_value_names_file_and_value_in_one_line():
    raw = np.array([[0, 18, 9], [3, 40, 18]], np.uint8)
    with pytest.raises(LabelError) as e:
        SYNTH_TABLE.to_train_ids(raw, "labels/000001.png")
    msg = str(e.value)
    assert "\n" not in msg and "labels/000001.png" in msg and "18, 40" in msg and "0-8" in msg


def test_colour_labels_are_refused_with_a_reason():
    with pytest.raises(LabelError, match="single-channel"):
        SYNTH_TABLE.to_train_ids(np.zeros((4, 4, 3), np.uint8), "rgb.png")


def test_sixteen_bit_labels_map():
    table = ClassTable(("a", "b"), ((1, 2, 3), (4, 5, 6)), raw_ids=(1000, 2), ignore_ids=(65535,))
    raw = np.array([[1000, 2, 65535]], np.uint16)
    assert table.to_train_ids(raw, "x").tolist() == [[0, 1, IGNORE_INDEX]]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"name": "road", "color": [1, 2, 3]}, {"name": "road", "color": [1, 2, 3]}], "unique"),
        ([{"name": "road", "color": [1, 2, 300]}], "colour"),
        ([{"name": "road"}], r"classes\[0\] \(road\) needs 'color"),
        ([{"color": [1, 2, 3]}], r"classes\[0\] needs a non-empty string 'name'"),
        ([{"name": "a", "color": [1, 2, 3], "id": 255}], "not also be ignored"),
    ],
)
def test_bad_classes_yaml_gives_one_line_naming_the_file(tmp_path, rows, match):
    path = tmp_path / "classes.yaml"
    path.write_text(yaml.safe_dump({"classes": rows}))
    with pytest.raises(LabelError, match=match) as e:
        load_classes_yaml(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_classes_yaml_round_trip_with_raw_ids(tmp_path):
    table = ClassTable(
        ("sky", "tree"), ((70, 130, 180), (107, 142, 35)), raw_ids=(23, 21), ignore_ids=(0, 255)
    )
    path = tmp_path / "classes.yaml"
    path.write_text(yaml.safe_dump({**table.to_yaml_dict(), "fps": 15}))
    assert load_classes_yaml(path) == table


def test_missing_classes_yaml(tmp_path):
    with pytest.raises(LabelError, match="class file not found"):
        load_classes_yaml(tmp_path / "nope.yaml")
