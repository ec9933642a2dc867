"""The run's config schema: one dataclass per component, composed here. YAML presets in ``configs/`` and
dotted command-line overrides fill it (see :mod:`dream3d.configtools`)."""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import ClassVar

from renderers.cameras import CameraSampler

from .assets import CONFIG_DIR, EMBEDDED_ZERO123
from .configtools import ConfigError, build_config, load_yaml, parse_overrides, schema_at, selected_by
from .guidance import RULES
from .guidance.prior import PriorConfig
from .guidance.schedules import Scheduled, scheduled
from .guidance.zero123_prior import missing_parts
from .mesh.stage import MeshConfig
from .representations import REPRESENTATIONS
from .representations.gaussians import GaussianConfig
from .representations.nerf import NeRFConfig
from .representations.voxels import VoxelConfig
from .train import ReferenceViewConfig, TrainConfig

# What `dream3d generate` uses without --config. Text: Gaussians + VSD, higher IoU than Gaussians + SDS on 12 of
# benchmarks/quality.py's 14 prompts (mean 0.659 against 0.590; README, "How good is it"). Image-to-3D:
# DreamGaussian's SDS setup, the one measured with a reference view (image_preset: zero123 once it is shipped).
TEXT_PRESET = "gaussian-vsd"
IMAGE_PRESET = "dreamgaussian"
ZERO123_PRESET = "zero123"  # image-to-3D with the view-conditioned prior: the image default once it is shipped


def image_preset() -> str:
    """The preset of ``dream3d generate --image``: zero123 when the embedded Zero123 is in the assets (trained by
    ``dream3d prior train --kind zero123``), else dreamgaussian (reference view + text SDS)."""
    shipped = os.path.isdir(EMBEDDED_ZERO123) and not missing_parts(Path(EMBEDDED_ZERO123))
    return ZERO123_PRESET if shipped else IMAGE_PRESET


@dataclass
class GuidanceSection:
    """What every guidance section holds: the rule (``method``, a name of dream3d.guidance.RULES) and the
    diffusion model it scores with. A run's section is ``GUIDANCE_SECTIONS[method]``: these two, then that
    rule's config (the settings every rule shares, GuidanceConfig's, and the rule's own), with its defaults.
    A layer that changes the method starts the section from the new rule's defaults (prior.* stays):
    configtools.selected_by."""

    method: str = "sds"
    prior: PriorConfig = field(default_factory=PriorConfig)


GUIDANCE_SECTIONS = {
    name: make_dataclass(
        f"{rule.__name__}Section",
        [("method", str, field(default=name))],
        bases=(rule.config_class, GuidanceSection),
        namespace={"__module__": __name__},
    )
    for name, rule in RULES.items()
}
globals().update((cls.__name__, cls) for cls in GUIDANCE_SECTIONS.values())  # importable by name: a config pickles


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
    # one of dream3d.representations.REPRESENTATIONS: "gaussians" (DreamGaussian), "nerf" (DreamFusion /
    # ProlificDreamer), "voxels" (a plain density + colour grid); its section below configures it
    representation: str = "gaussians"
    gaussians: GaussianConfig = field(default_factory=GaussianConfig)
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    voxels: VoxelConfig = field(default_factory=VoxelConfig)
    guidance: GuidanceSection = selected_by("method", GUIDANCE_SECTIONS, GuidanceSection.method)
    cameras: CameraSampler = field(default_factory=CameraSampler)
    train: TrainConfig = field(default_factory=TrainConfig)
    reference: ReferenceViewConfig = field(default_factory=ReferenceViewConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # The keys of RUN_LENGTH_KEYS that resolve_run_length filled from train.steps (not a setting)
    follows_run_length: ClassVar[tuple[str, ...]] = ()


def preset_path(name: str) -> str:
    """A preset name (``dreamgaussian``) or a YAML file path. A bare preset name is the preset even where the
    working folder holds a file or folder of that name (a clone of DreamGaussian, a ``zero123`` weights folder)."""
    preset = os.path.join(CONFIG_DIR, name + ".yaml")
    if os.sep not in name and not name.endswith((".yaml", ".yml")) and os.path.isfile(preset):
        return preset
    if os.path.exists(name):
        return name
    path = os.path.join(CONFIG_DIR, name if name.endswith(".yaml") else name + ".yaml")
    if not os.path.exists(path):
        names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
        raise ConfigError(f"no config file or preset named {name!r}; presets: {', '.join(names)}")
    return path


def load_run_config(
    preset: str | None = "dreamgaussian",
    overrides: list[str] | None = None,
    extra: dict | None = None,
    overrides_from: str = "overrides",
) -> RunConfig:
    """Preset, then ``extra`` (values the CLI sets, like the prompt), then dotted overrides (``overrides_from``
    names them in messages: the ablation spec they come from)."""
    layers = _preset_layers(preset, []) if preset else []
    if extra:
        layers.append(("command line", extra))
    if overrides:
        layers.append((overrides_from, parse_overrides(overrides)))
    layers = old_guidance_layout([(source, move_old_keys(source, data)) for source, data in layers], bool(overrides))
    cfg = resolve_run_length(build_config(RunConfig, layers))
    validate(cfg)
    return cfg


# Keys that moved, old -> new: files and saved run configs that use the old names keep loading, with a notice.
MOVED_KEYS = {
    "train.lambda_opacity": "nerf.lambda_opacity",
    "train.lambda_entropy": "nerf.lambda_entropy",
    "train.lambda_orientation": "nerf.lambda_orientation",
}


def move_old_keys(source: str, data: dict) -> dict:
    """``data`` with every key of MOVED_KEYS under its new name (a copy; the old name wins over nothing)."""
    moved = []
    for old, new in MOVED_KEYS.items():
        *path, leaf = old.split(".")
        section = data
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            continue
        if not moved:
            data = copy.deepcopy(data)
        value = _pop_dotted(data, old)
        *new_path, new_leaf = new.split(".")
        target = data
        for part in new_path:
            target = target.setdefault(part, {})
        target.setdefault(new_leaf, value)
        moved.append(f"{old} -> {new}")
    if moved:
        warnings.warn(f"{source}: renamed {', '.join(moved)} (the old names still load)", FutureWarning, stacklevel=3)
    return data


def _pop_dotted(data: dict, key: str):
    *path, leaf = key.split(".")
    for part in path:
        data = data[part]
    return data.pop(leaf)


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


def old_guidance_layout(layers: list[tuple[str, dict]], last_is_overrides: bool = False) -> list[tuple[str, dict]]:
    """Layers written in the layout before issue 17 (a section per rule side by side: guidance.sds, guidance.vsd,
    ..., each with the shared settings, of which only guidance.method's was read) in the new layout: the
    selected rule's section moves up to guidance.*, with a one-line notice naming the file. A file's sections of
    other rules are dropped (they were never read; a saved run config holds all four); in the overrides they
    stay, and fail as keys of an unselected rule."""
    method, out = GuidanceSection.method, []
    for i, (where, data) in enumerate(layers):
        g = data.get("guidance")
        if isinstance(g, dict) and isinstance(g.get("method", method), str):
            method = g.get("method", method)
            keep_others = last_is_overrides and i == len(layers) - 1
            drop = [n for n in RULES if n != method and isinstance(g.get(n), dict) and not keep_others]
            if method in RULES and (isinstance(g.get(method), dict) or drop):
                rest = {k: v for k, v in g.items() if k != method and k not in drop}
                data = {**data, "guidance": _deep_merge(g.get(method) or {}, rest)}
                # issued here (stacklevel 1), so a file loaded again (resume compares it twice) gives the line once
                warnings.warn(
                    f"{where}: translated from the old guidance layout (a section per rule): guidance.{method}.* is now "
                    f"guidance.*"
                    + (
                        f"; dropped {', '.join('guidance.' + n for n in drop)} (never read with "
                        f"guidance.method={method})"
                        if drop
                        else ""
                    ),
                    FutureWarning,
                    stacklevel=1,
                )
        out.append((where, data))
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    """``a`` updated with ``b``, section by section (``b`` wins)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Settings that follow the run length: None (their default) means train.steps. resolve_run_length fills them
# in when the run config is built, so --print-config and the run's config.yaml show the numbers the run uses.
# Settings that follow the run's length when left at null: the fraction of train.steps each takes.
RUN_LENGTH_KEYS = {
    "guidance.timesteps.total_steps": 1.0,
    "gaussians.position_lr_max_steps": 1.0,
    "gaussians.densify_until_step": 0.75,
}


def fixed_run_length(cfg: RunConfig) -> list[str]:
    """The keys of RUN_LENGTH_KEYS set to a number that does not follow this train.steps, as 'key=value (following:
    N)': in a reused --print-config or config.yaml they hold the old run's length, and would end schedules early."""
    out = []
    for key, fraction in RUN_LENGTH_KEYS.items():
        value, follows = schema_at(cfg, key), int(round(cfg.train.steps * fraction))
        if key not in cfg.follows_run_length and value != follows:
            out.append(f"{key}={value} (following train.steps={cfg.train.steps}: {follows})")
    return out


def resolve_run_length(cfg: RunConfig) -> RunConfig:
    """Set each key of RUN_LENGTH_KEYS left at None to its fraction of train.steps; called once, by load_run_config.
    ``cfg.follows_run_length`` names the keys it set: a resumed run keeps the values it started with for
    them (pipeline.keep_run_length), so resuming with a larger train.steps trains longer with the schedules
    the run started with."""
    filled = []
    for key, fraction in RUN_LENGTH_KEYS.items():
        section, name = key.rsplit(".", 1)
        if getattr(schema_at(cfg, section), name) is None:
            setattr(schema_at(cfg, section), name, int(round(cfg.train.steps * fraction)))
            filled.append(key)
    cfg.follows_run_length = tuple(filled)
    return cfg


def validate(cfg: RunConfig) -> None:
    if cfg.representation not in REPRESENTATIONS:
        raise ConfigError(f"representation must be one of {', '.join(REPRESENTATIONS)}, got {cfg.representation!r}")
    for key, least in _MINIMUMS.items():
        value = schema_at(cfg, key)
        if value < least:
            raise ConfigError(f"{key} must be at least {least}, got {value}")
    _check_schedules(cfg, "")
    if cfg.mesh.gaussian_color_median and cfg.representation != "gaussians":
        raise ConfigError(
            f"mesh.gaussian_color_median applies to 3D Gaussians; representation is {cfg.representation!r}: "
            "set mesh.gaussian_color_median=0"
        )
    f = cfg.reference.object_fraction
    if f is not None and not 0.05 <= f <= 1.0:
        raise ConfigError(
            f"reference.object_fraction must lie in [0.05, 1] (or be null for the image as it is), got {f}"
        )
    for key in _SCHEDULED_SIZES:
        value = schema_at(cfg, key)
        ends = [value] if isinstance(value, (int, float)) else [value[1], value[2]]
        if min(ends) < 8:
            raise ConfigError(f"{key} must stay at least 8 pixels, got {value}")


# Counts and sizes below which a run cannot work (a 1-sample grid has no surface, 0 frames no video).
_MINIMUMS = {
    "train.steps": 1,
    "train.batch_size": 1,
    "gaussians.num_points": 1,
    "nerf.num_samples": 2,
    "mesh.resolution": 8,
    "mesh.gaussian_color_median": 0,
    "mesh.extract.blur_sigma": 0,
    "mesh.texture.texture_size": 8,
    "mesh.texture.view_resolution": 8,
    "mesh.texture.n_azimuth": 1,
    "output.turntable_frames": 1,
    "output.turntable_resolution": 8,
    "reference.resolution": 8,
}
_SCHEDULED_SIZES = ("train.resolution",)


def _check_schedules(section, prefix: str) -> None:
    """Every Scheduled field is a number or [start_step, start_value, end_value, end_step]."""
    import dataclasses
    import typing

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
