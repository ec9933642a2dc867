"""GaussianModel: activations, densification counts, optimiser-state surgery, PLY and checkpoints."""

import math

import numpy as np
import pytest
import torch

from dream3d.representations.gaussians import (
    PARAM_NAMES,
    GaussianConfig,
    GaussianModel,
    expon_lr,
    sh_dc_to_rgb,
)
from renderers.cameras import orbit_cameras


def make_model(n=64, seed=0, **kw):
    return GaussianModel(GaussianConfig(num_points=n, **kw), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {name: getattr(model, name).detach().clone() for name in PARAM_NAMES}


def test_init_and_activations():
    m = make_model(500, init_radius=0.7)
    assert len(m) == 500 and m.means.shape == (500, 3) and m.features_rest.shape == (500, 0, 3)
    assert m.means.norm(dim=-1).max() <= 0.7
    assert torch.allclose(m.get_opacities(), torch.tensor(0.1))
    assert (m.get_scales() > 0).all() and torch.allclose(m.get_quats().norm(dim=-1), torch.tensor(1.0))
    # init scale = sqrt(mean squared distance to the 3 nearest neighbours), checked by brute force
    d2 = torch.cdist(m.means, m.means).square() + torch.eye(500) * 1e9
    want = d2.topk(3, largest=False).values.mean(1).sqrt()
    torch.testing.assert_close(m.get_scales()[:, 0], want, rtol=1e-4, atol=1e-6)
    pts, cols = torch.rand(30, 3), torch.rand(30, 3) * 0.9 + 0.05
    for mode in ("sh", "sigmoid"):
        p = GaussianModel.from_points(pts, cols, GaussianConfig(color_mode=mode))
        torch.testing.assert_close(p.get_base_colors(), cols, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.means, pts)
    inp = make_model(10, sh_degree=2).render_inputs()
    assert inp["colors"].shape == (10, 1, 3) and inp["sh_degree"] == 0  # active degree starts at 0
    with pytest.raises(ValueError, match="color_mode"):
        GaussianConfig(color_mode="rgb")
    with pytest.raises(ValueError, match="sh_degree"):
        GaussianConfig(color_mode="sigmoid", sh_degree=2)


def test_initial_colour_spread_around_grey():
    """init_color_spread scales the uniform draw about 0.5 (the positions' draws are the same); 0 is grey."""
    full, grey, half = (make_model(400, color_mode="sigmoid", init_color_spread=s) for s in (1.0, 0.0, 0.5))
    torch.testing.assert_close(grey.means, full.means)
    torch.testing.assert_close(grey.get_base_colors(), torch.full((400, 3), 0.5))
    torch.testing.assert_close(half.get_base_colors() - 0.5, (full.get_base_colors() - 0.5) / 2, rtol=1e-4, atol=1e-5)
    c = full.get_base_colors()
    assert c.min() < 0.02 and c.max() > 0.98  # spread 1: the uniform draw, saturated channels included
    with pytest.raises(ValueError, match="init_color_spread"):
        GaussianConfig(init_color_spread=1.5)


def test_sh_degree_grows_to_the_configured_maximum():
    m = make_model(10, sh_degree=2)
    assert m.features_rest.shape == (10, 8, 3)
    for want in (1, 2, 2):
        m.oneup_sh_degree()
        assert m.active_sh_degree == want
    assert m.render_inputs()["colors"].shape == (10, 9, 3)


def test_clone_adds_exactly_the_selected():
    m = make_model(50)
    before = snapshot(m)
    mask = torch.zeros(50, dtype=torch.bool)
    mask[[3, 7, 20]] = True
    assert m.clone(mask) == 3 and len(m) == 53
    for name in PARAM_NAMES:
        assert torch.equal(getattr(m, name)[:50], before[name])
        assert torch.equal(getattr(m, name)[50:], before[name][mask])


def test_split_replaces_each_by_two_smaller():
    m = make_model(40)
    before = snapshot(m)
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[0, 5, 39]] = True
    assert m.split(mask, generator=torch.Generator().manual_seed(0)) == 3
    assert len(m) == 40 - 3 + 6
    assert torch.equal(m.means[:37], before["means"][~mask])  # survivors first, in order
    new_scales = torch.exp(m.log_scales[37:])
    torch.testing.assert_close(new_scales, torch.exp(before["log_scales"][mask]).repeat_interleave(2, 0) / 1.6)
    assert torch.equal(m.opacity_logits[37:], before["opacity_logits"][mask].repeat_interleave(2))
    # children are sampled around their parent (within a few parent sigmas)
    parents = before["means"][mask].repeat_interleave(2, 0)
    sig = torch.exp(before["log_scales"][mask]).amax(-1).repeat_interleave(2)
    assert ((m.means[37:] - parents).norm(dim=-1) < 6 * sig).all()
    assert not torch.equal(m.means[37], m.means[38])


def test_prune_removes_exactly_the_masked():
    m = make_model(30)
    before = snapshot(m)
    mask = torch.rand(30, generator=torch.Generator().manual_seed(1)) < 0.4
    assert m.prune(mask) == int(mask.sum()) and len(m) == 30 - int(mask.sum())
    for name in PARAM_NAMES:
        assert torch.equal(getattr(m, name), before[name][~mask])
    with pytest.raises(ValueError, match="bool"):
        m.prune(torch.zeros(3, dtype=torch.bool))


def test_densify_and_prune_counts_from_statistics():
    m = make_model(100, densify_grad_threshold=0.01, split_size=0.05, min_opacity=0.02, max_world_size=0.5)
    with torch.no_grad():
        m.log_scales[:] = math.log(0.01)
        m.log_scales[50:] = math.log(0.1)  # 50.. are large
        m.opacity_logits[:] = 0.0
        m.opacity_logits[[1, 2, 60]] = -10.0  # faint: pruned (1, 2 small; 60 large)
        m.log_scales[90] = math.log(0.6)  # huge: pruned
    hot = torch.zeros(100, dtype=torch.bool)
    hot[[0, 1, 10, 11, 50, 51, 52, 60]] = True
    m.grad_accum[:] = torch.where(hot, 0.05, 0.001) * 2
    m.grad_count[:] = 2
    before = snapshot(m)
    info = m.densify_and_prune()
    small_hot, big_hot = hot & (torch.arange(100) < 50), hot & (torch.arange(100) >= 50)
    assert info["cloned"] == int(small_hot.sum()) == 4
    assert info["split"] == int(big_hot.sum()) == 4
    # pruned: the faint originals 1, 2 and the huge 90, the clone of 1, the two children of 60
    assert info["pruned"] == 3 + 1 + 2
    assert info["total"] == len(m) == 100 + 4 + 4 - 6
    assert (m.get_opacities() >= 0.02).all() and (m.get_scales().amax(-1) <= 0.5).all()
    assert (m.grad_accum == 0).all() and (m.grad_count == 0).all()  # statistics restart
    # the survivors of the originals keep their values
    keep = torch.ones(100, dtype=torch.bool)
    keep[[1, 2, 90] + list(range(50, 53)) + [60]] = False
    assert torch.equal(m.means[: int(keep.sum())], before["means"][keep])


def test_max_gaussians_is_a_cap_that_keeps_the_largest_gradients():
    # 100 Gaussians, 40 hot: 20 small (clone: +1 each) and 20 large (split into 2: +1 each); cap 110 leaves
    # room for 10, which must go to the 10 largest gradients whatever their kind.
    m = make_model(
        100, densify_grad_threshold=0.01, split_size=0.05, min_opacity=0.0, max_world_size=10.0, max_gaussians=110
    )
    with torch.no_grad():
        m.log_scales[:] = math.log(0.01)
        m.log_scales[50:] = math.log(0.1)
        m.opacity_logits[:] = 0.0
    hot = torch.zeros(100, dtype=torch.bool)
    hot[30:70] = True
    g = torch.where(hot, 0.02 + 0.001 * torch.arange(100.0), torch.zeros(100))  # larger index, larger gradient
    m.grad_accum[:], m.grad_count[:] = g, 1
    info = m.densify_and_prune()
    assert info["total"] == len(m) == 110
    assert info["cloned"] == 0 and info["split"] == 10  # indices 60..69 carry the 10 largest gradients
    m.grad_accum[:], m.grad_count[:] = torch.full((110,), 0.05), 1
    assert m.densify_and_prune()["total"] == 110  # at the cap nothing more is added


def test_view_space_gradient_statistics_from_a_render():
    m = make_model(200, init_opacity=0.5)
    cams = orbit_cameras(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 120.0]), 2.0, 49.0, 32, 24)
    out = m.render(cams, torch.ones(3), backend="torch")
    ((out.rgb - 0.2) ** 2).sum().backward()
    m.add_densification_stats(out)
    g = out.means2d.grad * torch.tensor([32 / 2, 24 / 2])
    seen = out.radii > 0
    want = (g.norm(dim=-1) * seen).sum(0) / seen.sum(0).clamp_min(1)
    torch.testing.assert_close(m.mean_grads(), want)
    torch.testing.assert_close(m.grad_count, seen.sum(0).float())
    assert (m.mean_grads() > 0).sum() > 100
    assert torch.equal(m.max_radii, (out.radii * seen).amax(0).float())
    # densification happens with a threshold the gradients reach
    m.cfg.densify_grad_threshold = float(m.mean_grads().median())
    n_hot = int((m.mean_grads() >= m.cfg.densify_grad_threshold).sum())
    info = m.densify_and_prune()
    assert info["cloned"] + info["split"] == n_hot > 0 and len(m) > 200


def test_optimizer_state_follows_densification():
    m = make_model(80, sh_degree=1)
    opt = m.make_optimizer()
    cams = orbit_cameras(10.0, 30.0, 2.0, 49.0, 24, 24)

    def step():
        opt.zero_grad()
        out = m.render(cams, torch.zeros(3), backend="torch")
        (out.rgb.mean() + m.features_rest.square().mean() + m.quats.square().mean()).backward()
        opt.step()
        return out

    step()
    step()
    old_state = {name: {k: v.clone() for k, v in opt.state[getattr(m, name)].items()} for name in PARAM_NAMES}
    clone_mask = torch.zeros(80, dtype=torch.bool)
    clone_mask[:5] = True
    m.clone(clone_mask, opt)
    split_mask = torch.zeros(85, dtype=torch.bool)
    split_mask[10:13] = True
    m.split(split_mask, opt)
    prune_mask = torch.zeros(88, dtype=torch.bool)
    prune_mask[20:30] = True
    m.prune(prune_mask, opt)
    assert len(m) == 78
    # which original row each current row continues (-1: new rows, whose Adam moments start at zero)
    src = torch.cat([torch.arange(80), torch.full((5,), -1)])
    src = torch.cat([src[~split_mask], torch.full((6,), -1)])
    src = src[~prune_mask]
    old, new = src >= 0, src < 0
    assert int(new.sum()) == 5 + 6 - int((torch.arange(88)[prune_mask] >= 77).sum())
    for name in PARAM_NAMES:
        p = getattr(m, name)
        group = next(g for g in opt.param_groups if g["name"] == name)
        assert group["params"][0] is p and len(group["params"]) == 1
        st = opt.state[p]
        for k in ("exp_avg", "exp_avg_sq"):
            assert st[k].shape == p.shape
            assert torch.equal(st[k][old], old_state[name][k][src[old]])
            assert (st[k][new] == 0).all()
    step()  # a step after densification works and moves every parameter
    m.reset_opacity(opt)
    assert (m.get_opacities() <= 0.01 + 1e-6).all()
    assert (opt.state[m.opacity_logits]["exp_avg"] == 0).all()
    step()


def test_position_learning_rate_schedule():
    m = make_model(4, position_lr_init=1e-3, position_lr_final=1e-5, position_lr_max_steps=100)
    opt = m.make_optimizer()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {
        "means": 1e-3,
        "features_dc": 1e-2,
        "features_rest": 5e-4,
        "opacity_logits": 5e-2,
        "log_scales": 5e-3,
        "quats": 5e-3,
    }
    assert m.update_learning_rate(opt, 0) == pytest.approx(1e-3)
    assert m.update_learning_rate(opt, 50) == pytest.approx(1e-4)  # geometric midpoint
    assert m.update_learning_rate(opt, 100) == pytest.approx(1e-5)
    assert m.update_learning_rate(opt, 1000) == pytest.approx(1e-5)
    assert next(g for g in opt.param_groups if g["name"] == "means")["lr"] == pytest.approx(1e-5)
    assert expon_lr(25, 1.0, 1e-4, 100) == pytest.approx(0.1)


def test_densify_step_schedule():
    m = make_model(20, densify_from_step=10, densify_until_step=30, densify_interval=10, opacity_reset_interval=20)
    with torch.no_grad():
        m.opacity_logits[:] = 2.0
    assert m.densify_step(5) is None
    assert m.densify_step(10) is not None
    assert (m.get_opacities() > 0.5).all()
    m.densify_step(20)
    assert (m.get_opacities() <= 0.01 + 1e-6).all()  # reset at 20
    assert m.densify_step(40) is None


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------

GS_LAYOUT_DEG3 = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def _randomised(n=37, sh_degree=3):
    m = make_model(n, sh_degree=sh_degree)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in PARAM_NAMES:
            getattr(m, name).copy_(torch.randn(getattr(m, name).shape, generator=g))
    return m


def test_ply_round_trip_is_exact_and_header_is_3dgs(tmp_path):
    m = _randomised()
    path = tmp_path / "gaussians.ply"
    m.save_ply(path)
    assert not (tmp_path / "gaussians.ply.tmp").exists()
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode().splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 37"]
    assert header[3:-1] == [f"property float {p}" for p in GS_LAYOUT_DEG3]
    assert header[-1] == "end_header"
    assert len(raw) - end == 37 * 62 * 4
    back = GaussianModel.load_ply(path)
    assert back.cfg.sh_degree == 3 and back.active_sh_degree == 3
    for name in PARAM_NAMES:
        assert torch.equal(getattr(back, name), getattr(m, name)), name
    # f_rest is channel-major as in 3DGS: f_rest_{c * 15 + k} is band coefficient k+1 of channel c
    data = np.frombuffer(raw[end:], dtype="<f4").reshape(37, 62)
    assert data[5, 9 + 1 * 15 + 4] == m.features_rest[5, 4, 1].item()
    assert data[5, 6 + 2] == m.features_dc[5, 0, 2].item()
    assert (data[:, 3:6] == 0).all()


def test_ply_opens_in_an_independent_reader(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    m = _randomised(20, sh_degree=0)
    m.save_ply(tmp_path / "g.ply")
    cloud = trimesh.load(tmp_path / "g.ply")
    np.testing.assert_array_equal(np.asarray(cloud.vertices, dtype=np.float32), m.means.detach().numpy())
    vert = cloud.metadata["_ply_raw"]["vertex"]["data"]
    np.testing.assert_array_equal(vert["opacity"].ravel(), m.opacity_logits.detach().numpy())
    np.testing.assert_array_equal(vert["rot_3"].ravel(), m.quats[:, 3].detach().numpy())


def test_sigmoid_colours_are_saved_as_viewer_colours(tmp_path):
    m = GaussianModel(GaussianConfig(num_points=10, color_mode="sigmoid"), generator=torch.Generator().manual_seed(0))
    inp = m.render_inputs()
    assert inp["sh_degree"] is None and inp["colors"].shape == (10, 3)
    m.save_ply(tmp_path / "s.ply")
    raw = (tmp_path / "s.ply").read_bytes()
    data = np.frombuffer(raw[raw.index(b"end_header\n") + 11 :], dtype="<f4").reshape(10, -1)
    torch.testing.assert_close(
        sh_dc_to_rgb(torch.from_numpy(data[:, 6:9].copy())), inp["colors"].detach(), rtol=1e-5, atol=1e-6
    )
    back = GaussianModel.load_ply(tmp_path / "s.ply", GaussianConfig(color_mode="sigmoid"))
    torch.testing.assert_close(back.render_inputs()["colors"], inp["colors"].detach(), rtol=1e-5, atol=1e-6)


def test_load_ply_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        GaussianModel.load_ply(bad)
    m = _randomised(5, sh_degree=2)
    m.save_ply(tmp_path / "d2.ply")
    with pytest.raises(ValueError, match="sh_degree"):
        GaussianModel.load_ply(tmp_path / "d2.ply", GaussianConfig(sh_degree=1))
    up = GaussianModel.load_ply(tmp_path / "d2.ply", GaussianConfig(sh_degree=3))  # padded with zeros
    assert up.features_rest.shape == (5, 15, 3) and torch.equal(up.features_rest[:, :8], m.features_rest)
    assert (up.features_rest[:, 8:] == 0).all()


def test_state_dict_round_trip_with_a_different_count():
    a = _randomised(30, sh_degree=1)
    a.oneup_sh_degree()
    mask = torch.zeros(30, dtype=torch.bool)
    mask[:4] = True
    a.clone(mask)
    a.grad_accum[:] = torch.arange(34.0)
    opt_a = a.make_optimizer()
    out = a.render(orbit_cameras(0.0, 0.0, 2.0, 49.0, 16, 16), backend="torch")
    out.rgb.mean().backward()
    opt_a.step()
    b = make_model(7, sh_degree=1)
    b.load_state_dict(a.state_dict())
    assert len(b) == 34 and b.active_sh_degree == 1
    for name in PARAM_NAMES:
        assert torch.equal(getattr(b, name), getattr(a, name))
    assert torch.equal(b.grad_accum, a.grad_accum)
    opt_b = b.make_optimizer()
    opt_b.load_state_dict(opt_a.state_dict())
    torch.testing.assert_close(opt_b.state[b.means]["exp_avg"], opt_a.state[a.means]["exp_avg"])
