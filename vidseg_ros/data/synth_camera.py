"""Pinhole camera, near-plane clipping and plane homographies for the synthetic street renderer.

World frame: x to the right of the street, y up, z along the street. Camera frame: x right, y down,
z forward (OpenCV convention). Pixel centres sit on integer coordinates, as in OpenCV's drawing and
warping functions, so projected points can be fed to both without half-pixel shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Fixed-point bits used for polygon vertices (cv2 ``shift``); 1/16 px keeps slow motion smooth.
SHIFT = 4
_SCALE = float(1 << SHIFT)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera with zero roll.

    Attributes:
        f: Focal length in pixels.
        width: Image width in pixels.
        height: Image height in pixels.
        position: Camera centre in world coordinates, shape ``[3]``.
        rot: World-to-camera rotation, rows are the camera's right, down and forward axes.
        near: Distance of the near clipping plane in metres.
    """

    f: float
    width: int
    height: int
    position: np.ndarray
    rot: np.ndarray
    near: float = 0.4

    @classmethod
    def looking(
        cls, position: np.ndarray, yaw: float, pitch: float, f: float, width: int, height: int
    ) -> Camera:
        """Builds a camera at ``position`` turned by ``yaw`` (right positive) and ``pitch`` (up positive)."""
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        forward = np.array([sy * cp, sp, cy * cp])
        right = np.array([cy, 0.0, -sy])
        down = np.cross(right, forward)
        return cls(f, width, height, np.asarray(position, float), np.stack([right, down, forward]))

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0

    @property
    def k(self) -> np.ndarray:
        """Intrinsic matrix."""
        return np.array([[self.f, 0.0, self.cx], [0.0, self.f, self.cy], [0.0, 0.0, 1.0]])

    def to_cam(self, pts: np.ndarray) -> np.ndarray:
        """World points ``[N, 3]`` to camera coordinates ``[N, 3]``."""
        return (np.asarray(pts, float) - self.position) @ self.rot.T

    def depth(self, pt: np.ndarray) -> float:
        """Distance of a world point along the optical axis."""
        return float((np.asarray(pt, float) - self.position) @ self.rot[2])

    def project(self, cam_pts: np.ndarray) -> np.ndarray:
        """Camera-frame points ``[N, 3]`` (in front of the camera) to pixel coordinates ``[N, 2]``."""
        z = cam_pts[:, 2:3]
        return cam_pts[:, :2] * (self.f / z) + np.array([self.cx, self.cy])

    def horizon_row(self) -> float:
        """Image row of the horizon (where the ground plane vanishes)."""
        fwd = self.rot[2]
        pitch = np.arcsin(np.clip(fwd[1], -1.0, 1.0))
        return self.cy + self.f * np.tan(pitch)

    def plane_to_image(self, origin: np.ndarray, axis_u: np.ndarray, axis_v: np.ndarray) -> np.ndarray:
        """Returns ``G`` such that ``G @ (s, t, 1)`` is the camera-frame point ``origin + s*axis_u + t*axis_v``.

        ``K @ G`` is then the homography from plane (texel) coordinates to pixels, and ``G[2]`` gives the
        depth of a plane point, which the renderer needs for fog.
        """
        cols = np.stack([axis_u, axis_v, np.asarray(origin, float) - self.position], axis=1)
        return self.rot @ cols

    def in_view(self, center: np.ndarray, radius: float, far: float) -> bool:
        """Cheap test whether a sphere may be visible (used to skip distant or off-screen objects)."""
        c = self.to_cam(np.asarray(center, float)[None])[0]
        if c[2] + radius < self.near or c[2] - radius > far:
            return False
        z = max(c[2], self.near)
        half_w = (self.width / 2.0 + 2.0) * z / self.f + radius
        half_h = (self.height / 2.0 + 2.0) * z / self.f + radius
        return abs(c[0]) < half_w and abs(c[1]) < half_h


def clip_near(cam_pts: np.ndarray, near: float) -> np.ndarray:
    """Clips a convex polygon (camera-frame vertices ``[N, 3]``) to ``z >= near`` (Sutherland-Hodgman).

    Returns the clipped vertices, possibly fewer than three when the polygon is behind the camera.
    """
    z = cam_pts[:, 2]
    if np.all(z >= near):
        return cam_pts
    if np.all(z < near):
        return cam_pts[:0]
    out = []
    n = len(cam_pts)
    for i in range(n):
        a, b = cam_pts[i], cam_pts[(i + 1) % n]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out)


def screen_box(cam: Camera, world_pts: np.ndarray) -> tuple[np.ndarray, int, int, int, int] | None:
    """Projects a world polygon clipped at the near plane: ``(uv, x0, y0, x1, y1)`` with the pixel box clamped
    to the image, or None when nothing of it is on screen."""
    clipped = clip_near(cam.to_cam(world_pts), cam.near)
    if len(clipped) < 3:
        return None
    uv = cam.project(clipped)
    x0, y0 = np.maximum(np.floor(uv.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(uv.max(0)).astype(int) + 1, [cam.width, cam.height])
    if x0 >= x1 or y0 >= y1:
        return None
    return uv, int(x0), int(y0), int(x1), int(y1)


def clip_segment(a: np.ndarray, b: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Clips a camera-frame segment to ``z >= near``; None when it is entirely behind."""
    a_in, b_in = a[2] >= near, b[2] >= near
    if a_in and b_in:
        return a, b
    if not a_in and not b_in:
        return None
    t = (near - a[2]) / (b[2] - a[2])
    p = a + t * (b - a)
    return (a, p) if a_in else (p, b)


def to_fixed(uv: np.ndarray) -> np.ndarray:
    """Pixel coordinates to the int32 fixed-point form cv2 drawing functions take with ``shift=SHIFT``."""
    # No clamping needed: near-plane clipping bounds |u| by f * 110 m / near, far below 2**31 / 16.
    return np.rint(uv * _SCALE).astype(np.int32)


def texel_density(m: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Texels per pixel (largest stretch) of the pixel-to-texel homography ``m`` at pixels ``(xs, ys)``.

    Samples where the plane lies behind the camera (w <= 0) get ``inf`` so they select the coarsest level.
    """
    x, y, w = m @ np.stack([xs, ys, np.ones_like(xs)])
    ok = w > 1e-12
    w = np.where(ok, w, 1.0)
    tx, ty = x / w, y / w
    # Jacobian of (tx, ty) with respect to pixel (x, y) via the quotient rule.
    j00 = (m[0, 0] - tx * m[2, 0]) / w
    j01 = (m[0, 1] - tx * m[2, 1]) / w
    j10 = (m[1, 0] - ty * m[2, 0]) / w
    j11 = (m[1, 1] - ty * m[2, 1]) / w
    a = j00 * j00 + j10 * j10
    b = j00 * j01 + j10 * j11
    c = j01 * j01 + j11 * j11
    lam = (a + c) / 2.0 + np.sqrt(((a - c) / 2.0) ** 2 + b * b)
    return np.where(ok, np.sqrt(lam), np.inf)
