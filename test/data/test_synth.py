"""Behaviour of the synthetic street generator: determinism, content, motion and label consistency."""

from __future__ import annotations

from itertools import pairwise

import cv2
import numpy as np
import pytest

from vidseg_ros.classes import SYNTH_CLASSES
from vidseg_ros.data.synth import StreetScene, SynthConfig, generate
from vidseg_ros.data.synth_actors import draw_car, draw_person
from vidseg_ros.data.synth_camera import Camera
from vidseg_ros.data.synth_draw import Canvas, Fog
from vidseg_ros.data.synth_world import make_car, make_person

CAR, PERSON, POLE = (SYNTH_CLASSES.index(n) for n in ("car", "person", "pole"))
SMALL = {"width": 160, "height": 120}


def frames(cfg: SynthConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(generate(cfg))


def shape_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two masks after scaling each one's bounding box to a common size (ignores position and scale)."""

    def norm(m: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(m)
        crop = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
        return cv2.resize(crop, (32, 64), interpolation=cv2.INTER_AREA) >= 0.5

    na, nb = norm(a), norm(b)
    return float((na & nb).sum() / (na | nb).sum())


def test_frames_have_expected_shapes_and_label_range():
    out = frames(SynthConfig(seed=4, frames=3, **SMALL))
    assert len(out) == 3
    for rgb, labels in out:
        assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8
        assert labels.shape == (120, 160) and labels.dtype == np.uint8
        assert int(labels.max()) < len(SYNTH_CLASSES)
        assert rgb.std() > 10  # textured, not a blank image


def test_same_seed_gives_byte_identical_frames_and_random_access_matches():
    cfg = SynthConfig(seed=7, frames=4, **SMALL)
    a, b = frames(cfg), frames(cfg)
    for (ra, la), (rb, lb) in zip(a, b, strict=True):
        assert ra.tobytes() == rb.tobytes()
        assert la.tobytes() == lb.tobytes()
    # Rendering out of order (fresh texture caches) must give the same pixels.
    scene = StreetScene(cfg)
    late = scene.render(3)
    early = scene.render(0)
    assert late.rgb.tobytes() == a[3][0].tobytes() and early.labels.tobytes() == a[0][1].tobytes()


def test_different_seeds_give_different_scenes():
    (ra, la), (rb, lb) = (
        frames(SynthConfig(seed=0, frames=1, **SMALL))[0],
        frames(SynthConfig(seed=1, frames=1, **SMALL))[0],
    )
    assert (la != lb).mean() > 0.2
    assert np.abs(ra.astype(int) - rb.astype(int)).mean() > 10
    sa, sb = StreetScene(SynthConfig(seed=0, **SMALL)), StreetScene(SynthConfig(seed=1, **SMALL))
    seg_a, seg_b = sa.segment(1), sb.segment(1)
    layout = lambda s: ([(round(c.x0, 2), round(c.z0, 2)) for c in s.cars], [round(p.z, 2) for p in s.poles])  # noqa: E731
    assert layout(seg_a) != layout(seg_b)
    assert [b.wall for b in seg_a.left] != [b.wall for b in seg_b.left]


@pytest.mark.parametrize("seed", [0, 5])
def test_every_class_appears_in_a_short_sequence(seed):
    seen = set()
    for _, labels in generate(SynthConfig(seed=seed, frames=20, **SMALL)):
        seen |= set(np.unique(labels).tolist())
    assert seen == set(range(len(SYNTH_CLASSES)))


def test_instances_agree_with_labels():
    frame = StreetScene(SynthConfig(seed=2, width=320, height=240)).render(5, instances=True)
    things = np.isin(frame.labels, [CAR, PERSON])
    assert things.any()
    assert np.array_equal(things, frame.instances > 0)
    # An instance is one object: one class.
    for uid in np.unique(frame.instances[frame.instances > 0]):
        assert len(np.unique(frame.labels[frame.instances == uid])) == 1


def test_poles_are_thin():
    _, labels = frames(SynthConfig(seed=2, frames=1, width=320, height=240))[0]
    pole = (labels == POLE).astype(np.int8)
    starts = np.flatnonzero(np.diff(pole, axis=1, prepend=0).ravel() == 1)
    ends = np.flatnonzero(np.diff(pole, axis=1, append=0).ravel() == -1)
    widths = ends - starts + 1
    assert len(widths) > 20 and np.median(widths) <= 4


def test_people_deform_while_cars_stay_rigid():
    cam = Camera.looking(np.array([0.0, 1.5, 0.0]), 0.0, 0.0, 400.0, 480, 360)
    fog = Fog(np.array([200.0, 200.0, 200.0]), 1e6)
    rng = np.random.default_rng(0)
    person = make_person(rng, 1, -3.0, 9.0, (1.0, 0.0), 1.4)
    car = make_car(rng, 2, -4.0, 16.0, (1.0, 0.0), 5.0)

    def mask(draw, *args) -> np.ndarray:
        canvas = Canvas(np.zeros((360, 480, 3), np.uint8), np.zeros((360, 480), np.uint8), None)
        draw(canvas, cam, *args)
        return canvas.label > 0

    taus = np.arange(0.0, 1.6, 0.2)
    people = [mask(draw_person, person, t, fog) for t in taus]
    cars = [mask(draw_car, car, t, fog, np.array([0.0, 1.0, 0.0])) for t in taus]
    person_iou = [shape_iou(a, b) for a, b in pairwise(people)]
    car_iou = [shape_iou(a, b) for a, b in pairwise(cars)]
    assert min(car_iou) > 0.93
    assert np.median(person_iou) < 0.75
    # Rigid objects still move: the car mask is displaced, not frozen.
    assert (cars[0] != cars[1]).sum() > 0.1 * cars[0].sum()


def test_scene_people_change_shape_more_than_cars():
    scores = {CAR: [], PERSON: []}
    for seed in (4, 11):
        scene = StreetScene(SynthConfig(seed=seed, width=320, height=240))
        rendered = [scene.render(k, instances=True) for k in range(0, 24, 3)]
        for a, b in pairwise(rendered):
            for uid in np.unique(a.instances[a.instances > 0]):
                ma, mb = a.instances == uid, b.instances == uid
                if ma.sum() < 150 or mb.sum() < 150:
                    continue
                if any(m[[0, -1], :].any() or m[:, [0, -1]].any() for m in (ma, mb)):
                    continue  # cut by the image border
                scores[int(a.labels[ma][0])].append(shape_iou(ma, mb))
    assert len(scores[CAR]) >= 5 and len(scores[PERSON]) >= 5
    assert np.median(scores[CAR]) > 0.88
    assert np.median(scores[PERSON]) < np.median(scores[CAR]) - 0.1


def mean_flow(cfg: SynthConfig) -> tuple[float, float]:
    """Mean DIS flow magnitude and fraction of changed labels between consecutive frames."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = frames(cfg)
    mags, changed = [], []
    for (r0, l0), (r1, l1) in pairwise(out):
        g0, g1 = (cv2.cvtColor(r, cv2.COLOR_RGB2GRAY) for r in (r0, r1))
        flow = dis.calc(g0, g1, None)
        mags.append(np.hypot(flow[..., 0], flow[..., 1]).mean())
        changed.append((l0 != l1).mean())
    return float(np.mean(mags)), float(np.mean(changed))


def test_speed_scales_motion():
    slow = mean_flow(SynthConfig(seed=3, frames=5, width=320, height=240, speed=0.5))
    fast = mean_flow(SynthConfig(seed=3, frames=5, width=320, height=240, speed=2.0))
    assert 0.3 < slow[0] < 5.0  # a few pixels per frame: flow is meaningful
    assert fast[0] > 2.0 * slow[0]
    assert fast[1] > 1.5 * slow[1]


def test_zero_speed_freezes_geometry_but_not_sensor():
    out = frames(SynthConfig(seed=1, frames=3, speed=0.0, **SMALL))
    assert all(np.array_equal(out[0][1], labels) for _, labels in out[1:])
    assert not np.array_equal(out[0][0], out[1][0])  # fresh sensor noise every frame
    scene = StreetScene(SynthConfig(seed=1, speed=0.0, **SMALL))
    # Lighting drifts slowly: 20 s apart the exposure differs visibly, with identical labels.
    a, b = scene.render(0), scene.render(300)
    assert np.array_equal(a.labels, b.labels)
    assert (
        abs(a.rgb.mean() - b.rgb.mean()) > 2.0
        or abs(float(a.rgb[..., 0].mean() - b.rgb[..., 0].mean())) > 2.0
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"width": 8},
        {"height": 0},
        {"frames": -1},
        {"speed": -1.0},
        {"fps": 0.0},
        {"seed": -3},
        {"speed": float("nan")},
    ],
)
def test_invalid_config_is_rejected_before_iteration(bad):
    with pytest.raises(ValueError):
        generate(SynthConfig(**bad))
