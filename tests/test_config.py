import glob
import json
import os
import re
import warnings
from pathlib import Path

import pytest

from dream3d.config import CONFIG_DIR, RunConfig, load_run_config
from dream3d.configtools import ConfigError, dotted_keys, parse_overrides, to_plain, to_yaml


@pytest.mark.parametrize(
    "preset", sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
)
def test_every_preset_loads_and_documents_itself(preset):
    cfg = load_run_config(preset)
    assert isinstance(cfg, RunConfig)
    with open(os.path.join(CONFIG_DIR, preset + ".yaml")) as f:
        assert f.readline().startswith("#"), "each preset starts with a comment saying what it is"


def test_required_presets_exist():
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))}
    assert {"dreamgaussian", "dreamfusion", "prolificdreamer", "gaussian-vsd", "gaussian-ism"} <= names
    assert (
        load_run_config("dreamfusion").representation == "nerf"
        and load_run_config("prolificdreamer").guidance.method == "vsd"
    )


def _ablation_nerf_cell():
    from dream3d.ablate import cells, load_spec

    spec = load_spec(os.path.join(CONFIG_DIR, "ablations", "gaussians_vs_nerf.yaml"))
    cell = next(c for c in cells(spec) if c["variant"] == "nerf")
    return load_run_config(spec.base, cell["overrides"])


@pytest.mark.parametrize("preset", ["dreamfusion", "prolificdreamer", "ablations/gaussians_vs_nerf.yaml"])
def test_nerf_presets_are_lit_like_the_embedded_priors_world(preset):
    """The embedded prior saw only white backgrounds and the world's one light; the NeRF presets render so
    (a learned background and random lights drifted the colour: configs/dreamfusion.yaml's header).
    The Gaussians-vs-NeRF ablation writes the same light in its overrides, so it is checked too."""
    from dream3d.world.render import AMBIENT, LIGHT_DIR

    nerf = (_ablation_nerf_cell() if preset.startswith("ablations/") else load_run_config(preset)).nerf
    assert nerf.background == "fixed" and tuple(nerf.background_color) == (1.0, 1.0, 1.0)
    assert tuple(nerf.light_direction) == tuple(LIGHT_DIR) and nerf.ambient_ratio == AMBIENT


def test_overrides_fill_nested_fields_with_types():
    cfg = load_run_config(
        "dreamgaussian",
        [
            "train.steps=12",
            "guidance.guidance_scale=[0,100,10,50]",
            "cameras.fov_y=[30,40]",
            "gaussians.max_gaussians=null",
            "prompt=a red cube",
        ],
    )
    assert cfg.train.steps == 12 and cfg.guidance.guidance_scale == [0, 100, 10, 50]
    assert cfg.cameras.fov_y == (30.0, 40.0) and cfg.gaussians.max_gaussians is None and cfg.prompt == "a red cube"


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.step=5", ["train.step", "train.steps"]),
        ("trian.steps=5", ["trian.steps", "train.steps"]),
        ("guidance_scale=5", ["guidance_scale", "guidance.guidance_scale"]),
        ("guidance.lora_rank=8", ["'guidance.lora_rank'", "selects guidance.method=sds", "set guidance.method=vsd"]),
        ("train.steps=many", ["train.steps", "many"]),
        ("train=5", ["train", "section"]),
        ("cameras.fov_y=[1,2,3]", ["cameras.fov_y", "2 values"]),
        ("representation=meshes", ["representation", "meshes", "gaussians, nerf, voxels"]),
        ("guidance.method=magic", ["guidance.method", "magic", "sds, vsd, ism, csd"]),
        ("steps", ["key=value"]),
        ("guidance.guidance_scale=abc", ["'abc' is not of type float or int or Sequence"]),  # (was "Union")
    ],
)
def test_bad_overrides_name_the_key_and_the_fix(override, words):
    with pytest.raises(ConfigError) as e:
        load_run_config("dreamgaussian", [override])
    for w in words:
        assert w in str(e.value), str(e.value)


def test_numbers_with_an_exponent_are_numbers_in_overrides_and_files(tmp_path):
    """PyYAML reads 1e-4 as text (YAML 1.1); it was refused as 'not of type float' where OmegaConf reads a number."""
    cfg = load_run_config(
        "gaussian-vsd", ["guidance.lora_lr=1e-4", "train.steps=1E3", "gaussians.position_lr_init=-2e-3"]
    )
    assert cfg.guidance.lora_lr == 1e-4 and cfg.train.steps == 1000 and cfg.gaussians.position_lr_init == -2e-3
    f = tmp_path / "mine.yaml"
    f.write_text("base: gaussian-vsd\nguidance:\n  lora_lr: 5e-4\n")
    assert load_run_config(str(f)).guidance.lora_lr == 5e-4
    with pytest.raises(ConfigError, match="'1e-4x' is not of type float"):
        load_run_config("gaussian-vsd", ["guidance.lora_lr=1e-4x"])


def test_a_folder_named_like_a_preset_in_the_working_folder_does_not_hide_the_preset(tmp_path, monkeypatch):
    """A DreamGaussian clone or a zero123 weights folder in the working folder broke even the default commands."""
    for name in ("dreamgaussian", "zero123", "gaussian-vsd"):
        (tmp_path / name).mkdir()
    (tmp_path / "mine.yaml").write_text("base: dreamgaussian\ntrain: {steps: 7}\n")
    monkeypatch.chdir(tmp_path)
    assert load_run_config("dreamgaussian").guidance.method == "sds"
    assert load_run_config("zero123").guidance.method == "zero123"
    assert load_run_config("gaussian-vsd").guidance.method == "vsd"
    assert load_run_config("mine.yaml").train.steps == 7 and load_run_config("mine.yaml").guidance.method == "sds"


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="dreamgaussian"):
        load_run_config("dreamgausian")


def test_saved_config_reloads_to_the_same_config(tmp_path):
    cfg = load_run_config("prolificdreamer", ["train.steps=7", "prompt=a blue cone"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_run_config(str(path)) == cfg


def test_every_schema_key_is_reachable_by_override():
    keys = dotted_keys(RunConfig())
    assert "guidance.guidance_scale" in keys and "mesh.extract.target_faces" in keys and "nerf.levels" in keys
    assert "guidance.lora_rank" in dotted_keys(load_run_config("gaussian-vsd"))
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]", "e=text with spaces"]) == {
        "a": {"b": {"c": 1}, "d": [1, 2]},
        "e": "text with spaces",
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ("mesh.resolution=0", "mesh.resolution must be at least 8, got 0"),
        ("output.turntable_frames=0", "output.turntable_frames must be at least 1"),
        ("gaussians.num_points=0", "gaussians.num_points must be at least 1"),
        ("train.resolution=-8", "train.resolution must stay at least 8 pixels"),
        ("train.resolution=[0,4,32,100]", "train.resolution must stay at least 8 pixels"),
        ("train.resolution=[0,16,32]", "train.resolution: a scheduled scalar must be"),
        ("guidance.guidance_scale=[1,2]", "guidance.guidance_scale: a scheduled scalar must be"),
        ("train.steps.foo=5", "'train.steps' is a value, not a section"),
        ("guidance.grad_clip_norm=[1,2]", "guidance.grad_clip_norm: a scheduled scalar must be"),  # Scheduled | None
        ("mesh.extract.blur_sigma=-1", "mesh.extract.blur_sigma must be at least 0"),
        ("representation=nerf mesh.gaussian_color_median=16", "set mesh.gaussian_color_median=0"),
        # cameras and the VSD student: before, these failed at the first step, after --overwrite had cleared the run
        ("cameras.fov_y=[0,0]", "'cameras': fov_y must lie between 0 and 180 degrees"),
        ("cameras.radius=[0,0]", "'cameras': radius must be above 0"),
        ("cameras.elevation=[30,10]", "'cameras': elevation must be a range [low, high] with low <= high"),
        ("guidance.method=vsd guidance.lora_rank=0", "lora_rank and lora_steps_per_call must be at least 1"),
        ("guidance.method=vsd guidance.lora_t_min=1", "need 0 <= lora_t_min < lora_t_max <= 1"),
        # more that failed only at the first step (audit, 2026-12-05)
        ("guidance.timesteps.t_min=0.9 guidance.timesteps.t_max=0.5", "need 0 <= t_min <= t_max <= 1"),
        ("guidance.timesteps.t_max=[0,1.5,0.5,100]", "need 0 <= t_min <= t_max <= 1"),
        (  # schedules that cross between their ends: t_max falls to 0.3 by step 100, t_min starts falling at 900
            "guidance.timesteps.t_max=[0,0.9,0.3,100] guidance.timesteps.t_min=[900,0.8,0.2,1000]",
            "need 0 <= t_min <= t_max <= 1",
        ),
        ("guidance.view_prompts.template=a_{object}", "must be a format string of {prompt} and {view} only"),
        ("reference.every=0", "need every >= 1, radius > 0 and 0 < fov_y < 180"),
        ("reference.fov_y=0", "need every >= 1, radius > 0 and 0 < fov_y < 180"),
        ("reference.lambda_rgb=[0,1000]", "reference.lambda_rgb: a scheduled scalar must be a number or"),
        ("gaussians.densify_interval=0", "densify_interval must be at least 1"),
        ("train.compile=foo", "compile must be null (eager) or one of default, reduce-overhead"),
        ("guidance.prior.dtype=foo", "unknown dtype 'foo'"),
        ("mesh.texture.n_azimuth=0", "mesh.texture.n_azimuth must be at least 1"),
    ],
)
def test_values_a_run_cannot_use_fail_at_load_naming_the_key(override, message):
    import re

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config("dreamgaussian", override.split())


def test_unreadable_config_files_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(str(bad))
    with pytest.raises(ConfigError, match="is a folder"):
        load_run_config(str(tmp_path))


def test_a_device_this_machine_lacks_is_a_config_error():
    import torch

    from dream3d.devices import resolve_device

    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("gpu0", "train.device")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device=cuda but torch sees no CUDA device"):
            resolve_device("cuda", "train.device")


def test_a_config_file_can_start_from_a_preset(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: dreamfusion\ntrain: {steps: 123}\n")
    cfg, preset = load_run_config(str(mine)), load_run_config("dreamfusion")
    assert cfg.train.steps == 123 and cfg.representation == "nerf"
    preset.guidance.timesteps.total_steps = 123  # it follows train.steps
    assert cfg.nerf == preset.nerf and cfg.guidance == preset.guidance  # the rest is the preset's
    (tmp_path / "more.yaml").write_text("base: mine.yaml\ntrain: {batch_size: 3}\n")  # a file beside it
    more = load_run_config(str(tmp_path / "more.yaml"))
    assert (more.train.steps, more.train.batch_size, more.representation) == (123, 3, "nerf")
    mine.write_text("base: more.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        load_run_config(str(mine))
    mine.write_text("base: dreamfusoin\n")
    with pytest.raises(ConfigError, match="no config file or preset named 'dreamfusoin'"):
        load_run_config(str(mine))


# ---- one guidance section (issue 17): guidance.method picks the rule; the old layout (a section per rule) loads

BEFORE = json.loads((Path(__file__).parent / "data" / "guidance_before_issue17.json").read_text())


def _effective(cfg) -> dict:
    return to_plain(cfg.guidance) | {"train.steps": cfg.train.steps}


def _same_as_before(now: dict, before: dict) -> None:
    """The guidance settings a run used before issue 17, but for total_steps of a random schedule: it was the
    old default 1000, which that schedule never reads, and now follows train.steps as everywhere."""
    if before["timesteps"]["schedule"] == "random" and now["timesteps"]["total_steps"] == now["train.steps"]:
        now = now | {"timesteps": now["timesteps"] | {"total_steps": before["timesteps"]["total_steps"]}}
    assert now == before


def _ablation_cells(path: str, overrides_from: str = "overrides"):
    from dream3d.ablate import load_spec

    spec = load_spec(path)
    name = os.path.basename(path)[:-5]
    for variant, overrides in spec.variants.items():
        cfg = load_run_config(
            spec.base,
            spec.overrides + overrides + ["seed=0"],
            {"prompt": spec.prompts[0]},
            overrides_from=overrides_from,
        )
        yield f"{name}/{variant}", cfg


def test_presets_and_ablation_cells_keep_their_guidance_settings():
    presets = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))}
    assert presets - set(BEFORE["presets"]) == {"zero123"}  # the one preset added since (issue 20)
    for name in BEFORE["presets"]:
        _same_as_before(_effective(load_run_config(name)), BEFORE["presets"][name])
    cells = dict(
        c for p in sorted(glob.glob(os.path.join(CONFIG_DIR, "ablations", "*.yaml"))) for c in _ablation_cells(p)
    )
    assert set(cells) == set(BEFORE["ablations"])
    for name, cfg in cells.items():
        _same_as_before(_effective(cfg), BEFORE["ablations"][name])


def test_old_layout_presets_specs_and_run_configs_load_translated_with_a_notice(tmp_path):
    for repo_path, text in BEFORE["old_files"].items():
        path = tmp_path / repo_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name, before in BEFORE["presets"].items():
        path = str(tmp_path / "configs" / f"{name}.yaml")
        with pytest.warns(FutureWarning, match=re.escape(f"{path}: translated from the old guidance layout")):
            cfg = load_run_config(path)
        _same_as_before(_effective(cfg), before)
    for spec in glob.glob(str(tmp_path / "configs" / "ablations" / "*.yaml")):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            cells = dict(_ablation_cells(spec, overrides_from=spec))
        if "guidance." in open(spec).read():
            assert any(str(w.message).startswith(f"{spec}: translated from the old guidance layout") for w in seen)
        for name, cfg in cells.items():
            _same_as_before(_effective(cfg), BEFORE["ablations"][name])
    # a run's saved config.yaml holds all four sections: the selected one is taken, the others dropped
    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(BEFORE["old_run_config"])
    with pytest.warns(
        FutureWarning,
        match=re.escape(
            f"{saved}: translated from the old guidance layout (a section per rule): "
            "guidance.vsd.* is now guidance.*; dropped guidance.sds, guidance.ism, "
            "guidance.csd (never read with guidance.method=vsd)"
        ),
    ):
        cfg = load_run_config(str(saved))
    assert _effective(cfg) == BEFORE["presets"]["gaussian-vsd"]  # its total_steps (1000) was saved, so it stays
    assert cfg.prompt == "a red cube" and cfg.follows_run_length == ()
    saved.write_text(to_yaml(cfg))  # the new layout: no notice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_run_config(str(saved)) == cfg


def test_a_key_of_an_unselected_rule_is_refused_naming_the_selected_one(tmp_path):
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "overrides: 'guidance.sds.guidance_scale' is a setting of guidance.method=sds, "
            "and this config selects guidance.method=vsd; to use it set guidance.method=sds"
        ),
    ):
        load_run_config("gaussian-vsd", ["guidance.sds.guidance_scale=50"])  # accepted and ignored before issue 17
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: dreamgaussian\nguidance: {lora_rank: 8}\n")
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"{mine}: 'guidance.lora_rank' is a setting of guidance.method=vsd, and this "
            "config selects guidance.method=sds"
        ),
    ):
        load_run_config(str(mine))
    mine.write_text("base: dreamgaussian\nguidance: {lora_rank: 8, method: vsd}\n")
    assert load_run_config(str(mine)).guidance.lora_rank == 8
    with pytest.raises(ConfigError, match="'guidance.delta_t' is a setting of guidance.method=ism"):
        load_run_config(str(mine), ["guidance.delta_t=40"])


def test_a_method_switch_starts_from_the_rules_defaults_in_any_order(tmp_path):
    from dream3d.guidance import ISMConfig, PriorConfig, SDSConfig

    vsd_to_sds = load_run_config("gaussian-vsd", ["guidance.method=sds"])
    sds = to_plain(SDSConfig())
    sds["timesteps"]["total_steps"] = 400  # the preset's train.steps
    assert to_plain(vsd_to_sds.guidance) == {"method": "sds", "prior": to_plain(PriorConfig()), **sds}
    assert (
        vsd_to_sds.guidance.guidance_scale == 100.0 and vsd_to_sds.guidance.grad_clip_norm is None
    )  # not VSD's 7.5, 10
    assert vsd_to_sds.gaussians == load_run_config("gaussian-vsd").gaussians  # only the guidance section starts again
    keys = ["guidance.guidance_scale=30", "guidance.method=ism", "guidance.prior.dtype=fp32"]
    a, b = load_run_config("dreamgaussian", keys), load_run_config("dreamgaussian", keys[::-1])
    assert a == b and a.guidance.guidance_scale == 30 and a.guidance.delta_t == ISMConfig.delta_t
    assert not a.guidance.perpneg.enabled  # dreamgaussian's Perp-Neg was SDS's setting
    # a file that switches from its base: its own keys apply; guidance.prior of earlier layers stays
    (tmp_path / "base.yaml").write_text("base: gaussian-vsd\nguidance: {prior: {model: /models/sd15}, lora_rank: 8}\n")
    (tmp_path / "mine.yaml").write_text(
        "base: base.yaml\ntrain: {steps: 50}\nguidance: {method: sds, guidance_scale: 30}\n"
    )
    mine = load_run_config(str(tmp_path / "mine.yaml"))
    assert (mine.guidance.method, mine.guidance.guidance_scale, mine.guidance.prior.model) == (
        "sds",
        30,
        "/models/sd15",
    )
    assert mine.guidance.weighting == "sds" and mine.guidance.timesteps.schedule == "random" and mine.train.steps == 50
    assert (
        load_run_config(str(tmp_path / "mine.yaml"), ["guidance.method=vsd"]).guidance.lora_rank == 4
    )  # VSD's default
    assert load_run_config(str(tmp_path / "base.yaml"), ["guidance.method=vsd"]).guidance.lora_rank == 8  # no switch


def test_the_run_length_is_stated_once():
    """The timestep schedule, the position learning rate's decay and the densification window follow train.steps
    (the Gaussian presets: 400, 400 and 300 of 400 steps, as they stated them before), unless set."""
    every = ("guidance.timesteps.total_steps", "gaussians.position_lr_max_steps", "gaussians.densify_until_step")
    cfg = load_run_config("dreamgaussian")
    assert (
        cfg.guidance.timesteps.total_steps,
        cfg.gaussians.position_lr_max_steps,
        cfg.gaussians.densify_until_step,
    ) == (400, 400, 300)
    cfg = load_run_config("dreamgaussian", ["train.steps=800"])
    assert (
        cfg.guidance.timesteps.total_steps,
        cfg.gaussians.position_lr_max_steps,
        cfg.gaussians.densify_until_step,
    ) == (800, 800, 600)
    assert cfg.follows_run_length == every
    assert "total_steps: 800" in to_yaml(cfg) and "densify_until_step: 600" in to_yaml(
        cfg
    )  # the saved config.yaml holds numbers
    cfg = load_run_config(
        "dreamgaussian", ["train.steps=800", "guidance.timesteps.total_steps=300", "gaussians.densify_until_step=100"]
    )
    assert cfg.guidance.timesteps.total_steps == 300 and cfg.gaussians.densify_until_step == 100
    assert cfg.follows_run_length == ("gaussians.position_lr_max_steps",)
