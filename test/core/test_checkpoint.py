import pytest
import torch

from vidseg_ros.runtime.checkpoint import (
    CheckpointError,
    load_checkpoint,
    packaged_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
)


@pytest.mark.parametrize("method", ["perframe", "netwarp", "twnet"])
def test_round_trip_keeps_weights_and_metadata(tiny_checkpoint, method):
    path = tiny_checkpoint(method)
    meta, state = read_checkpoint(path)
    model, meta2 = load_checkpoint(path)
    assert meta2 == meta and meta.method == method
    assert model.method == method and not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v.float() if v.is_floating_point() else v), k
    x = torch.randn(1, 3, 64, 96)
    assert model.key_step(x)[0].shape == (1, len(meta.classes), 64, 96)


def test_floats_are_stored_as_fp16(tiny_checkpoint):
    _, state = read_checkpoint(tiny_checkpoint("perframe"))
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}


def test_missing_and_corrupt_and_foreign_files_raise(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a vidseg-checkpoint"):
        load_checkpoint(foreign)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "vidseg-checkpoint/1", "meta": Evil(), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="corrupt") as refused:
        load_checkpoint(path)
    # One line, and not torch's advice to retry with weights_only=False, which would run the file's code.
    assert "refused rather than unpickled" in str(refused.value)
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)


def test_unknown_method_and_mismatched_weights(tiny_checkpoint, tmp_path):
    payload = torch.load(tiny_checkpoint("perframe"), weights_only=True)
    payload["meta"]["method"] = "no_such_method"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="cannot build model 'no_such_method'"):
        load_checkpoint(tmp_path / "unknown.pt")
    payload["meta"]["method"] = "perframe"
    payload["state_dict"].popitem()
    torch.save(payload, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "short.pt")


def test_twnet_checkpoints_from_before_the_cfr_option_load_as_separable(tiny_checkpoint, tmp_path):
    payload = torch.load(tiny_checkpoint("twnet", cfr="separable"), weights_only=True)
    assert payload["meta"]["arch"].pop("cfr") == "separable"
    torch.save(payload, tmp_path / "old_twnet.pt")
    model, _ = load_checkpoint(tmp_path / "old_twnet.pt")
    assert model.cfr_kind == "separable"
    assert load_checkpoint(tiny_checkpoint("twnet"))[0].cfr_kind == "bottleneck"  # what new models are


def test_empty_path_means_the_shipped_default():
    assert resolve_checkpoint("") == packaged_checkpoint()
    assert resolve_checkpoint(None).name.startswith("netwarp_")
