"""The training loop shared by all stages: data, optimiser, schedule, resumable state and the checkpoint.

Reproducibility: model initialisation is seeded by ``seed`` and the clips of step ``s`` by ``(seed, s)``, and
the state file holds model, optimiser and step, so ``N`` steps in one go and ``N/2`` + ``--resume`` ``N/2`` give
the same weights (bit-identical on the CPU; CUDA's grid_sample backward uses atomics and is not).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vidseg_ros.classes import SYNTH_TABLE, ClassTable, load_classes_yaml
from vidseg_ros.data.datasets import VideoDataset, open_dataset
from vidseg_ros.data.datasets.bag import BagDataset
from vidseg_ros.errors import load_problem, load_tensors
from vidseg_ros.models.twnet import TWNetModel
from vidseg_ros.runtime.checkpoint import atomic_torch_save, read_checkpoint, save_checkpoint
from vidseg_ros.runtime.foreign import load_card
from vidseg_ros.runtime.segmenter import Segmenter
from vidseg_ros.training import distributed
from vidseg_ros.training.clips import AUGMENTS, StreamingClips
from vidseg_ros.training.config import TrainConfig
from vidseg_ros.training.data import InMemoryClips, attach_key_features, key_feature_bytes
from vidseg_ros.training.distill import load_teacher
from vidseg_ros.training.losses import class_weights
from vidseg_ros.training.objectives import StageObjective, build_stage_model, trainable_summary

#: Version 2: optimiser groups carry ``lr_mult`` (fresh modules), which version-1 states lack.
STATE_FORMAT = "vidseg-train-state/2"
#: TWNet stage 2 caches the frozen key CNN's features of all frames when they fit in this much memory.
KEY_FEATURE_CACHE_BYTES = 2 * 2**30


class ResumeError(RuntimeError):
    """A ``.state`` file that does not belong to the run being resumed."""


def learning_rate(step: int, steps: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps (at most 100), then poly(0.9) decay towards 0."""
    warmup = min(100, steps // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (1.0 - (step - warmup) / max(1, steps - warmup)) ** 0.9


#: Learning-rate multiplier of a model's ``fresh_modules`` (NetWarp's FlowCNN and fusion weights, TWNet's CFR
#: and RGA). At the base rate AdamW moves a parameter by at most ~lr per step, so NetWarp's w2 (initialised
#: to 0) stayed near 0.01 after 300 steps at 2e-4 and the video model was still the image model.
FRESH_LR_MULT = 10.0


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters.

    No decay on biases, norms and NetWarp's fusion weights (1-D). Parameters of the model's ``fresh_modules``
    get ``lr_mult = FRESH_LR_MULT``; the schedule sets each group's lr to ``lr_mult`` times the base rate.
    """
    fresh = tuple(f"{name}." for name in getattr(model, "fresh_modules", ()))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith(fresh), p.ndim > 1), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": weight_decay if decay else 0.0,
                "lr_mult": FRESH_LR_MULT if is_fresh else 1.0,
            }
            for (is_fresh, decay), params in sorted(groups.items())
        ],
        lr=lr,
    )


def save_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig, wall_s: float
) -> None:
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "wall_s": wall_s,
        "identity": cfg.identity(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    atomic_torch_save(state, path)


def load_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> tuple[int, float]:
    """Restores model and optimiser; returns ``(step, wall seconds so far)``."""
    try:
        state = load_tensors(path)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file; all mean the same
        raise ResumeError(f"cannot resume {path}: the file is corrupt ({load_problem(e)})") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a {STATE_FORMAT} training state (an older version cannot resume)")
    mine, theirs = cfg.identity(), state["identity"]
    changed = sorted(k for k in mine if mine[k] != theirs.get(k))
    if changed:
        details = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine[k]!r}" for k in changed)
        raise ResumeError(f"cannot resume {path}: the run's options changed ({details})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), float(state["wall_s"])


def train(cfg: TrainConfig) -> Path | None:
    """Runs a training job (one process, or one rank under torchrun); returns the checkpoint path on rank 0."""
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = distributed.setup(cfg.device)
    try:
        return _train(cfg, env)
    finally:
        distributed.teardown(env)
        torch.set_num_threads(threads)  # callers in the same process (tests, notebooks) keep their setting


def _log(env: distributed.DistEnv, message: str) -> None:
    if env.is_main:
        tqdm.write(message)


def open_training_data(cfg: TrainConfig) -> VideoDataset:
    """The dataset ``cfg`` names: a format under ``data_root``, or bags with their topics and classes.

    Bags' labels hold train ids of ``--classes``, else of the init checkpoint (or the ``--base`` model's card),
    else the synthetic classes.
    """
    if cfg.dataset is not None:
        return open_dataset(cfg.dataset, cfg.data_root, cfg.split)
    if cfg.classes is not None:
        classes = load_classes_yaml(cfg.classes)
    elif cfg.base is not None:
        card = load_card(cfg.base)
        classes = ClassTable.simple(list(card.classes), [list(c) for c in card.colors])
    elif cfg.init is not None:
        meta, _ = read_checkpoint(cfg.init)
        classes = ClassTable.simple(meta.classes, meta.palette)
    else:
        classes = SYNTH_TABLE
    return BagDataset(cfg.bags, classes, image_topic=cfg.image_topic, label_topic=cfg.label_topic)


def _train(cfg: TrainConfig, env: distributed.DistEnv) -> Path | None:
    t_prep = time.perf_counter()
    dataset = open_training_data(cfg)  # raises DatasetError or LabelError (both ValueError, one line)
    model, meta = build_stage_model(cfg, dataset.classes)
    # Before the clips are prepared (seconds to minutes), so that an unfit teacher fails at once.
    teacher = None
    if cfg.teacher is not None:
        teacher = load_teacher(cfg.teacher, list(meta.classes), cfg.paths).to(env.device)
    size = (meta.input_size[0], meta.input_size[1])
    lo, hi = cfg.distances
    show = cfg.progress and env.is_main
    source: InMemoryClips | StreamingClips
    if dataset.video and not cfg.in_memory:
        raise ValueError("video bags (codec motion) train in memory only: drop --augment full")
    if cfg.in_memory:
        # The node's preprocessing, on the CPU, once: frames and flows are then reused for every step.
        prep = Segmenter(model, meta, device="cpu", input_size=size, flow_downscale=cfg.flow_downscale)
        source = InMemoryClips(dataset, prep, with_flow=model.uses_motion, distances=(lo, hi),
                               batch=cfg.batch, seed=cfg.seed, flip=cfg.augmentation == "flip" and cfg.flip,
                               rank=env.rank, world_size=env.world_size, progress=show)  # fmt: skip
    else:
        augment = AUGMENTS[cfg.augmentation]
        augment = replace(augment, flip=augment.flip and cfg.flip)
        source = StreamingClips(dataset, size=size, mean=meta.mean, std=meta.std, augment=augment,
                                flow_downscale=cfg.flow_downscale if model.uses_motion else None,
                                distances=(lo, hi), batch=cfg.batch, seed=cfg.seed, workers=cfg.workers,
                                rank=env.rank, world_size=env.world_size,
                                pin_memory=env.device.type == "cuda")  # fmt: skip
        if missing := dataset.missing_before(hi):
            name, label, frame = missing[0]
            _log(env, f"{len(missing)} of {dataset.labelled_count()} labelled frames lack some of the {hi} frames "
                 f"before them and are left out (first: {name}, label {label}, no frame {frame})")  # fmt: skip
    model.to(env.device).train()
    if isinstance(model, TWNetModel) and isinstance(source, InMemoryClips):
        needed = key_feature_bytes(source.sequences, model)
        if needed <= KEY_FEATURE_CACHE_BYTES:
            attach_key_features(source.sequences, model, env.device)
        else:
            _log(env, f"not caching key-CNN features ({needed / 2**30:.1f} GiB); computing them every step")
    weight = None
    if cfg.class_weights == "enet":
        weight = class_weights(source.labels().reshape(-1), len(meta.classes))
        _log(
            env,
            "class weights: "
            + ", ".join(f"{n} {w:.2f}" for n, w in zip(meta.classes, weight.tolist(), strict=True)),
        )
    objective = StageObjective(model, cfg.lam, None if weight is None else weight.to(env.device), teacher)
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    start, wall_before = 0, 0.0
    if cfg.resume:
        if cfg.state_path.exists():
            start, wall_before = load_state(cfg.state_path, model, optimizer, cfg)
            _log(env, f"resuming {cfg.state_path} at step {start}/{cfg.steps}")
        else:
            _log(env, f"no {cfg.state_path} to resume from; starting at step 0")
    net = distributed.wrap(objective, env)
    amp = env.device.type == "cuda" if cfg.amp is None else cfg.amp
    if amp and env.device.type != "cuda":
        raise ValueError("--amp needs a CUDA device (mixed precision on the CPU is not faster)")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    what = "bags in memory" if cfg.in_memory else f"{len(source)} labelled clips, augment {cfg.augmentation}"
    _log(env, f"{cfg.method}: {dataset.describe()}, {len(meta.classes)} classes; {what}; {source.frames()} frames "
         f"at {size[0]}x{size[1]}, clips of {lo + 1}..{hi + 1} frames, batch {cfg.batch} over {env.world_size} "
         f"process(es) on {env.device}{' with fp16 autocast' if amp else ''}; training {trainable_summary(model)}")  # fmt: skip

    prep_s = time.perf_counter() - t_prep
    stop = cfg.steps if cfg.stop_at is None else max(start, min(cfg.steps, cfg.stop_at))
    if stop == start and cfg.out.exists():
        _log(env, f"{cfg.state_path} is already at step {start}; {cfg.out} left as it is")
        return cfg.out if env.is_main else None
    t0 = time.perf_counter()
    recent: list[tuple[float, float, float]] = []
    bar = tqdm(
        range(start, stop),
        initial=start,
        total=cfg.steps,
        desc=f"train {cfg.method}",
        unit="step",
        disable=not (cfg.progress and env.is_main),
    )
    for step, (distance, batch) in zip(bar, source.batches(start, stop), strict=True):
        batch = batch.to(env.device)
        lr = learning_rate(step, cfg.steps, cfg.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        with torch.autocast(env.device.type, dtype=torch.float16, enabled=amp):
            out = net(batch.images, batch.labels, batch.flows, batch.targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        loss = float(out["loss"].detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower --lr")
        recent = [*recent[-49:], (loss, float(out["ce"]), float(out["aux"]))]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", d=distance, refresh=False)
        done = step + 1
        if done % cfg.save_every == 0 and done < stop and env.is_main:
            save_state(cfg.state_path, model, optimizer, done, cfg, wall_before + time.perf_counter() - t0)
    bar.close()
    trained_steps = stop - start
    wall = wall_before + time.perf_counter() - t0
    if env.is_main:
        save_state(cfg.state_path, model, optimizer, stop, cfg, wall)

    means = [sum(v[i] for v in recent) / len(recent) if recent else float("nan") for i in range(3)]
    means = [distributed.mean_over_ranks(v, env) for v in means]
    spread = distributed.parameter_spread(model, env)
    if env.distributed:
        _log(
            env,
            f"ranks in sync: largest parameter checksum difference between {env.world_size} ranks = {spread:g}",
        )
    path = None
    if env.is_main:
        meta.recipe = _recipe(cfg, model, env, meta.input_size, wall, means, spread)
        meta.recipe["data"] = {
            "format": dataset.format,
            "source": dataset.describe(),
            "split": None if cfg.dataset is None else cfg.split,
            "augment": cfg.augmentation,
            "synthetic": bool(getattr(dataset, "synthetic", False)),
        }
        meta.recipe["amp"] = amp
        meta.recipe.update({"steps_done": stop, "prep_time_s": round(prep_s, 2)})
        path = save_checkpoint(cfg.out, model, meta)
        rate = trained_steps / (time.perf_counter() - t0) if trained_steps else float("nan")
        _log(env, f"wrote {path} ({trained_steps} steps this run, {rate:.2f} steps/s, loss {means[0]:.4f})")
    distributed.barrier(env)
    return path


def _recipe(
    cfg: TrainConfig,
    model: nn.Module,
    env: distributed.DistEnv,
    size: list[int],
    wall: float,
    means: list[float],
    spread: float,
) -> dict[str, Any]:
    lo, hi = cfg.distances
    recipe: dict[str, Any] = {
        "method": cfg.method,
        "init": str(cfg.init) if cfg.init else None,
        "pretrained_backbone": str(cfg.pretrained_backbone) if cfg.pretrained_backbone else None,
        "bags": [str(b) for b in cfg.bags],
        "steps": cfg.steps,
        "batch": cfg.batch,
        "lr": cfg.learning_rate,
        "schedule": "AdamW, linear warm-up 5% (<= 100 steps), poly 0.9",
        "weight_decay": cfg.weight_decay,
        "fresh_lr_mult": {"modules": list(model.fresh_modules), "mult": FRESH_LR_MULT},
        "seed": cfg.seed,
        "size": list(size),
        "flip": cfg.flip,
        "class_weights": cfg.class_weights,
        "flow": f"DIS ultrafast at input size / {cfg.flow_downscale}",
        "clip_distance": [lo, hi],
        "trainable": trainable_summary(model),
        "final_loss": means[0],
        "final_ce": means[1],
        "wall_time_s": round(wall, 2),
        "torch": str(torch.__version__),  # TorchVersion would not load with weights_only
        "device": str(env.device),
        "world_size": env.world_size,
    }
    if cfg.method == "twnet":
        recipe.update({"lambda": cfg.lam, "final_l2": means[2], "key_interval": cfg.key_interval})
        recipe.update({"warp_layer": cfg.warp_layer, "correction": cfg.correction, "cfr": cfg.cfr})
    if cfg.method == "netwarp":
        recipe["netwarp_layers"] = list(cfg.netwarp_layers)
    if cfg.method == "grfp":
        recipe["finetune_static"] = cfg.finetune_static
    if cfg.method == "tdnet":
        recipe.update({"paths": cfg.paths, "teacher": str(cfg.teacher) if cfg.teacher else None})
        recipe["final_kd"] = means[2]
    if cfg.base is not None:
        recipe["base"] = {
            "path": getattr(model, "base", str(cfg.base)),
            "sha256": getattr(model, "base_sha256", None),
        }
    if env.distributed:
        recipe["ddp"] = {"world_size": env.world_size, "param_checksum_spread": spread}
    return recipe
