"""TDNet: the attention, the round-robin paths, the cold start, the state, and its training loss."""

from __future__ import annotations

import math

import pytest
import torch

from vidseg_ros.models.fpn import upsample_logits
from vidseg_ros.models.perframe import PerFrameModel
from vidseg_ros.models.registry import build_model
from vidseg_ros.models.tdnet import DECIMATION, MAX_KEYS, TDNetModel, attend, decimate, decimation
from vidseg_ros.training.distill import distillation, tdnet_loss, teacher_outputs

SUB = {"backbone": "mobilenetv2_shallow", "width_mult": 0.25, "decoder_channels": 16}
HW = (64, 96)


def _model(paths: int = 4, seed: int = 0) -> TDNetModel:
    torch.manual_seed(seed)
    model = build_model("tdnet", num_classes=5, paths=paths, key_channels=8, **SUB)
    with torch.no_grad():  # the output projections start small: make every term of the chain count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert isinstance(model, TDNetModel)
    return model.eval()


def _frames(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *HW, generator=g) for _ in range(n)]


def test_attention_matches_a_direct_weighted_mean() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 4, 3, 5, generator=g),
        torch.randn(2, 4, 2, 3, generator=g),
        torch.randn(2, 6, 2, 3, generator=g),
    )
    got = attend(q, k, v)
    want = torch.zeros(2, 6, 3, 5)
    for b in range(2):
        for y in range(3):
            for x in range(5):
                scores = [
                    float((q[b, :, y, x] * k[b, :, i, j]).sum()) / math.sqrt(4)
                    for i in range(2)
                    for j in range(3)
                ]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                values = [v[b, :, i, j] for i in range(2) for j in range(3)]
                want[b, :, y, x] = sum(w / total * val for w, val in zip(weights, values, strict=True))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_propagation_is_the_papers_chain_for_four_paths() -> None:
    model = _model()
    prop = model.propagation
    g = torch.Generator().manual_seed(1)
    qs = [torch.randn(1, 8, 2, 3, generator=g) for _ in range(3)]
    ks = [torch.randn(1, 8, 2, 3, generator=g) for _ in range(3)]
    vs = [torch.randn(1, 16, 2, 3, generator=g) for _ in range(3)]
    q_t = torch.randn(1, 8, 8, 12, generator=g)
    a = prop.proj[0](attend(qs[1], ks[0], vs[0]))
    b = prop.proj[1](attend(qs[2], ks[1], a + vs[1]))
    c = prop.proj[2](attend(q_t, ks[2], b + vs[2]))
    torch.testing.assert_close(prop(qs, ks, vs, q_t), c)


def test_paths_take_turns_and_the_cold_start_is_the_path_alone() -> None:
    model = _model()
    ran: list[int] = []
    real = model.subnetwork
    model.subnetwork = lambda path, image: (ran.append(path), real(path, image))[1]  # type: ignore[method-assign]
    frames = _frames(7)
    with torch.no_grad():
        logits, state = model.key_step(frames[0])
        outputs = [logits]
        for frame in frames[1:]:
            logits, state = model.nonkey_step(frame, None, None, state)
            outputs.append(logits)
        assert ran == [0, 1, 2, 3, 0, 1, 2]
        assert float(state["count"]) == 3 and float(state["phase"]) == 3
        for t, frame in enumerate(frames):
            path = t % 4
            group, c2 = real(path, frame)
            _, _, v = model.encodings[path](group)
            alone = torch.nn.functional.interpolate(model.head(path, v, c2), size=HW, mode="bilinear")
            if t < 3:  # fewer than N - 1 = 3 frames cached: the cold start
                torch.testing.assert_close(outputs[t], alone, rtol=1e-4, atol=1e-5)
            else:  # the cache is full: the earlier frames change the output
                assert (outputs[t] - alone).abs().max() > 1e-3, t


def test_cache_keeps_the_last_frames_decimated_oldest_first() -> None:
    model = _model()
    frames = _frames(5)
    with torch.no_grad():
        _, state = model.key_step(frames[0])
        for frame in frames[1:]:
            _, state = model.nonkey_step(frame, None, None, state)
        # Frames 2, 3, 4 (paths 2, 3, 0) are cached, oldest first.
        for slot, t in enumerate((2, 3, 4)):
            q, k, v = model.encodings[t % 4](model.subnetwork(t % 4, frames[t])[0])
            torch.testing.assert_close(state["query"][:, slot * 8 : (slot + 1) * 8], decimate(q))
            torch.testing.assert_close(state["key"][:, slot * 8 : (slot + 1) * 8], decimate(k))
            torch.testing.assert_close(state["value"][:, slot * 16 : (slot + 1) * 16], decimate(v))


@pytest.mark.parametrize("hw", [(64, 96), (48, 136)])
def test_state_contract_at_any_size(hw: tuple[int, int]) -> None:
    model = _model(paths=2)
    image = torch.randn(1, 3, *hw)
    with torch.no_grad():
        logits, key_state = model.key_step(image)
        logits2, state = model.nonkey_step(image, None, None, key_state)
    assert logits.shape == logits2.shape == (1, 5, *hw)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in key_state.items()}
    h8, w8 = -(-hw[0] // 8), -(-hw[1] // 8)
    assert state["value"].shape == (1, 16, -(-h8 // DECIMATION), -(-w8 // DECIMATION))
    assert float(state["phase"]) == 0 and float(state["count"]) == 1  # two paths: one frame cached at most


def test_cached_keys_are_bounded_on_large_inputs() -> None:
    """Every 4th row and column at the shipped size; on larger inputs the least decimation that keeps at
    most MAX_KEYS per frame, so the attention's cost grows with the queries only."""

    def kept(h: int, w: int, d: int) -> int:
        return -(-h // d) * -(-w // d)

    assert decimation(30, 40) == DECIMATION == 4  # 320x240
    for h, w in ((60, 80), (64, 128), (135, 240)):
        d = decimation(h, w)
        assert kept(h, w, d) <= MAX_KEYS < kept(h, w, d - 1), (h, w, d)
    model = _model(paths=2)
    with torch.no_grad():
        _, state = model.key_step(torch.randn(1, 3, 480, 640))
    assert state["key"].shape[-2:] == (8, 10)  # 60x80 features, every 8th


def test_bad_options_and_states_are_rejected() -> None:
    with pytest.raises(ValueError, match="paths must be 2, 3 or 4"):
        build_model("tdnet", num_classes=3, paths=5, **SUB)
    with pytest.raises(ValueError, match="key_channels"):
        build_model("tdnet", num_classes=3, key_channels=0, **SUB)
    model = _model(paths=2)
    _, state = model.key_step(torch.randn(1, 3, *HW))
    state["phase"] = torch.tensor([3.0])
    with pytest.raises(ValueError, match="phase 3 is not a path"):
        model.nonkey_step(torch.randn(1, 3, *HW), None, None, state)


def test_sub_teachers_sum_to_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = PerFrameModel(num_classes=5, width_mult=0.25, decoder_channels=16).eval()
    image = torch.randn(2, 3, *HW)
    whole, parts = teacher_outputs(teacher, image, 4)
    assert len(parts) == 4
    torch.testing.assert_close(sum(parts), whole, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(whole, teacher.decoder(teacher.backbone(image))["logits"])
    assert float(distillation(whole, whole)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation(parts[0], whole)) > 0


def test_training_reaches_every_sub_network_and_the_attention() -> None:
    model = _model().train()
    torch.manual_seed(0)
    teacher = PerFrameModel(num_classes=5, width_mult=0.25, decoder_channels=16).eval()
    images = torch.randn(7, 2, 3, *HW)
    labels = torch.randint(0, 5, (7, 2, *HW))
    out = tdnet_loss(model, teacher, images, labels)
    assert float(out["aux"]) > 0 and float(out["ce"]) > 0
    out["loss"].backward()
    for p, path in enumerate(model.paths):
        grad = sum(float(w.grad.abs().sum()) for w in path.backbone.parameters() if w.grad is not None)
        assert grad > 0, f"sub-network {p} got no gradient"
    # Every value projection and every output projection is used; the oldest frame's query and the current
    # frame's key are not (the chain never reads them).
    for enc in model.encodings:
        assert float(enc.value.weight.grad.abs().sum()) > 0
    for conv in model.propagation.proj:
        assert float(conv.weight.grad.abs().sum()) > 0
    # The labelled frame's path and a second path that segments it alone (the agreement term) normalise.
    used_norms = [n for n in model.norms if n.weight.grad is not None]
    assert len(used_norms) == 2 and all(float(n.weight.grad.abs().sum()) > 0 for n in used_norms)
    assert all(w.grad is None for w in teacher.parameters())


def test_training_clip_is_the_online_chain() -> None:
    """The training unroll of a clip gives what the steps give online once the cache is full, whatever path
    the clip starts at."""
    model = _model()
    frames = _frames(4 + 3)
    with torch.no_grad():
        online, state = [], None
        for frame in frames:
            if state is None:
                logits, state = model.key_step(frame)
            else:
                logits, state = model.nonkey_step(frame, None, None, state)
            online.append(logits)
        for t in range(3, len(frames)):
            full, sub, path = model.clip_logits(frames[t - 3 : t + 1], start=(t - 3) % 4)
            assert path == t % 4
            torch.testing.assert_close(upsample_logits(full, HW), online[t])
            torch.testing.assert_close(sub, model.alone(path, frames[t]))


def test_agreement_pulls_two_paths_together() -> None:
    """Paths that are copies of one model agree, so the agreement term is zero for them; paths that differ
    disagree measurably."""
    torch.manual_seed(0)
    image_model = PerFrameModel(num_classes=5, **SUB)
    same = TDNetModel.from_image_model(image_model, paths=2).eval()
    frame = torch.randn(1, 3, *HW)
    with torch.no_grad():
        torch.testing.assert_close(same.alone(0, frame), same.alone(1, frame))
        differ = _model(paths=2)
        assert float(distillation(differ.alone(0, frame), differ.alone(1, frame))) > 1e-4
        group, c2 = differ.subnetwork(1, frame)
        alone = differ.head(1, differ.encodings[1](group)[2], c2)  # the cold start, written out
        torch.testing.assert_close(differ.alone(1, frame), alone)


def test_from_image_model_copies_it_into_every_path() -> None:
    torch.manual_seed(0)
    image_model = PerFrameModel(num_classes=5, **SUB).eval()
    model = TDNetModel.from_image_model(image_model, paths=2).eval()
    image = torch.randn(1, 3, *HW)
    with torch.no_grad():
        for path in model.paths:
            torch.testing.assert_close(path.key_step(image)[0], image_model.key_step(image)[0])
