"""Novel views from a Zero123 (the embedded one or any folder in its layout): DDIM with classifier-free guidance
from the input image and a relative camera, as the public Zero123 pipelines sample."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..guidance.zero123_prior import ImageConditioning, Zero123Prior, relative_camera
from ..images import image_grid, save_png


@torch.no_grad()
def novel_views(
    prior: Zero123Prior,
    cond: ImageConditioning,
    camera: torch.Tensor,
    steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch: int = 32,
) -> torch.Tensor:
    """(B, H, W, 3) images in [0, 1] of the input seen from each of the (B, 4) relative cameras; deterministic in
    ``seed`` (each view draws its starting noise from one generator, in order)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(prior.scheduler.config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    shape = (len(camera), prior.latent_channels, prior.latent_size, prior.latent_size)
    x_all = torch.randn(shape, generator=g) * sched.init_noise_sigma
    out = []
    for s in range(0, len(camera), batch):
        x, cam = x_all[s : s + batch].to(prior.device), camera[s : s + batch]
        for t in sched.timesteps:
            eps, _, _ = prior.guided_eps(x, t.to(prior.device), cond, cam, guidance_scale)
            x = sched.step(eps, t, x).prev_sample
        out.append(prior.decode(x).cpu())
    return torch.cat(out)


def camera_offsets(elevation: list[float], azimuth: list[float], radius: list[float]) -> torch.Tensor:
    """(B, 4) camera numbers for views moved by these (Δelevation up, Δazimuth, Δradius) from the input's camera;
    the lists broadcast (one elevation for many azimuths)."""
    el, az, r = torch.broadcast_tensors(*(torch.tensor(v, dtype=torch.float32) for v in (elevation, azimuth, radius)))
    return relative_camera(el, az, r, 0.0, 0.0, 0.0)


def sample_from_image(
    prior: Zero123Prior,
    rgb: torch.Tensor,
    camera: torch.Tensor,
    names: list[str],
    out_dir: str,
    per_view: int = 1,
    steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
) -> str:
    """Write ``per_view`` samples of each camera as PNGs (``view_<name>_<k>.png``) and ``grid.png`` (a row per
    sample: the input, then the views); returns the grid's path."""
    cond = prior.image_conditioning(rgb)
    cams = camera.repeat_interleave(per_view, 0)
    images = novel_views(prior, cond, cams, steps, guidance_scale, seed).numpy()
    os.makedirs(out_dir, exist_ok=True)
    save_png(os.path.join(out_dir, "input.png"), rgb[0].numpy())
    for k, img in enumerate(images):
        save_png(os.path.join(out_dir, f"view_{names[k // per_view]}_{k % per_view}.png"), img)
    size = images.shape[1]
    inp = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True)
    inp = inp.permute(0, 2, 3, 1).numpy()
    rows = [np.concatenate([inp, images[k::per_view]]) for k in range(per_view)]
    grid = os.path.join(out_dir, "grid.png")
    save_png(grid, image_grid(np.concatenate(rows), len(camera) + 1))
    return grid
