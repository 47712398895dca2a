"""Procedural textures for the synthetic street: asphalt, paving, facades, sky and tree sprites.

Every generator takes a ``numpy.random.Generator`` and is deterministic given it. Textures come with a
label image of the same size (255 marks transparent texels), so a surface's labels and colours are
always sampled from the same geometry. Sizes are padded to multiples of ``2**(MIP_LEVELS - 1)`` so each mip
level is an exact 2x reduction and levels stay registered to each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from ..classes import SYNTH_CLASSES

MIP_LEVELS = 5
_ALIGN = 1 << (MIP_LEVELS - 1)
TRANSPARENT = 255
_GRAIN = 512

ROAD, SIDEWALK, BUILDING, VEGETATION = (
    SYNTH_CLASSES.index(n) for n in ("road", "sidewalk", "building", "vegetation")
)


@dataclass(frozen=True)
class Texture:
    """An RGB mip pyramid plus a full-resolution label image.

    Attributes:
        mips: RGB uint8 levels, ``mips[k]`` is ``2**k`` times smaller than ``mips[0]``.
        label: uint8 class ids at level-0 resolution; ``TRANSPARENT`` where the surface is absent.
    """

    mips: tuple[np.ndarray, ...]
    label: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of level 0 in texels."""
        return self.label.shape[1], self.label.shape[0]


def aligned(n: float) -> int:
    """Rounds a texel count up to a multiple of the mip alignment."""
    return max(_ALIGN, int(np.ceil(n / _ALIGN)) * _ALIGN)


def make_texture(rgb: np.ndarray, label: np.ndarray) -> Texture:
    """Builds the mip pyramid of ``rgb`` (float or uint8) and freezes both arrays."""
    base = np.clip(rgb, 0, 255).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    levels = [base]
    for _ in range(1, MIP_LEVELS):
        prev = levels[-1]
        levels.append(
            cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA)
        )
    for level in levels:
        level.flags.writeable = False
    label.flags.writeable = False
    return Texture(tuple(levels), label)


def noise(rng: np.random.Generator, h: int, w: int, cell: float, wrap_x: bool = False) -> np.ndarray:
    """Smooth value noise in roughly [-1, 1] with feature size ``cell`` texels."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    if wrap_x:
        gw = max(2, int(round(w / cell)))
        grid = grid[:, :gw]
        # Tiling the lattice three times and cropping the middle makes the field periodic in x.
        big = cv2.resize(np.tile(grid, (1, 3)), (3 * w, int(gh * cell)), interpolation=cv2.INTER_CUBIC)
        return np.ascontiguousarray(big[:h, w : 2 * w])
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    return big[:h, :w]


@lru_cache(maxsize=4)
def _grain_tile(sigma: float) -> np.ndarray:
    # One fixed tile, reused at random offsets: drawing fresh Gaussian noise per texture dominated the
    # cost of building textures, and fine grain repeating every 512 texels is invisible.
    g = np.random.default_rng(20240531).standard_normal((_GRAIN, _GRAIN), dtype=np.float32)
    g = cv2.GaussianBlur(np.pad(g, 8, mode="wrap"), (0, 0), sigma)[8:-8, 8:-8]
    g /= g.std()
    g.flags.writeable = False
    return g


def grain(rng: np.random.Generator, h: int, w: int, sigma: float = 0.8) -> np.ndarray:
    """Fine per-texel grain (zero mean, unit variance), slightly blurred so it survives sampling."""
    tile = _grain_tile(sigma)
    oy, ox = (int(v) for v in rng.integers(0, _GRAIN, 2))
    return tile[np.ix_((oy + np.arange(h)) % _GRAIN, (ox + np.arange(w)) % _GRAIN)]


def _shade(rgb: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Adds a per-texel brightness offset (``[h, w]``) to a float RGB image."""
    return rgb + amount[:, :, None]


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, value: object) -> None:
    """Fills a texel rectangle given in float coordinates (end-exclusive), clipped to the image."""
    h, w = img.shape[:2]
    a, b = max(0, int(round(x0))), min(w, int(round(x1)))
    c, d = max(0, int(round(y0))), min(h, int(round(y1)))
    if a < b and c < d:
        img[c:d, a:b] = value


def leaves(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Foliage colour field: clumpy dark/light variation around a green ``base`` colour."""
    clumps = noise(rng, h, w, 6.0) * 28.0 + grain(rng, h, w, 0.7) * 18.0
    hue = noise(rng, h, w, 14.0)[:, :, None] * np.array([10.0, 14.0, 4.0], np.float32)
    return base[None, None, :] + hue + clumps[:, :, None] * np.array([0.8, 1.0, 0.6], np.float32)


# --- ground -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundSpec:
    """Where road, sidewalks and markings lie on a ground patch (all in metres, world coordinates).

    Attributes:
        x0, x1: Lateral extent of the patch; z0, z1: extent along the street (or along x for a cross street).
        road: (start, end) lateral extent of the carriageway within the patch.
        lane_lines: Lateral positions of dashed lane dividers.
        centre: Lateral position of the centre line (None for one-way).
        double_yellow: Draw the centre line as a double solid yellow line instead of dashes.
        edge_lines: Lateral positions of solid edge lines.
        cuts: Ranges along the patch's length where the cross street replaces the sidewalks,
            each ``(start, end, walk)`` with ``walk`` the cross street's sidewalk width.
        zebras: Ranges along the length with a zebra crossing over the road.
    """

    x0: float
    x1: float
    z0: float
    z1: float
    road: tuple[float, float]
    lane_lines: tuple[float, ...] = ()
    centre: float | None = None
    double_yellow: bool = False
    edge_lines: tuple[float, ...] = ()
    cuts: tuple[tuple[float, float, float], ...] = ()
    zebras: tuple[tuple[float, float], ...] = ()


def ground_texture(
    rng: np.random.Generator,
    spec: GroundSpec,
    res: float,
    asphalt: np.ndarray,
    paving: np.ndarray,
    tile: float,
) -> Texture:
    """Road and sidewalk texture; texel x runs along world lateral, texel y along the patch length.

    Patterns that must continue across patches (tiles, dashes) are phased on absolute coordinates so
    neighbouring patches join without visible seams in the markings.
    """
    w, h = aligned((spec.x1 - spec.x0) * res), aligned((spec.z1 - spec.z0) * res)
    xs = spec.x0 + (np.arange(w, dtype=np.float32) + 0.5) / res
    zs = spec.z0 + (np.arange(h, dtype=np.float32) + 0.5) / res
    on_road = (xs >= spec.road[0]) & (xs <= spec.road[1])
    label = np.where(on_road[None, :], ROAD, SIDEWALK).astype(np.uint8).repeat(h, 0)
    cut_rows = np.zeros(h, bool)
    for c0, c1, walk in spec.cuts:
        inside = (zs >= c0 + walk) & (zs <= c1 - walk)
        cut_rows |= (zs >= c0) & (zs <= c1)
        label[inside, :] = ROAD
    road_mask = label == ROAD
    grey = float(np.mean(asphalt))

    # One scalar brightness map over a three-colour palette (asphalt, paving, curb): building the texture
    # in a single RGB pass at the end keeps it cheap enough to make segments on the fly.
    asphalt_tone = noise(rng, h, w, 40.0) * 7.0 + noise(rng, h, w, 9.0) * 5.0 + grain(rng, h, w, 0.6) * 9.0
    # Paving: per-tile brightness and dark joints, phased on absolute position.
    tx = np.floor(xs / tile).astype(np.int64)
    tz = np.floor(zs / tile).astype(np.int64)
    tile_tone = ((tx[None, :] * 7919 + tz[:, None] * 104729) % 17 - 8).astype(np.float32) * 1.6
    joint_x = (xs / tile) % 1.0 < 1.5 / (tile * res)
    joint_z = (zs / tile) % 1.0 < 1.5 / (tile * res)
    pave_tone = tile_tone + grain(rng, h, w, 0.7) * 6.0 + noise(rng, h, w, 30.0) * 6.0
    pave_tone[joint_z, :] -= 28.0
    pave_tone[:, joint_x] -= 28.0
    tone = np.where(road_mask, asphalt_tone, pave_tone)
    for _ in range(int(rng.integers(0, 4))):  # repair patches
        a, c = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        b, d = a + int(rng.uniform(0.8, 3.0) * res), c + int(rng.uniform(0.8, 4.0) * res)
        tone[c:d, a:b] += grey * float(rng.uniform(-0.2, 0.15)) * road_mask[c:d, a:b]
    for _ in range(int(rng.integers(2, 7))):  # cracks
        pts = np.cumsum(rng.normal(0, 0.35 * res, (8, 2)), axis=0) + rng.uniform(0, [w, h])
        cv2.polylines(tone, [pts.astype(np.int32)], False, -0.45 * grey, 1)
    for _ in range(int(rng.integers(0, 3))):  # manholes
        cx, cz = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h)
        if road_mask[cz, cx]:
            cv2.circle(tone, (cx, cz), int(0.32 * res), -0.4 * grey, -1)
            cv2.circle(tone, (cx, cz), int(0.32 * res), -0.1 * grey, max(1, int(0.04 * res)))

    # Curb stones along the carriageway edges (not where the cross street passes), gutters beside them.
    kind = (~road_mask).astype(np.uint8)
    for edge, side in ((spec.road[0], -1.0), (spec.road[1], 1.0)):
        band = ((xs - edge) * side > 0) & ((xs - edge) * side < 0.22)
        kind[np.ix_(~cut_rows, band)] = 2
    gutter = np.zeros(w, bool)
    for edge in spec.road:
        gutter |= np.abs(xs - edge) < 0.3
    tone[np.ix_(~cut_rows, gutter)] -= 0.15 * grey * road_mask[np.ix_(~cut_rows, gutter)]
    palette = np.stack([asphalt, paving, paving * 0.35 + 120.0]).astype(np.float32)
    rgb = palette[kind] + tone[:, :, None]

    paint = np.zeros((h, w), np.float32)
    dash = ((zs % 9.0) < 3.0) & ~cut_rows
    solid = ~cut_rows
    for lx in spec.lane_lines:
        paint[np.ix_(dash, np.abs(xs - lx) < 0.07)] = 1.0
    for lx in spec.edge_lines:
        paint[np.ix_(solid, np.abs(xs - lx) < 0.08)] = 1.0
    yellow = np.zeros((h, w), np.float32)
    if spec.centre is not None:
        if spec.double_yellow:
            yellow[np.ix_(solid, np.abs(np.abs(xs - spec.centre) - 0.12) < 0.06)] = 1.0
        else:
            paint[np.ix_(dash, np.abs(xs - spec.centre) < 0.07)] = 1.0
    for a, b in spec.zebras:
        rows = (zs >= a) & (zs <= b)
        stripes = on_road & (((xs - spec.road[0]) % 1.0) < 0.5)
        paint[np.ix_(rows, stripes)] = 1.0
    # Worn paint: blend towards the paint colour by a noisy coverage, only where there is paint.
    wear = np.clip(0.75 + noise(rng, h, w, 5.0) * 0.35 + grain(rng, h, w, 0.6) * 0.1, 0.0, 1.0) * road_mask
    for cover, colour in ((paint, (225.0, 225.0, 225.0)), (yellow, (215.0, 170.0, 40.0))):
        sel = cover > 0
        k = (cover[sel] * wear[sel])[:, None]
        rgb[sel] += k * (np.array(colour, np.float32) - rgb[sel])
    return make_texture(rgb, label)


# --- facades ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildingSpec:
    """One building front: extent along the facade, height and look (metres / RGB)."""

    start: float
    end: float
    height: float
    wall: tuple[float, float, float]
    glass: tuple[float, float, float]
    floor_h: float
    win_w: float
    win_h: float
    win_pitch: float
    shop: bool
    hedge: tuple[float, float, float] | None  # (start, end, height) of a hedge in front, or None


def facade_texture(
    rng: np.random.Generator,
    buildings: list[BuildingSpec],
    start: float,
    end: float,
    res: float,
    shade: float,
) -> Texture:
    """A row of building fronts; texel x runs along the facade, texel y downwards from ``top``.

    The texture height covers the tallest building; texels above a building's roof are transparent so the
    sky shows through the skyline.
    """
    top = max(b.height for b in buildings) + 0.5
    w, h = aligned((end - start) * res), aligned(top * res)
    rgb = np.zeros((h, w, 3), np.float32)
    label = np.full((h, w), TRANSPARENT, np.uint8)
    ground_row = top * res  # texel row of street level

    def row(height_m: float) -> float:
        return ground_row - height_m * res

    for b in buildings:
        c0, c1 = (b.start - start) * res, (b.end - start) * res
        r0 = row(b.height)
        ci0, ci1, ri0 = int(round(c0)), int(round(c1)), int(round(r0))
        if ci1 <= ci0:
            continue
        label[ri0:, ci0:ci1] = BUILDING
        bw, bh = ci1 - ci0, h - ri0
        wall = np.array(b.wall, np.float32)
        block = np.empty((bh, bw, 3), np.float32)
        block[:] = wall
        block = _shade(block, noise(rng, bh, bw, 25.0) * 8.0 + grain(rng, bh, bw, 0.7) * 5.0)
        rgb[ri0:, ci0:ci1] = block
        # Cornice and floor bands give the facade horizontal structure at every distance.
        _rect(rgb, c0, r0, c1, r0 + 0.45 * res, wall * 0.7)
        # Texels above the roof are transparent, but bilinear sampling still reads them at the skyline.
        rgb[:ri0, ci0:ci1] = rgb[ri0, ci0:ci1]
        floors = int((b.height - 0.8) // b.floor_h)
        glass = np.array(b.glass, np.float32)
        for fl in range(floors):
            base = fl * b.floor_h
            if fl > 0:
                _rect(rgb, c0, row(base) - 0.12 * res, c1, row(base) + 0.06 * res, wall * 0.85)
            if fl == 0 and b.shop:
                _shop_front(rng, rgb, c0, c1, row, wall, glass, res)
                continue
            n = max(1, int((b.end - b.start - 0.6) // b.win_pitch))
            margin = (b.end - b.start - n * b.win_pitch) / 2.0
            lit = rng.random(n) < 0.12
            for i in range(n):
                x0 = c0 + (margin + i * b.win_pitch + (b.win_pitch - b.win_w) / 2.0) * res
                x1 = x0 + b.win_w * res
                y1 = row(base + 0.9)
                y0 = y1 - b.win_h * res
                _rect(rgb, x0 - 0.1 * res, y0 - 0.1 * res, x1 + 0.1 * res, y1 + 0.15 * res, wall * 1.25 + 10)
                pane = glass * rng.uniform(0.75, 1.2)
                if lit[i]:
                    pane = np.array([220.0, 190.0, 120.0], np.float32)
                _rect(rgb, x0, y0, x1, y1, pane)
                # A lighter upper pane reads as a sky reflection; a mullion splits wide windows.
                _rect(rgb, x0, y0, x1, y0 + 0.35 * (y1 - y0), pane * 1.25 + 15)
                if b.win_w > 1.1:
                    mid = (x0 + x1) / 2.0
                    _rect(rgb, mid - 0.04 * res, y0, mid + 0.04 * res, y1, wall * 1.2)
        if b.hedge is not None:
            s, e, hh = b.hedge
            hx0, hx1 = int(round((s - start) * res)), int(round((e - start) * res))
            if hx1 > hx0:
                cols = np.arange(hx0, hx1)
                bumps = (
                    hh
                    + 0.12 * np.sin(cols / res * 2.3 + rng.uniform(0, 6))
                    + noise(rng, 1, hx1 - hx0, res)[0] * 0.1
                )
                tops = np.round(ground_row - bumps * res).astype(int)
                foliage = leaves(rng, h, hx1 - hx0, np.array([60.0, 100.0, 40.0], np.float32))
                rows = np.arange(h)[:, None]
                m = rows >= tops[None, :]
                rgb[:, hx0:hx1][m] = foliage[m]
                label[:, hx0:hx1][m] = VEGETATION
    rgb *= shade
    return make_texture(rgb, label)


def _shop_front(
    rng: np.random.Generator,
    rgb: np.ndarray,
    c0: float,
    c1: float,
    row: Callable[[float], float],
    wall: np.ndarray,
    glass: np.ndarray,
    res: float,
) -> None:
    """Ground-floor shop: big windows, a door and an awning stripe."""
    awning = np.array(rng.choice([[170, 40, 40], [40, 90, 150], [40, 120, 70], [200, 160, 40]]), np.float32)
    _rect(rgb, c0 + 0.3 * res, row(3.2), c1 - 0.3 * res, row(2.7), awning)
    for k in range(int((c1 - c0) / (0.5 * res)) + 1):
        if k % 2 == 0:
            _rect(
                rgb,
                c0 + 0.3 * res + k * 0.5 * res,
                row(3.2),
                c0 + 0.3 * res + (k + 1) * 0.5 * res,
                row(2.7),
                awning * 0.7,
            )
    door = c0 + rng.uniform(0.3, 0.7) * (c1 - c0)
    _rect(rgb, c0 + 0.5 * res, row(2.5), c1 - 0.5 * res, row(0.35), glass * 0.9)
    _rect(rgb, c0 + 0.5 * res, row(2.5), c1 - 0.5 * res, row(2.2), glass * 1.3 + 20)
    _rect(rgb, door - 0.5 * res, row(2.3), door + 0.5 * res, row(0.0), wall * 0.35)


# --- sky and trees ------------------------------------------------------------------------------------


def sky_panorama(
    rng: np.random.Generator, h: int, w: int, horizon_row: float, f: float, overcast: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A sky image periodic in x, plus its colour at the horizon (used as fog colour).

    Rows map to elevation through ``f`` with the horizon at ``horizon_row``; clouds thin out towards the
    horizon as they would in perspective.
    """
    if overcast:
        zenith = np.array([150.0, 158.0, 170.0]) + rng.uniform(-10, 10, 3)
        horizon = np.array([200.0, 204.0, 208.0]) + rng.uniform(-8, 8, 3)
    else:
        zenith = np.array([60.0, 115.0, 200.0]) + rng.uniform(-15, 15, 3)
        horizon = np.array([190.0, 208.0, 226.0]) + rng.uniform(-12, 8, 3)
    elev = np.clip((horizon_row - np.arange(h, dtype=np.float32)) / f, 0.0, None)
    t = np.clip(elev / 0.7, 0.0, 1.0) ** 0.6
    grad = horizon[None, :] * (1 - t[:, None]) + zenith[None, :] * t[:, None]
    rgb = np.repeat(grad[:, None, :], w, axis=1).astype(np.float32)
    cover = rng.uniform(0.15, 0.55) if not overcast else rng.uniform(0.5, 0.9)
    field = noise(rng, h, w, 0.12 * f, wrap_x=True) * 0.7 + noise(rng, h, w, 0.035 * f, wrap_x=True) * 0.3
    dens = (
        np.clip((field - (1.0 - 2.0 * cover) * 0.6) * 2.5, 0.0, 1.0) * np.clip(elev / 0.08, 0.0, 1.0)[:, None]
    )
    cloud = np.array([245.0, 245.0, 248.0]) if not overcast else np.array([215.0, 217.0, 222.0])
    shadowed = cloud * (0.8 + 0.2 * noise(rng, h, w, 0.05 * f, wrap_x=True))[:, :, None]
    rgb += dens[:, :, None] * (shadowed - rgb)
    return np.clip(rgb, 0, 255).astype(np.uint8), horizon


@dataclass(frozen=True)
class Sprite:
    """A camera-facing cut-out: RGB mips, mask mips (uint8 0/1) and its ground anchor in level-0 texels."""

    mips: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    anchor: tuple[float, float]
    res: float


def tree_sprite(rng: np.random.Generator, res: float, height: float, crown: float) -> Sprite:
    """A street tree: tapered trunk and a clumpy crown of overlapping blobs with leafy texture."""
    w, h = aligned(crown * 2.3 * res), aligned((height + 0.3) * res)
    cx = w / 2.0
    ground = h - 0.5
    crown_c = ground - (height - crown) * res
    trunk = np.zeros((h, w), np.uint8)
    tw = rng.uniform(0.12, 0.2) * res
    cv2.fillPoly(
        trunk,
        [
            np.array(
                [[cx - tw, ground], [cx + tw, ground], [cx + tw * 0.6, crown_c], [cx - tw * 0.6, crown_c]],
                np.int32,
            )
        ],
        1,
    )
    blobs = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(6, 12))):
        r = rng.uniform(0.35, 0.6) * crown * res
        ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, crown * res - r)
        cv2.circle(
            blobs, (int(cx + dist * np.cos(ang)), int(crown_c + 0.8 * dist * np.sin(ang))), int(r), 1, -1
        )
    # Ragged outline: foliage noise eats into the blob edges.
    edge = cv2.GaussianBlur(blobs.astype(np.float32), (0, 0), 0.08 * crown * res)
    blobs = ((edge + noise(rng, h, w, 0.12 * res) * 0.25) > 0.5).astype(np.uint8)
    mask = np.maximum(trunk, blobs)
    base = np.array([55.0, 95.0, 35.0]) + rng.uniform(-15, 20, 3) * np.array([1.0, 1.0, 0.6])
    rgb = leaves(rng, h, w, base.astype(np.float32))
    light = np.clip((crown_c - np.arange(h, dtype=np.float32)) / (crown * res), -1, 1)[:, None] * 15.0
    rgb = _shade(rgb, np.broadcast_to(light, (h, w)).copy())
    bark = np.array([85.0, 70.0, 55.0], np.float32) + grain(rng, h, w, 0.5)[:, :, None] * 10.0
    rgb = np.where((trunk > blobs)[:, :, None], bark, rgb)
    tex = make_texture(rgb, mask)
    masks = [mask]
    for k in range(1, MIP_LEVELS):
        m = cv2.resize(masks[0].astype(np.float32), tex.mips[k].shape[1::-1], interpolation=cv2.INTER_AREA)
        masks.append((m >= 0.5).astype(np.uint8))
    return Sprite(tex.mips, tuple(masks), (cx, ground), res)
