"""Segmentation models: per-frame image model, NetWarp and TWNet behind one step contract.

Build them by name with :func:`build_model`; :func:`arch_config` gives the kwargs that rebuild a model.
"""

from vidseg_ros.models.base import State, VideoSegModel
from vidseg_ros.models.registry import arch_config, available_models, build_model, register_model

__all__ = ["State", "VideoSegModel", "arch_config", "available_models", "build_model", "register_model"]
