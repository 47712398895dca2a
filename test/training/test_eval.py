"""``vidseg eval``: online runs through Stream, the JSON report, the markdown table and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vidseg_ros.cli import main
from vidseg_ros.data.bags import read_frames
from vidseg_ros.data.synth import SynthConfig
from vidseg_ros.data.synth_bag import write_synth_bag
from vidseg_ros.metrics import confusion, mean_iou
from vidseg_ros.runtime.checkpoint import load_checkpoint, save_checkpoint
from vidseg_ros.runtime.segmenter import Segmenter
from vidseg_ros.runtime.stream import Stream
from vidseg_ros.training.config import TrainConfig
from vidseg_ros.training.evaluate import evaluate_checkpoint, evaluate_checkpoints, propagate_labels
from vidseg_ros.training.objectives import build_stage_model

FRAMES = 10
RESULT_KEYS = {
    "checkpoint", "method", "input_size", "key_interval", "frames", "miou", "tc", "trimap_iou", "per_class_iou", "per_class_tc",
    "ms_per_frame", "ms_key", "ms_nonkey", "stage_ms", "per_sequence", "key_frames", "nonkey_frames",
}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Two short bags, an (untrained) per-frame checkpoint and a TWNet stage 2 trained from it."""
    root = tmp_path_factory.mktemp("eval")
    bags = []
    for seed in (7, 8):
        bags.append(root / f"bag{seed}")
        write_synth_bag(bags[-1], SynthConfig(seed=seed, frames=FRAMES, width=96, height=64), progress=False)
    cfg = TrainConfig(
        method="perframe", bags=bags, out=root / "x", size=(96, 64), width_mult=0.25, decoder_channels=16
    )
    model, meta = build_stage_model(cfg)
    perframe = save_checkpoint(root / "perframe.pt", model, meta)
    twnet = root / "twnet.pt"
    args = [
        "--method",
        "twnet",
        "--init",
        perframe,
        "--bag",
        bags[0],
        "--out",
        twnet,
        "--steps",
        2,
        "--batch",
        2,
    ]
    assert main(["train", *map(str, args), "--key-interval", "6", "--threads", "1", "--no-progress"]) == 0
    return {"bag0": bags[0], "bag1": bags[1], "perframe": perframe, "twnet": twnet, "root": root}


def test_eval_reports_json_table_and_plot(setup, capsys):
    out = setup["root"] / "report"
    argv = [
        "eval", "--checkpoint", str(setup["perframe"]), "--checkpoint", str(setup["twnet"]),
        "--bag", str(setup["bag0"]), "--bag", str(setup["bag1"]), "--key-interval", "4", "--key-distance",
        "--label-propagation", "--json", str(out / "eval.json"), "--plot", str(out / "eval.png"), "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| method | mIoU | TC | trimap IoU | ms/frame | key ms | non-key ms |" in table
    assert "| perframe (perframe, K=1) |" in table and "| twnet (twnet, K=4) |" in table
    assert "| class | perframe | twnet |" in table

    report = json.loads((out / "eval.json").read_text())
    for cls, iou in report["results"][1]["per_class_iou"].items():  # the class table's twnet column
        cell = "n/a" if iou is None else f"{100 * iou:.1f}"
        assert any(
            line.startswith(f"| {cls} |") and line.endswith(f" | {cell} |") for line in table.splitlines()
        )
    assert "| class (TC) | perframe | twnet |" in table
    tc_rows = table.split("| class (TC) |")[1].splitlines()
    for cls, tc in report["results"][0]["per_class_tc"].items():  # the TC table's perframe column
        cell = "n/a" if tc is None else f"{100 * tc:.1f}"
        assert any(line.startswith(f"| {cls} | {cell} |") for line in tc_rows)
    assert report["data"]["bags"] == [str(setup["bag0"]), str(setup["bag1"])]
    perframe, twnet = report["results"]
    for r in (perframe, twnet):
        assert RESULT_KEYS <= r.keys()
        assert r["frames"] == 2 * FRAMES and len(r["per_sequence"]) == 2
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["tc"] <= 1.0 and 0.0 <= r["trimap_iou"] <= 1.0
        assert (
            set(r["per_class_iou"])
            == set(r["per_class_tc"])
            == set(load_checkpoint(setup["perframe"])[1].classes)
        )
        scored = [v for v in r["per_class_tc"].values() if v is not None]
        assert np.mean(scored) == pytest.approx(r["tc"])
        assert r["ms_per_frame"] > 0 and r["ms_key"] > 0
    assert perframe["method"] == "perframe" and perframe["ms_nonkey"] is None
    assert perframe["key_frames"] == 2 * FRAMES and list(perframe["key_distance"]) == ["0"]
    # Every per-frame frame sits at distance 0, so that bucket's per-class IoU is the overall one.
    assert perframe["key_distance"]["0"]["per_class_iou"] == pytest.approx(perframe["per_class_iou"])
    # --key-interval 4 applies to TWNet (as the node's twnet.key_interval): keys at 0, 4, 8 of each bag.
    assert twnet["key_interval"] == 4 and twnet["key_frames"] == 6 and twnet["ms_nonkey"] > 0
    assert list(twnet["key_distance"]) == ["0", "1", "2", "3"]
    assert twnet["key_distance"]["0"]["frames"] == 6 and twnet["key_distance"]["3"]["frames"] == 4
    assert (out / "eval.png").stat().st_size > 10_000
    carried = report["label_propagation"]
    assert carried["key_interval"] == 4 and carried["input_size"] == [96, 64]
    assert list(carried["key_distance"]) == ["1", "2", "3"] and carried["key_distance"]["3"]["frames"] == 4
    assert "| class (labels carried by the flow) | d=1 | d=2 | d=3 |" in table


def test_labels_carried_by_the_flow_beat_labels_left_in_place(tmp_path):
    """On a moving scene, warping along the node's flow must keep more of the labels than not moving them
    (a wrong flow sign or scale would do worse), and the carried labels must decay with the distance."""
    bag = tmp_path / "bag"
    write_synth_bag(bag, SynthConfig(seed=5, frames=8, width=320, height=240, speed=3.0), progress=False)
    classes = [f"c{i}" for i in range(9)]
    carried = propagate_labels([bag], input_size=(320, 240), classes=classes, key_interval=8, progress=False)
    curve = carried["key_distance"]
    assert list(curve) == [str(d) for d in range(1, 8)]
    labels = [f.labels for f in read_frames(bag)]
    for d in (1, 4, 7):
        still = mean_iou(confusion(labels[0], labels[d], len(classes)))
        assert curve[str(d)]["miou"] > still + 0.02, (d, curve[str(d)]["miou"], still)
    assert curve["1"]["miou"] > curve["7"]["miou"]


def test_interleaved_checkpoints_score_as_they_do_alone(setup):
    """Several checkpoints share the frames, never the state: each scores exactly as it does on its own."""
    bags = [setup["bag0"], setup["bag1"]]
    together = evaluate_checkpoints([setup["twnet"], setup["perframe"]], bags, key_interval=3, progress=False)
    for name, result in zip(("twnet", "perframe"), together, strict=True):
        alone = evaluate_checkpoint(setup[name], bags, key_interval=3, progress=False)
        for key in ("miou", "tc", "trimap_iou", "per_class_iou", "key_frames", "per_sequence"):
            assert result[key] == alone[key], (name, key)


def test_each_checkpoint_runs_on_each_backend(setup, tmp_path, capsys):
    """--backend cpu,onnxruntime: every checkpoint twice, interleaved, named by backend; the onnxruntime masks
    (class ids from the fused arg-max) score as PyTorch's do."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "b.json"
    args = ["eval", "--bag", str(setup["bag0"]), "--json", str(out), "--no-progress", "--key-interval", "3"]
    args += ["--checkpoint", str(setup["twnet"]), "--backend", "cpu,onnxruntime", "--threads", "1"]
    assert main(args) == 0
    torch_run, ort_run = json.loads(out.read_text())["results"]
    assert (torch_run["backend"], ort_run["backend"]) == ("cpu", "onnxruntime")
    assert torch_run["name"] == "twnet [cpu]" and ort_run["name"] == "twnet [onnxruntime]"
    assert "onnxruntime" in ort_run["backend_reason"]
    assert ort_run["key_frames"] == torch_run["key_frames"] == 4
    assert abs(ort_run["miou"] - torch_run["miou"]) < 0.005 and abs(ort_run["tc"] - torch_run["tc"]) < 0.005
    assert "twnet [onnxruntime]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main([*args[:-4], "--checkpoint", str(setup["twnet"]), "--backend", "cpu,onnx"])
    assert exit_.value.code == 2
    assert "backends must be from" in capsys.readouterr().err


def test_eval_runs_exactly_like_a_node_stream(setup):
    """Same masks as a hand-driven Stream, so the metrics describe what the node publishes."""
    result = evaluate_checkpoint(setup["twnet"], [setup["bag0"]], key_interval=3, progress=False)
    model, meta = load_checkpoint(setup["twnet"])
    segmenter = Segmenter(model, meta)
    segmenter.key_interval = 3
    stream = Stream(segmenter)
    from vidseg_ros.metrics import SequenceMetrics

    metrics = SequenceMetrics(num_classes=len(meta.classes))
    for frame in read_frames(setup["bag0"]):
        r = stream.step(frame.image, frame.stamp_ns, frame_id=frame.frame_id)
        metrics.update(r.mask, frame.labels, frame.image)
    expected = metrics.summary(meta.classes)
    assert np.isclose(result["miou"], expected["miou"]) and np.isclose(result["tc"], expected["tc"])
    assert result["key_frames"] == 4  # frames 0, 3, 6, 9


def test_eval_rejects_bad_input(setup, tmp_path, capsys):
    base = ["eval", "--bag", str(setup["bag0"]), "--json", str(tmp_path / "e.json"), "--no-progress"]
    assert main([*base, "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(setup["perframe"]), "--key-interval", "0"]) == 2
    assert not (tmp_path / "e.json").exists()


def test_warm_up_builds_every_step_so_none_loads_while_timed(setup, tiny_checkpoint, tmp_path):
    """An onnxruntime TDNet has a session per sub-network; each must be ready before the timed frames."""
    pytest.importorskip("onnxruntime")
    from vidseg_ros.runtime.ort_backend import OrtBackend, ort_cache
    from vidseg_ros.runtime.steps import step_names
    from vidseg_ros.training.evaluate import _warm_up, as_dataset

    model, meta = load_checkpoint(tiny_checkpoint("tdnet"))
    backend = OrtBackend(model, threads=1, cache=ort_cache(tmp_path))
    segmenter = Segmenter(model, meta, backend=backend, input_size=(96, 64))
    dataset = as_dataset([setup["bag0"]], meta.classes, meta.palette)
    _warm_up(segmenter, dataset)
    assert {name for name, *_ in backend._steps} == set(step_names(model)) and len(step_names(model)) == 5
    built = len(backend.results)
    stream = Stream(segmenter)
    for frame in dataset.iter_frames(dataset.sequences[0]):
        stream.step(frame.image, frame.stamp_ns, frame_id=frame.frame_id)
    assert len(backend.results) == built  # no session was loaded during the frames eval times
