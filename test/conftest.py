"""Fixtures shared by the whole suite."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

# Every test run gets its own DDS domain and stays on loopback, so parallel runs (and other ROS graphs on the
# machine) never see each other's topics.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
# Engines and onnxruntime sessions that tests (and the nodes they start, which inherit this) build go to a
# cache of this run, never into the user's ~/.cache, whose entries could also change what a test sees.
_ENGINE_CACHE = tempfile.mkdtemp(prefix="vidseg-test-engines-")
os.environ["VIDSEG_ENGINE_CACHE"] = _ENGINE_CACHE
atexit.register(shutil.rmtree, _ENGINE_CACHE, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: a small, untrained but real checkpoint of ``method`` (cached per method for the session)."""
    import torch

    from vidseg_ros.classes import SYNTH_CLASSES
    from vidseg_ros.models.registry import build_model
    from vidseg_ros.runtime.checkpoint import save_checkpoint, synth_meta

    cache: dict[str, Path] = {}

    def make(method: str = "perframe", **options) -> Path:
        key = f"{method}-{sorted(options.items())}"
        if key not in cache:
            torch.manual_seed(0)
            model = build_model(
                method, backbone="mobilenetv2", width_mult=0.25, num_classes=len(SYNTH_CLASSES), **options
            )
            meta = synth_meta(model, (96, 64), {"note": "untrained test model"})
            cache[key] = save_checkpoint(tmp_path_factory.mktemp("ckpt") / f"{method}.pt", model, meta)
        return cache[key]

    return make
