"""Fixtures of the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_models import tiny_model

from vidseg_ros.runtime.checkpoint import save_checkpoint, synth_meta


@pytest.fixture(scope="session")
def nudged_checkpoint(tmp_path_factory):
    """Factory: path of a saved :func:`tiny_model` checkpoint of ``method`` at 96x64 (cached per method)."""
    cache: dict[str, Path] = {}

    def make(method: str) -> Path:
        if method not in cache:
            model = tiny_model(method)
            meta = synth_meta(model, (96, 64), {"note": "untrained, nudged test model"})
            path = tmp_path_factory.mktemp("ckpt") / f"{method}.pt"
            cache[method] = save_checkpoint(path, model, meta, half=False)
        return cache[method]

    return make


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP threads
    make each call up to 100x slower; restored afterwards so other test folders keep the default."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
