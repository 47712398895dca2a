"""``vidseg train``: learning, determinism, resume, the NetWarp/TWNet stages and torchrun (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidseg_ros.cli import main
from vidseg_ros.data.synth import SynthConfig
from vidseg_ros.data.synth_bag import write_synth_bag
from vidseg_ros.models.grfp import GRFPModel
from vidseg_ros.models.netwarp import NetWarpModel
from vidseg_ros.models.tdnet import TDNetModel
from vidseg_ros.models.twnet import TWNetModel
from vidseg_ros.runtime.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from vidseg_ros.training.config import TrainConfig
from vidseg_ros.training.data import Clip, ClipSampler, FrameSequence, collate
from vidseg_ros.training.evaluate import evaluate_checkpoint
from vidseg_ros.training.loop import FRESH_LR_MULT, make_optimizer
from vidseg_ros.training.objectives import build_stage_model

REPO = Path(__file__).resolve().parents[2]
#: Tiny but complete models: every layer exists, just narrow; one thread so timings do not depend on load.
TINY = [
    "--size",
    "96x64",
    "--width-mult",
    "0.25",
    "--decoder-channels",
    "16",
    "--threads",
    "1",
    "--no-progress",
]
RUN = ["--threads", "1", "--no-progress"]


def train(*args: str | Path) -> int:
    return main(["train", *map(str, args)])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[1]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "street"
    write_synth_bag(path, SynthConfig(seed=5, frames=20, width=96, height=64), progress=False)
    return path


@pytest.fixture(scope="module")
def perframe(bag, tmp_path_factory) -> Path:
    """Stage 1 trained for 60 steps: enough to learn the large classes of a 20-frame bag."""
    out = tmp_path_factory.mktemp("perframe") / "perframe.pt"
    assert (
        train(
            "--method",
            "perframe",
            "--bag",
            bag,
            "--out",
            out,
            "--steps",
            60,
            "--batch",
            4,
            "--lr",
            1e-2,
            *TINY,
        )
        == 0
    )
    return out


def test_training_beats_the_untrained_model(bag, perframe, tmp_path):
    cfg = TrainConfig(
        method="perframe", bags=[bag], out=tmp_path / "x", size=(96, 64), width_mult=0.25, decoder_channels=16
    )
    model, meta = build_stage_model(cfg)  # the same initial weights as the trained run (same seed)
    untrained = save_checkpoint(tmp_path / "untrained.pt", model, meta)
    before = evaluate_checkpoint(untrained, [bag], progress=False)
    after = evaluate_checkpoint(perframe, [bag], progress=False)
    assert after["miou"] > before["miou"] + 0.15, (before["miou"], after["miou"])
    recipe = read_checkpoint(perframe)[0].recipe
    assert recipe["method"] == "perframe" and recipe["steps"] == 60 and recipe["bags"] == [str(bag)]
    assert recipe["final_loss"] < 1.6
    assert {"seed", "lr", "batch", "size", "wall_time_s", "torch", "init"} <= recipe.keys()


def test_same_seed_gives_identical_weights(bag, tmp_path):
    args = ["--method", "perframe", "--bag", bag, "--steps", 4, "--batch", 2, *TINY]
    assert train(*args, "--out", tmp_path / "a.pt") == 0
    assert train(*args, "--out", tmp_path / "b.pt") == 0
    assert train(*args, "--out", tmp_path / "c.pt", "--seed", 1) == 0
    assert same_weights(weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt"))
    assert not same_weights(weights(tmp_path / "a.pt"), weights(tmp_path / "c.pt"))


def test_resume_matches_an_uninterrupted_run(bag, tmp_path):
    args = ["--method", "perframe", "--bag", bag, "--steps", 6, "--batch", 2, "--save-every", 2, *TINY]
    assert train(*args, "--out", tmp_path / "full.pt") == 0
    assert train(*args, "--out", tmp_path / "split.pt", "--stop-at", 3) == 0
    half = torch.load(tmp_path / "split.pt.state", weights_only=True)
    assert half["step"] == 3
    assert train(*args, "--out", tmp_path / "split.pt", "--resume") == 0
    full = torch.load(tmp_path / "full.pt.state", weights_only=True)
    split = torch.load(tmp_path / "split.pt.state", weights_only=True)
    assert full["step"] == split["step"] == 6
    assert same_weights(full["model"], split["model"])
    assert same_weights(weights(tmp_path / "full.pt"), weights(tmp_path / "split.pt"))
    # Resuming a finished run changes nothing; a resume with different options is refused.
    before = (tmp_path / "split.pt").read_bytes()
    assert train(*args, "--out", tmp_path / "split.pt", "--resume") == 0
    assert (tmp_path / "split.pt").read_bytes() == before
    assert train(*args, "--out", tmp_path / "split.pt", "--resume", "--lr", "0.5") == 2
    # A state written by an older version (optimiser groups without lr_mult) is refused, not half-loaded.
    old = {**half, "format": "vidseg-train-state/1"}
    torch.save(old, tmp_path / "old.pt.state")
    assert train(*args, "--out", tmp_path / "old.pt", "--resume") == 2
    # A truncated state (a crash while copying it) fails with the usage code, not a traceback.
    (tmp_path / "cut.pt.state").write_bytes((tmp_path / "full.pt.state").read_bytes()[:4000])
    assert train(*args, "--out", tmp_path / "cut.pt", "--resume") == 2


def test_netwarp_fine_tunes_from_perframe(bag, perframe, tmp_path):
    out = tmp_path / "netwarp.pt"
    assert (
        train(
            "--method",
            "netwarp",
            "--init",
            perframe,
            "--bag",
            bag,
            "--out",
            out,
            "--steps",
            3,
            "--batch",
            2,
            "--max-distance",
            2,
            *RUN,
        )
        == 0
    )
    model, meta = load_checkpoint(out)
    assert isinstance(model, NetWarpModel) and meta.method == "netwarp"
    assert meta.input_size == [96, 64] and meta.recipe["init"] == str(perframe)
    init = weights(perframe)
    trained = weights(out)
    assert not torch.equal(trained["netwarp.c5.w2"], torch.zeros_like(trained["netwarp.c5.w2"]))
    assert any(not torch.equal(init[k], trained[f"image_model.{k}"]) for k in init)  # the whole model trains
    assert meta.recipe["fresh_lr_mult"] == {"modules": ["netwarp"], "mult": FRESH_LR_MULT}
    # The schedule scales every group by its multiplier: the fresh groups ran at FRESH_LR_MULT x the rest.
    groups = torch.load(f"{out}.state", weights_only=True)["optimizer"]["param_groups"]
    rates = {g["lr_mult"]: g["lr"] for g in groups}
    assert rates[FRESH_LR_MULT] == pytest.approx(FRESH_LR_MULT * rates[1.0]) and rates[1.0] > 0


def test_twnet_stage2_keeps_the_key_cnn_frozen(bag, perframe, tmp_path):
    out = tmp_path / "twnet.pt"
    assert (
        train(
            "--method",
            "twnet",
            "--init",
            perframe,
            "--bag",
            bag,
            "--out",
            out,
            "--steps",
            4,
            "--batch",
            2,
            "--key-interval",
            4,
            *RUN,
        )
        == 0
    )
    model, meta = load_checkpoint(out)
    assert isinstance(model, TWNetModel) and meta.method == "twnet"
    assert model.key_interval == 4 and model.correction
    assert meta.recipe["lambda"] == 10.0 and meta.recipe["clip_distance"] == [1, 3]
    assert set(meta.recipe["trainable"]) == {"nkfc", "cfr", "rga"}
    init, trained = weights(perframe), weights(out)
    for k, v in init.items():  # weights and BN statistics of the key-frame CNN are untouched
        assert torch.equal(trained[f"key_cnn.{k}"], v), k
    assert model.cfr_kind == meta.recipe["cfr"] == "bottleneck"
    assert trained["cfr.expand.weight"].abs().sum() > 0  # CFR left its zero initialisation

    warp_only = tmp_path / "warp_only.pt"
    assert (
        train(
            "--method",
            "twnet",
            "--init",
            perframe,
            "--bag",
            bag,
            "--out",
            warp_only,
            "--steps",
            2,
            "--batch",
            2,
            "--key-interval",
            4,
            "--no-correction",
            *RUN,
        )
        == 0
    )
    model, meta = load_checkpoint(warp_only)
    assert not model.correction and model.cfr is None
    assert set(meta.recipe["trainable"]) == {"nkfc"}


def test_grfp_trains_the_unit_over_a_frozen_static_network(bag, perframe, tmp_path):
    """Clips of 4-5 frames; only the STGRU moves, and its masks are steadier (TC) than the static network's
    on the training bag."""
    out = tmp_path / "grfp.pt"
    args = ["--method", "grfp", "--init", perframe, "--bag", bag, "--out", out, "--steps", 40, "--batch", 2]
    assert train(*args, "--lr", 3e-3, *RUN) == 0
    model, meta = load_checkpoint(out)
    assert isinstance(model, GRFPModel) and meta.method == "grfp"
    assert meta.recipe["clip_distance"] == [3, 4] and set(meta.recipe["trainable"]) == {"stgru"}
    init, trained = weights(perframe), weights(out)
    for k, v in init.items():
        assert torch.equal(trained[f"image_model.{k}"], v), k
    grfp = evaluate_checkpoint(out, [bag], progress=False)
    static = evaluate_checkpoint(perframe, [bag], progress=False)
    assert grfp["tc"] > static["tc"], (grfp["tc"], static["tc"])
    assert train("--method", "grfp", "--bag", bag, "--out", tmp_path / "x.pt", *RUN) == 2


def test_tdnet_trains_every_sub_network_from_perframe_with_a_teacher(bag, perframe, tmp_path):
    """Every path starts as the per-frame model and moves; the recipe names the teacher; the clips reach 6
    frames back (3 gaps of up to 2); the checkpoint runs online."""
    out = tmp_path / "tdnet.pt"
    args = ["--method", "tdnet", "--init", perframe, "--teacher", perframe, "--bag", bag, "--out", out]
    assert train(*args, "--steps", 12, "--batch", 2, *RUN) == 0
    model, meta = load_checkpoint(out)
    assert isinstance(model, TDNetModel) and meta.method == "tdnet" and model.phases == 4
    recipe = meta.recipe
    assert recipe["clip_distance"] == [6, 6] and recipe["teacher"] == str(perframe) and recipe["paths"] == 4
    assert set(recipe["trainable"]) == {"paths", "encodings", "norms", "propagation"}
    assert recipe["final_kd"] > 0
    init, trained = weights(perframe), weights(out)
    for p in range(4):
        assert any(not torch.equal(trained[f"paths.{p}.{k}"], v) for k, v in init.items()), p
    result = evaluate_checkpoint(out, [bag], progress=False)
    assert result["method"] == "tdnet" and 0 < result["miou"] <= 1


def test_bad_tdnet_requests_fail_in_one_line(bag, perframe, tmp_path, capsys):
    base = ["--bag", bag, "--out", tmp_path / "x.pt", *RUN]
    cases = [
        (["--method", "tdnet", "--teacher", perframe], "tdnet needs --init"),
        (["--method", "twnet", "--init", perframe, "--teacher", perframe], "--teacher is for --method tdnet"),
        (["--method", "tdnet", "--init", perframe, "--paths", 5], "paths must be 2, 3 or 4"),
        (["--method", "tdnet", "--init", perframe, "--max-distance", 3], "--max-distance does not apply"),
        (["--method", "tdnet", "--init", perframe, "--teacher", tmp_path / "no.pt"], "not found"),
        (
            ["--method", "tdnet", "--init", perframe, "--paths", 3, "--teacher", perframe],
            "not 3 equal groups",
        ),
    ]
    for args, message in cases:
        assert train(*args, *base) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.pt").exists()


def test_bad_requests_fail_cleanly(bag, perframe, tmp_path, capsys):
    assert train("--method", "twnet", "--bag", bag, "--out", tmp_path / "x.pt", *RUN) == 2
    assert "--init" in capsys.readouterr().err
    assert train("--method", "twnet", "--init", bag, "--bag", bag, "--out", tmp_path / "x.pt", *RUN) == 2
    assert (
        train(
            "--method",
            "twnet",
            "--init",
            perframe,
            "--bag",
            bag,
            "--out",
            tmp_path / "x.pt",
            "--key-interval",
            4,
            "--max-distance",
            5,
            *RUN,
        )
        == 2
    )
    assert not (tmp_path / "x.pt").exists()


def test_clips_are_sharded_over_ranks_and_mirrored_consistently():
    lengths = [5, 9, 1]
    whole = ClipSampler(lengths, batch=8, seed=3, max_distance=3, min_distance=1)
    parts = [
        ClipSampler(lengths, batch=8, seed=3, max_distance=3, min_distance=1, rank=r, world_size=2)
        for r in (0, 1)
    ]
    for step in range(5):
        distance, clips = whole.sample(step)
        sharded = [p.sample(step) for p in parts]
        assert all(d == distance for d, _ in sharded)
        assert clips == sharded[0][1] + sharded[1][1]
        assert all(c.start + distance < lengths[c.seq] for c in clips)

    g = torch.Generator().manual_seed(0)
    seq = FrameSequence(
        "s",
        torch.randn(3, 3, 4, 6, generator=g),
        torch.zeros(3, 4, 6, dtype=torch.uint8),
        torch.randn(3, 2, 2, 3, generator=g),
    )
    plain = collate([seq], [Clip(0, 0, False)], 2)
    mirrored = collate([seq], [Clip(0, 0, True)], 2)
    assert plain.images.shape == (3, 1, 3, 4, 6) and plain.flows.shape == (3, 1, 2, 2, 3)
    assert torch.equal(mirrored.images, plain.images.flip(-1))
    assert torch.equal(mirrored.flows[:, :, 0], -plain.flows[:, :, 0].flip(-1))
    assert torch.equal(mirrored.flows[:, :, 1], plain.flows[:, :, 1].flip(-1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("data", [[], ["--augment", "full", "--workers", "1"]], ids=["in-memory", "streamed"])
def test_torchrun_two_cpu_processes(bag, tmp_path, data):
    out = tmp_path / "ddp.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        "-m", "vidseg_ros.cli", "train", "--method", "perframe", "--bag", str(bag), "--out", str(out),
        "--steps", "3", "--batch", "4", "--device", "cpu", *TINY, *data,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ranks in sync" in proc.stdout + proc.stderr
    model, meta = load_checkpoint(out)
    assert meta.recipe["world_size"] == 2
    assert meta.recipe["ddp"]["param_checksum_spread"] == 0.0
    assert np.isfinite(meta.recipe["final_loss"])


@pytest.mark.parametrize(
    "model", [NetWarpModel(num_classes=3, width_mult=0.25), TWNetModel(num_classes=3, width_mult=0.25)]
)
def test_fresh_video_modules_train_at_a_higher_rate(model):
    """NetWarp's FlowCNN/fusion and TWNet's CFR/RGA start from scratch; the image-model weights do not."""
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=1e-4)
    mult = {id(p): g["lr_mult"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert set(mult) == {id(p) for p in params.values()}
    fresh = {n for n in params if n.split(".")[0] in model.fresh_modules}
    assert fresh and len(fresh) < len(params)
    for name, p in params.items():
        assert mult[id(p)] == (FRESH_LR_MULT if name in fresh else 1.0), name
        assert decay[id(p)] == (1e-4 if p.ndim > 1 else 0.0), name
