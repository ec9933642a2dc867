"""The run's config schema: one dataclass per component, composed here. YAML presets in ``configs/`` and
dotted command-line overrides fill it (see :mod:`dream3d.configtools`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from renderers.cameras import CameraSampler

from .assets import CONFIG_DIR
from .configtools import ConfigError, build_config, load_yaml, parse_overrides, schema_at
from .guidance.csd import CSDConfig
from .guidance.ism import ISMConfig
from .guidance.prior import PriorConfig
from .guidance.sds import SDSConfig
from .guidance.vsd import VSDConfig
from .mesh.stage import MeshConfig
from .representations.gaussians import GaussianConfig
from .representations.nerf import NeRFConfig
from .train import ReferenceViewConfig, TrainConfig

# What `dream3d generate` uses without --config. Text: Gaussians + VSD, higher IoU than Gaussians + SDS on 12 of
# benchmarks/quality.py's 14 prompts (mean 0.659 against 0.590; README, "How good is it"). Image-to-3D:
# DreamGaussian's SDS setup, the one measured with a reference view.
TEXT_PRESET = "gaussian-vsd"
IMAGE_PRESET = "dreamgaussian"
GUIDANCE_METHODS = ("sds", "vsd", "ism", "csd")


@dataclass
class GuidanceSection:
    method: str = "sds"  # one of GUIDANCE_METHODS; only that method's section is used
    prior: PriorConfig = field(default_factory=PriorConfig)
    sds: SDSConfig = field(default_factory=SDSConfig)
    vsd: VSDConfig = field(default_factory=VSDConfig)
    ism: ISMConfig = field(default_factory=ISMConfig)
    csd: CSDConfig = field(default_factory=CSDConfig)


@dataclass
class OutputConfig:
    mesh: bool = True  # run the mesh stage (mesh.glb, mesh.obj)
    turntable_frames: int = 48
    turntable_resolution: int = 256


@dataclass
class RunConfig:
    prompt: str = ""
    image: str | None = None  # image-to-3D: the reference image (front view)
    seed: int = 0
    representation: str = "gaussians"  # "gaussians" (DreamGaussian) or "nerf" (DreamFusion / ProlificDreamer)
    gaussians: GaussianConfig = field(default_factory=GaussianConfig)
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    guidance: GuidanceSection = field(default_factory=GuidanceSection)
    cameras: CameraSampler = field(default_factory=CameraSampler)
    train: TrainConfig = field(default_factory=TrainConfig)
    reference: ReferenceViewConfig = field(default_factory=ReferenceViewConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def preset_path(name: str) -> str:
    """A preset name (``dreamgaussian``) or a YAML file path."""
    if os.path.exists(name):
        return name
    path = os.path.join(CONFIG_DIR, name if name.endswith(".yaml") else name + ".yaml")
    if not os.path.exists(path):
        names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
        raise ConfigError(f"no config file or preset named {name!r}; presets: {', '.join(names)}")
    return path


def load_run_config(preset: str | None = "dreamgaussian", overrides: list[str] | None = None, extra: dict | None = None) -> RunConfig:
    """Preset, then ``extra`` (values the CLI sets, like the prompt), then dotted overrides."""
    layers = _preset_layers(preset, []) if preset else []
    if extra:
        layers.append(("command line", extra))
    if overrides:
        layers.append(("overrides", parse_overrides(overrides)))
    cfg = build_config(RunConfig, layers)
    validate(cfg)
    return cfg


def _preset_layers(name: str, seen: list[str]) -> list[tuple[str, dict]]:
    """A config file's layers: the preset named by its ``base:`` key first (recursively), then the file, so a
    small file of your own can start from a preset: ``base: dreamgaussian`` plus the keys you change."""
    path = preset_path(name)
    if os.path.abspath(path) in seen:
        raise ConfigError(f"{path}: 'base' goes round in a circle: {' -> '.join(seen + [os.path.abspath(path)])}")
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' names a preset or a YAML file, got {base!r}")
    if not os.path.isabs(base) and os.path.exists(os.path.join(os.path.dirname(path), base)):
        base = os.path.join(os.path.dirname(path), base)  # a file beside this one
    return _preset_layers(base, seen + [os.path.abspath(path)]) + [(path, data)]


def validate(cfg: RunConfig) -> None:
    if cfg.representation not in ("gaussians", "nerf"):
        raise ConfigError(f"representation must be 'gaussians' or 'nerf', got {cfg.representation!r}")
    if cfg.guidance.method not in GUIDANCE_METHODS:
        raise ConfigError(f"guidance.method must be one of {', '.join(GUIDANCE_METHODS)}, got {cfg.guidance.method!r}")
    for key, least in _MINIMUMS.items():
        value = schema_at(cfg, key)
        if value < least:
            raise ConfigError(f"{key} must be at least {least}, got {value}")
    _check_schedules(cfg, "")
    f = cfg.reference.object_fraction
    if f is not None and not 0.05 <= f <= 1.0:
        raise ConfigError(f"reference.object_fraction must lie in [0.05, 1] (or be null for the image as it is), got {f}")
    for key in _SCHEDULED_SIZES:
        value = schema_at(cfg, key)
        ends = [value] if isinstance(value, (int, float)) else [value[1], value[2]]
        if min(ends) < 8:
            raise ConfigError(f"{key} must stay at least 8 pixels, got {value}")


# Counts and sizes below which a run cannot work (a 1-sample grid has no surface, 0 frames no video).
_MINIMUMS = {
    "train.steps": 1, "train.batch_size": 1, "gaussians.num_points": 1, "nerf.num_samples": 2,
    "mesh.resolution": 8, "mesh.texture.texture_size": 8, "mesh.texture.view_resolution": 8,
    "output.turntable_frames": 1, "output.turntable_resolution": 8, "reference.resolution": 8,
}
_SCHEDULED_SIZES = ("train.resolution",)


def _check_schedules(section, prefix: str) -> None:
    """Every Scheduled field is a number or [start_step, start_value, end_value, end_step]."""
    import dataclasses
    import typing

    from .guidance.schedules import Scheduled, scheduled

    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_schedules(value, prefix + f.name + ".")
        elif hints[f.name] in (Scheduled, typing.Optional[Scheduled]) and value is not None:
            try:
                scheduled(value, 0)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{prefix}{f.name}: {e}") from None
