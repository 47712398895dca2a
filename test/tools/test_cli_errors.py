"""Every ``vidseg`` subcommand answers bad input with one ``vidseg CMD: error: ...`` line and exit code 2.

Each case runs in-process through ``vidseg_ros.cli.main`` on tiny inputs and fails before any real work
(training, timing, a node), so the whole table takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vidseg_ros.cli import main
from vidseg_ros.data.bags import BagWriter
from vidseg_ros.data.synth import SynthConfig
from vidseg_ros.data.synth_bag import write_synth_bag

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "seg.yaml"
TOPICS = "'/camera/image_raw', '/camera/labels'"  # how the one-liners list a synth bag's topics


@dataclass(frozen=True)
class Inputs:
    """Good and bad inputs shared by the cases (made once per module)."""

    root: Path
    bag: Path  # a good labelled bag (raw images)
    jpeg_bag: Path  # images on /camera/image_raw/compressed
    diag_bag: Path  # /img (an image) and /diagnostics (not one)
    corrupt_bag: Path  # metadata.yaml that is not YAML
    file: Path  # a regular file: nothing can be created below it
    junk_ckpt: Path
    ckpt: Path  # a real, tiny checkpoint

    @property
    def missing(self) -> Path:
        return self.root / "does_not_exist"

    @property
    def blocked(self) -> Path:
        return self.file / "out"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint) -> Inputs:
    root = tmp_path_factory.mktemp("cli_errors")
    cfg = SynthConfig(seed=1, frames=2, width=32, height=24)
    write_synth_bag(root / "bag", cfg, progress=False)
    write_synth_bag(root / "jpeg_bag", cfg, compressed="jpeg", progress=False)
    with BagWriter(root / "diag_bag") as bag:
        bag.write_image("/img", 1, "cam", np.zeros((24, 32, 3), np.uint8), "rgb8")
        bag.write("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", {"header": {"stamp": 1}}, 1)
    (root / "corrupt_bag").mkdir()
    (root / "corrupt_bag" / "metadata.yaml").write_text("rosbag2_bagfile_information: [\n")
    (root / "file").write_text("not a folder\n")
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    return Inputs(
        root,
        root / "bag",
        root / "jpeg_bag",
        root / "diag_bag",
        root / "corrupt_bag",
        root / "file",
        root / "junk.pt",
        tiny_checkpoint("netwarp"),
    )


def fails_in_one_line(capsys, argv: list[str], *named: object) -> str:
    """Runs ``vidseg ARGV``; checks exit code 2 and one stderr line naming every ``named`` value."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vidseg {argv[0]}: error: "), lines[0]
    for value in named:
        assert str(value) in lines[0], (value, lines[0])
    return lines[0]


# (case id, argv from the inputs, values the line must name)
Case = tuple[str, Callable[[Inputs], list], Callable[[Inputs], tuple]]


def _train(i: Inputs, *extra, out: Path | None = None) -> list:
    out = i.root / "t.pt" if out is None else out
    return ["train", "--method", "perframe", "--out", out, "--steps", "1", "--no-progress", *extra]


def _eval(i: Inputs, *extra) -> list:
    return ["eval", "--json", i.root / "e.json", "--no-progress", *extra]


def _bench(*extra) -> list:
    return ["bench", "--sizes", "64x48", "--repeats", "1", "--node-frames", "0", *extra]


def _demo(i: Inputs, *extra, bag: Path | None = None) -> list:
    bag = i.bag if bag is None else bag
    return [
        "demo",
        "--bag",
        bag,
        "--out",
        i.root / "demo",
        "--config",
        CONFIG,
        "--checkpoint",
        i.ckpt,
        *extra,
    ]


CASES: list[Case] = [
    # synth
    ("synth-out-blocked", lambda i: ["synth", "--out", i.blocked, "--frames", "1", "--no-progress"],
     lambda i: (i.blocked,)),
    ("synth-out-exists", lambda i: ["synth", "--out", i.bag, "--frames", "1", "--no-progress"],
     lambda i: (i.bag, "exists")),
    ("synth-seed", lambda i: ["synth", "--out", i.root / "s", "--seed", "-1"], lambda i: ("--seed", "-1")),
    # train
    ("train-dataset-root", lambda i: _train(i, "--dataset", "cityscapes", "--data-root", "/nonexistent"),
     lambda i: ("/nonexistent",)),
    ("train-bag-missing", lambda i: _train(i, "--bag", i.missing), lambda i: (i.missing,)),
    ("train-bag-corrupt", lambda i: _train(i, "--bag", i.corrupt_bag), lambda i: (i.corrupt_bag,)),
    ("train-image-topic", lambda i: _train(i, "--bag", i.bag, "--image-topic", "/nope"),
     lambda i: ("/nope", TOPICS)),
    ("train-compressed-bag-default-topic", lambda i: _train(i, "--bag", i.jpeg_bag),
     lambda i: ("/camera/image_raw", "/camera/image_raw/compressed")),
    ("train-init-missing", lambda i: [*_train(i, "--bag", i.bag), "--method", "twnet", "--init", i.missing],
     lambda i: (i.missing,)),
    ("train-init-corrupt", lambda i: [*_train(i, "--bag", i.bag), "--method", "twnet", "--init", i.junk_ckpt],
     lambda i: (i.junk_ckpt,)),
    # eval
    ("eval-checkpoint-missing", lambda i: _eval(i, "--checkpoint", i.missing, "--bag", i.bag),
     lambda i: (i.missing,)),
    ("eval-checkpoint-corrupt", lambda i: _eval(i, "--checkpoint", i.junk_ckpt, "--bag", i.bag),
     lambda i: (i.junk_ckpt,)),
    ("eval-bag-missing", lambda i: _eval(i, "--checkpoint", i.ckpt, "--bag", i.missing), lambda i: (i.missing,)),
    ("eval-bag-corrupt", lambda i: _eval(i, "--checkpoint", i.ckpt, "--bag", i.corrupt_bag),
     lambda i: (i.corrupt_bag,)),
    ("eval-image-topic", lambda i: _eval(i, "--checkpoint", i.ckpt, "--bag", i.bag, "--image-topic", "/nope"),
     lambda i: ("/nope", TOPICS)),
    ("eval-label-topic", lambda i: _eval(i, "--checkpoint", i.ckpt, "--bag", i.bag, "--label-topic", "/nope"),
     lambda i: ("/nope",)),
    ("eval-not-an-image-topic",
     lambda i: _eval(i, "--checkpoint", i.ckpt, "--bag", i.diag_bag, "--image-topic", "/diagnostics"),
     lambda i: ("/diagnostics", "DiagnosticArray")),
    ("eval-dataset-root",
     lambda i: _eval(i, "--checkpoint", i.ckpt, "--dataset", "cityscapes", "--data-root", "/nonexistent"),
     lambda i: ("/nonexistent",)),
    # bench: all checked before models load or anything is timed
    ("bench-checkpoint-dir", lambda i: _bench("--checkpoint-dir", i.missing), lambda i: (i.missing,)),
    ("bench-json-blocked", lambda i: _bench("--json", i.blocked / "b.json"), lambda i: (i.blocked / "b.json",)),
    ("bench-plot-is-a-folder", lambda i: _bench("--plot", i.root), lambda i: (i.root, "folder")),
    ("bench-size-below-dis", lambda i: ["bench", "--sizes", "16x16"], lambda i: ("16x16", "8x8")),
    ("bench-flow-downscale", lambda i: _bench("--flow-downscale", "0"), lambda i: ("--flow-downscale", "0")),
    ("bench-width-mult", lambda i: _bench("--width-mult", "0"), lambda i: ("--width-mult", "0")),
    # export
    ("export-checkpoint-missing", lambda i: ["export", "--format", "onnx", "--checkpoint", i.missing],
     lambda i: (i.missing,)),
    ("export-checkpoint-corrupt", lambda i: ["export", "--format", "onnx", "--checkpoint", i.junk_ckpt],
     lambda i: (i.junk_ckpt,)),
    ("export-out-blocked",
     lambda i: ["export", "--format", "onnx", "--checkpoint", i.ckpt, "--out", i.blocked],
     lambda i: (i.blocked,)),
    ("export-flow-downscale",
     lambda i: ["export", "--format", "onnx", "--checkpoint", i.ckpt, "--flow-downscale", "0"],
     lambda i: ("--flow-downscale", "0")),
    ("export-opset", lambda i: ["export", "--format", "onnx", "--checkpoint", i.ckpt, "--opset", "11"],
     lambda i: ("--opset", "11")),
    # demo: all checked before seg_node starts
    ("demo-bag-missing", lambda i: _demo(i, bag=i.missing), lambda i: (i.missing,)),
    ("demo-bag-corrupt", lambda i: _demo(i, bag=i.corrupt_bag), lambda i: (i.corrupt_bag,)),
    ("demo-image-topic", lambda i: _demo(i, "--image-topic", "/nope"), lambda i: ("/nope", TOPICS)),
    ("demo-label-topic", lambda i: _demo(i, "--label-topic", "/nope"), lambda i: ("/nope", TOPICS)),
    ("demo-compressed-bag-default-topic", lambda i: _demo(i, bag=i.jpeg_bag),
     lambda i: ("/camera/image_raw", "'/camera/image_raw/compressed', '/camera/labels'")),
    ("demo-not-an-image-topic", lambda i: _demo(i, "--image-topic", "/diagnostics", bag=i.diag_bag),
     lambda i: ("/diagnostics", "DiagnosticArray")),
    ("demo-checkpoint-missing", lambda i: [*_demo(i), "--checkpoint", i.missing], lambda i: (i.missing,)),
    ("demo-checkpoint-corrupt", lambda i: [*_demo(i), "--checkpoint", i.junk_ckpt], lambda i: (i.junk_ckpt,)),
    ("demo-config-missing", lambda i: [*_demo(i), "--config", i.missing], lambda i: (i.missing,)),
    ("demo-config-not-yaml", lambda i: [*_demo(i), "--config", i.corrupt_bag / "metadata.yaml"],
     lambda i: (i.corrupt_bag / "metadata.yaml", "YAML")),
    ("demo-out-blocked", lambda i: [*_demo(i), "--out", i.blocked], lambda i: (i.blocked,)),
    ("demo-rate", lambda i: [*_demo(i), "--rate", "0"], lambda i: ("--rate", "0")),
    ("eval-json-blocked",
     lambda i: ["eval", "--json", i.blocked / "e.json", "--no-progress", "--checkpoint", i.ckpt, "--bag", i.bag],
     lambda i: (i.blocked / "e.json",)),
    ("eval-flow-downscale", lambda i: _eval(i, "--checkpoint", i.ckpt, "--bag", i.bag, "--flow-downscale", "0"),
     lambda i: ("--flow-downscale",)),
    ("eval-size-below-dis", lambda i: _eval(i, "--checkpoint", i.ckpt, "--bag", i.bag, "--size", "16x16"),
     lambda i: ("16x16",)),
    ("train-decoder-channels", lambda i: _train(i, "--bag", i.bag, "--decoder-channels", "0"),
     lambda i: ("decoder channels", "0")),
    ("train-width-mult", lambda i: _train(i, "--bag", i.bag, "--width-mult", "0"), lambda i: ("width mult", "0")),
    ("train-out-blocked",
     lambda i: _train(i, "--bag", i.bag, "--size", "32x32", "--device", "cpu", out=i.blocked / "t.pt"),
     lambda i: (i.blocked / "t.pt",)),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(capsys, inputs, argv, named):
    fails_in_one_line(capsys, argv(inputs), *named(inputs))


def test_demo_refuses_bad_parameter_values_before_starting_the_node(capsys, inputs):
    config = inputs.root / "bad.yaml"
    config.write_text("/**:\n  ros__parameters:\n    model:\n      device: gpu\n")
    line = fails_in_one_line(capsys, [*_demo(inputs), "--config", config], config, "model.device")
    assert "gpu" in line


def test_demo_checks_a_given_bag_before_creating_the_output_folder(capsys, inputs):
    out = inputs.root / "never_made"
    fails_in_one_line(capsys, [*_demo(inputs, bag=inputs.missing), "--out", out], inputs.missing)
    assert not out.exists()
