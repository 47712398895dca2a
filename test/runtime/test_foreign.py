"""Foreign per-frame ONNX models with a model card, and GRFP over them: card validation, the preprocessing the
card describes, hashes, training and evaluation through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from runtime_models import tiny_model

from vidseg_ros.cli import main
from vidseg_ros.runtime.checkpoint import CheckpointError, ModelMeta, load_checkpoint, read_meta
from vidseg_ros.runtime.foreign import CardError, ForeignModel, GRFPOnnxModel, parse_card
from vidseg_ros.runtime.segmenter import Segmenter

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

W, H = 96, 64
CARD = {
    "classes": [{"name": f"c{i}", "color": [10 * i, 20, 30]} for i in range(9)],
    "input": {"width": W, "height": H, "channel_order": "rgb", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225]},
    "output": "logits",
}  # fmt: skip


class _Wrapped(torch.nn.Module):
    """A per-frame model as a user's export would be: normalised image in, scores out (any post-processing)."""

    def __init__(self, model, *, bgr: bool = False, probabilities: bool = False, stride: int = 1) -> None:
        super().__init__()
        self.model, self.bgr, self.probabilities, self.stride = model, bgr, probabilities, stride

    def forward(self, x):
        if self.bgr:  # the graph takes BGR: give the model back its RGB
            x = x.flip(1)
        y = self.model(x)
        if self.stride > 1:
            y = torch.nn.functional.avg_pool2d(y, self.stride)
        return y.softmax(1) if self.probabilities else y


def _export(tmp_path: Path, name: str, card: dict, **wrap) -> tuple[Path, torch.nn.Module]:
    model = tiny_model("perframe")
    module = _Wrapped(model, **wrap).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(module, (torch.randn(1, 3, H, W),), str(path), input_names=["input"],
                      output_names=["scores"], opset_version=17, dynamo=False)  # fmt: skip
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return path, model


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("output"), "missing field(s) output"),
        (lambda c: c["input"].pop("std"), "missing field input.std"),
        (lambda c: c["input"].update(width=0), "input.width must be an int >= 8"),
        (lambda c: c["input"].update(channel_order="rgba"), "channel_order must be rgb or bgr"),
        (lambda c: c["input"].update(mean=[0.5, 0.5]), "input.mean must be a list of 3 numbers"),
        (lambda c: c["input"].update(std=[1, 0, 1]), "input.std[1] must be > 0"),
        (lambda c: c["input"].update(scale="1/255"), "input.scale must be a number"),
        (lambda c: c.update(output="softmax"), "output must be logits or probabilities"),
        (lambda c: c["classes"][2].update(color=[1, 2, 300]), "classes[2].color must be 3 ints in 0..255"),
        (lambda c: c["classes"][3].pop("name"), "classes[3] must have a non-empty name"),
        (lambda c: c["classes"].append(dict(c["classes"][0])), "class names must be unique"),
    ],
)
def test_card_validation_names_the_bad_field(mutate, message) -> None:
    card = json.loads(json.dumps(CARD))
    mutate(card)
    with pytest.raises(CardError) as e:
        parse_card(card)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_or_broken_card_and_graph_fail_in_one_line(tmp_path: Path) -> None:
    path, _ = _export(tmp_path, "m", CARD)
    (tmp_path / "m.yaml").unlink()
    with pytest.raises(CheckpointError, match="model card .*m.yaml not found"):
        load_checkpoint(path)
    (tmp_path / "m.yaml").write_text("classes: [unclosed")
    with pytest.raises(CheckpointError, match="not readable YAML"):
        read_meta(path)
    wrong = json.loads(json.dumps(CARD))
    wrong["classes"] = wrong["classes"][:5]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(wrong))
    with pytest.raises(CheckpointError, match=r"outputs \(1, 9, 64, 96\), but its card lists 5 classes"):
        load_checkpoint(path)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(CARD))
    path.write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "variant",
    [{}, {"bgr": True}, {"probabilities": True}, {"stride": 4}],
    ids=["logits", "bgr", "probabilities", "stride4"],
)
def test_the_card_preprocessing_reproduces_the_models_masks(tmp_path: Path, variant: dict) -> None:
    """The segmenter's resize and normalisation from the card, the channel order and log-probabilities: the
    masks are those of the model run in PyTorch on the same normalised frame."""
    card = json.loads(json.dumps(CARD))
    if variant.get("bgr"):
        card["input"].update(
            channel_order="bgr", mean=CARD["input"]["mean"][::-1], std=CARD["input"]["std"][::-1]
        )
    if variant.get("probabilities"):
        card["output"] = "probabilities"
    card["input"].update(scale=1.0, mean=[m * 255 for m in card["input"]["mean"]],
                         std=[s * 255 for s in card["input"]["std"]])  # fmt: skip
    path, model = _export(tmp_path, "m", card, **variant)
    foreign, meta = load_checkpoint(path)
    assert isinstance(foreign, ForeignModel) and meta.method == "onnx" and meta.input_size == [W, H]
    assert meta.classes == [c["name"] for c in CARD["classes"]]
    torch.testing.assert_close(torch.tensor(meta.mean), torch.tensor(CARD["input"]["mean"]))
    ref_meta = ModelMeta("perframe", {}, meta.classes, meta.palette, input_size=[W, H])
    seg, ref = Segmenter(foreign, meta), Segmenter(model, ref_meta)
    frame = _frame()
    mine = seg.to_mask(seg.key_step(seg.prepare(frame))[0], frame.shape[:2])
    logits = ref.key_step(ref.prepare(frame))[0]
    if variant.get("stride"):
        from vidseg_ros.models.fpn import upsample_logits

        logits = upsample_logits(torch.nn.functional.avg_pool2d(logits, 4), (H, W))
    assert (mine == ref.to_mask(logits, frame.shape[:2])).mean() > 0.999


def test_grfp_over_a_foreign_model_trains_evaluates_and_checks_the_hash(tmp_path: Path, capsys) -> None:
    from vidseg_ros.data.synth import SynthConfig
    from vidseg_ros.data.synth_bag import write_synth_bag

    bag = tmp_path / "bag"
    write_synth_bag(bag, SynthConfig(seed=3, frames=12, width=W, height=H), progress=False)
    card = json.loads(json.dumps(CARD))
    from vidseg_ros.classes import SYNTH_CLASSES

    for c, name in zip(card["classes"], SYNTH_CLASSES, strict=True):
        c["name"] = name
    base, _ = _export(tmp_path, "base", card)
    out = tmp_path / "grfp.pt"
    run = ["--threads", "1", "--no-progress"]
    args = ["train", "--method", "grfp", "--base", str(base), "--bag", str(bag), "--out", str(out)]
    assert main([*args, "--steps", "2", "--batch", "2", *run]) == 0
    model, meta = load_checkpoint(out)
    assert isinstance(model, GRFPOnnxModel) and meta.method == "grfp_onnx"
    assert (
        meta.arch["base"] == str(base.resolve()) and meta.recipe["base"]["sha256"] == meta.arch["base_sha256"]
    )
    assert set(meta.recipe["trainable"]) == {"stgru"} and meta.input_size == [W, H]
    report = tmp_path / "e.json"
    ev = [
        "eval",
        "--bag",
        str(bag),
        "--json",
        str(report),
        "--checkpoint",
        str(out),
        "--checkpoint",
        str(base),
    ]
    assert main([*ev, *run]) == 0
    grfp, static = json.loads(report.read_text())["results"]
    assert (grfp["method"], static["method"]) == ("grfp_onnx", "onnx")
    assert grfp["key_frames"] == 1 and static["key_frames"] == 12
    # Another file under the same name: refused at load, in one line.
    base.write_bytes(base.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="SHA-256 .* but the STGRU was trained over") as e:
        load_checkpoint(out)
    assert "\n" not in str(e.value)
    assert main([*args[:-2], "--out", str(tmp_path / "x.pt"), "--init", str(out), *run]) == 2
    assert "--base and --init exclude each other" in capsys.readouterr().err


def test_data_must_carry_the_cards_classes_and_size(tmp_path: Path, capsys) -> None:
    from vidseg_ros.data.synth import SynthConfig
    from vidseg_ros.data.synth_bag import write_synth_bag

    bag = tmp_path / "bag"
    write_synth_bag(bag, SynthConfig(seed=3, frames=4, width=W, height=H), progress=False)
    base, _ = _export(tmp_path, "base", CARD)  # classes c0..c8
    other = tmp_path / "classes.yaml"
    other.write_text(yaml.safe_dump({"classes": [{"name": f"k{i}", "color": [i, i, i]} for i in range(9)]}))
    args = [
        "train",
        "--method",
        "grfp",
        "--base",
        str(base),
        "--bag",
        str(bag),
        "--out",
        str(tmp_path / "g.pt"),
    ]
    run = ["--steps", "1", "--batch", "1", "--threads", "1", "--no-progress"]
    assert main([*args, *run, "--classes", str(other)]) == 2
    assert "predicts 9 classes (c0, c1, c2, c3, ...) but the data has 9 (k0" in capsys.readouterr().err
    assert main([*args, *run, "--size", "96x64"]) == 2
    assert "--size does not apply with --base" in capsys.readouterr().err
    missing = ["train", "--method", "grfp", "--base", str(tmp_path / "none.onnx"), "--bag", str(bag)]
    assert main([*missing, "--out", str(tmp_path / "g.pt"), *run]) == 2
    assert f"--base {tmp_path / 'none.onnx'} not found" in capsys.readouterr().err
