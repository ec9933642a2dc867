import os

import pytest
import torch

from dream3d.config import load_run_config
from dream3d.pipeline import build_guidance, generate
from dream3d.train import NonFiniteError, Trainer
from renderers.cameras import orbit_cameras

from conftest import TINY_RUN


# a NeRF small enough for a few CPU steps (the dreamfusion / prolificdreamer presets otherwise)
TINY_NERF = ["nerf.levels=4", "nerf.log2_table_size=10", "nerf.max_resolution=32", "nerf.hidden_dim=16", "nerf.num_samples=16",
             "train.resolution=24"]


def _cfg(prior_dir, *extra, preset="dreamgaussian"):
    tiny = TINY_RUN + (TINY_NERF if preset in ("dreamfusion", "prolificdreamer") else [])
    return load_run_config(preset, tiny + [f"guidance.prior.model={prior_dir}", "prompt=a red cube", *extra])


# SDS, VSD with its LoRA student, and the NeRF with its shading draws (and VSD)
@pytest.mark.parametrize("preset", ["dreamgaussian", "gaussian-vsd", "prolificdreamer"])
def test_resumed_run_reaches_the_same_parameters(tiny_prior, tmp_path, preset):
    cfg = _cfg(tiny_prior, "train.steps=6", "train.checkpoint_every=3", "train.val_every=0", preset=preset)
    a = Trainer(cfg, cfg.prompt, str(tmp_path / "a"), guidance=build_guidance(cfg), log=lambda m: None)
    a.run()
    b = Trainer(cfg, cfg.prompt, str(tmp_path / "b"), guidance=build_guidance(cfg), log=lambda m: None)
    b.run(stop_after=4)  # stopping between the step-3 and step-6 checkpoints writes one at step 4
    c = Trainer(cfg, cfg.prompt, str(tmp_path / "b"), guidance=build_guidance(cfg), log=lambda m: None)
    c.load_checkpoint()
    assert c.step == 4
    c.run()
    sa, sc = a.model.state_dict(), c.model.state_dict()
    if cfg.representation == "gaussians":
        assert len(a.model) == len(c.model) and len(a.model) != cfg.gaussians.num_points, "densification ran"
    assert not torch.equal(sa[next(iter(sa))], Trainer(cfg, cfg.prompt, str(tmp_path / "c"), log=lambda m: None).model.state_dict()[next(iter(sa))]), "it trained"
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sc[k]), k


def test_nan_guard_skips_then_stops_keeping_the_last_good_checkpoint(tiny_prior, tmp_path):
    cfg = _cfg(tiny_prior, "train.steps=6", "train.checkpoint_every=1", "train.val_every=0", "train.max_nan_skips=2")
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    tr.run(stop_after=2)
    good = {k: v.clone() for k, v in tr.model.state_dict().items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        tr.model.means[0, 0] = float("nan")  # poison the parameters: every following step is non-finite
    with pytest.raises(NonFiniteError, match="last good checkpoint"):
        tr.run()
    assert tr.nan_skips == 3
    saved = torch.load(tr.ckpt_path, weights_only=True)
    assert saved["step"] == 2 and torch.equal(saved["model"]["means"], good["means"])


def test_densification_changes_the_count_during_training(tiny_prior, tmp_path):
    cfg = _cfg(tiny_prior, "train.steps=4", "gaussians.densify_grad_threshold=0.0", "gaussians.split_size=10.0",
               "gaussians.min_opacity=0.0", "gaussians.max_world_size=100.0", "train.val_every=0")
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    n0 = len(tr.model)
    tr.run(stop_after=2)  # densify at step 2 ... (the interval check sees step index 1 first)
    tr.run()
    # with a zero threshold every seen Gaussian is cloned at each densification step
    assert len(tr.model) > n0


@pytest.mark.parametrize("preset, model_file", [("dreamgaussian", "gaussians.ply"), ("dreamfusion", "nerf.safetensors")])
def test_generate_writes_every_file(tiny_prior, tmp_path, preset, model_file):
    import trimesh

    cfg = _cfg(tiny_prior, preset=preset)
    out = tmp_path / "run"
    m = generate(cfg, str(out), log=lambda msg: None)
    for name in ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", model_file, "turntable.mp4", "config.yaml", "metrics.json", "checkpoint.pt"):
        assert (out / name).exists(), name
    assert os.listdir(out / "val")
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(glb.faces) == m["mesh"]["faces"]
    from dream3d.pipeline import RunError

    with pytest.raises(RunError, match="finished run"):
        generate(cfg, str(out), log=lambda msg: None)


def test_resumed_generate_counts_the_earlier_sitting(tiny_prior, tmp_path):
    cfg = _cfg(tiny_prior, "train.steps=4", "train.checkpoint_every=2", "train.val_every=0", "output.mesh=false")
    out = str(tmp_path / "run")
    assert generate(cfg, out, log=lambda msg: None, stop_after=2) == {"stopped_at": 2}
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    ckpt["train_seconds"] += 1000.0  # as if the first sitting had trained for 1000 s
    torch.save(ckpt, os.path.join(out, "checkpoint.pt"))
    m = generate(cfg, out, resume=True, log=lambda msg: None)
    assert m["train"]["train_seconds"] >= 1000.0
    assert 1000.0 <= m["total_seconds"] < 1000.0 + 300.0


def test_sds_with_the_embedded_prior_lowers_the_distillation_gradient(tmp_path):
    """A short SDS run moves the Gaussians towards what the prior expects: the guided residual
    |eps_hat - eps| at fixed noise, t and cameras is smaller after training than before."""
    cfg = load_run_config("dreamgaussian", ["prompt=a red sphere", "train.steps=40", "train.val_every=0", "train.checkpoint_every=0",
                                            "gaussians.num_points=1000", "guidance.sds.timesteps.schedule=random"])
    guidance = build_guidance(cfg)
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=guidance, log=lambda m: None)
    cams = orbit_cameras(15.0, torch.tensor([0.0, 90.0, 180.0, 270.0]), 2.9, 45.0, 64, 64)
    g = torch.Generator().manual_seed(123)
    noise = torch.randn(4, 4, 16, 16, generator=g)
    ts = [200, 400, 600]

    def residual():
        guidance.cfg.grad_clip_norm = None  # measure the raw residual, not the clipped step
        with torch.no_grad():
            rgb, _, _ = tr.render(cams)
        total = 0.0
        for t in ts:
            out = guidance(rgb, cams, cfg.prompt, 0, noise=noise, t=torch.full((4,), t))
            total += out.grad_norm.item()
        return total

    before = residual()
    guidance.cfg.grad_clip_norm = cfg.guidance.sds.grad_clip_norm
    tr.run()
    after = residual()
    assert after < 0.8 * before, (before, after)


@pytest.mark.cuda
def test_nerf_trains_on_cuda_through_the_occupancy_grid(tiny_prior, tmp_path):
    pytest.importorskip("nerfacc")
    cfg = _cfg(tiny_prior, "train.steps=20", "train.val_every=0", "train.device=cuda", "nerf.num_samples=128",
               "nerf.occupancy_resolution=32", "nerf.occupancy_every=4", preset="dreamfusion")
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    assert tr.occupancy is not None
    tr.run()
    assert 0 < tr.occupancy.binaries.float().mean() < 0.5  # it skips empty space
    # the grid skips only what does not show: renders with and without it agree
    cams = orbit_cameras(15.0, [0.0, 120.0], 3.0, 40.0, 32, 32)
    with torch.no_grad():
        a = tr.model.render(cams, stratified=False, estimator=tr.occupancy)
        b = tr.model.render(cams, stratified=False)
    assert (a.rgb - b.rgb).abs().mean() < 0.03 and (a.alpha - b.alpha).abs().mean() < 0.03
    saved = torch.load(tr.ckpt_path, weights_only=True)  # the checkpoint carries the grid
    assert torch.equal(saved["occupancy"]["binaries"].cpu(), tr.occupancy.binaries.cpu())


def test_failed_starts_keep_the_earlier_run_and_overwrite_clears_it(tiny_prior, tmp_path):
    from dream3d.guidance.prior import PriorNotFoundError
    from dream3d.pipeline import RunError

    quiet = dict(log=lambda m: None)
    out = str(tmp_path / "run")
    cfg = _cfg(tiny_prior, "train.val_every=1")
    generate(cfg, out, stop_after=1, **quiet)
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] == 1
    # a resume must train what the run started with
    with pytest.raises(RunError, match="prompt: 'a red cube' -> 'a blue cube'"):
        generate(_cfg(tiny_prior, "train.val_every=1", "prompt=a blue cube"), out, resume=True, **quiet)
    longer = _cfg(tiny_prior, "train.val_every=1", "train.steps=5")  # resuming to train longer is allowed
    assert generate(longer, out, resume=True, **quiet)["train"]["steps"] == 5
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("metrics.json", "checkpoint.pt", "config.yaml", "mesh.glb")}
    listing = sorted(os.listdir(out))
    # --overwrite with an input that cannot work fails before anything of the earlier run is touched
    with pytest.raises(RunError, match="does not exist"):
        generate(_cfg(tiny_prior, "image=" + str(tmp_path / "missing.png")), out, overwrite=True, **quiet)
    with pytest.raises(PriorNotFoundError):
        generate(_cfg(str(tmp_path / "no_model")), out, overwrite=True, **quiet)
    with pytest.raises(RunError, match="one of them"):
        generate(cfg, out, resume=True, overwrite=True, **quiet)
    assert sorted(os.listdir(out)) == listing
    assert all(open(os.path.join(out, name), "rb").read() == data for name, data in before.items())
    # a real overwrite leaves none of the earlier run's files behind (no stale mesh, no old val renders),
    # and nothing that a run does not write
    open(os.path.join(out, "val", "notes.txt"), "w").write("mine")
    generate(_cfg(tiny_prior, "train.steps=2", "train.val_every=0", "output.mesh=false"), out, overwrite=True, **quiet)
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.yaml", "gaussians.ply", "metrics.json", "val"]
    assert os.listdir(os.path.join(out, "val")) == ["notes.txt"]
    # a folder that holds no run loses nothing to --overwrite
    other = tmp_path / "mine"
    (other / "val").mkdir(parents=True)
    (other / "val" / "step_00001.png").write_text("not a render of ours")
    generate(_cfg(tiny_prior, "train.val_every=0"), str(other), overwrite=True, stop_after=1, **quiet)
    assert (other / "val" / "step_00001.png").read_text() == "not a render of ours"
