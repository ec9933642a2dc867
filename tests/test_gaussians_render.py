"""The Gaussian renderer against independent references: a dense brute-force compositor, finite
differences, autograd Jacobians of the pinhole map, SH orthonormality, and gsplat where it imports."""

import math

import pytest
import torch

from renderers.cameras import Cameras, orbit_cameras
from renderers.gaussians import (
    GaussianRender,
    eval_sh_colors,
    project_gaussians,
    rasterize_gaussians,
    rasterize_gaussians_dense,
    sh_basis,
)

try:
    import gsplat.cuda._torch_impl as gs_torch  # pure-torch helpers; import needs no CUDA
except Exception:  # gsplat missing, or an incompatible build
    gs_torch = None


def make_scene(n, seed=0, dtype=torch.float32, scale=(0.03, 0.15), radius=0.5, sh_degree=None, opacity=(0.05, 0.95)):
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * radius * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.randn(n, 4, generator=g)
    lo, hi = math.log(scale[0]), math.log(scale[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g))
    opac = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, generator=g)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = 0.4 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    return [t.to(dtype) for t in (means, quats, scales, opac, colors)]


def make_cams(b, w, h, dtype=torch.float32, radius=2.0):
    c = orbit_cameras(torch.linspace(-10, 40, b), torch.linspace(0, 290, b), radius, 49.0, w, h)
    return c.to(dtype=dtype)


def torch_render(*args, **kw):
    return rasterize_gaussians(*args, backend="torch", **kw)


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_size", [16, 8])
def test_tiles_match_dense_reference(tile_size):
    scene = make_scene(300, opacity=(0.3, 1.0))
    cams = make_cams(2, 40, 36)  # not multiples of the tile size
    bg = torch.tensor([0.2, 0.3, 0.4])
    out = torch_render(*scene, cams, bg, tile_size=tile_size)
    ref = rasterize_gaussians_dense(*scene, cams, bg)
    assert isinstance(out, GaussianRender)
    assert out.rgb.shape == (2, 36, 40, 3) and out.alpha.shape == out.depth.shape == (2, 36, 40, 1)
    assert out.means2d.shape == (2, 300, 2) and out.radii.shape == (2, 300)
    # the scene is dense enough that pixels saturate (the stopping rule and the 0.99 clamp fire)
    assert (out.alpha > 1 - 1e-3).float().mean() > 0.05 and (out.alpha < 1e-3).any()
    for name in ("rgb", "alpha", "depth"):
        err = (getattr(out, name) - getattr(ref, name)).abs()
        assert err.mean() <= 1e-4, (name, err.mean())
    assert torch.equal(out.radii, ref.radii)


def test_batch_equals_per_camera_renders():
    scene = make_scene(150)
    cams = make_cams(3, 24, 20)
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.2, 0.1]])
    batch = torch_render(*scene, cams, bg)
    for i in range(3):
        one = torch_render(*scene, cams[i], bg[i])
        for name in ("rgb", "alpha", "depth", "means2d"):
            torch.testing.assert_close(getattr(batch, name)[i], getattr(one, name)[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(batch.radii[i], one.radii[0])


def test_empty_scene_gives_background():
    cams = make_cams(2, 16, 12)
    z = torch.zeros(0, 3)
    bg = torch.tensor([0.1, 0.7, 0.3])
    out = torch_render(z, torch.zeros(0, 4), z, torch.zeros(0), z, cams, bg)
    assert torch.allclose(out.rgb, bg.expand(2, 12, 16, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    assert out.means2d.shape == (2, 0, 2) and out.radii.shape == (2, 0)
    # all Gaussians behind the cameras: also background
    means, quats, scales, opac, colors = make_scene(20)
    behind = cams[0].origins[0] * 3  # far behind camera 0, which looks at the origin
    out = torch_render(means * 0.01 + behind, quats, scales, opac, colors, cams[0], bg)
    assert torch.allclose(out.rgb, bg.expand(1, 12, 16, 3)) and (out.radii == 0).all()


def test_single_gaussian_matches_closed_form():
    """An isotropic Gaussian facing the camera: a 2D Gaussian with sigma = f s / z (plus the 0.3 px^2
    filter) centred on the principal point."""
    W = H = 33
    K = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    c2w = torch.eye(4)
    c2w[2, 3] = -2.0  # camera at z = -2 looking down +z at the origin
    cam = Cameras(c2w, K, W, H)
    s = 0.05
    out = torch_render(
        torch.zeros(1, 3),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.full((1, 3), s),
        torch.tensor([0.8]),
        torch.tensor([[1.0, 0.5, 0.25]]),
        cam,
    )
    var = (40.0 * s / 2.0) ** 2 + 0.3
    j, i = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    a = 0.8 * torch.exp(-0.5 * ((j - W / 2) ** 2 + (i - H / 2) ** 2) / var)
    a = torch.where(a < 1 / 255, torch.zeros_like(a), a)
    torch.testing.assert_close(out.alpha[0, ..., 0], a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.rgb[0], a[..., None] * torch.tensor([1.0, 0.5, 0.25]), rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.depth[0][a > 0], torch.tensor(2.0))
    torch.testing.assert_close(out.means2d[0, 0], torch.tensor([W / 2, H / 2]))


def test_sh_path_matches_dense_and_degree_zero_is_plain_colour():
    scene = make_scene(200, sh_degree=3)
    cams = make_cams(2, 32, 32)
    out = torch_render(*scene, cams, sh_degree=3)
    ref = rasterize_gaussians_dense(*scene, cams, sh_degree=3)
    assert (out.rgb - ref.rgb).abs().mean() <= 1e-4
    # view dependence: degree 3 differs from degree 0 on the same coefficients
    dc_only = torch_render(*scene, cams, sh_degree=0)
    assert (dc_only.rgb - out.rgb).abs().mean() > 1e-3
    # degree 0 is the plain colour SH0 * c0 + 0.5
    means, quats, scales, opac, sh = scene
    plain = torch_render(means, quats, scales, opac, (sh[:, 0] * 0.28209479177387814 + 0.5).clamp_min(0), cams)
    torch.testing.assert_close(dc_only.rgb, plain.rgb, rtol=1e-5, atol=1e-5)


def test_sh_basis_is_orthonormal():
    n = 200_000  # Fibonacci sphere quadrature
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (1 + 5**0.5) * k
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    Y = sh_basis(3, dirs)
    gram = Y.T @ Y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)


def test_projection_matches_autograd_jacobian():
    """means2d is K x / z, and cov2d is J Sigma_cam J^T + 0.3 I with J the Jacobian of the pinhole map
    (taken here by autograd) for Gaussians inside the view."""
    means, quats, scales, _, _ = make_scene(40, dtype=torch.float64)
    cams = make_cams(2, 64, 48, dtype=torch.float64)
    proj = project_gaussians(means, quats, scales, cams.viewmats, cams.K, 64, 48)
    from renderers.gaussians import covariances

    cov3 = covariances(quats, scales)
    for b in range(2):
        R, t, K = cams.viewmats[b, :3, :3], cams.viewmats[b, :3, 3], cams.K[b]
        pin = lambda x: (K[:2, :2] @ (x[:2] / x[2])) + K[:2, 2]  # noqa: E731
        for n in range(40):
            pc = R @ means[n] + t
            torch.testing.assert_close(proj.means2d[b, n], pin(pc))
            J = torch.autograd.functional.jacobian(pin, pc)
            want = J @ R @ cov3[n] @ R.T @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
            torch.testing.assert_close(proj.cov2d[b, n], want)
            torch.testing.assert_close(proj.depths[b, n], pc[2])


@pytest.mark.skipif(gs_torch is None, reason="gsplat not installed")
def test_projection_and_sh_match_gsplat_torch_helpers():
    means, quats, scales, _, sh = make_scene(60, dtype=torch.float64, sh_degree=3)
    means = means * 3  # some Gaussians off-screen, so the Jacobian clamp is exercised
    cams = make_cams(3, 64, 48, dtype=torch.float64)
    proj = project_gaussians(means, quats, scales, cams.viewmats, cams.K, 64, 48)
    covars, _ = gs_torch._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = gs_torch._fully_fused_projection(
        means, covars, cams.viewmats, cams.K, 64, 48, eps2d=0.3
    )
    ok = proj.valid
    assert ok.any()
    torch.testing.assert_close(proj.means2d[ok], means2d[ok])
    torch.testing.assert_close(proj.conics[ok], conics[ok])
    torch.testing.assert_close(proj.depths, depths)
    for deg in range(4):
        dirs = means[None] - cams.origins[:, None]
        want = torch.clamp_min(gs_torch._spherical_harmonics(deg, dirs, sh[None].expand(3, -1, -1, -1)) + 0.5, 0)
        torch.testing.assert_close(eval_sh_colors(sh, deg, means, cams.origins), want)


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------


def _loss(render, wts):
    return sum((getattr(render, k) * w).sum() for k, w in wts.items())


@pytest.mark.parametrize("sh_degree", [None, 2])
def test_gradients_match_finite_differences(sh_degree):
    dt = torch.float64
    scene = make_scene(6, seed=3, dtype=dt, scale=(0.08, 0.25), radius=0.35, sh_degree=sh_degree, opacity=(0.3, 0.9))
    cams = make_cams(2, 14, 12, dtype=dt, radius=1.6)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=dt)
    g = torch.Generator().manual_seed(1)
    wts = {k: torch.rand(2, 12, 14, c, generator=g, dtype=dt) for k, c in (("rgb", 3), ("alpha", 1), ("depth", 1))}
    params = [p.clone().requires_grad_(True) for p in scene]
    out = torch_render(*params, cams, bg, sh_degree=sh_degree)
    assert (out.alpha > 0.2).float().mean() > 0.2  # the Gaussians cover the views
    _loss(out, wts).backward()
    eps = 1e-6
    for idx, (name, p) in enumerate(zip(("means", "quats", "scales", "opacities", "colors"), params)):
        num = torch.zeros_like(p)
        flat = num.view(-1)
        for i in range(p.numel()):
            hi, lo = [q.detach().clone() for q in params], [q.detach().clone() for q in params]
            hi[idx].view(-1)[i] += eps
            lo[idx].view(-1)[i] -= eps
            with torch.no_grad():
                flat[i] = (
                    _loss(torch_render(*hi, cams, bg, sh_degree=sh_degree), wts)
                    - _loss(torch_render(*lo, cams, bg, sh_degree=sh_degree), wts)
                ) / (2 * eps)
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, num, rtol=1e-5, atol=1e-6 * num.abs().max(), msg=lambda m: f"{name}: {m}")


def test_gradients_match_dense_reference_and_means2d_retains_grad():
    scene = make_scene(120, dtype=torch.float64, opacity=(0.3, 1.0))
    cams = make_cams(2, 24, 20, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    wts = {
        k: torch.rand(2, 20, 24, c, generator=g, dtype=torch.float64)
        for k, c in (("rgb", 3), ("alpha", 1), ("depth", 1))
    }
    grads = []
    for fn in (torch_render, rasterize_gaussians_dense):
        params = [p.clone().requires_grad_(True) for p in scene]
        out = fn(*params, cams)
        out.means2d.retain_grad()
        _loss(out, wts).backward()
        grads.append([p.grad for p in params] + [out.means2d.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    m2g = grads[0][-1]
    assert m2g.abs().sum() > 0 and m2g.shape == (2, 120, 2)


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------


def test_gradients_are_bitwise_repeatable():
    """Same inputs, same gradients, to the last bit: the compositor gathers each Gaussian into every tile it
    touches, and sums those rows back with index_add_ (deterministic on CPU); the backward of plain indexing
    (index_put_ with accumulate) sums them in a different order from one call to the next."""
    scene = [t.requires_grad_(True) for t in make_scene(3000, scale=(0.02, 0.2))]
    cams = make_cams(2, 96, 96)
    g = torch.randn(2, 96, 96, 3, generator=torch.Generator().manual_seed(1))
    grads = []
    for _ in range(4):
        for t in scene:
            t.grad = None
        torch_render(*scene, cams, torch.zeros(3)).rgb.backward(g)
        grads.append(torch.cat([t.grad.reshape(-1) for t in scene]))
    assert all(torch.equal(x, grads[0]) for x in grads[1:])


def test_backend_selection_and_errors():
    scene = make_scene(10)
    cams = make_cams(1, 8, 8)
    auto = rasterize_gaussians(*scene, cams)  # CPU tensors: the torch backend
    torch.testing.assert_close(auto.rgb, torch_render(*scene, cams).rgb)
    with pytest.raises(RuntimeError, match="CUDA"):
        rasterize_gaussians(*scene, cams, backend="gsplat")
    with pytest.raises(ValueError, match="backend"):
        rasterize_gaussians(*scene, cams, backend="vulkan")
    with pytest.raises(ValueError, match="opacities"):
        rasterize_gaussians(scene[0], scene[1], scene[2], scene[3][:, None], scene[4], cams)
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize_gaussians(*scene, cams, sh_degree=1)
    with pytest.raises(ValueError, match="background"):
        rasterize_gaussians(*scene, cams, torch.zeros(4))


@pytest.mark.cuda
def test_cuda_torch_matches_gsplat():
    pytest.importorskip("gsplat")
    dev = torch.device("cuda")
    # opacities below 0.99 / 0.999 so that the backends' alpha clamps never differ
    scene = [t.to(dev) for t in make_scene(400, opacity=(0.05, 0.9))]
    cams = make_cams(3, 64, 48).to(device=dev)
    bg = torch.tensor([0.2, 0.3, 0.4], device=dev)
    g = torch.Generator().manual_seed(0)
    wts = {k: torch.rand(3, 48, 64, c, generator=g).to(dev) for k, c in (("rgb", 3), ("alpha", 1), ("depth", 1))}
    res = {}
    for backend in ("torch", "gsplat"):
        params = [p.clone().requires_grad_(True) for p in scene]
        out = rasterize_gaussians(*params, cams, bg, backend=backend)
        out.means2d.retain_grad()
        _loss(out, wts).backward()
        res[backend] = (out, [p.grad for p in params] + [out.means2d.grad])
    (a, ga), (b, gb) = res["torch"], res["gsplat"]
    for name in ("rgb", "alpha", "depth"):
        assert (getattr(a, name) - getattr(b, name)).abs().mean() < 1e-4, name
    assert ((a.radii > 0) == (b.radii > 0)).float().mean() > 0.99
    for name, x, y in zip(("means", "quats", "scales", "opacities", "colors", "means2d"), ga, gb):
        rel = (x - y).norm() / y.norm().clamp_min(1e-12)
        assert rel < 1e-2, (name, rel)
