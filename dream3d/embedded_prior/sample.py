"""Sampling a Stable-Diffusion-format prior (the embedded one by default) with DDIM and CFG."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..guidance.prior import PriorConfig, PriorNotFoundError, resolve_model
from ..images import image_grid, save_png


def load_pipeline(model: str | None = None, device: str = "cpu", allow_download: bool = False):
    """A StableDiffusionPipeline with a DDIM scheduler; ``model`` is a folder or hub id (default: embedded)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    path, is_local = resolve_model(
        PriorConfig(model=model, allow_download=allow_download)
    )  # clear errors for a bad path
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            path, local_files_only=not allow_download, safety_checker=None, requires_safety_checker=False
        )
    except OSError as e:
        if is_local:
            raise
        raise PriorNotFoundError(
            f"the model {model!r} could not be loaded ({e}); download it first, or pass --allow-download"
        ) from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def native_size(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def sample(
    pipe,
    prompts: list[str],
    per_prompt: int = 4,
    steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int = 0,
    batch: int = 64,
) -> np.ndarray:
    """(len(prompts) * per_prompt, H, W, 3) float images in [0, 1], prompt-major, deterministic in ``seed``."""
    size = native_size(pipe)
    flat = [p for p in prompts for _ in range(per_prompt)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(flat), batch):
        chunk = flat[i : i + batch]
        latents = torch.randn(
            (len(chunk), pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor),
            generator=g,
        )
        res = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=size,
            width=size,
            latents=latents.to(pipe.device),
            output_type="np",
        )
        out.append(res.images)
    return np.concatenate(out)


def save_samples(images: np.ndarray, prompts: list[str], per_prompt: int, out_dir: str) -> str:
    """One PNG per sample plus ``grid.png`` (a row per prompt); returns the grid's path."""
    os.makedirs(out_dir, exist_ok=True)
    for k, img in enumerate(images):
        slug = "".join(ch if ch.isalnum() else "_" for ch in prompts[k // per_prompt]).strip("_")
        save_png(os.path.join(out_dir, f"{slug}_{k % per_prompt}.png"), img)
    grid = os.path.join(out_dir, "grid.png")
    save_png(grid, image_grid(images, per_prompt))
    return grid
