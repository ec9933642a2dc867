import math

import torch

from renderers.cameras import (
    CameraSampler,
    intrinsics_from_fov,
    look_at,
    orbit_cameras,
    positions_from_spherical,
    spherical_from_positions,
    view_names,
)
from renderers.mesh import project_vertices


def test_front_camera_axes():
    cam = orbit_cameras(0.0, 0.0, 3.0, 60.0, 32, 32)
    c2w = cam.c2w[0]
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 3.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)  # x right = world +X
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)  # y down = world -Y
    assert torch.allclose(c2w[:3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)  # looks at the origin


def test_projection_pixel_centres_and_rays_agree():
    cams = orbit_cameras(torch.tensor([10.0, 35.0]), torch.tensor([20.0, -120.0]), 2.5, 50.0, 24, 16)
    o, d = cams.rays()
    pts = o + 1.7 * d  # points along the ray of every pixel
    for b in range(2):
        xy, z = project_vertices(pts[b].reshape(-1, 3), cams[b])
        j, i = torch.meshgrid(torch.arange(24) + 0.5, torch.arange(16) + 0.5, indexing="xy")
        assert torch.allclose(xy[0], torch.stack([j, i], -1).reshape(-1, 2).float(), atol=1e-4)
    # the principal ray of a centred camera points at the origin
    c = orbit_cameras(0.0, 90.0, 3.0, 40.0, 2, 2)
    assert torch.allclose(c.c2w[0, :3, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)


def test_spherical_roundtrip_and_intrinsics():
    el, az, r = (
        torch.tensor([-10.0, 0.0, 45.0, 80.0]),
        torch.tensor([-170.0, 0.0, 90.0, 179.0]),
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
    )
    p = positions_from_spherical(el, az, r)
    assert torch.allclose(
        p[2], torch.tensor([3 * math.cos(math.radians(45)), 3 * math.sin(math.radians(45)), 0.0]), atol=1e-5
    )
    e2, a2, r2 = spherical_from_positions(p)
    assert torch.allclose(e2, el, atol=1e-4) and torch.allclose(a2, az, atol=1e-4) and torch.allclose(r2, r, atol=1e-5)
    K = intrinsics_from_fov(90.0, 64, 32)
    assert torch.allclose(K[0, 1, 1], torch.tensor(16.0)) and K[0, 0, 2] == 32 and K[0, 1, 2] == 16
    cams = orbit_cameras(0.0, 0.0, 3.0, 47.0, 64, 64)
    assert torch.allclose(cams.fov_y(), torch.tensor([47.0]), atol=1e-4)


def test_look_at_straight_down_is_finite():
    c2w = look_at(torch.tensor([[0.0, 3.0, 0.0]]))
    assert torch.isfinite(c2w).all()
    assert torch.allclose(c2w[0, :3, :3] @ c2w[0, :3, :3].T, torch.eye(3), atol=1e-6)


def test_sampler_ranges_and_view_names():
    s = CameraSampler(radius=(2.0, 2.5), elevation=(0.0, 30.0), azimuth=(-180.0, 180.0), fov_y=(40.0, 50.0))
    cams = s.sample(256, 8, 8, generator=torch.Generator().manual_seed(0))
    el, az, r = cams.spherical()
    assert el.min() >= -1e-3 and el.max() <= 30 + 1e-3 and r.min() >= 2 - 1e-5 and r.max() <= 2.5 + 1e-5
    assert cams.fov_y().min() >= 40 - 1e-3 and cams.fov_y().max() <= 50 + 1e-3
    assert view_names(torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0]), torch.tensor([10.0, 90.0, 180.0, -150.0, 0.0])) == [
        "front",
        "side",
        "back",
        "back",
        "overhead",
    ]
    assert view_names(torch.tensor([0.0]), torch.tensor([50.0]), front_deg=60.0) == ["front"]
