import pytest
import yaml

from vidseg_ros.config import PARAMS, SPECS, NodeConfig
from vidseg_ros.runtime.segmenter import cpu_threads


def test_defaults_pass_their_own_checks():
    for spec in PARAMS:
        assert spec.check(spec.default) is None, spec.name


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("model.device", "tpu", "one of auto|cpu|cuda"),
        ("qos.depth", 0, ">= 1"),
        ("publish.overlay_alpha", 1.5, "<= 1"),
        ("realtime", "yes", "must be bool"),
        ("temporal.max_gap_s", "1", "must be float"),
        ("nonexistent.param", 1, "unknown parameter"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(name, value, match):
    with pytest.raises(ValueError, match=match):
        NodeConfig.defaults().updated({name: value})


def test_int_is_accepted_for_float_params():
    assert NodeConfig.defaults().updated({"temporal.max_gap_s": 2})["temporal.max_gap_s"] == 2


def test_config_file_lists_every_parameter_with_a_valid_value():
    with open("config/seg.yaml") as f:
        params = yaml.safe_load(f)["/**"]["ros__parameters"]
    assert set(params) == set(SPECS)
    NodeConfig.defaults().updated(params)


def test_readme_documents_every_parameter():
    with open("README.md") as f:
        readme = f.read()
    missing = [p.name for p in PARAMS if f"`{p.name}`" not in readme]
    assert not missing


def test_model_threads_default_leaves_half_the_cores_to_the_rest():
    assert NodeConfig.defaults()["model.threads"] == 0
    assert [cpu_threads(0, cores) for cores in (1, 2, 3, 8)] == [1, 1, 1, 4]
    assert cpu_threads(3, 8) == 3 and cpu_threads(0) >= 1
    assert "model.threads must be >= 0" in str(SPECS["model.threads"].check(-1))
