import ast
import importlib.util
from pathlib import Path

import pytest

from vidseg_ros.config import SPECS

LAUNCH = Path(__file__).resolve().parents[2] / "launch" / "seg.launch.py"


def test_launch_file_compiles_and_maps_to_real_parameters():
    tree = ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))
    compile(tree, str(LAUNCH), "exec")
    overrides = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and node.targets[0].id == "OVERRIDES"
    )
    params = ast.literal_eval(overrides)
    assert {"checkpoint", "device"} <= set(params)
    assert all(p in SPECS for p in params.values())


def test_launch_file_loads_with_launch_ros():
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installed (it is not on PyPI); covered by the compile test")
    spec = importlib.util.spec_from_file_location("seg_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.get_launch_arguments()}
    assert {"image", "config", "checkpoint", "device"} <= names
