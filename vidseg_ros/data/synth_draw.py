"""Rasterising the synthetic street into an RGB image, a label map and an instance map at once.

Every primitive that changes a colour also writes the object's class (and instance id) through the very
same OpenCV call with the same vertices, so labels match the drawn pixels exactly. Textured surfaces are
composited through one mask that is also used for their labels. The caller draws far to near.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..classes import SYNTH_CLASSES
from .synth_camera import SHIFT, Camera, clip_near, clip_segment, screen_box, texel_density, to_fixed
from .synth_textures import MIP_LEVELS, TRANSPARENT, Sprite, Texture
from .synth_world import Pole

SKY, POLE, SIGN, CAR, PERSON = (SYNTH_CLASSES.index(n) for n in ("sky", "pole", "sign", "car", "person"))
_LOD_BIAS = 0.3  # > 0 picks the coarser mip a little early: less shimmer far away for a touch of blur
_BAND = 4  # pixel spacing of the samples that choose a mip level per image band
Colour = tuple[float, float, float]


@dataclass
class Canvas:
    """The three images being drawn; ``inst`` is None when instance ids are not wanted."""

    rgb: np.ndarray
    label: np.ndarray
    inst: np.ndarray | None

    def fill(self, pts: np.ndarray, colour: Colour, cls: int, uid: int = 0) -> None:
        """Fills a polygon given in pixel coordinates ``[N, 2]``."""
        poly = [to_fixed(pts)]
        cv2.fillPoly(self.rgb, poly, colour, cv2.LINE_8, SHIFT)
        cv2.fillPoly(self.label, poly, cls, cv2.LINE_8, SHIFT)
        if self.inst is not None:
            cv2.fillPoly(self.inst, poly, uid, cv2.LINE_8, SHIFT)

    def disc(self, centre: np.ndarray, radius: float, colour: Colour, cls: int, uid: int = 0) -> None:
        c = tuple(int(v) for v in to_fixed(centre))
        r = int(round(max(radius, 0.5) * (1 << SHIFT)))
        cv2.circle(self.rgb, c, r, colour, -1, cv2.LINE_8, SHIFT)
        cv2.circle(self.label, c, r, cls, -1, cv2.LINE_8, SHIFT)
        if self.inst is not None:
            cv2.circle(self.inst, c, r, uid, -1, cv2.LINE_8, SHIFT)


@dataclass(frozen=True)
class Fog:
    """Aerial perspective: colours fade exponentially towards the horizon colour with distance."""

    colour: np.ndarray
    distance: float

    def amount(self, depth: float) -> float:
        return float(1.0 - np.exp(-max(depth, 0.0) / self.distance))

    def mix(self, colour: np.ndarray | Colour, depth: float) -> Colour:
        return self.at(depth)(colour)

    def at(self, depth: float) -> Callable[[np.ndarray | Colour], Colour]:
        """A colour mixer for one depth (objects mix many colours at the same depth)."""
        a = self.amount(depth)
        k = 1.0 - a
        f0, f1, f2 = (float(v) * a for v in self.colour)

        def mix(c: np.ndarray | Colour) -> Colour:
            return float(c[0]) * k + f0, float(c[1]) * k + f1, float(c[2]) * k + f2

        return mix

    def apply(self, rgb: np.ndarray, depth: float) -> np.ndarray:
        a = self.amount(depth)
        m = np.zeros((3, 4), np.float32)
        m[[0, 1, 2], [0, 1, 2]] = 1.0 - a
        m[:, 3] = self.colour * a
        return cv2.transform(rgb, m)


@dataclass(frozen=True)
class Plane:
    """A textured rectangle in the world.

    Attributes:
        tex: Its texture; texel (i, j) covers ``corner + [i, i+1) * du / res + [j, j+1) * dv / res``.
        corner: World position of the texture's outer corner.
        du, dv: Unit world vectors along texel x and texel y.
        extent: Metres along ``du`` and ``dv`` that are drawn (textures are padded beyond it).
        res: Texels per metre.
        vertical: True for walls (mip levels then change along image columns rather than rows).
        normal: Side the surface can be seen from, or None for two-sided.
        lo: Start of the drawn region in metres along ``du`` and ``dv`` (negative values reach past the
            texture's edge, which is then repeated); used to overlap neighbouring surfaces so that no
            pixel-wide cracks open where they meet.
    """

    tex: Texture
    corner: np.ndarray
    du: np.ndarray
    dv: np.ndarray
    extent: tuple[float, float]
    res: float
    vertical: bool
    normal: np.ndarray | None = None
    lo: tuple[float, float] = (0.0, 0.0)


def _translate(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _levels(density: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        lv = np.floor(np.log2(np.maximum(density, 1e-9)) + _LOD_BIAS)
    return np.clip(np.nan_to_num(lv, posinf=MIP_LEVELS - 1), 0, MIP_LEVELS - 1).astype(int)


def _bands(to_tex: np.ndarray, bw: int, bh: int, vertical: bool) -> list[tuple[int, int, int]]:
    """Splits the ROI into strips of constant mip level: ``(start, end, level)`` along x or y."""
    n = bw if vertical else bh
    pos = np.arange(0, n, _BAND, dtype=float) + min(_BAND, n) / 2.0 - 0.5
    other = np.full_like(pos, ((bh if vertical else bw) - 1) / 2.0)
    xs, ys = (pos, other) if vertical else (other, pos)
    lv = _levels(texel_density(to_tex, xs, ys))
    cuts = np.flatnonzero(np.diff(lv)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(lv)]])
    return [(int(s * _BAND), min(n, int(e * _BAND)), int(lv[s])) for s, e in zip(starts, ends, strict=True)]


def draw_plane(canvas: Canvas, cam: Camera, plane: Plane, fog: Fog) -> None:
    """Draws a textured plane with per-band mip levels and fog."""
    if plane.normal is not None and float(np.dot(cam.position - plane.corner, plane.normal)) <= 0.0:
        return
    (eu, ev), (su, sv) = plane.extent, plane.lo
    quad = plane.corner + np.array([[su, sv], [eu, sv], [eu, ev], [su, ev]]) @ np.stack([plane.du, plane.dv])
    box = screen_box(cam, quad)
    if box is None:
        return
    uv, x0, y0, x1, y1 = box
    bw, bh = int(x1 - x0), int(y1 - y0)
    step_u, step_v = plane.du / plane.res, plane.dv / plane.res
    g = cam.plane_to_image(plane.corner + 0.5 * (step_u + step_v), step_u, step_v)
    to_tex = np.linalg.inv(cam.k @ g) @ _translate(x0, y0)
    # Nearest sampling for labels, bilinear for colours: both read the same texel geometry.
    nearest, linear = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    label = cv2.warpPerspective(
        plane.tex.label, to_tex, (bw, bh), flags=nearest, borderMode=cv2.BORDER_REPLICATE
    )
    mask = np.zeros((bh, bw), np.uint8)
    cv2.fillPoly(mask, [to_fixed(uv - [x0, y0])], 1, cv2.LINE_8, SHIFT)
    mask &= label != TRANSPARENT
    if not mask.any():
        return
    for a, b, level in _bands(to_tex, bw, bh, plane.vertical):
        ox, oy, sw, sh = (a, 0, b - a, bh) if plane.vertical else (0, a, bw, b - a)
        s = 0.5**level
        lod = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]])
        m = lod @ to_tex @ _translate(ox, oy)
        rgb = cv2.warpPerspective(
            plane.tex.mips[level], m, (sw, sh), flags=linear, borderMode=cv2.BORDER_REPLICATE
        )
        t = to_tex @ np.array([ox + sw / 2.0, oy + sh / 2.0, 1.0])
        depth = float(g[2] @ (t / t[2])) if abs(t[2]) > 1e-12 else 1e4
        rgb = fog.apply(rgb, depth)
        ys, xs = slice(y0 + oy, y0 + oy + sh), slice(x0 + ox, x0 + ox + sw)
        cv2.copyTo(rgb, mask[oy : oy + sh, ox : ox + sw], canvas.rgb[ys, xs])
    cv2.copyTo(label, mask, canvas.label[y0:y1, x0:x1])
    if canvas.inst is not None:
        canvas.inst[y0:y1, x0:x1][mask.view(bool)] = 0


def draw_sprite(canvas: Canvas, cam: Camera, sprite: Sprite, base: np.ndarray, cls: int, fog: Fog) -> None:
    """Draws an upright camera-facing cut-out standing on world point ``base``."""
    c = cam.to_cam(base[None])[0]
    if c[2] < cam.near + 0.5:
        return
    u, v = cam.project(c[None])[0]
    scale0 = cam.f / (c[2] * sprite.res)  # pixels per level-0 texel
    level = int(_levels(np.array([1.0 / scale0]))[0])
    tex, msk = sprite.mips[level], sprite.masks[level]
    s = scale0 * (1 << level)
    ax = (sprite.anchor[0] + 0.5) / (1 << level) - 0.5
    ay = (sprite.anchor[1] + 0.5) / (1 << level) - 0.5
    h, w = msk.shape
    x0, y0 = int(max(0, np.floor(u - s * (ax + 0.5)))), int(max(0, np.floor(v - s * (ay + 0.5))))
    x1 = int(min(cam.width, np.ceil(u + s * (w - 0.5 - ax)) + 1))
    y1 = int(min(cam.height, np.ceil(v + s * (h - 0.5 - ay)) + 1))
    if x0 >= x1 or y0 >= y1:
        return
    m = np.array([[1.0 / s, 0.0, (x0 - u) / s + ax], [0.0, 1.0 / s, (y0 - v) / s + ay]])
    size = (x1 - x0, y1 - y0)
    rgb = cv2.warpAffine(
        tex, m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    mask = cv2.warpAffine(msk, m, size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    rgb = fog.apply(rgb, c[2])
    cv2.copyTo(rgb, mask, canvas.rgb[y0:y1, x0:x1])
    canvas.label[y0:y1, x0:x1][mask.view(bool)] = cls
    if canvas.inst is not None:
        canvas.inst[y0:y1, x0:x1][mask.view(bool)] = 0


def poly3(canvas: Canvas, cam: Camera, pts: np.ndarray, colour: Colour, cls: int, uid: int) -> None:
    """Fills a planar world polygon, clipped to the near plane."""
    clipped = clip_near(cam.to_cam(pts), cam.near)
    if len(clipped) >= 3:
        canvas.fill(cam.project(clipped), colour, cls, uid)


def limb(
    canvas: Canvas,
    cam: Camera,
    a: np.ndarray,
    b: np.ndarray,
    width: float,
    colour: Colour,
    cls: int,
    uid: int,
    min_px: float = 0.0,
) -> None:
    """A world segment drawn as an image-space quad of world ``width`` (at least ``min_px`` pixels)."""
    # Scalar arithmetic: this runs a dozen times per pedestrian, where numpy's per-call cost dominates.
    ca, cb = cam.rot @ (a - cam.position), cam.rot @ (b - cam.position)
    if ca[2] < cam.near or cb[2] < cam.near:
        seg = clip_segment(ca, cb, cam.near)
        if seg is None:
            return
        ca, cb = seg
    f, cx, cy = cam.f, cam.cx, cam.cy
    ax, ay = cx + f * ca[0] / ca[2], cy + f * ca[1] / ca[2]
    bx, by = cx + f * cb[0] / cb[2], cy + f * cb[1] / cb[2]
    ha, hb = max(f * width / ca[2], min_px) / 2.0, max(f * width / cb[2], min_px) / 2.0
    dx, dy = bx - ax, by - ay
    n = (dx * dx + dy * dy) ** 0.5
    if n < 1e-6:
        canvas.disc(np.array([ax, ay]), ha, colour, cls, uid)
        return
    px, py = -dy / n, dx / n
    quad = np.array(
        [
            [ax + px * ha, ay + py * ha],
            [bx + px * hb, by + py * hb],
            [bx - px * hb, by - py * hb],
            [ax - px * ha, ay - py * ha],
        ]
    )
    canvas.fill(quad, colour, cls, uid)


def _ngon(n: int, rot: float = 0.0) -> np.ndarray:
    t = rot + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1)


_SHAPES = {
    "circle": _ngon(16),
    "octagon": _ngon(8, np.pi / 8),
    "triangle": _ngon(3, np.pi / 2) * 1.25 + [0.0, -0.2],
    "diamond": _ngon(4) * 1.1,
    "square": _ngon(4, np.pi / 4) * 1.1,
    "rect": np.array([[-1.5, -0.8], [1.5, -0.8], [1.5, 0.8], [-1.5, 0.8]]),
    "light": np.array([[-1.0, -2.6], [1.0, -2.6], [1.0, 2.6], [-1.0, 2.6]]),
}


def draw_pole(canvas: Canvas, cam: Camera, pole: Pole, fog: Fog) -> None:
    """A lamp post or a sign post with its panels (panels behind the post when seen from the back)."""
    base = np.array([pole.x, 0.0, pole.z])
    depth = cam.depth(base)
    tint = fog.at(depth)
    metal = tint((105.0, 108.0, 112.0))
    up = np.array([0.0, 1.0, 0.0])

    def post() -> None:
        limb(canvas, cam, base, base + up * pole.height, pole.width, metal, POLE, 0, 1.0)
        if pole.arm:
            tip = base + np.array([pole.arm, pole.height + 0.1, 0.0])
            limb(canvas, cam, base + up * (pole.height - 0.3), tip, 0.07, metal, POLE, 0, 1.0)
            head = tint((70.0, 72.0, 75.0))
            out = np.array([np.sign(pole.arm), 0.0, 0.0])
            limb(
                canvas,
                cam,
                tip - out * 0.2 - up * 0.05,
                tip + out * 0.35 - up * 0.05,
                0.16,
                head,
                POLE,
                0,
                1.0,
            )

    front = (cam.position[2] - pole.z) * pole.panels[0].facing < 0 if pole.panels else True
    if front:
        post()
    for panel in pole.panels:
        centre = base + np.array([0.0, panel.height, -panel.facing * 0.06])
        outline = _SHAPES[panel.shape] * panel.size

        def world(shape2d: np.ndarray, centre: np.ndarray = centre) -> np.ndarray:
            return centre + np.stack([shape2d[:, 0], shape2d[:, 1], np.zeros(len(shape2d))], 1)

        if not front:
            poly3(canvas, cam, world(outline), tint((125.0, 125.0, 128.0)), SIGN, 0)
            continue
        poly3(canvas, cam, world(outline), tint(panel.outer), SIGN, 0)
        if cam.f * panel.size < 3.0 * depth:
            continue  # a few pixels across: the inner design would not show
        if panel.shape == "light":
            for k in range(3):
                lamp = panel.inner if _lamp_on(panel.inner, k) else (40.0, 40.0, 40.0)
                centre_k = centre + np.array([0.0, (1 - k) * 1.7 * panel.size, 0.0])
                poly3(canvas, cam, world(_ngon(8) * panel.size * 0.7, centre_k), tint(lamp), SIGN, 0)
        else:
            poly3(canvas, cam, world(outline * 0.7), tint(panel.inner), SIGN, 0)
    if not front:
        post()


def _lamp_on(colour: Colour, k: int) -> bool:
    """Which of the three lamps (top red, middle amber, bottom green) a traffic light's colour lights."""
    r, g, _ = colour
    lit = 0 if g < 100 else (1 if r > 150 else 2)
    return lit == k
