"""Renders of the shape world: Lambertian shading with a fixed world light, on a white background,
from the same random camera distribution that text-to-3D uses, with DreamFusion-style captions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from renderers.cameras import Cameras, CameraSampler, view_names
from renderers.mesh import render_mesh

from .shapes import COLORS, SHAPES, ColoredMesh, build_shape

LIGHT_DIR = (0.35, 0.85, 0.45)  # world space, pointing from the object to the light (above, front, right)
AMBIENT = 0.45


def render_colored_mesh(
    mesh: ColoredMesh, cameras: Cameras, background=(1.0, 1.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """rgb (B, H, W, 3) and alpha (B, H, W, 1) of a world mesh, flat-shaded."""
    v, f, c = mesh.flat()
    return render_mesh(
        torch.from_numpy(v),
        torch.from_numpy(f),
        cameras,
        vertex_colors=torch.from_numpy(c),
        light_dir=LIGHT_DIR,
        ambient=AMBIENT,
        background=background,
    )


def caption(color: str, shape: str, view: str | None) -> str:
    base = f"a {color} {shape}"
    return base if view is None else f"{base}, {view} view"


@dataclass
class WorldDatasetConfig:
    per_prompt: int = 500  # renders per colour x shape prompt
    size: int = 64
    no_view_fraction: float = 0.2  # captions without a view suffix, so bare prompts work too
    cameras: CameraSampler = field(default_factory=CameraSampler)
    seed: int = 0


def make_dataset(cfg: WorldDatasetConfig, progress=None) -> dict:
    """Render the whole world: images uint8 (N, H, W, 3) and, per image, its caption, colour, shape, view
    and camera angles. Deterministic in ``cfg.seed``."""
    g = torch.Generator().manual_seed(cfg.seed)
    images, captions, colors, shapes, views, elev, azim = [], [], [], [], [], [], []
    combos = [(s, c) for s in SHAPES for c in COLORS]
    for k, (shape, color) in enumerate(combos):
        mesh = build_shape(shape, COLORS[color])
        cams = cfg.cameras.sample(cfg.per_prompt, cfg.size, cfg.size, generator=g)
        el, az, _ = cams.spherical()
        names = view_names(el, az)
        for start in range(0, len(cams), 100):
            rgb, _ = render_colored_mesh(mesh, cams[start : start + 100])
            images.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8))
        drop = torch.rand(cfg.per_prompt, generator=g) < cfg.no_view_fraction
        for i in range(cfg.per_prompt):
            captions.append(caption(color, shape, None if drop[i] else names[i]))
        colors += [color] * cfg.per_prompt
        shapes += [shape] * cfg.per_prompt
        views += names
        elev.append(el)
        azim.append(az)
        if progress is not None:
            progress(k + 1, len(combos))
    return {
        "images": torch.cat(images).numpy(),
        "captions": captions,
        "colors": np.array(colors),
        "shapes": np.array(shapes),
        "views": np.array(views),
        "elevation": torch.cat(elev).numpy(),
        "azimuth": torch.cat(azim).numpy(),
    }
