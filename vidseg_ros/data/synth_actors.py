"""Drawing the movers of the synthetic street: rigid box cars and articulated walking people.

Cars are convex boxes (body and cabin) drawn with back-face culling, so their image shape changes only
through perspective. People are skeletons whose joint angles follow a gait cycle driven by the distance
walked, so their silhouettes change from frame to frame (the non-rigid class the models must handle).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

from .synth_camera import SHIFT, Camera, clip_near, screen_box, to_fixed
from .synth_draw import CAR, PERSON, Canvas, Fog, limb
from .synth_textures import SIDEWALK
from .synth_world import Car, Person

_UP = np.array([0.0, 1.0, 0.0])


def _shadow(canvas: Canvas, cam: Camera, pts: np.ndarray, factor: float) -> None:
    """Darkens the ground (road/sidewalk pixels only, so no label changes) under a world polygon."""
    box = screen_box(cam, pts)
    if box is None:
        return
    uv, x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [to_fixed(uv - [x0, y0])], 1, cv2.LINE_8, SHIFT)
    sel = mask.view(bool) & (canvas.label[y0:y1, x0:x1] <= SIDEWALK)
    roi = canvas.rgb[y0:y1, x0:x1]
    roi[sel] = (roi[sel] * factor).astype(np.uint8)


def _inset(pts: np.ndarray, k: float) -> np.ndarray:
    c = pts.mean(0)
    return c + (pts - c) * k


def _quad(a: tuple[float, float, float], b: tuple[float, float, float], axis: int) -> np.ndarray:
    """Axis-aligned rectangle between corners ``a`` and ``b`` lying in the plane where ``axis`` is constant."""
    u, v = [i for i in range(3) if i != axis]
    pts = np.tile(np.asarray(a, float), (4, 1))
    pts[[1, 2], u] = b[u]
    pts[[2, 3], v] = b[v]
    return pts


class _CarModel(NamedTuple):
    """A car's polygons in its local frame (x right, y up, z forward), in drawing order.

    ``parts`` are ``(start, end, face, colour)``: rows ``points[start:end]`` form a polygon, drawn only when
    face ``face`` (an index into ``normals``) looks at the camera, and shaded by that face; ``colour`` is one
    of paint/seam/glass/dark/hub/lamp/tail/plate. ``anchor[face]`` is a vertex on each face and ``hull`` the
    corners whose convex hull is the car's silhouette.
    """

    parts: list[tuple[int, int, int, str]]
    points: np.ndarray
    normals: np.ndarray
    anchor: np.ndarray
    hull: np.ndarray


@lru_cache(maxsize=1024)
def _car_model(car: Car, detail: bool) -> _CarModel:
    """Builds (once per car and level of detail) the polygons :func:`draw_car` projects every frame."""
    hw, hl, y0, y1, top = car.width / 2, car.length / 2, 0.28, car.body_h, car.height
    suv = top > 1.65
    normals = [[0, 1, 0], [0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0]]  # top, front, back, right, left
    parts = [
        (_quad((-hw, y1, -hl), (hw, y1, hl), 1), 0, "paint"),
        (_quad((-hw, y0, hl), (hw, y1, hl), 2), 1, "paint"),
        (_quad((-hw, y0, -hl), (hw, y1, -hl), 2), 2, "paint"),
        (_quad((hw, y0, -hl), (hw, y1, hl), 0), 3, "paint"),
        (_quad((-hw, y0, -hl), (-hw, y1, hl), 0), 4, "paint"),
    ]
    ring = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    wheel = np.stack([np.zeros(10), np.sin(ring), np.cos(ring)], 1)
    for face, a in ((3, hw + 0.01), (4, -hw - 0.01)):
        if not detail:
            # Wheels still poke out below the body; one dark strip per side keeps the outline right.
            parts.append((_quad((a, 0.0, -hl + 0.5), (a, y0 + 0.05, hl - 0.5), 0), face, "dark"))
            continue
        for b in (hl - 0.85, -hl + 0.85):
            centre = np.array([a, car.wheel_r, b])
            parts.append((centre + wheel * car.wheel_r, face, "dark"))
            parts.append((centre + wheel * car.wheel_r * 0.55, face, "hub"))
        parts.append((_quad((a, y0 + 0.08, 0.06 * hl), (a, y1 - 0.06, 0.06 * hl + 0.03), 0), face, "seam"))
    if detail:
        for face, b, lamp in ((1, hl + 0.01, "lamp"), (2, -hl - 0.01, "tail")):
            for s in (-1.0, 1.0):
                parts.append(
                    (_quad((s * (hw - 0.08), y1 - 0.22, b), (s * (hw - 0.42), y1 - 0.07, b), 2), face, lamp)
                )
                parts.append(
                    (
                        _quad((s * (hw - 0.03), 0.0, b * 0.8), (s * (hw - 0.28), y0 + 0.02, b * 0.8), 2),
                        face,
                        "dark",
                    )
                )
            pw, ph = (0.26, 0.12) if face == 2 else (0.45, 0.16)
            parts.append(
                (_quad((-pw, y0 + 0.1, b), (pw, y0 + 0.1 + ph, b), 2), face, "plate" if face == 2 else "dark")
            )
    rear, hood = (0.07, 0.22) if suv else (0.15, 0.3)
    cb0, cb1 = -hl + rear * car.length, hl - hood * car.length
    ct0, ct1 = cb0 + (0.04 if suv else 0.12) * car.length, cb1 - 0.13 * car.length
    hb, ht = hw - 0.05, hw - 0.2
    v = np.array(
        [
            [-hb, y1, cb0],
            [hb, y1, cb0],
            [hb, y1, cb1],
            [-hb, y1, cb1],
            [-ht, top, ct0],
            [ht, top, ct0],
            [ht, top, ct1],
            [-ht, top, ct1],
        ]
    )
    centre = v.mean(0)
    for idx, inset in (
        ((4, 5, 6, 7), 0.0),
        ((3, 2, 6, 7), 0.86),
        ((1, 0, 4, 5), 0.86),
        ((1, 2, 6, 5), 0.8),
        ((0, 3, 7, 4), 0.8),
    ):
        pts = v[list(idx)]
        n = np.cross(pts[1] - pts[0], pts[2] - pts[0])
        n *= np.sign(n @ (pts.mean(0) - centre)) / np.linalg.norm(n)
        normals.append(n.tolist())
        parts.append((pts, len(normals) - 1, "paint"))
        if inset:
            parts.append((_inset(pts, inset), len(normals) - 1, "glass"))
    points = np.concatenate([p for p, _, _ in parts])
    ends = np.cumsum([len(p) for p, _, _ in parts])
    spans = [
        (int(e - len(p)), int(e), face, colour) for (p, face, colour), e in zip(parts, ends, strict=True)
    ]
    anchor = np.zeros(len(normals), int)
    for start, _, face, _ in reversed(spans):
        anchor[face] = start
    hull = np.concatenate([[[a, y, b] for a in (-hw, hw) for y in (0.0, y1) for b in (-hl, hl)], v])
    return _CarModel(spans, points, np.array(normals, float), anchor, hull)


_GLASS = np.array([48.0, 58.0, 68.0])
_FIXED = {
    "dark": (22.0, 22.0, 24.0),
    "hub": (135.0, 135.0, 140.0),
    "lamp": (235.0, 235.0, 215.0),
    "tail": (175.0, 20.0, 20.0),
    "plate": (215.0, 215.0, 200.0),
}


def draw_car(canvas: Canvas, cam: Camera, car: Car, tau: float, fog: Fog, sun: np.ndarray) -> None:
    """Draws a car (body box, cabin, wheels, lights) at its position at scene time ``tau``."""
    x, z = car.at(tau)
    pos = np.array([x, 0.0, z])
    basis = np.array([[car.dz, 0.0, -car.dx], _UP, [car.dx, 0.0, car.dz]])  # local right, up, forward
    depth = cam.depth(pos)
    px = cam.f * car.height / max(depth, cam.near)  # projected height: selects the level of detail
    model = _car_model(car, px >= 16.0)
    tint = fog.at(depth)
    paint = np.asarray(car.paint)
    if px < 6.0 and depth > 5.0:
        # A few pixels tall: the silhouette is all that shows.
        uv = cam.project(cam.to_cam(model.hull @ basis + pos)).astype(np.float32)
        canvas.fill(cv2.convexHull(uv)[:, 0, :], tint(paint * 0.8), CAR, car.uid)
        return
    if px >= 16.0:
        hw, hl = car.width / 2 + 0.15, car.length / 2 + 0.1
        _shadow(canvas, cam, _quad((-hw, 0.01, -hl), (hw, 0.01, hl), 1) @ basis + pos, 0.5)
    pts = model.points @ basis + pos
    cam_pts = cam.to_cam(pts)
    n_world = model.normals @ basis
    visible = np.einsum("ij,ij->i", n_world, cam.position - pts[model.anchor]) > 1e-6
    shade = 0.55 + 0.45 * np.maximum(0.0, n_world @ sun) + 0.12 * n_world[:, 1]
    uv = cam.project(cam_pts) if bool(np.all(cam_pts[:, 2] >= cam.near)) else None
    for start, end, face, colour in model.parts:
        if not visible[face]:
            continue
        if colour == "paint":
            rgb = paint * shade[face]
        elif colour == "seam":
            rgb = paint * 0.45
        elif colour == "glass":
            rgb = _GLASS * shade[face] + 40.0 * max(0.0, float(n_world[face, 1]))
        else:
            rgb = _FIXED[colour]
        if uv is not None:
            canvas.fill(uv[start:end], tint(rgb), CAR, car.uid)
        else:
            clipped = clip_near(cam_pts[start:end], cam.near)
            if len(clipped) >= 3:
                canvas.fill(cam.project(clipped), tint(rgb), CAR, car.uid)


def draw_person(canvas: Canvas, cam: Camera, p: Person, tau: float, fog: Fog) -> None:
    """Draws a pedestrian whose limbs follow a walking gait (or idle sway when standing)."""
    x, z = p.at(tau)
    h = p.height
    pos = np.array([x, 0.0, z])
    depth = cam.depth(pos + _UP * h / 2)
    if depth < cam.near + 0.3:
        return
    fwd, side = np.array([p.dx, 0.0, p.dz]), np.array([p.dz, 0.0, -p.dx])
    if p.speed > 0:
        # One gait cycle (two steps) per 0.8 body heights walked, so feet do not slide on the ground.
        phase = p.phase0 + 2 * np.pi * p.speed * tau / (0.8 * h)
        hip_amp, arm_amp, bob = 0.45, 0.4, 0.012 * h * np.cos(2 * phase)
    else:
        phase = p.phase0 + 0.9 * tau
        hip_amp, arm_amp, bob = 0.03, 0.08, 0.0
    hip_c = pos + _UP * (0.53 * h + bob)
    sh_c = pos + _UP * (0.815 * h + bob) + fwd * 0.015 * h
    head = pos + _UP * (0.925 * h + bob) + fwd * 0.02 * h
    far = 1.0 if float(side @ (pos - cam.position)) > 0 else -1.0
    tint = fog.at(depth)
    shirt, pants, skin, hair, shoes = (
        tint(c) for c in (p.shirt, p.pants, p.skin, p.hair, (30.0, 28.0, 28.0))
    )
    uid = p.uid
    px = cam.f * h / depth  # projected height: selects the level of detail
    if px < 8.0:
        limb(canvas, cam, pos + _UP * 0.1 * h, sh_c, 0.2 * h, shirt, PERSON, uid, 1.0)
        limb(canvas, cam, pos, hip_c, 0.16 * h, pants, PERSON, uid, 1.0)
        return
    detail = px >= 24.0

    def bone(a: np.ndarray, b: np.ndarray, width: float, colour: tuple[float, float, float]) -> None:
        limb(canvas, cam, a, b, width * h, colour, PERSON, uid, 1.0)

    def direction(angle: float) -> np.ndarray:
        return np.sin(angle) * fwd - np.cos(angle) * _UP

    def leg(s: float, ph: float) -> None:
        hip = hip_c + side * s * 0.07 * h
        a = hip_amp * np.sin(ph)
        knee_flex = 0.08 + (0.95 * max(0.0, np.cos(ph)) ** 2 if p.speed > 0 else 0.0)
        knee = hip + direction(a) * 0.245 * h
        ankle = knee + direction(a - knee_flex) * 0.24 * h
        bone(hip, knee, 0.085, pants)
        bone(knee, ankle, 0.065, pants)
        if detail:
            bone(ankle, ankle + fwd * 0.11 * h - _UP * 0.02 * h, 0.045, shoes)

    def arm(s: float, ph: float) -> None:
        shoulder = sh_c + side * s * 0.11 * h - _UP * 0.015 * h
        a = arm_amp * np.sin(ph)
        elbow = shoulder + direction(a) * 0.17 * h
        hand = elbow + direction(a + 0.15 + 0.35 * max(0.0, np.sin(ph))) * 0.16 * h
        bone(shoulder, elbow, 0.055, shirt)
        bone(elbow, hand, 0.045, skin if detail and not p.sleeves else shirt)

    # Far-side limbs first, near-side last: a simple painter's order within the figure.
    arm(far, phase + (np.pi if far > 0 else 0.0))
    leg(far, phase + (0.0 if far > 0 else np.pi))
    leg(-far, phase + (np.pi if far > 0 else 0.0))
    right = cam.rot[0]
    ends = cam.to_cam(np.stack([sh_c, hip_c]))
    if np.all(ends[:, 2] > cam.near):
        uv = cam.project(ends)
        axis = uv[0] - uv[1]
        perp = np.array([-axis[1], axis[0]]) / max(1e-6, float(np.hypot(*axis)))
        spread = abs(float(side @ right)), abs(float(fwd @ right))
        half = [
            cam.f * h * (k0 * spread[0] + k1 * spread[1]) / zc
            for (k0, k1), zc in zip(((0.115, 0.075), (0.09, 0.065)), ends[:, 2], strict=True)
        ]
        quad = np.stack(
            [uv[0] + perp * half[0], uv[0] - perp * half[0], uv[1] - perp * half[1], uv[1] + perp * half[1]]
        )
        canvas.fill(quad, shirt, PERSON, uid)
    bone(sh_c, head, 0.05, skin)
    hc = cam.to_cam(head[None])
    if hc[0, 2] > cam.near:
        canvas.disc(cam.project(hc)[0], cam.f * 0.068 * h / hc[0, 2], hair, PERSON, uid)
        if detail and float(fwd @ (cam.position - pos)) > 0:
            fc = cam.to_cam((head + fwd * 0.015 * h - _UP * 0.006 * h)[None])
            canvas.disc(cam.project(fc)[0], cam.f * 0.05 * h / fc[0, 2], skin, PERSON, uid)
    arm(-far, phase + (0.0 if far > 0 else np.pi))
