"""Cameras: one convention for every renderer in this package.

World: right-handed, **+Y is up**, an object's front faces **+Z** (the glTF convention, so exported
meshes stand upright and face the viewer in Blender and in browsers).

Camera: OpenCV axes, as gsplat expects: **x right, y down, z forward** (the camera looks down its +Z).
``c2w`` maps camera coordinates to world coordinates; ``viewmats`` (world-to-camera) is its inverse.

Pixels: pixel (row i, column j) covers [j, j+1) x [i, i+1); its centre is at (j + 0.5, i + 0.5).
Intrinsics ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` project a camera point (x, y, z) to
(fx x / z + cx, fy y / z + cy) in those pixel units.

Spherical poses: ``azimuth`` 0 puts the camera on the +Z axis, looking at the object's front; it grows
towards +X (counter-clockwise seen from above). ``elevation`` is positive above the XZ plane. Angles are
in degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of B pinhole cameras that share one image size."""

    c2w: Tensor  # (B, 4, 4) camera-to-world
    K: Tensor  # (B, 3, 3) intrinsics in pixels
    width: int
    height: int

    def __post_init__(self):
        if self.c2w.ndim == 2:
            self.c2w = self.c2w[None]
        if self.K.ndim == 2:
            self.K = self.K[None]
        if self.c2w.shape[-2:] != (4, 4) or self.K.shape[-2:] != (3, 3):
            raise ValueError(f"c2w must be (B,4,4) and K (B,3,3); got {tuple(self.c2w.shape)}, {tuple(self.K.shape)}")
        if self.c2w.shape[0] != self.K.shape[0]:
            raise ValueError(f"c2w and K hold different batch sizes: {self.c2w.shape[0]} vs {self.K.shape[0]}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(self.c2w[idx], self.K[idx], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def viewmats(self) -> Tensor:
        """(B, 4, 4) world-to-camera matrices."""
        return rigid_inverse(self.c2w)

    @property
    def origins(self) -> Tensor:
        """(B, 3) camera centres in world space."""
        return self.c2w[:, :3, 3]

    def to(self, device=None, dtype=None) -> "Cameras":
        # non_blocking from the host only: a host-to-device copy need not wait for the device's queue, while a
        # device-to-host one must finish before the host reads it
        nb = self.c2w.device.type == "cpu"
        return Cameras(
            self.c2w.to(device=device, dtype=dtype, non_blocking=nb),
            self.K.to(device=device, dtype=dtype, non_blocking=nb),
            self.width,
            self.height,
        )

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras at another resolution (the field of view is kept)."""
        K = self.K.clone()
        K[:, 0] *= width / self.width
        K[:, 1] *= height / self.height
        return Cameras(self.c2w, K, width, height)

    def spherical(self) -> tuple[Tensor, Tensor, Tensor]:
        """(elevation_deg, azimuth_deg, radius) of each camera centre about the world origin."""
        return spherical_from_positions(self.origins)

    def fov_y(self) -> Tensor:
        """(B,) vertical field of view in degrees."""
        return torch.rad2deg(2 * torch.atan(self.height / (2 * self.K[:, 1, 1])))

    def rays(self) -> tuple[Tensor, Tensor]:
        """World-space rays through every pixel centre: origins and unit directions, each (B, H, W, 3)."""
        B = len(self)
        dev, dt = self.c2w.device, self.c2w.dtype
        j, i = torch.meshgrid(
            torch.arange(self.width, device=dev, dtype=dt) + 0.5,
            torch.arange(self.height, device=dev, dtype=dt) + 0.5,
            indexing="xy",
        )  # (H, W)
        fx, fy = self.K[:, 0, 0, None, None], self.K[:, 1, 1, None, None]
        cx, cy = self.K[:, 0, 2, None, None], self.K[:, 1, 2, None, None]
        d_cam = torch.stack(
            [(j - cx) / fx, (i - cy) / fy, torch.ones(B, self.height, self.width, device=dev, dtype=dt)], -1
        )
        d = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], d_cam)
        d = d / d.norm(dim=-1, keepdim=True)
        o = self.origins[:, None, None, :].expand_as(d)
        return o, d


def rigid_inverse(m: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms (rotation + translation), batched."""
    R, t = m[..., :3, :3], m[..., :3, 3:]
    out = torch.zeros_like(m)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


def project_points(points: Tensor, cameras: "Cameras") -> tuple[Tensor, Tensor]:
    """World points (T, 3) to pixel coordinates (B, T, 2) (pixel centres at +0.5) and camera-space z (B, T)."""
    vm = cameras.viewmats.to(points)
    c = torch.einsum("bij,tj->bti", vm[:, :3, :3], points) + vm[:, None, :3, 3]
    z = c[..., 2]
    K = cameras.K.to(points)
    zs = z.clamp_min(1e-8)
    x = K[:, None, 0, 0] * c[..., 0] / zs + K[:, None, 0, 2]
    y = K[:, None, 1, 1] * c[..., 1] / zs + K[:, None, 1, 2]
    return torch.stack([x, y], -1), z


def pixel_bins(xy: Tensor, width: int, height: int) -> Tensor:
    """Flat pixel index ``row * width + col`` of pixel coordinates (..., 2) from :func:`project_points`;
    points off the image go to one spare bin, ``width * height``, so they can be scattered without masking."""
    u, v = xy.floor().long().unbind(-1)
    on_screen = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return torch.where(on_screen, v * width + u, width * height)


def intrinsics_from_fov(fov_y_deg: Tensor | float, width: int, height: int) -> Tensor:
    """(B, 3, 3) intrinsics with square pixels and the principal point at the image centre."""
    fov = torch.as_tensor(fov_y_deg, dtype=torch.float32).reshape(-1)
    f = height / (2 * torch.tan(torch.deg2rad(fov) / 2))
    K = torch.zeros(fov.shape[0], 3, 3)
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = width / 2
    K[:, 1, 2] = height / 2
    K[:, 2, 2] = 1
    return K


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """(B, 4, 4) camera-to-world poses at ``eye`` (B, 3) looking at ``target`` with +Y as world up."""
    eye = torch.as_tensor(eye, dtype=torch.float32).reshape(-1, 3)
    target = torch.zeros_like(eye) if target is None else torch.as_tensor(target, dtype=eye.dtype).expand_as(eye)
    up = (
        torch.tensor([0.0, 1.0, 0.0]).expand_as(eye)
        if up is None
        else torch.as_tensor(up, dtype=eye.dtype).expand_as(eye)
    )
    z = torch.nn.functional.normalize(target - eye, dim=-1)  # forward
    x = torch.cross(z, up, dim=-1)  # right = forward x up (OpenCV: y points down)
    # Looking straight up or down: the up vector is parallel to forward, so pick world -Z as "up".
    degenerate = x.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt = torch.tensor([0.0, 0.0, -1.0]).expand_as(eye)
        x = torch.where(degenerate[:, None], torch.cross(z, alt, dim=-1), x)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.cross(z, x, dim=-1)  # down
    c2w = torch.eye(4).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    return c2w


def positions_from_spherical(elevation_deg: Tensor, azimuth_deg: Tensor, radius: Tensor) -> Tensor:
    """(B, 3) points; azimuth 0 lies on +Z and 90 on +X, elevation 90 on +Y."""
    el, az = (
        torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float32)),
        torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float32)),
    )
    r = torch.as_tensor(radius, dtype=torch.float32)
    el, az, r = torch.broadcast_tensors(el.reshape(-1), az.reshape(-1), r.reshape(-1))
    return torch.stack([r * torch.cos(el) * torch.sin(az), r * torch.sin(el), r * torch.cos(el) * torch.cos(az)], -1)


def spherical_from_positions(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`positions_from_spherical`; azimuth in (-180, 180]."""
    r = p.norm(dim=-1)
    el = torch.rad2deg(torch.asin((p[..., 1] / r.clamp_min(1e-12)).clamp(-1, 1)))
    az = torch.rad2deg(torch.atan2(p[..., 0], p[..., 2]))
    return el, az, r


def orbit_cameras(
    elevation_deg: Tensor | float,
    azimuth_deg: Tensor | float,
    radius: Tensor | float,
    fov_y_deg: Tensor | float,
    width: int,
    height: int,
    target: Tensor | None = None,
) -> Cameras:
    """Cameras on a sphere around ``target`` (default: the origin), looking at it."""
    el, az, r, fov = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (elevation_deg, azimuth_deg, radius, fov_y_deg))
    )
    target = torch.zeros(3) if target is None else torch.as_tensor(target, dtype=torch.float32)
    eye = positions_from_spherical(el, az, r) + target
    return Cameras(look_at(eye, target), intrinsics_from_fov(fov, width, height), width, height)


def turntable_cameras(
    n: int, elevation_deg: float, radius: float, fov_y_deg: float, width: int, height: int
) -> Cameras:
    """``n`` cameras evenly spaced in azimuth, starting at the front."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return orbit_cameras(elevation_deg, az, radius, fov_y_deg, width, height)


@dataclass
class CameraSampler:
    """The distribution of random training cameras (ranges are inclusive [low, high])."""

    radius: tuple[float, float] = (2.6, 3.2)
    elevation: tuple[float, float] = (-10.0, 80.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    fov_y: tuple[float, float] = (40.0, 50.0)

    def __post_init__(self):
        # Checked when the config is built: a zero radius or field of view would only fail at the first step,
        # after --overwrite had already cleared the earlier run.
        for name in ("radius", "elevation", "azimuth", "fov_y"):
            rng = getattr(self, name)
            if len(rng) != 2 or not rng[0] <= rng[1]:
                raise ValueError(f"{name} must be a range [low, high] with low <= high, got {list(rng)}")
        if self.radius[0] <= 0:
            raise ValueError(f"radius must be above 0 (the camera's distance to the centre), got {list(self.radius)}")
        if not (0 < self.fov_y[0] and self.fov_y[1] < 180):
            raise ValueError(f"fov_y must lie between 0 and 180 degrees, got {list(self.fov_y)}")

    def sample(self, n: int, width: int, height: int, generator: torch.Generator | None = None) -> Cameras:
        u = torch.rand(4, n, generator=generator)
        lerp = lambda rng, x: rng[0] + (rng[1] - rng[0]) * x  # noqa: E731
        return orbit_cameras(
            lerp(self.elevation, u[0]),
            lerp(self.azimuth, u[1]),
            lerp(self.radius, u[2]),
            lerp(self.fov_y, u[3]),
            width,
            height,
        )


def view_names(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    front_deg: float = 45.0,
    back_deg: float = 45.0,
    overhead_deg: float = 60.0,
) -> list[str]:
    """DreamFusion's view words per camera: 'overhead' above ``overhead_deg`` elevation, else 'front'
    within ``front_deg`` of azimuth 0, 'back' within ``back_deg`` of 180, and 'side' in between."""
    out = []
    for el, az in zip(
        torch.as_tensor(elevation_deg).reshape(-1).tolist(), torch.as_tensor(azimuth_deg).reshape(-1).tolist()
    ):
        az = (az + 180.0) % 360.0 - 180.0
        if el > overhead_deg:
            out.append("overhead")
        elif abs(az) <= front_deg:
            out.append("front")
        elif abs(az) >= 180.0 - back_deg:
            out.append("back")
        else:
            out.append("side")
    return out
