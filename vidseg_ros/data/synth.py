"""Procedural street video with exact ground-truth labels, for training and testing without datasets.

A camera drives (or, for some seeds, looks sideways while driving slowly) down an endless street of
building fronts, sidewalks, trees, lamp posts and signs, with cross streets, rigid cars moving along and
across the street and articulated pedestrians. Everything is a function of ``(seed, frame index)``:

>>> from vidseg_ros.data.synth import SynthConfig, generate
>>> for rgb, labels in generate(SynthConfig(seed=3, frames=2, width=160, height=120)):
...     print(rgb.shape, labels.shape, labels.max() <= 8)
(120, 160, 3) (120, 160) True
(120, 160, 3) (120, 160) True

Label ids are those of :data:`vidseg_ros.classes.SYNTH_CLASSES`. ``speed`` scales scene time, so all
motion (camera and objects) scales with it, while lighting drift and sensor noise follow wall-clock
frame time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .synth_actors import draw_car, draw_person
from .synth_camera import Camera
from .synth_draw import SKY, Canvas, Fog, Plane, draw_plane, draw_pole, draw_sprite, poly3
from .synth_textures import (
    BUILDING,
    ROAD,
    SIDEWALK,
    VEGETATION,
    GroundSpec,
    Sprite,
    facade_texture,
    ground_texture,
    sky_panorama,
    tree_sprite,
)
from .synth_world import (
    CROSS_FAR,
    SEG_LEN,
    Car,
    Mover,
    Person,
    Pole,
    Segment,
    Tree,
    lane_speeds,
    make_ego,
    make_segment,
    make_street,
)

FAR = 160.0  # metres of textured street drawn ahead; beyond it a flat, fogged backdrop continues
_NOISE_BANK = 4
_X, _Y, _Z = np.eye(3)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one synthetic sequence.

    Attributes:
        seed: Selects the scene (street, buildings, traffic, camera rig); same seed, same frames.
        frames: Number of frames :func:`generate` yields.
        width: Image width in pixels.
        height: Image height in pixels.
        speed: Scene-time multiplier: 2.0 moves camera and objects twice as far per frame.
        fps: Frame rate; sets the scene time between frames (``speed / fps`` seconds).
    """

    seed: int = 0
    frames: int = 60
    width: int = 640
    height: int = 480
    speed: float = 1.0
    fps: float = 15.0

    def validate(self) -> None:
        """Raises ValueError for values no scene can be rendered with."""
        if self.frames < 0:
            raise ValueError(f"frames must be >= 0, got {self.frames}")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size must be at least 16x16, got {self.width}x{self.height}")
        if not self.speed >= 0.0:
            raise ValueError(f"speed must be >= 0, got {self.speed}")
        if not self.fps > 0.0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class SynthFrame:
    """One rendered frame: RGB image, class ids and (optionally) instance ids of cars and people."""

    rgb: np.ndarray
    labels: np.ndarray
    instances: np.ndarray | None


class StreetScene:
    """A procedurally generated street; :meth:`render` draws any frame of it (random access).

    Textures of street segments are built lazily when they come into view and dropped when they fall
    behind, so memory stays bounded for arbitrarily long sequences.
    """

    def __init__(self, cfg: SynthConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 1])
        self.street = make_street(rng)
        self.ego = make_ego(rng, self.street)
        self.speeds = lane_speeds(rng, self.street, self.ego)
        w, h = cfg.width, cfg.height
        self.f = w * float(rng.uniform(0.75, 0.95))
        # Texture detail follows image size: small test images do not pay for 640x480 textures.
        q = float(np.clip(w / 640.0, 0.35, 1.5))
        self.res_ground, self.res_wall, self.res_cross, self.res_tree = 24 * q, 16 * q, 9 * q, 20 * q
        sun = np.array([rng.uniform(-1, 1), rng.uniform(0.6, 1.2), rng.uniform(-1, 1)])
        self.sun = sun / np.linalg.norm(sun)
        self.wall_shade = {-1: 0.8 + 0.25 * max(0.0, self.sun[0]), 1: 0.8 + 0.25 * max(0.0, -self.sun[0])}
        overcast = bool(rng.random() < 0.3)
        self.margin = max(8, int(0.15 * h))
        self.sky, horizon = sky_panorama(
            rng, h + 2 * self.margin, 2 * w, (h - 1) / 2 + self.margin, self.f, overcast
        )
        self.wind = float(rng.uniform(-2.0, 2.0))  # sky drift in px per second of scene time
        self.fog = Fog(horizon, float(rng.uniform(150, 400)))
        self.exposure = float(rng.uniform(0.85, 1.1))
        self.tint = np.array([1.0 + rng.uniform(-0.04, 0.06), 1.0, 1.0 + rng.uniform(-0.06, 0.04)])
        self.drift = rng.uniform([0.04, 15, 0, 0.02, 20, 0], [0.1, 30, 6.28, 0.05, 40, 6.28])
        sigma = float(rng.uniform(1.5, 3.5))
        self.noise = [self._noise_pair(rng, sigma) for _ in range(_NOISE_BANK)]
        self._segments: dict[int, Segment] = {}
        self._planes: dict[int, list[list[Plane]]] = {}
        self._trees: dict[int, Sprite] = {}

    # --- world bookkeeping ------------------------------------------------------------------------------

    def _noise_pair(self, rng: np.random.Generator, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Sensor noise split into a positive and a negative uint8 part, for two saturating adds."""
        shape = (self.cfg.height + 16, self.cfg.width + 16, 3)
        n = np.round(rng.standard_normal(shape, dtype=np.float32) * sigma)
        return np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)

    def segment(self, index: int) -> Segment:
        seg = self._segments.get(index)
        if seg is None:
            seg = self._segments[index] = make_segment(
                self.cfg.seed, index, self.street, self.ego, self.speeds
            )
        return seg

    def _tex_rng(self, index: int, part: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, 11, index + (1 << 20), part])

    def _tree(self, tree: Tree) -> Sprite:
        sprite = self._trees.get(tree.seed)
        if sprite is None:
            rng = np.random.default_rng([self.cfg.seed, 13, tree.seed])
            sprite = self._trees[tree.seed] = tree_sprite(rng, self.res_tree, tree.height, tree.crown)
        return sprite

    def planes(self, index: int) -> list[list[Plane]]:
        """Textured planes of segment ``index``: ``[ground, cross-street walls, main walls]``.

        Neighbouring surfaces overlap by a few centimetres (``lo`` and longer extents) so that no
        pixel-wide cracks open between them.
        """
        cached = self._planes.get(index)
        if cached is not None:
            return cached
        seg = self.segment(index)
        ground: list[Plane] = []
        cross: list[Plane] = []
        walls: list[Plane] = []
        for side in (-1, 1):
            walls.append(self._main_wall(seg, side))
            if seg.crossing is not None:
                ground.append(self._cross_ground(seg, side))
                cross.extend(self._cross_walls(seg, side))
        ground.append(self._main_ground(seg))  # last: it wins where a cross street's ground overlaps it
        out = self._planes[index] = [ground, cross, walls]
        return out

    def _main_ground(self, seg: Segment) -> Plane:
        st, cr = self.street, seg.crossing
        lanes = st.lanes * st.lane_w
        spec = GroundSpec(
            x0=st.facade_l,
            x1=st.facade_r,
            z0=seg.z0,
            z1=seg.z1,
            road=(st.road_l, st.road_r),
            lane_lines=tuple(s * k * st.lane_w for k in range(1, st.lanes) for s in (-1, 1)),
            centre=0.0,
            double_yellow=st.double_yellow,
            edge_lines=tuple(x for x, p in ((-lanes, st.park_l), (lanes, st.park_r)) if p > 0),
            cuts=() if cr is None else ((cr.z0, cr.z1, cr.walk),),
            zebras=() if cr is None else ((cr.z0, cr.z0 + cr.walk), (cr.z1 - cr.walk, cr.z1)),
        )
        rng = self._tex_rng(seg.index, 0)
        tex = ground_texture(rng, spec, self.res_ground, st.asphalt, st.paving, st.tile)
        corner = np.array([st.facade_l, 0.0, seg.z0])
        extent = (st.facade_r - st.facade_l, SEG_LEN + 0.05)
        return Plane(tex, corner, _X, _Z, extent, self.res_ground, vertical=False, lo=(0.0, -0.05))

    def _main_wall(self, seg: Segment, side: int) -> Plane:
        fx, fronts = (self.street.facade_l, seg.left) if side < 0 else (self.street.facade_r, seg.right)
        top = max(b.height for b in fronts) + 0.5
        rng = self._tex_rng(seg.index, 1 + side)
        tex = facade_texture(rng, fronts, seg.z0, seg.z1, self.res_wall, self.wall_shade[side])
        corner = np.array([fx, top, seg.z0])
        extent = (SEG_LEN + 0.05, top)
        return Plane(
            tex, corner, _Z, -_Y, extent, self.res_wall, vertical=True, normal=-side * _X, lo=(-0.05, 0.0)
        )

    def _cross_ground(self, seg: Segment, side: int) -> Plane:
        st, cr = self.street, seg.crossing
        assert cr is not None
        # Texel x runs across the cross street (world z), texel y along it (world x).
        x_lo = st.facade_r if side > 0 else st.facade_l - CROSS_FAR
        spec = GroundSpec(
            x0=cr.z0,
            x1=cr.z1,
            z0=x_lo,
            z1=x_lo + CROSS_FAR,
            road=(cr.z0 + cr.walk, cr.z1 - cr.walk),
            centre=(cr.z0 + cr.z1) / 2,
        )
        tex = ground_texture(
            self._tex_rng(seg.index, 4 + side), spec, self.res_cross, st.asphalt, st.paving, st.tile
        )
        corner = np.array([x_lo, 0.0, cr.z0])
        return Plane(tex, corner, _Z, _X, (cr.z1 - cr.z0, CROSS_FAR), self.res_cross, vertical=False)

    def _cross_walls(self, seg: Segment, side: int) -> list[Plane]:
        cr = seg.crossing
        assert cr is not None
        fx = self.street.facade_r if side > 0 else self.street.facade_l
        out = []
        for face, zf, normal in ((0, cr.z0, _Z), (1, cr.z1, -_Z)):
            fronts = seg.cross_fronts[(side, face)]
            top = max(b.height for b in fronts) + 0.5
            rng = self._tex_rng(seg.index, 7 + 2 * face + side)
            tex = facade_texture(rng, fronts, 0.0, CROSS_FAR, self.res_cross, 0.9)
            # The wall reaches 0.3 m into the main street's wall line: that part hides behind the main
            # wall, and it catches rays that slip past the main wall's texel-rounded building edge.
            corner = np.array([fx, top, zf])
            extent = (CROSS_FAR, top)
            out.append(
                Plane(
                    tex,
                    corner,
                    side * _X,
                    -_Y,
                    extent,
                    self.res_cross,
                    vertical=True,
                    normal=normal,
                    lo=(-0.3, 0.0),
                )
            )
        return out

    def _forget(self, lo: int, hi: int) -> None:
        """Drops textures of segments outside ``[lo, hi]``; they are rebuilt identically if needed again."""
        for i in [i for i in self._planes if not lo <= i <= hi]:
            del self._planes[i]
        keep = {t.seed for i in range(lo, hi + 1) if i in self._segments for t in self._segments[i].trees}
        for seed in [s for s in self._trees if s not in keep]:
            del self._trees[seed]

    def camera(self, index: int) -> Camera:
        """The camera of frame ``index``."""
        pos, yaw, pitch = self.ego.pose(self._tau(index))
        return Camera.looking(pos, yaw, pitch, self.f, self.cfg.width, self.cfg.height)

    def _tau(self, index: int) -> float:
        return index * self.cfg.speed / self.cfg.fps

    # --- rendering --------------------------------------------------------------------------------------

    def render(self, index: int, instances: bool = False) -> SynthFrame:
        """Renders frame ``index`` (any order). ``instances`` adds an int32 map of car/person ids (0 = none)."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        cfg = self.cfg
        tau, cam = self._tau(index), self.camera(index)
        zc = float(cam.position[2])
        canvas = Canvas(
            self._sky(cam, tau),
            np.full((cfg.height, cfg.width), SKY, np.uint8),
            np.zeros((cfg.height, cfg.width), np.int32) if instances else None,
        )
        lo, hi = int(np.floor((zc - 45.0) / SEG_LEN)), int(np.floor((zc + FAR) / SEG_LEN))
        self._backdrop(canvas, cam, (hi + 1) * SEG_LEN)
        planes = {i: self.planes(i) for i in range(lo, hi + 1)}
        for i in range(lo, hi + 1):
            for p in planes[i][0]:
                draw_plane(canvas, cam, p, self.fog)

        st = self.street
        inside: list[tuple[float, object]] = []
        outside: dict[int, list[tuple[float, object]]] = {}
        reach = int(np.ceil(max(map(abs, self.speeds.values())) * tau / SEG_LEN)) + 1
        for i in range(lo - reach, hi + reach + 1):
            seg = self.segment(i)
            statics = (seg.trees + seg.poles) if lo <= i <= hi else []
            for obj in [*statics, *seg.cars, *seg.people]:
                x, z = obj.at(tau) if isinstance(obj, Mover) else (obj.x, obj.z)
                anchor = np.array([x, 1.0, z])
                if not cam.in_view(anchor, 6.0, FAR):
                    continue
                item = (cam.depth(anchor), obj)
                if st.facade_l < x < st.facade_r:
                    inside.append(item)
                elif self._through_gap(cam.position, x, z, seg):
                    outside.setdefault(i, []).append(item)
        # Cross streets far to near: their walls, then what moves in them; main walls hide the rest.
        for i in sorted(planes, key=lambda i: -abs(i * SEG_LEN - zc)):
            for p in sorted(planes[i][1], key=lambda p: -cam.depth(p.corner)):
                draw_plane(canvas, cam, p, self.fog)
            self._objects(canvas, cam, tau, outside.get(i, []))
        for i in range(lo, hi + 1):
            for p in planes[i][2]:
                draw_plane(canvas, cam, p, self.fog)
        self._objects(canvas, cam, tau, inside)
        self._forget(lo - 1, hi + 1)
        return SynthFrame(self._sensor(canvas.rgb, index), canvas.label, canvas.inst)

    def _through_gap(self, eye: np.ndarray, x: float, z: float, seg: Segment) -> bool:
        """Whether an object in a cross street may be seen through the gap in the main street's walls."""
        if seg.crossing is None:
            return False
        fx = self.street.facade_r if x > 0 else self.street.facade_l
        t = (fx - eye[0]) / (x - eye[0])
        zf = eye[2] + t * (z - eye[2])
        return seg.crossing.z0 - 6.0 < zf < seg.crossing.z1 + 6.0

    def _objects(self, canvas: Canvas, cam: Camera, tau: float, items: list[tuple[float, object]]) -> None:
        # Far to near; the sort is stable, so equal depths keep the (deterministic) generation order.
        for _, obj in sorted(items, key=lambda t: -t[0]):
            if isinstance(obj, Car):
                draw_car(canvas, cam, obj, tau, self.fog, self.sun)
            elif isinstance(obj, Person):
                draw_person(canvas, cam, obj, tau, self.fog)
            elif isinstance(obj, Pole):
                draw_pole(canvas, cam, obj, self.fog)
            elif isinstance(obj, Tree):
                sprite = self._tree(obj)
                draw_sprite(canvas, cam, sprite, np.array([obj.x, 0.0, obj.z]), VEGETATION, self.fog)

    def _sky(self, cam: Camera, tau: float) -> np.ndarray:
        """Crops the sky panorama by the camera's yaw and pitch (a translation, for small angles)."""
        yaw = np.arctan2(cam.rot[2, 0], cam.rot[2, 2])
        dx = (self.f * (yaw - self.ego.yaw0) + self.wind * tau) % self.sky.shape[1]
        dy = (self.cfg.height - 1) / 2 + self.margin - cam.horizon_row()
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        # Below the horizon the ground and the backdrop cover everything; only rows above need the sky.
        rows = int(np.clip(np.ceil(cam.horizon_row()) + 3, 0, self.cfg.height))
        out = np.empty((self.cfg.height, self.cfg.width, 3), np.uint8)
        out[rows:] = np.clip(self.fog.colour, 0, 255).astype(np.uint8)
        if rows:
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            cv2.warpAffine(self.sky, m, (self.cfg.width, rows), out[:rows], flags, cv2.BORDER_WRAP)
        return out

    def _backdrop(self, canvas: Canvas, cam: Camera, z0: float) -> None:
        """Flat, fogged continuation of the street beyond the textured range, so the vanishing point is filled."""
        st, z1 = self.street, z0 + 5000.0
        height = 8.0 + 10.0 * st.downtown
        for cls, xa, xb, ya, yb in (
            (ROAD, st.road_l, st.road_r, 0.0, 0.0),
            (SIDEWALK, st.facade_l, st.road_l, 0.0, 0.0),
            (SIDEWALK, st.road_r, st.facade_r, 0.0, 0.0),
            (BUILDING, st.facade_l, st.facade_l, 0.0, height),
            (BUILDING, st.facade_r, st.facade_r, 0.0, height),
        ):
            base = {ROAD: st.asphalt, SIDEWALK: st.paving, BUILDING: np.array([150.0, 145.0, 140.0])}[cls]
            if ya == yb:
                quad = np.array([[xa, 0.0, z0], [xb, 0.0, z0], [xb, 0.0, z1], [xa, 0.0, z1]])
            else:
                quad = np.array([[xa, ya, z0], [xa, yb, z0], [xa, yb, z1], [xa, ya, z1]])
            poly3(canvas, cam, quad, self.fog.mix(base, cam.depth(quad[0]) * 1.5), cls, 0)

    def _sensor(self, rgb: np.ndarray, index: int) -> np.ndarray:
        """Global lighting drift (gain and colour temperature) through a LUT, then sensor noise."""
        t = index / self.cfg.fps
        a1, p1, ph1, a2, p2, ph2 = self.drift
        gain = self.exposure * (1.0 + a1 * np.sin(2 * np.pi * t / p1 + ph1))
        warm = a2 * np.sin(2 * np.pi * t / p2 + ph2)
        gains = gain * self.tint * np.array([1.0 + warm, 1.0, 1.0 - warm])
        lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gains[None, :], 0, 255).astype(np.uint8)
        out = cv2.LUT(rgb, lut.reshape(256, 1, 3))
        rng = np.random.default_rng([self.cfg.seed, 17, index])
        pos, neg = self.noise[int(rng.integers(_NOISE_BANK))]
        oy, ox = (int(v) for v in rng.integers(0, 16, 2))
        h, w = self.cfg.height, self.cfg.width
        out = cv2.add(out, pos[oy : oy + h, ox : ox + w])
        return cv2.subtract(out, neg[oy : oy + h, ox : ox + w])


def generate(cfg: SynthConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``cfg.frames`` frames as ``(rgb uint8 [H, W, 3], labels uint8 [H, W])``.

    Deterministic: the same config always yields byte-identical frames.

    Raises:
        ValueError: If the config is invalid (checked before the first frame).
    """
    scene = StreetScene(cfg)  # validates now, not at the first next()
    return ((f.rgb, f.labels) for f in map(scene.render, range(cfg.frames)))
