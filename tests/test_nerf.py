"""NeRF representation: hash grid against brute force, density blob, shading, regularisers, fitting."""

import io
import itertools
import math

import pytest
import torch

from dream3d.representations.nerf import (
    HASH_PRIMES,
    HashGrid,
    NeRFConfig,
    NeRFModel,
    entropy_loss,
    opacity_loss,
    orientation_penalty,
    orientation_per_ray,
    occupancy_grid_for,
    pick_shading,
    refresh_occupancy_grid,
    sample_light_positions,
)
from renderers.cameras import orbit_cameras
from renderers.volume import render_volume

TINY = dict(
    levels=4,
    log2_table_size=10,
    features_per_level=2,
    base_resolution=4,
    max_resolution=32,
    hidden_dim=16,
    num_samples=24,
)


def brute_force_encoding(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation written point by point with Python integers."""
    T, Fd = grid.table_size, grid.features
    out = torch.zeros(x.shape[0], len(grid.resolutions) * Fd, dtype=torch.float64)
    table = grid.table.detach().double()
    for p in range(x.shape[0]):
        for lvl, n in enumerate(grid.resolutions):
            pos = [float(v) * n for v in x[p]]
            base = [min(max(math.floor(v), 0), n - 1) for v in pos]
            frac = [v - b for v, b in zip(pos, base)]
            for corner in itertools.product((0, 1), repeat=3):
                v = [b + c for b, c in zip(base, corner)]
                w = 1.0
                for c, f in zip(corner, frac):
                    w *= f if c else 1 - f
                if (n + 1) ** 3 <= T:
                    row = v[0] * (n + 1) ** 2 + v[1] * (n + 1) + v[2]
                else:
                    row = ((v[0] * HASH_PRIMES[0]) ^ (v[1] * HASH_PRIMES[1]) ^ (v[2] * HASH_PRIMES[2])) % T
                out[p, lvl * Fd : (lvl + 1) * Fd] += w * table[grid.offsets[lvl] + row]
    return out


def random_grid(seed=0, **kw) -> HashGrid:
    torch.manual_seed(seed)
    grid = HashGrid(**kw)
    with torch.no_grad():
        grid.table.normal_()  # large values, so interpolation errors would show
    return grid


def test_hash_grid_levels_dense_then_hashed():
    grid = HashGrid(levels=3, log2_table_size=10, features=2, base_resolution=4, max_resolution=16)
    assert grid.resolutions == [4, 8, 16]
    assert grid.dense == [True, True, False]  # 5^3, 9^3 <= 1024 < 17^3
    assert grid.offsets == [0, 125, 125 + 729, 125 + 729 + 1024]


def test_hash_grid_matches_brute_force_trilinear():
    grid = random_grid(levels=3, log2_table_size=10, features=2, base_resolution=4, max_resolution=16)
    x = torch.rand(40, 3, dtype=torch.float64)
    x[0] = torch.tensor([0.0, 0.0, 0.0])
    x[1] = torch.tensor([1.0, 1.0, 1.0])  # the far corner of the grid
    x[2] = torch.tensor([0.25, 0.5, 0.75])  # exactly on vertices of every level
    ref = brute_force_encoding(grid, x)
    got = grid(x.float()).double()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_hash_grid_is_continuous_across_cell_faces():
    grid = random_grid(levels=3, log2_table_size=10, features=2, base_resolution=4, max_resolution=16)
    x = torch.rand(50, 3, dtype=torch.float64)
    x[:, 0] = 5 / 16  # a face of the finest level's cells (and within cells of the coarser ones)
    for delta in (1e-4, 1e-6):
        lo, hi = x.clone(), x.clone()
        lo[:, 0] -= delta
        hi[:, 0] += delta
        gap = (grid(hi.float()) - grid(lo.float())).abs().max()
        assert gap < 40 * delta * 16 + 1e-5  # Lipschitz: |table| * N_max * step, with margin
    # and a vertex in the middle of a cell moves the output smoothly too
    far = (grid(torch.full((1, 3), 0.31)) - grid(torch.full((1, 3), 0.3))).abs().max()
    assert far > 1e-3  # the encoding is not constant


def test_gradients_reach_hash_tables_and_both_paths_agree():
    grid = random_grid(levels=3, log2_table_size=10, features=2, base_resolution=4, max_resolution=16)
    x = torch.rand(64, 3)
    wts = torch.randn(64, grid.out_dim)
    (grid(x) * wts).sum().backward()  # memory-light custom path (x needs no grad)
    g_custom = grid.table.grad.clone()
    grid.table.grad = None
    xg = x.clone().requires_grad_(True)
    (grid(xg) * wts).sum().backward()  # plain autograd path
    torch.testing.assert_close(g_custom, grid.table.grad)
    touched = (g_custom.abs().sum(-1) > 0).sum()
    assert touched > 64  # many rows receive gradient ...
    assert touched < grid.table.shape[0]  # ... and not every row does
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_density_blob_is_highest_at_the_centre():
    model = NeRFModel(NeRFConfig(**TINY))
    dirs = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    radii = torch.linspace(0, 0.95, 20)
    with torch.no_grad():
        mean_density = torch.stack([model.density(dirs * r).mean() for r in radii])
    assert mean_density.argmax() == 0
    assert torch.all(mean_density[1:] < mean_density[:-1])  # decays with radius
    assert mean_density[-1] < 0.01 * mean_density[0]
    # its normals point outwards from the centre
    p = dirs * 0.3
    cos = (model.normals(p) * dirs).sum(-1)
    assert cos.min() > 0.95


def test_seen_density_is_empty_outside_the_sphere_rays_see():
    # A blob wider than the scene: density everywhere in the cube, also in its corners, which no ray reaches.
    model = NeRFModel(NeRFConfig(**(TINY | {"blob_radius": 3.0})))
    corners = torch.tensor(list(itertools.product([-0.95, 0.95], repeat=3)))
    inside = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1) * torch.rand(64, 1) * 0.99
    with torch.no_grad():
        assert model.density(corners).min() > 1.0
        assert torch.all(model.seen_density(corners) == 0)
        assert torch.equal(model.seen_density(inside), model.density(inside))
        # so the mesh stage's grid over the whole cube has a surface at the sphere, not at the cube's faces
        from dream3d.mesh.density import function_density_grid, make_grid
        from dream3d.mesh.extract import marching_cubes

        grid = make_grid(1.0, 24)
        field = function_density_grid(model.seen_density, grid)
    v, _ = marching_cubes(field, grid, level=0.5)
    r = torch.from_numpy(v).float().norm(dim=-1)
    assert (r - 1).abs().max() < 2.0 / 23  # within one voxel of the unit sphere


def test_shading_modes_give_valid_colours_and_textureless_ignores_albedo():
    torch.manual_seed(0)
    model = NeRFModel(NeRFConfig(**TINY, background="fixed"))
    cams = orbit_cameras(15.0, [0.0, 100.0], 3.0, 45.0, 12, 12)
    lights = sample_light_positions(cams, model.cfg, torch.Generator().manual_seed(0))
    out = {}
    for shading in ("albedo", "lambertian", "textureless", "normal"):
        r = model.render(cams, shading, lights, stratified=False)
        assert r.rgb.shape == (2, 12, 12, 3)
        assert torch.isfinite(r.rgb).all() and r.rgb.min() >= 0 and r.rgb.max() <= 1
        out[shading] = r
    assert out["albedo"].normal is None and out["lambertian"].normal is not None
    with torch.no_grad():  # change the albedo head only
        for p in model.albedo_net.parameters():
            p.add_(torch.randn_like(p))
    lam = model.render(cams, "lambertian", lights, stratified=False)
    tex = model.render(cams, "textureless", lights, stratified=False)
    assert (lam.rgb - out["lambertian"].rgb).abs().max() > 1e-2
    torch.testing.assert_close(tex.rgb, out["textureless"].rgb)
    # textureless is grey: all three channels equal on a white background
    torch.testing.assert_close(tex.rgb[..., 0], tex.rgb[..., 2])
    with pytest.raises(ValueError, match="light_positions"):
        model.render(cams, "lambertian")


def test_fixed_light_direction_lights_the_side_that_faces_it():
    """light_direction: the same directional light for every camera; surfaces facing it are lit by
    ambient + (1 - ambient) cos, those facing away by the ambient term alone."""
    model = NeRFModel(NeRFConfig(**TINY, background="fixed", light_direction=(2.0, 0.0, 0.0), ambient_ratio=0.45))
    cams = orbit_cameras(0.0, [0.0, 100.0], 3.0, 45.0, 16, 16)
    lights = sample_light_positions(cams, model.cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(lights[0], lights[1])
    torch.testing.assert_close(torch.nn.functional.normalize(lights, dim=-1), torch.tensor([[1.0, 0.0, 0.0]] * 2))
    with torch.no_grad():
        r = model.render(cams, "textureless", lights, stratified=False)
    a, n = r.alpha[..., 0], torch.nn.functional.normalize(r.normal, dim=-1)
    solid = a > 0.9
    assert solid.sum() > 10 and (n[..., 0][solid] > 0.5).any() and (n[..., 0][solid] < -0.5).any()
    # the composited shade against the formula on the composited normal (they differ only by the blur
    # of a soft surface: ~0.05); a light from -x, or ambient 0.1, misses by > 0.3 somewhere
    expected = a * (0.45 + 0.55 * n[..., 0].clamp_min(0)) + (1 - a)
    assert (r.rgb.mean(-1) - expected)[solid].abs().max() < 0.07
    with pytest.raises(ValueError, match="light_direction"):
        NeRFConfig(light_direction=(0.0, 0.0, 0.0))


def test_normals_only_where_samples_show():
    """normal_weight_eps: faint samples are lit as if facing the camera; the image barely moves, the
    normal count drops, and the density still gets gradient from the lighting."""
    cams = orbit_cameras(15.0, [0.0, 100.0], 3.0, 45.0, 12, 12)
    renders, calls = {}, {}
    for eps in (0.0, 1e-3):
        torch.manual_seed(0)  # the same weights for both
        model = NeRFModel(NeRFConfig(**TINY, background="fixed", normal_weight_eps=eps))
        lights = sample_light_positions(cams, model.cfg, torch.Generator().manual_seed(0))
        n_points = []
        real = model.normals
        model.normals = lambda p, real=real, n_points=n_points: n_points.append(p.shape[0]) or real(p)
        r = model.render(cams, "lambertian", lights, stratified=False, orientation=True)
        (r.rgb.mean() + r.regularizers()["orientation"]).backward()
        renders[eps], calls[eps] = (r, model.encoding.table.grad.abs().sum()), sum(n_points)
    (full, g_full), (fast, g_fast) = renders[0.0], renders[1e-3]
    assert calls[1e-3] < 0.8 * calls[0.0]
    assert (fast.rgb - full.rgb).abs().max() < 0.05
    torch.testing.assert_close(fast.alpha, full.alpha)
    assert g_fast > 0.5 * g_full


def test_background_mlp_and_fixed():
    cams = orbit_cameras(0.0, 0.0, 3.0, 45.0, 8, 8)
    fixed = NeRFModel(NeRFConfig(**TINY, background="fixed", background_color=(0.0, 1.0, 0.0)))
    r = fixed.render(cams, stratified=False)
    torch.testing.assert_close(r.rgb[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-3, rtol=0)  # corner: empty
    mlp = NeRFModel(NeRFConfig(**TINY, background="mlp"))
    bg = mlp.background(torch.nn.functional.normalize(torch.randn(10, 3), dim=-1))
    assert bg.shape == (10, 3) and bg.min() >= 0 and bg.max() <= 1
    r = mlp.render(cams, stratified=False)
    r.rgb.mean().backward()
    assert mlp.background_net[0].weight.grad.abs().sum() > 0


def test_orientation_loss_zero_facing_camera_positive_otherwise():
    d = torch.nn.functional.normalize(torch.randn(20, 3), dim=-1)
    assert orientation_penalty(-d, d).abs().max() == 0  # facing the camera
    assert torch.all(orientation_penalty(d, d) > 0.99)  # facing away
    side = torch.nn.functional.normalize(torch.linalg.cross(d, torch.randn(20, 3)), dim=-1)
    assert orientation_penalty(side, d).abs().max() < 1e-6  # grazing
    w = torch.rand(20, requires_grad=True)
    ray_idx = torch.arange(20) // 5
    per_ray = orientation_per_ray(w, d, d, ray_idx, 4)
    torch.testing.assert_close(per_ray, torch.stack([w[i * 5 : i * 5 + 5].sum() for i in range(4)]).detach())
    assert not per_ray.requires_grad  # weights are detached; only normals carry gradient


def test_rendered_orientation_map_and_other_regularisers():
    model = NeRFModel(NeRFConfig(**TINY))
    cams = orbit_cameras(10.0, 0.0, 3.0, 45.0, 10, 10)
    r = model.render(cams, "albedo", orientation=True, stratified=False)
    assert r.orientation.shape == (1, 10, 10, 1) and r.orientation.min() >= 0
    regs = r.regularizers()
    assert set(regs) == {"opacity", "entropy", "orientation"}
    regs["orientation"].backward()
    assert model.encoding.table.grad.abs().sum() > 0  # through the finite-difference normals
    a = torch.tensor([0.0, 1.0])
    assert entropy_loss(a) < 1e-3 and entropy_loss(torch.tensor([0.5])) > 0.69
    assert opacity_loss(torch.zeros(3)) < opacity_loss(torch.ones(3))


def test_pick_shading_follows_config():
    cfg = NeRFConfig(albedo_warmup_steps=10, albedo_prob=0.0, textureless_prob=0.5)
    g = torch.Generator().manual_seed(0)
    assert pick_shading(3, cfg, g) == "albedo"
    picks = [pick_shading(100, cfg, g) for _ in range(200)]
    assert set(picks) == {"lambertian", "textureless"}
    assert 60 < picks.count("textureless") < 140


def test_state_dict_round_trip():
    cfg = NeRFConfig(**TINY)
    a = NeRFModel(cfg)
    with torch.no_grad():
        a.encoding.table.normal_()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = NeRFModel(cfg)
    b.load_state_dict(torch.load(buf))
    p = torch.rand(30, 3) * 2 - 1
    torch.testing.assert_close(a.density(p), b.density(p))
    torch.testing.assert_close(a(p)[1], b(p)[1])


def test_autograd_and_finite_difference_normals_agree():
    torch.manual_seed(0)
    cfg = NeRFConfig(**TINY)
    model = NeRFModel(cfg)
    p = torch.nn.functional.normalize(torch.randn(30, 3), dim=-1) * 0.4
    fd = model.normals(p)
    model.cfg.normal_method = "autograd"
    ag = model.normals(p)
    assert (fd * ag).sum(-1).min() > 0.99


def test_tiny_nerf_fits_a_coloured_sphere():
    torch.manual_seed(0)

    def sphere(points, dirs):  # analytic target: a ball of radius 0.5 coloured by position
        r = points.norm(dim=-1)
        sigma = 30.0 * torch.sigmoid((0.5 - r) * 40)
        return sigma, (0.5 + 0.9 * points).clamp(0, 1)

    cams = orbit_cameras(
        torch.tensor([10.0, 30.0, -5.0, 20.0]), torch.tensor([0.0, 90.0, 200.0, 300.0]), 3.0, 40.0, 16, 16
    )
    white = torch.ones(3)
    with torch.no_grad():
        target = render_volume(sphere, cams, radius=1.0, num_samples=48, background=white).rgb
    cfg = NeRFConfig(
        **dict(TINY, log2_table_size=12, max_resolution=48, hidden_dim=32),
        background="fixed",
        lr_grid=3e-2,
        lr_mlp=1e-2,
    )
    model = NeRFModel(cfg)
    opt = torch.optim.Adam(model.parameter_groups(), eps=1e-15)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(100):
        i = step % 4
        r = model.render(cams[i], "albedo", background=white, generator=g)
        loss = ((r.rgb - target[i : i + 1]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = ((model.render(cams, "albedo", background=white, stratified=False).rgb - target) ** 2).mean().item()
    assert final < 0.05 * sum(losses[:4]) / 4, (losses[:4], final)


def test_occupancy_grid_marks_the_blob_occupied_and_empty_space_free():
    # nerfacc's grid bookkeeping is plain torch (only its ray marching needs CUDA), so it runs here
    pytest.importorskip("nerfacc")
    from renderers.volume import make_occupancy_grid

    cfg = NeRFConfig(**TINY, occupancy_resolution=16, occupancy_every=4)
    assert occupancy_grid_for(cfg, "cpu") is None  # only on CUDA
    model = NeRFModel(cfg)
    est = make_occupancy_grid(cfg.bound, cfg.occupancy_resolution, device="cpu")
    for step in range(3):  # step 0 refreshes, 1 and 2 do not (every 4)
        refresh_occupancy_grid(est, model, step)
    occ = est.binaries[0]
    centres = (torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"), -1) + 0.5) / 16 * 2 - 1
    r = centres.norm(dim=-1)
    # sigma * step >= 0.01 where the blob's density is high, far below it outside the blob (radius 0.5);
    # each cell is judged at a random point in it (half-diagonal 0.11)
    assert occ[r < 0.35].all() and not occ[r > 0.75].any()
    assert 0.02 < occ.float().mean() < 0.2
    before = est.occs.clone()
    refresh_occupancy_grid(est, model, 3)
    assert torch.equal(est.occs, before)  # not a refresh step


def test_the_occupancy_grid_path_renders_in_larger_ray_chunks(monkeypatch):
    """With the occupancy grid (CUDA) the samples are sparse and nerfacc's marcher waits on the device several times
    per chunk: training renders take 256k rays at once there, 32k on the dense path, or nerf.ray_chunk when set."""
    import dream3d.representations.nerf as nerf

    seen = []

    def render_volume_spy(*args, chunk, estimator, **kwargs):
        seen.append(chunk)
        return render_volume(*args, chunk=chunk, estimator=None, **kwargs)  # the dense path: no CUDA here

    monkeypatch.setattr(nerf, "render_volume", render_volume_spy)
    cams = orbit_cameras(10.0, 30.0, 3.0, 45.0, 8, 8)
    for cfg, estimator, chunk in (
        (NeRFConfig(**TINY), None, 1 << 15),
        (NeRFConfig(**TINY), object(), 1 << 18),
        (NeRFConfig(**TINY, ray_chunk=4096), object(), 4096),
    ):
        NeRFModel(cfg).render(cams, estimator=estimator)
        assert seen.pop() == chunk
    with torch.no_grad():  # renders without gradients keep small chunks: there a chunk bounds the memory
        NeRFModel(NeRFConfig(**TINY)).render(cams, estimator=object())
    assert seen.pop() == 1 << 15
    with pytest.raises(ValueError, match="ray_chunk"):
        NeRFConfig(ray_chunk=-1)
