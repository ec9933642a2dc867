import os

import pytest
import torch

from dream3d.config import load_run_config
from dream3d.pipeline import build_guidance, generate
from dream3d.train import NonFiniteError, Trainer
from renderers.cameras import orbit_cameras

from conftest import TINY_RUN


# a NeRF small enough for a few CPU steps (the dreamfusion / prolificdreamer presets otherwise)
TINY_NERF = [
    "nerf.levels=4",
    "nerf.log2_table_size=10",
    "nerf.max_resolution=32",
    "nerf.hidden_dim=16",
    "nerf.num_samples=16",
    "train.resolution=24",
]


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
    assert not torch.equal(
        sa[next(iter(sa))],
        Trainer(cfg, cfg.prompt, str(tmp_path / "c"), log=lambda m: None).model.state_dict()[next(iter(sa))],
    ), "it trained"
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sc[k]), k


def test_nan_guard_skips_then_stops_keeping_the_last_good_checkpoint(tiny_prior, tmp_path):
    cfg = _cfg(tiny_prior, "train.steps=6", "train.checkpoint_every=1", "train.val_every=0", "train.max_nan_skips=2")
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    assert tr.guidance.prior.graphed_unet is None  # CUDA graphs only with the prior on CUDA
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
    cfg = _cfg(
        tiny_prior,
        "train.steps=4",
        "gaussians.densify_grad_threshold=0.0",
        "gaussians.split_size=10.0",
        "gaussians.min_opacity=0.0",
        "gaussians.max_world_size=100.0",
        "train.val_every=0",
    )
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    n0 = len(tr.model)
    tr.run(stop_after=2)  # densify at step 2 ... (the interval check sees step index 1 first)
    tr.run()
    # with a zero threshold every seen Gaussian is cloned at each densification step
    assert len(tr.model) > n0


@pytest.mark.parametrize(
    "preset, model_file", [("dreamgaussian", "gaussians.ply"), ("dreamfusion", "nerf.safetensors")]
)
def test_generate_writes_every_file(tiny_prior, tmp_path, preset, model_file):
    import trimesh

    cfg = _cfg(tiny_prior, preset=preset)
    out = tmp_path / "run"
    m = generate(cfg, str(out), log=lambda msg: None)
    for name in (
        "mesh.glb",
        "mesh.obj",
        "mesh.mtl",
        "mesh.png",
        model_file,
        "turntable.mp4",
        "config.yaml",
        "metrics.json",
        "checkpoint.pt",
    ):
        assert (out / name).exists(), name
    assert os.listdir(out / "val")
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(glb.faces) == m["mesh"]["faces"]
    from dream3d.pipeline import RunError

    with pytest.raises(RunError, match="finished run"):
        generate(cfg, str(out), log=lambda msg: None)


def _old_layout(cfg) -> dict:
    """``cfg`` as a config.yaml of before issue 17 held it: a section per rule, the unselected ones at their defaults."""
    from dream3d.configtools import schema_at, to_plain
    from dream3d.guidance import RULES

    plain, method = to_plain(cfg), cfg.guidance.method
    rules = {n: to_plain(r.config_class()) for n, r in RULES.items() if n != method}
    for section in rules.values():
        section["timesteps"]["total_steps"] = 1000  # the old default
    own = {k: v for k, v in plain["guidance"].items() if k not in ("method", "prior")}
    assert schema_at(cfg, "guidance.timesteps.total_steps") == own["timesteps"]["total_steps"]
    return plain | {"guidance": {"method": method, "prior": plain["guidance"]["prior"], method: own, **rules}}


def test_resume_trains_longer_with_the_schedule_it_started_with_also_from_an_old_layout_config(tiny_prior, tmp_path):
    """dreamgaussian anneals t over the run (total_steps follows train.steps). A run started with 2 steps and
    resumed with 4 keeps annealing over 2, and reaches the parameters of an uninterrupted 4-step run with the
    2-step run's schedule: also when its config.yaml is in the layout before issue 17."""
    import yaml

    quiet = dict(log=lambda m: None)
    short = _cfg(tiny_prior, "train.steps=2", "train.val_every=0", "output.mesh=false")
    assert short.guidance.timesteps.total_steps == 2 and short.guidance.timesteps.schedule == "linear"
    out = str(tmp_path / "resumed")
    generate(short, out, stop_after=1, **quiet)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(_old_layout(short), f, sort_keys=False)
    from dream3d.pipeline import RunError

    with (
        pytest.warns(FutureWarning, match="config.yaml: translated from the old guidance layout"),
        pytest.raises(RunError, match="guidance.guidance_scale: 50.0 -> 3.0"),
    ):  # what it compares is the run's settings
        generate(
            _cfg(tiny_prior, "train.steps=4", "train.val_every=0", "output.mesh=false", "guidance.guidance_scale=3"),
            out,
            resume=True,
            **quiet,
        )
    longer = _cfg(tiny_prior, "train.steps=4", "train.val_every=0", "output.mesh=false")
    assert longer.guidance.timesteps.total_steps == 4
    assert generate(longer, out, resume=True, **quiet)["train"]["steps"] == 4
    assert longer.guidance.timesteps.total_steps == 2
    saved = load_run_config(os.path.join(out, "config.yaml"))  # rewritten in the new layout, with the run's schedule
    assert (saved.train.steps, saved.guidance.timesteps.total_steps) == (4, 2)
    from dream3d.configtools import schema_at

    kept = [f"{k}={schema_at(short, k)}" for k in short.follows_run_length]  # all settings that followed 2 steps
    ckpt = {}
    for name, extra in (("uninterrupted", kept), ("annealed_over_4", [])):
        generate(
            _cfg(tiny_prior, "train.steps=4", "train.val_every=0", "output.mesh=false", *extra),
            str(tmp_path / name),
            **quiet,
        )
        ckpt[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
    resumed = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]
    assert all(
        torch.equal(resumed[k], ckpt["uninterrupted"][k]) for k in resumed if isinstance(resumed[k], torch.Tensor)
    )
    assert not all(
        torch.equal(resumed[k], ckpt["annealed_over_4"][k]) for k in resumed if isinstance(resumed[k], torch.Tensor)
    )


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
    cfg = load_run_config(
        "dreamgaussian",
        [
            "prompt=a red sphere",
            "train.steps=40",
            "train.val_every=0",
            "train.checkpoint_every=0",
            "gaussians.num_points=1000",
            "guidance.timesteps.schedule=random",
        ],
    )
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
    guidance.cfg.grad_clip_norm = cfg.guidance.grad_clip_norm
    tr.run()
    after = residual()
    assert after < 0.8 * before, (before, after)


@pytest.mark.cuda
def test_nerf_trains_on_cuda_through_the_occupancy_grid(tiny_prior, tmp_path):
    pytest.importorskip("nerfacc")
    cfg = _cfg(
        tiny_prior,
        "train.steps=20",
        "train.val_every=0",
        "train.device=cuda",
        "nerf.num_samples=128",
        "nerf.occupancy_resolution=32",
        "nerf.occupancy_every=4",
        preset="dreamfusion",
    )
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    assert tr.model.occupancy is not None
    assert tr.guidance.prior.graphed_unet is not None  # train.cuda_graphs: on by default with the prior on CUDA
    tr.run()
    assert 0 < tr.model.occupancy.binaries.float().mean() < 0.5  # it skips empty space
    # the grid skips only what does not show: renders with and without it agree
    cams = orbit_cameras(15.0, [0.0, 120.0], 3.0, 40.0, 32, 32)
    with torch.no_grad():
        a = tr.model.render(cams, stratified=False, estimator=tr.model.occupancy)
        b = tr.model.render(cams, stratified=False)
    assert (a.rgb - b.rgb).abs().mean() < 0.03 and (a.alpha - b.alpha).abs().mean() < 0.03
    saved = torch.load(tr.ckpt_path, weights_only=True)  # the checkpoint carries the grid
    assert torch.equal(saved["occupancy"]["binaries"].cpu(), tr.model.occupancy.binaries.cpu())


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
    before = {
        name: open(os.path.join(out, name), "rb").read()
        for name in ("metrics.json", "checkpoint.pt", "config.yaml", "mesh.glb")
    }
    listing = sorted(os.listdir(out))
    # --overwrite with an input that cannot work fails before anything of the earlier run is touched
    with pytest.raises(RunError, match="does not exist"):
        generate(_cfg(tiny_prior, "image=" + str(tmp_path / "missing.png")), out, overwrite=True, **quiet)
    with pytest.raises(PriorNotFoundError):
        generate(_cfg(str(tmp_path / "no_model")), out, overwrite=True, **quiet)
    with pytest.raises(RunError, match="one of them"):
        generate(cfg, out, resume=True, overwrite=True, **quiet)
    # ... and so does one that fails later, at its first step (a setting only training reads, Ctrl-C): the earlier
    # run is set aside, not deleted, until the new run has a checkpoint (before, --overwrite had deleted it)
    for error in (ValueError("a setting only the first step reads"), KeyboardInterrupt()):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Trainer, "train_step", lambda self: (_ for _ in ()).throw(error))
            with pytest.raises(type(error)):
                generate(_cfg(tiny_prior, "train.val_every=1", "seed=7"), out, overwrite=True, **quiet)
    assert sorted(os.listdir(out)) == listing
    assert all(open(os.path.join(out, name), "rb").read() == data for name, data in before.items())
    # an --overwrite killed before its first checkpoint (no Python left to put the earlier run back): the next
    # command in the folder finds the earlier run set aside and puts it back first
    from dream3d.pipeline import PREVIOUS_PREFIX, set_aside_run

    set_aside_run(out)
    open(os.path.join(out, "config.yaml"), "w").write("the killed run's config")
    with pytest.raises(RunError, match="holds a finished run"):
        generate(cfg, out, **quiet)
    assert sorted(os.listdir(out)) == listing and not any(n.startswith(PREVIOUS_PREFIX) for n in os.listdir(out))
    assert all(open(os.path.join(out, name), "rb").read() == data for name, data in before.items())
    # a real overwrite leaves none of the earlier run's files behind (no stale mesh, no old val renders),
    # and nothing that a run does not write
    open(os.path.join(out, "val", "notes.txt"), "w").write("mine")
    generate(_cfg(tiny_prior, "train.steps=2", "train.val_every=0", "output.mesh=false"), out, overwrite=True, **quiet)
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.yaml", "gaussians.ply", "metrics.json", "val"]
    assert os.listdir(os.path.join(out, "val")) == ["notes.txt"]
    # a folder of someone else's files is refused, even with --overwrite, and loses nothing
    other = tmp_path / "mine"
    (other / "val").mkdir(parents=True)
    (other / "val" / "step_00001.png").write_text("not a render of ours")
    with pytest.raises(RunError, match="holds other files but no dream3d run"):
        generate(_cfg(tiny_prior, "train.val_every=0"), str(other), overwrite=True, stop_after=1, **quiet)
    assert sorted(os.listdir(other)) == ["val"] and os.listdir(other / "val") == ["step_00001.png"]
    assert (other / "val" / "step_00001.png").read_text() == "not a render of ours"


def test_stopping_right_after_a_read_leaves_a_checkpoint(tiny_prior, tmp_path):
    """--stop-after N with N a multiple of train.log_every (the step's numbers were just read) still checkpoints."""
    cfg = _cfg(tiny_prior, "train.steps=6", "train.log_every=2", "train.checkpoint_every=0", "train.val_every=0")
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    tr.run(stop_after=2)
    assert torch.load(tr.ckpt_path, weights_only=True)["step"] == 2


def test_nan_guard_with_reads_every_few_steps(tiny_prior, tmp_path):
    """Bad steps are found when the numbers are read (every log_every steps), counted one by one, recorded in
    the history, and the checkpoint on disk stays the last good one."""
    cfg = _cfg(
        tiny_prior,
        "train.steps=12",
        "train.log_every=3",
        "train.checkpoint_every=0",
        "train.val_every=0",
        "train.max_nan_skips=4",
    )
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    tr.run(stop_after=4)
    good = tr.model.means.detach().clone()
    tr.background = torch.full_like(tr.background, float("nan"))  # every later step is non-finite
    with pytest.raises(NonFiniteError, match="last good checkpoint"):
        tr.run()
    assert tr.nan_skips == 5 and tr.step == 9  # read at steps 6 and 9: five bad steps > 4
    assert torch.equal(tr.model.means, good)  # skipped on the device: the Gaussians never moved
    saved = torch.load(tr.ckpt_path, weights_only=True)
    assert saved["step"] == 4 and torch.equal(saved["model"]["means"], good)


@pytest.mark.parametrize("preset", ["gaussian-vsd", "prolificdreamer"])
def test_a_checkpoint_of_a_non_fused_optimizer_resumes(tiny_prior, tmp_path, preset):
    """Checkpoints written before the optimizers were fused (foreach/for-loop Adam) load and train on."""
    cfg = _cfg(tiny_prior, "train.steps=4", "train.checkpoint_every=0", "train.val_every=0", preset=preset)
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    tr.run(stop_after=2)
    state = torch.load(tr.ckpt_path, weights_only=True)
    groups = state["optimizer"]["param_groups"] + state["guidance"].get("optimizer", {}).get("param_groups", [])
    for g in groups:
        g["fused"], g["foreach"] = None, None  # how the earlier code saved them
    torch.save(state, tr.ckpt_path)
    resumed = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    resumed.load_checkpoint()
    assert all(g["fused"] for g in resumed.opt.param_groups)
    resumed.run()
    assert resumed.step == 4 and resumed.nan_skips == 0


def _poison_step(monkeypatch, bad_steps: set[int]):
    """Make the training steps whose index (0-based) is in ``bad_steps`` non-finite, each time they run."""
    real = Trainer.train_step

    def train_step(self):
        if self.step not in bad_steps:
            return real(self)
        background = self.background
        self.background = torch.full_like(background, float("nan"))
        try:
            return real(self)
        finally:
            self.background = background

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_a_non_finite_stop_gives_advice_the_cli_accepts(tiny_prior, tmp_path, monkeypatch, capsys):
    """Before, train.nan_policy=stop ended in a traceback that claimed a checkpoint where none was written and
    advised changing the guidance scale and then --resume, which the resume check refuses."""
    from dream3d import cli

    base = [
        "generate", "a red cube", *TINY_RUN, f"guidance.prior.model={tiny_prior}", "--config", "dreamgaussian",
        "train.nan_policy=stop", "train.checkpoint_every=1", "output.mesh=false",
    ]  # fmt: skip
    # a bad first step: no checkpoint exists, so the advice is to start again
    _poison_step(monkeypatch, {0})
    assert cli.main([*base, "-o", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "before any checkpoint was written" in err and "--resume" not in err, err
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    # a bad third step: the step-2 checkpoint stands, and the advised --resume is accepted and skips the bad step
    monkeypatch.undo()
    _poison_step(monkeypatch, {2})
    out = str(tmp_path / "b")
    assert cli.main([*base, "-o", out]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("dream3d: error:"))
    assert "last good checkpoint (step 2)" in line and "--resume train.nan_policy=skip" in line, err
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] == 2
    assert cli.main([*base, "-o", out, "--resume", "train.nan_policy=skip"]) == 0, capsys.readouterr().err
    import json

    train = json.load(open(os.path.join(out, "metrics.json")))["train"]
    assert train["steps"] == 4 and train["nan_skips"] == 1


@pytest.mark.parametrize("cut_at", [1, 2, 3, 5])
def test_a_set_aside_or_put_back_cut_short_at_any_file_loses_nothing(tmp_path, monkeypatch, cut_at):
    """--overwrite moves the earlier run aside file by file, and puts it back the same way: stopped after any
    file (Ctrl-C, a failing move, a kill), the next command finds the earlier run whole (review, 2026-12-05)."""
    import dream3d.pipeline as pipeline

    out = tmp_path / "run"
    (out / "val").mkdir(parents=True)
    files = {n: n.encode() * 3 for n in ("metrics.json", "checkpoint.pt", "config.yaml", "gaussians.ply", "mesh.glb")}
    files["val/step_00001.png"] = b"png"
    for name, data in files.items():
        (out / name).write_bytes(data)

    def as_before():
        found = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        return found == files

    real, calls = os.replace, []

    def cut(a, b):
        calls.append(a)
        if len(calls) == cut_at:
            raise KeyboardInterrupt
        return real(a, b)

    # the set-aside cut short: what moved is put back at once
    with monkeypatch.context() as mp:
        mp.setattr(pipeline.os, "replace", cut)
        with pytest.raises(KeyboardInterrupt):
            pipeline.set_aside_run(str(out))
    assert as_before()
    # a whole set-aside, a new run that wrote its config and a render, then a put-back cut short
    aside = pipeline.set_aside_run(str(out))
    (out / "config.yaml").write_text("the new run's")
    (out / "val").mkdir(exist_ok=True)
    (out / "val" / "step_00002.png").write_bytes(b"new")
    calls.clear()
    with monkeypatch.context() as mp:
        mp.setattr(pipeline.os, "replace", cut)
        with pytest.raises(KeyboardInterrupt):
            pipeline.settle_previous_run(str(out), aside, log=lambda m: None)
    pipeline.recover_set_aside_runs(str(out), log=lambda m: None)  # what the next command does first
    assert as_before() and not any(p.name.startswith(pipeline.PREVIOUS_PREFIX) for p in out.iterdir())


def test_a_set_aside_of_a_process_still_running_is_left_alone(tmp_path):
    """Another command in the folder must not put the earlier run back under an --overwrite still training there."""
    import dream3d.pipeline as pipeline

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("earlier")
    aside = pipeline.set_aside_run(str(out))
    (out / "config.yaml").write_text("the live run's")
    live = out / f"{pipeline.PREVIOUS_PREFIX}{os.getppid()}-x"  # a process that is alive, and not this one
    os.rename(aside, live)
    pipeline.recover_set_aside_runs(str(out), log=lambda m: None)
    assert (out / "config.yaml").read_text() == "the live run's" and live.exists()
    dead = out / f"{pipeline.PREVIOUS_PREFIX}999999999-x"  # no such process: a killed run's, settled
    os.rename(live, dead)
    pipeline.recover_set_aside_runs(str(out), log=lambda m: None)
    assert (out / "config.yaml").read_text() == "earlier" and not dead.exists()


def test_the_reference_losses_follow_their_schedules(tiny_prior, tmp_path):
    """reference.lambda_rgb and lambda_mask are scheduled scalars (DreamGaussian's colour-loss warm-up): each
    step's loss is the weights of that step times the reference view's colour and mask errors."""
    cfg = _cfg(tiny_prior, "reference.lambda_rgb=[0,0,1000,4]", "reference.lambda_mask=[1,50,5,3]")
    g = torch.Generator().manual_seed(0)
    rgb, mask = torch.rand(1, 24, 24, 3, generator=g), (torch.rand(1, 24, 24, 1, generator=g) > 0.5).float()
    tr = Trainer(
        cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), reference=(rgb, mask), log=lambda m: None
    )
    weights = []
    for step in range(6):
        with torch.no_grad():
            prgb, palpha, _ = tr.render(tr._reference_cameras(24), shading="albedo")
        rgb_err, mask_err = float(((prgb - rgb) ** 2).mean()), float(((palpha - mask) ** 2).mean())
        tr.step = step
        loss, guidance_loss = (float(x) for x in tr.train_step()[:2])
        weights.append((1000 * min(step, 4) / 4, 50 if step <= 1 else 5 if step >= 3 else 27.5))
        reference_loss = weights[-1][0] * rgb_err + weights[-1][1] * mask_err
        assert loss - guidance_loss == pytest.approx(reference_loss, rel=1e-4), step
    assert weights[0][0] == 0 and weights[2] == (500, 27.5)  # the schedules' middles were crossed
