"""The representation interface: the Trainer and the run folder know no representation by name, and a third
one (the voxel grid) trains, resumes, saves and meshes through it alone."""

import warnings
from pathlib import Path

import torch

from dream3d.config import load_run_config
from dream3d.pipeline import RUN_FILES, build_guidance, generate
from dream3d.representations import REPRESENTATIONS, Representation, VoxelGrid
from dream3d.train import Trainer
from renderers.cameras import orbit_cameras

from conftest import TINY_RUN

REPO = Path(__file__).resolve().parents[1]
TINY_VOXELS = ["representation=voxels", "voxels.resolution=16", "voxels.num_samples=24", "train.resolution=24"]


def _cfg(prior_dir, *extra):
    return load_run_config(
        "dreamgaussian", TINY_RUN + TINY_VOXELS + [f"guidance.prior.model={prior_dir}", "prompt=a red cube", *extra]
    )


def test_the_loop_and_the_run_folder_never_branch_on_the_representation():
    for path in ("dream3d/train.py", "dream3d/pipeline.py"):
        text = (REPO / path).read_text()
        assert "representation ==" not in text and "representation !=" not in text, path
    assert all(issubclass(cls, Representation) and cls.files for cls in REPRESENTATIONS.values())
    assert {f for cls in REPRESENTATIONS.values() for f in cls.files} <= set(RUN_FILES)


def test_voxel_density_and_colour_are_trilinear_in_the_grid():
    v = VoxelGrid()
    r = v.cfg.resolution
    with torch.no_grad():
        v.color_raw.zero_()
        v.color_raw[0, 0, :, :, -1] = 4.0  # x = +bound face (grid_sample's W axis is x)
    pts = torch.tensor([[1.0, 0.0, 0.0], [1.0 - 1.0 / (r - 1), 0.0, 0.0], [-1.0, 0.0, 0.0]])
    _, rgb = v(pts, torch.zeros_like(pts))
    # on the face the red logit is 4, half a cell in it is 2 (linear between cell centres), far side 0
    torch.testing.assert_close(rgb[:, 0], torch.sigmoid(torch.tensor([4.0, 2.0, 0.0])), atol=1e-5, rtol=0)
    sigma = v.density(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 1.2]]))
    assert sigma[0] > 4.9 and sigma[1] < 0.1 and sigma[2] == 0  # the blob, thin far out, nothing beyond the sphere


def test_voxel_grid_generates_resumes_and_meshes(tiny_prior, tmp_path):
    cfg = _cfg(tiny_prior, "train.steps=4", "train.checkpoint_every=2")
    out = tmp_path / "run"
    m = generate(cfg, str(out), log=lambda msg: None)
    assert m["representation"] == "voxels" and m["mesh"]["faces"] > 0
    for name in ("voxels.safetensors", "mesh.glb", "checkpoint.pt", "config.yaml"):
        assert (out / name).exists(), name
    from safetensors.torch import load_file

    trained = load_file(str(out / "voxels.safetensors"))
    assert trained["density_raw"].abs().max() > 0, "it trained"
    # resumed from its step-2 checkpoint, the grid ends where the uninterrupted run did
    a = Trainer(cfg, cfg.prompt, str(tmp_path / "a"), guidance=build_guidance(cfg), log=lambda msg: None)
    a.run(stop_after=2)
    b = Trainer(cfg, cfg.prompt, str(tmp_path / "a"), guidance=build_guidance(cfg), log=lambda msg: None)
    b.load_checkpoint()
    b.run()
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_nerf_regularizers_belong_to_the_nerf_and_old_names_still_load(tmp_path):
    old = tmp_path / "old_run_config.yaml"
    old.write_text("base: dreamfusion\ntrain: {lambda_orientation: 0.05, lambda_opacity: 0.002}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_run_config(str(old))
    assert cfg.nerf.lambda_orientation == 0.05 and cfg.nerf.lambda_opacity == 0.002 and cfg.nerf.lambda_entropy == 0.001
    assert any("train.lambda_orientation -> nerf.lambda_orientation" in str(w.message) for w in caught)
    assert not hasattr(cfg.train, "lambda_orientation")


def test_nerf_training_render_carries_its_weighted_regularizers():
    from dream3d.representations.nerf import NeRFConfig, NeRFModel

    model = NeRFModel(
        NeRFConfig(
            levels=2,
            log2_table_size=8,
            max_resolution=16,
            hidden_dim=8,
            num_samples=8,
            lambda_opacity=2.0,
            lambda_entropy=0.5,
            lambda_orientation=3.0,
            albedo_prob=1.0,
        )
    )
    cams = orbit_cameras([10.0], [0.0], 2.5, 45.0, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = model.render_views(cams, torch.ones(3), step=5, generator=g)
    reg = out.raw.regularizers()
    torch.testing.assert_close(out.losses["density"], 2.0 * reg["opacity"] + 0.5 * reg["entropy"])
    torch.testing.assert_close(out.losses["orientation"], 3.0 * reg["orientation"])
    assert model.render_views(cams, torch.ones(3)).losses == {}  # a validation render has none


def test_gaussian_training_render_carries_its_alpha_regularizers_and_sparsity_clears_space():
    from dream3d.representations.base import entropy_loss, opacity_loss
    from dream3d.representations.gaussians import GaussianConfig, GaussianModel

    cams = orbit_cameras([10.0, 40.0], [0.0, 120.0], 2.5, 45.0, 16, 16)
    g = torch.Generator().manual_seed(0)
    model = GaussianModel(GaussianConfig(num_points=200, lambda_opacity=2.0, lambda_entropy=0.5), generator=g)
    out = model.render_views(cams, torch.ones(3), step=5, generator=g)
    torch.testing.assert_close(out.losses["alpha"], 2.0 * opacity_loss(out.alpha) + 0.5 * entropy_loss(out.alpha))
    assert model.render_views(cams, torch.ones(3)).losses == {}  # a validation render has none
    off = GaussianModel(GaussianConfig(num_points=200), generator=torch.Generator().manual_seed(0))
    assert off.render_views(cams, torch.ones(3), step=5).losses == {}  # off by default
    # the sparsity term alone lowers every Gaussian's opacity it reaches, and the mean rendered alpha
    sparse = GaussianModel(
        GaussianConfig(num_points=200, lambda_opacity=1.0), generator=torch.Generator().manual_seed(0)
    )
    before = sparse.render_views(cams, torch.ones(3)).alpha.mean()
    sparse.render_views(cams, torch.ones(3), step=1).losses["alpha"].backward()
    grad = sparse.opacity_logits.grad
    assert (grad >= 0).all() and (grad > 0).any()
    with torch.no_grad():
        sparse.opacity_logits -= 10.0 * grad
    assert sparse.render_views(cams, torch.ones(3)).alpha.mean() < before
