"""Layout of the synthetic street: the street cross-section, the ego camera path and 40 m segments.

Segments are generated lazily and independently from ``(seed, index)``, so the world is unbounded, the
same seed always yields the same world, and a segment can be dropped and rebuilt at will. Movers (cars,
people) belong to the segment they start in and move on straight lines at constant speed, which makes
their position a pure function of scene time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .synth_textures import BuildingSpec

SEG_LEN = 40.0
#: Mean pedestrians per sidewalk of a segment and per crossing (Poisson): busy streets, so that people (the
#: non-rigid class the temporal models are judged on) cover about 1% of the pixels, as in Cityscapes.
PEOPLE_PER_SIDE = 3.5
PEOPLE_PER_CROSSING = 3.0
CROSS_FAR = 110.0  # how far a cross street is modelled away from the main street (m)

_WALLS = np.array(
    [[196, 180, 150], [170, 110, 80], [150, 150, 150], [215, 205, 185], [120, 95, 80], [185, 160, 110],
     [200, 200, 205], [160, 170, 150], [140, 120, 110], [225, 215, 200]], float,
)  # fmt: skip
_CAR_PAINT = np.array(
    [[235, 235, 235], [25, 25, 28], [150, 152, 155], [95, 97, 100], [150, 20, 20], [25, 50, 120],
     [30, 70, 45], [210, 170, 30], [120, 30, 40], [60, 100, 150]], float,
)  # fmt: skip


@dataclass(frozen=True)
class Street:
    """Cross-section of the main street (metres; x = 0 is the centre line) and its surface look."""

    lane_w: float
    lanes: int
    park_l: float
    park_r: float
    walk_l: float
    walk_r: float
    double_yellow: bool
    asphalt: np.ndarray
    paving: np.ndarray
    tile: float
    downtown: float  # 0 = low suburban houses, 1 = tall city blocks

    @property
    def road_l(self) -> float:
        return -(self.lanes * self.lane_w + self.park_l)

    @property
    def road_r(self) -> float:
        return self.lanes * self.lane_w + self.park_r

    @property
    def facade_l(self) -> float:
        return self.road_l - self.walk_l

    @property
    def facade_r(self) -> float:
        return self.road_r + self.walk_r

    def lane_x(self, lane: int) -> float:
        """Centre of a driving lane: 0.. for +z traffic (right side), -1.. for -z traffic (left side)."""
        return (lane + 0.5) * self.lane_w


@dataclass(frozen=True)
class Ego:
    """The camera rig's path: a lane, a cruising speed and slow sways, all functions of scene time."""

    x: float
    height: float
    speed: float
    yaw0: float
    pitch0: float
    sway: np.ndarray  # rows: (amplitude, period s, phase) for speed, lateral, yaw, pitch, bump

    def pose(self, tau: float) -> tuple[np.ndarray, float, float]:
        """Camera position, yaw and pitch at scene time ``tau`` (seconds)."""
        (av, tv, pv), (ax, tx, px), (ay, ty, py), (ap, tp, pp), (ab, tb, pb) = self.sway
        wv, wx = 2 * np.pi / tv, 2 * np.pi / tx
        # Integral of speed * (1 + av * cos(wv * t + pv)) so the path is smooth at any frame rate.
        z = 2.0 + self.speed * (tau + av / wv * (np.sin(wv * tau + pv) - np.sin(pv)))
        x = self.x + ax * np.sin(wx * tau + px)
        heading = np.arctan2(ax * wx * np.cos(wx * tau + px), self.speed)
        yaw = self.yaw0 + heading + ay * np.sin(2 * np.pi * tau / ty + py)
        bump = np.sin(2 * np.pi * tau / tb + pb)
        pitch = self.pitch0 + ap * np.sin(2 * np.pi * tau / tp + pp) + ab * bump
        return np.array([x, self.height + 0.02 * bump, z]), float(yaw), float(pitch)


@dataclass(frozen=True)
class Tree:
    """A street tree standing at ``(x, z)``; ``seed`` selects its sprite."""

    x: float
    z: float
    height: float
    crown: float
    seed: int


@dataclass(frozen=True)
class Panel:
    """A sign face on a pole: ``shape`` in circle/triangle/square/diamond/octagon/rect/light."""

    shape: str
    size: float
    height: float
    outer: tuple[float, float, float]
    inner: tuple[float, float, float]
    facing: float  # +1: faces +z traffic's camera (normal -z); -1: faces the other way


@dataclass(frozen=True)
class Pole:
    """A lamp post (with an arm) or a sign/traffic-light post (with panels) standing at ``(x, z)``."""

    x: float
    z: float
    height: float
    width: float
    arm: float  # signed lateral length of a lamp arm (0 for none)
    panels: tuple[Panel, ...] = ()


@dataclass(frozen=True)
class Mover:
    """Something moving from ``(x0, z0)`` along the unit heading ``(dx, dz)`` at ``speed`` m/s (0 = still)."""

    uid: int
    x0: float
    z0: float
    dx: float
    dz: float
    speed: float

    def at(self, tau: float) -> tuple[float, float]:
        return self.x0 + self.dx * self.speed * tau, self.z0 + self.dz * self.speed * tau


@dataclass(frozen=True)
class Car(Mover):
    """A rigid box car (``speed`` 0 = parked)."""

    length: float
    width: float
    height: float
    body_h: float
    wheel_r: float
    paint: tuple[float, float, float]


@dataclass(frozen=True)
class Person(Mover):
    """An articulated pedestrian (``speed`` 0 = standing)."""

    height: float
    shirt: tuple[float, float, float]
    pants: tuple[float, float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    phase0: float
    sleeves: bool


@dataclass(frozen=True)
class Crossing:
    """A cross street over ``[z0, z1]`` along the main street, with sidewalks of width ``walk``."""

    z0: float
    z1: float
    walk: float


@dataclass
class Segment:
    """Everything static that lies in ``[z0, z1)`` plus the movers that start there."""

    index: int
    z0: float
    z1: float
    left: list[BuildingSpec]
    right: list[BuildingSpec]
    crossing: Crossing | None
    cross_fronts: dict[tuple[int, int], list[BuildingSpec]] = field(default_factory=dict)
    trees: list[Tree] = field(default_factory=list)
    poles: list[Pole] = field(default_factory=list)
    cars: list[Car] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)


def make_street(rng: np.random.Generator) -> Street:
    """Draws the street cross-section and surface colours for a scene."""
    lanes = int(rng.choice([1, 1, 2]))
    grey = rng.uniform(62, 100)
    asphalt = np.array([grey, grey, grey]) + rng.uniform(-4, 4, 3)
    paving = rng.choice(
        [[175, 172, 165], [150, 150, 152], [190, 180, 160], [165, 110, 90], [200, 198, 192]]
    ).astype(float)
    return Street(
        lane_w=float(rng.uniform(3.0, 3.6)),
        lanes=lanes,
        park_l=float(rng.choice([0.0, 2.3])),
        park_r=float(rng.choice([0.0, 2.3])),
        walk_l=float(rng.uniform(2.5, 4.5)),
        walk_r=float(rng.uniform(2.5, 4.5)),
        double_yellow=bool(rng.random() < 0.3),
        asphalt=asphalt,
        paving=paving + rng.uniform(-8, 8, 3),
        tile=float(rng.choice([0.3, 0.5, 0.6, 1.0])),
        downtown=float(rng.uniform(0, 1)),
    )


def make_ego(rng: np.random.Generator, street: Street) -> Ego:
    """Draws the camera rig: mostly a forward dash camera, sometimes a slower camera turned sideways."""
    sideways = rng.random() < 0.25
    lane = int(rng.integers(0, street.lanes))
    yaw0 = (
        float(rng.choice([-1, 1]) * rng.uniform(0.35, 0.6)) if sideways else float(rng.uniform(-0.05, 0.05))
    )
    sway = np.array(
        [
            [rng.uniform(0.05, 0.15), rng.uniform(8, 15), rng.uniform(0, 6.28)],
            [rng.uniform(0.1, 0.4), rng.uniform(6, 12), rng.uniform(0, 6.28)],
            [rng.uniform(0.008, 0.02), rng.uniform(3, 7), rng.uniform(0, 6.28)],
            [rng.uniform(0.004, 0.01), rng.uniform(3, 6), rng.uniform(0, 6.28)],
            [rng.uniform(0.002, 0.005), rng.uniform(0.7, 1.5), rng.uniform(0, 6.28)],
        ]
    )
    return Ego(
        x=street.lane_x(lane),
        height=float(rng.uniform(1.25, 1.65)),
        speed=float(rng.uniform(1.2, 2.2) if sideways else rng.uniform(2.5, 4.0)),
        yaw0=yaw0,
        pitch0=float(rng.uniform(-0.03, 0.02)),
        sway=sway,
    )


def lane_speeds(rng: np.random.Generator, street: Street, ego: Ego) -> dict[int, float]:
    """Signed speed per lane. Cars in the ego lane are faster than the camera so it never runs into them."""
    speeds = {}
    for lane in range(street.lanes):
        ego_lane = abs(street.lane_x(lane) - ego.x) < 0.1
        speeds[lane] = ego.speed * float(rng.uniform(1.25, 1.5) if ego_lane else rng.uniform(0.5, 1.6))
        speeds[-lane - 1] = -float(rng.uniform(2.0, 5.0))
    return speeds


def _fronts(rng: np.random.Generator, start: float, end: float, downtown: float) -> list[BuildingSpec]:
    """Splits ``[start, end]`` into adjacent building fronts."""
    out = []
    a = start
    while end - a > 0.5:
        width = float(rng.uniform(6.0, 18.0))
        b = end if end - (a + width) < 5.0 else a + width
        tall = 6.0 + downtown * 16.0
        out.append(
            BuildingSpec(
                start=a,
                end=b,
                height=float(np.clip(rng.normal(tall, 3.0 + 2.0 * downtown), 4.5, 30.0)),
                wall=tuple(np.clip(_WALLS[rng.integers(len(_WALLS))] + rng.uniform(-15, 15, 3), 20, 245)),
                glass=tuple(np.array([55.0, 70.0, 85.0]) + rng.uniform(-15, 20, 3)),
                floor_h=float(rng.uniform(2.9, 3.6)),
                win_w=float(rng.uniform(0.9, 1.7)),
                win_h=float(rng.uniform(1.2, 1.8)),
                win_pitch=float(rng.uniform(2.2, 3.6)),
                shop=bool(rng.random() < 0.3 + 0.4 * downtown),
                hedge=None,
            )
        )
        a = b
    return out


def _with_hedges(rng: np.random.Generator, fronts: list[BuildingSpec], prob: float) -> list[BuildingSpec]:
    out = []
    for b in fronts:
        if not b.shop and rng.random() < prob:
            s = b.start + rng.uniform(0.3, 2.0)
            e = b.end - rng.uniform(0.3, 2.0)
            if e - s > 1.5:
                b = BuildingSpec(**{**b.__dict__, "hedge": (s, e, float(rng.uniform(0.8, 1.6)))})
        out.append(b)
    return out


def _colour(rng: np.random.Generator, base: np.ndarray, spread: float = 20.0) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(base + rng.uniform(-spread, spread, 3), 10, 245))


def make_person(
    rng: np.random.Generator, uid: int, x: float, z: float, heading: tuple[float, float], speed: float
) -> Person:
    """A pedestrian with random build and clothes walking along ``heading`` (unit x, z)."""
    child = rng.random() < 0.1
    skin = rng.choice([[235, 200, 170], [200, 150, 110], [150, 100, 70], [90, 60, 45]]).astype(float)
    return Person(
        uid=uid,
        x0=x,
        z0=z,
        dx=heading[0],
        dz=heading[1],
        speed=speed * (0.8 if child else 1.0),
        height=float(rng.uniform(1.0, 1.35) if child else rng.uniform(1.55, 1.95)),
        shirt=_colour(rng, rng.uniform(20, 230, 3), 0),
        pants=_colour(
            rng, rng.choice([[40, 45, 70], [30, 30, 32], [110, 100, 85], [70, 75, 80]]).astype(float)
        ),
        skin=_colour(rng, skin, 8),
        hair=_colour(
            rng, rng.choice([[30, 25, 20], [90, 60, 35], [160, 130, 80], [120, 120, 120]]).astype(float), 8
        ),
        phase0=float(rng.uniform(0, 2 * np.pi)),
        sleeves=bool(rng.random() < 0.5),
    )


def make_car(
    rng: np.random.Generator, uid: int, x: float, z: float, heading: tuple[float, float], speed: float
) -> Car:
    """A car with random body style and paint driving along ``heading`` (unit x, z)."""
    kind = rng.choice(3, p=[0.5, 0.3, 0.2])  # sedan, hatchback, SUV/van
    length = float([rng.uniform(4.3, 4.9), rng.uniform(3.7, 4.2), rng.uniform(4.5, 5.1)][kind])
    height = float([rng.uniform(1.4, 1.5), rng.uniform(1.45, 1.55), rng.uniform(1.7, 1.95)][kind])
    return Car(
        uid=uid,
        x0=x,
        z0=z,
        dx=heading[0],
        dz=heading[1],
        speed=speed,
        length=length,
        width=float(rng.uniform(1.7, 1.9) if kind != 2 else rng.uniform(1.85, 2.0)),
        height=height,
        body_h=float(height * rng.uniform(0.6, 0.68)),
        wheel_r=float(rng.uniform(0.3, 0.36)),
        paint=_colour(rng, _CAR_PAINT[rng.integers(len(_CAR_PAINT))], 10),
    )


def _spaced(rng: np.random.Generator, start: float, end: float, gap: tuple[float, float]) -> list[float]:
    """Positions in ``[start, end)`` with random gaps, kept half a minimum gap away from both ends.

    The margin keeps the minimum gap across segment boundaries too (no two parked cars overlap there).
    """
    out, a = [], start + rng.uniform(gap[0] / 2, gap[1])
    while a < end - gap[0] / 2:
        out.append(float(a))
        a += rng.uniform(*gap)
    return out


def _sign_panels(rng: np.random.Generator, facing: float) -> tuple[Panel, ...]:
    kinds = [
        ("circle", (200, 30, 30), (240, 240, 240)),
        ("circle", (30, 70, 170), (240, 240, 240)),
        ("triangle", (210, 30, 30), (245, 240, 230)),
        ("diamond", (230, 190, 30), (245, 245, 240)),
        ("octagon", (200, 20, 25), (245, 245, 245)),
        ("square", (30, 80, 170), (240, 240, 240)),
        ("rect", (30, 110, 60), (240, 240, 240)),
    ]
    panels = []
    top = float(rng.uniform(2.4, 3.2))
    for k in range(int(rng.integers(1, 3))):
        shape, outer, inner = kinds[rng.integers(len(kinds))]
        size = float(rng.uniform(0.3, 0.4))
        panels.append(Panel(shape, size, top - k * (2.2 * size + 0.1), outer, inner, facing))
    return tuple(panels)


def make_segment(seed: int, index: int, street: Street, ego: Ego, speeds: dict[int, float]) -> Segment:
    """Generates segment ``index`` (covering ``[index * SEG_LEN, (index + 1) * SEG_LEN)``) of a scene."""
    rng = np.random.default_rng([seed, 7, index + (1 << 20)])
    z0, z1 = index * SEG_LEN, (index + 1) * SEG_LEN
    start = index <= 1  # the first segments always show every class, so short clips contain all labels
    crossing = None
    if rng.random() < 0.35:
        walk = float(rng.uniform(2.0, 3.5))
        width = 2 * walk + 2 * float(rng.uniform(3.0, 3.5))
        c0 = float(rng.uniform(z0 + 6.0, z1 - width - 6.0))
        crossing = Crossing(c0, c0 + width, walk)
    spans = [(z0, z1)] if crossing is None else [(z0, crossing.z0), (crossing.z1, z1)]
    hedge = 0.2 + 0.3 * (1 - street.downtown)
    left = _with_hedges(rng, [b for a, b in spans for b in _fronts(rng, a, b, street.downtown)], hedge)
    right = _with_hedges(rng, [b for a, b in spans for b in _fronts(rng, a, b, street.downtown)], hedge)
    seg = Segment(index, z0, z1, left, right, crossing)
    # Instance ids unique across segments (also behind the start): 10 bits of mover number per segment.
    uid = ((index + (1 << 19)) << 10) + 1

    def free(z: float, margin: float = 1.0) -> bool:
        return crossing is None or not (crossing.z0 - margin <= z <= crossing.z1 + margin)

    if crossing is not None:
        for side in (-1, 1):
            for face in (0, 1):
                seg.cross_fronts[(side, face)] = _with_hedges(
                    rng, _fronts(rng, 0.0, CROSS_FAR, street.downtown), hedge
                )

    for side, edge, walk in ((-1, street.road_l, street.walk_l), (1, street.road_r, street.walk_r)):
        if start or rng.random() < 0.6:
            for z in _spaced(rng, z0, z1, (7.0, 13.0)):
                if free(z, 2.0):
                    seg.trees.append(
                        Tree(
                            edge + side * 0.9,
                            z,
                            float(rng.uniform(5, 9)),
                            float(rng.uniform(1.4, 2.8)),
                            int(rng.integers(1 << 31)),
                        )
                    )
        for z in _spaced(rng, z0, z1, (22.0, 34.0)):
            if free(z):
                seg.poles.append(
                    Pole(
                        edge + side * 0.45,
                        z,
                        float(rng.uniform(6, 8)),
                        0.14,
                        -side * float(rng.uniform(1.0, 2.0)),
                    )
                )
        n_signs = int(rng.integers(0, 3)) + (1 if start else 0)
        for _ in range(n_signs):
            z = float(rng.uniform(z0 + 12.0 if index == 0 else z0, z1))
            if free(z):
                panels = _sign_panels(rng, float(side))
                top = panels[0].height + panels[0].size
                seg.poles.append(Pole(edge + side * 0.5, z, top, 0.08, 0.0, panels))
        n_people = int(rng.poisson(PEOPLE_PER_SIDE)) + (1 if start else 0)
        for k in range(n_people):
            x = edge + side * float(rng.uniform(0.7, walk - 0.6))
            z = float(rng.uniform(z0 + 8.0, z0 + 30.0) if start and k == 0 else rng.uniform(z0, z1))
            still = rng.random() < 0.12
            heading = (0.0, float(rng.choice([-1.0, 1.0])))
            seg.people.append(
                make_person(rng, uid, x, z, heading, 0.0 if still else float(rng.uniform(1.0, 1.6)))
            )
            uid += 1
        park = street.park_l if side < 0 else street.park_r
        if park > 0:
            for z in _spaced(rng, z0, z1, (5.5, 11.0)):
                if free(z, 5.0) and rng.random() < 0.65:
                    x = edge - side * park / 2.0
                    seg.cars.append(make_car(rng, uid, x, z, (0.0, float(side)), 0.0))
                    uid += 1

    for lane, speed in speeds.items():
        lo = z0 if speed < 0 or abs(street.lane_x(lane) - ego.x) > 0.1 else max(z0, 14.0)
        zs = _spaced(rng, lo, z1, (14.0, 45.0))
        if start and lane == 0 and index == 0:
            zs = [float(rng.uniform(16.0, 24.0))] + [z for z in zs if z > 32.0]
        for z in zs:
            seg.cars.append(
                make_car(rng, uid, street.lane_x(lane), z, (0.0, float(np.sign(speed))), abs(speed))
            )
            uid += 1

    if crossing is not None:
        mid = (crossing.z0 + crossing.z1) / 2.0
        for direction, lz in ((1.0, mid - 1.6), (-1.0, mid + 1.6)):
            for x in _spaced(rng, -CROSS_FAR, CROSS_FAR, (20.0, 60.0)):
                seg.cars.append(make_car(rng, uid, x, lz, (direction, 0.0), float(rng.uniform(3.0, 6.0))))
                uid += 1
        for side, edge in ((-1, street.road_l), (1, street.road_r)):
            for zl, facing in ((crossing.z0 - 0.6, 1.0), (crossing.z1 + 0.6, -1.0)):
                lit = [(230, 40, 30), (240, 190, 40), (40, 220, 90)][int(rng.integers(3))]
                light = Panel("light", 0.2, 3.2, (35.0, 35.0, 38.0), lit, facing)
                seg.poles.append(Pole(edge + side * 0.6, zl, 3.75, 0.12, 0.0, (light,)))
        for _ in range(int(rng.poisson(PEOPLE_PER_CROSSING))):
            z = float(
                rng.choice([crossing.z0, crossing.z1 - crossing.walk]) + rng.uniform(0.5, crossing.walk - 0.5)
            )
            direction = float(rng.choice([-1.0, 1.0]))
            x = float(-direction * rng.uniform(street.road_r - 2.0, street.facade_r + 6.0))
            seg.people.append(make_person(rng, uid, x, z, (direction, 0.0), float(rng.uniform(1.1, 1.6))))
            uid += 1
    return seg
