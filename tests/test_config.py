import glob
import os

import pytest

from dream3d.config import CONFIG_DIR, RunConfig, load_run_config
from dream3d.configtools import ConfigError, dotted_keys, parse_overrides, to_yaml


@pytest.mark.parametrize("preset", sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))))
def test_every_preset_loads_and_documents_itself(preset):
    cfg = load_run_config(preset)
    assert isinstance(cfg, RunConfig)
    with open(os.path.join(CONFIG_DIR, preset + ".yaml")) as f:
        assert f.readline().startswith("#"), "each preset starts with a comment saying what it is"


def test_required_presets_exist():
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))}
    assert {"dreamgaussian", "dreamfusion", "prolificdreamer", "gaussian-vsd", "gaussian-ism"} <= names
    assert load_run_config("dreamfusion").representation == "nerf" and load_run_config("prolificdreamer").guidance.method == "vsd"


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
    cfg = load_run_config("dreamgaussian", ["train.steps=12", "guidance.sds.guidance_scale=[0,100,10,50]", "cameras.fov_y=[30,40]",
                                            "gaussians.max_gaussians=null", "prompt=a red cube"])
    assert cfg.train.steps == 12 and cfg.guidance.sds.guidance_scale == [0, 100, 10, 50]
    assert cfg.cameras.fov_y == (30.0, 40.0) and cfg.gaussians.max_gaussians is None and cfg.prompt == "a red cube"


@pytest.mark.parametrize("override, words", [
    ("train.step=5", ["train.step", "train.steps"]),
    ("trian.steps=5", ["trian.steps", "train.steps"]),
    ("guidance_scale=5", ["guidance_scale", "guidance.sds.guidance_scale"]),
    ("train.steps=many", ["train.steps", "many"]),
    ("train=5", ["train", "section"]),
    ("cameras.fov_y=[1,2,3]", ["cameras.fov_y", "2 values"]),
    ("representation=voxels", ["representation", "voxels"]),
    ("guidance.method=magic", ["guidance.method", "magic"]),
    ("steps", ["key=value"]),
])
def test_bad_overrides_name_the_key_and_the_fix(override, words):
    with pytest.raises(ConfigError) as e:
        load_run_config("dreamgaussian", [override])
    for w in words:
        assert w in str(e.value), str(e.value)


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
    assert "guidance.vsd.lora_rank" in keys and "mesh.extract.target_faces" in keys and "nerf.levels" in keys
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]", "e=text with spaces"]) == {"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "text with spaces"}


@pytest.mark.parametrize("override, message", [
    ("mesh.resolution=0", "mesh.resolution must be at least 8, got 0"),
    ("output.turntable_frames=0", "output.turntable_frames must be at least 1"),
    ("gaussians.num_points=0", "gaussians.num_points must be at least 1"),
    ("train.resolution=-8", "train.resolution must stay at least 8 pixels"),
    ("train.resolution=[0,4,32,100]", "train.resolution must stay at least 8 pixels"),
    ("train.resolution=[0,16,32]", "train.resolution: a scheduled scalar must be"),
    ("guidance.sds.guidance_scale=[1,2]", "guidance.sds.guidance_scale: a scheduled scalar must be"),
    ("train.steps.foo=5", "'train.steps' is a value, not a section"),
    ("guidance.sds.grad_clip_norm=[1,2]", "guidance.sds.grad_clip_norm: a scheduled scalar must be"),  # Scheduled | None
])
def test_values_a_run_cannot_use_fail_at_load_naming_the_key(override, message):
    import re

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config("dreamgaussian", [override])


def test_unreadable_config_files_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(str(bad))
    with pytest.raises(ConfigError, match="is a folder"):
        load_run_config(str(tmp_path))


def test_a_device_this_machine_lacks_is_a_config_error():
    import torch

    from dream3d.guidance.prior import resolve_device

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
