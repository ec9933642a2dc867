"""2D sanity check for the distillation rules: optimise an image from noise for a prompt and save it.

With a working prior the result should look like the prompt (e.g. a red cube on the embedded prior);
with the SD 1.5 weights it is the classic 2D SDS/VSD experiment. Runnable with any SD-format model:

    python benchmarks/sds_2d.py --prompt "a red cube" --method sds --steps 500 --out runs/sds_2d.png
    python benchmarks/sds_2d.py --model /path/to/sd15 --prompt "a photo of a hamburger" --method vsd

The image is parameterised either by its latents (``--param latent``, decoded for the PNG) or by RGB
logits through the VAE encoder (``--param rgb``, the path a 3D renderer's output takes). ``optimize_2d`` is
importable for scripted checks (it returns the final (B, H, W, 3) images).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream3d.guidance import RULES, DiffusionPrior, PriorConfig, TimestepConfig  # noqa: E402


def optimize_2d(
    prior: DiffusionPrior,
    rule,
    prompt: str,
    steps: int,
    lr: float = 0.03,
    param: str = "latent",
    batch: int = 1,
    size: int | None = None,
    seed: int = 0,
    log_every: int = 0,
) -> torch.Tensor:
    """Optimise ``batch`` images from noise with ``rule``; returns (B, H, W, 3) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    if param == "latent":
        shape = (batch, prior.latent_channels, prior.latent_size, prior.latent_size)
        x = torch.randn(shape, generator=g).to(prior.device).requires_grad_(True)
    elif param == "rgb":
        s = size or prior.image_size
        x = (0.5 * torch.randn(batch, s, s, 3, generator=g)).to(prior.device).requires_grad_(True)  # logits
    else:
        raise ValueError(f"param must be 'latent' or 'rgb', got {param!r}")
    opt = torch.optim.Adam([x], lr=lr)
    for step in range(steps):
        out = (
            rule.latent_loss(x, None, prompt, step) if param == "latent" else rule(torch.sigmoid(x), None, prompt, step)
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  t={out.t.tolist()}  |grad|={float(out.grad_norm):.4g}", flush=True)
    with torch.no_grad():
        return prior.decode(x) if param == "latent" else torch.sigmoid(x)


def save_png(images: torch.Tensor, path: Path) -> None:
    """Images side by side, written atomically."""
    from PIL import Image

    row = torch.cat(list(images.detach().float().cpu()), dim=1)
    arr = (row.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="diffusers folder or hub id (default: the embedded prior)")
    ap.add_argument("--allow-download", action="store_true")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--method", choices=sorted(RULES), default="sds")
    ap.add_argument("--param", choices=["latent", "rgb"], default="latent")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=None, help="rgb size for --param rgb (default: native)")
    ap.add_argument("--guidance-scale", type=float, default=None, help="default: the rule's own")
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--t-schedule", default="random")
    ap.add_argument("--t-min", type=float, default=0.02)
    ap.add_argument("--t-max", type=float, default=0.98)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default="runs/sds_2d.png")
    a = ap.parse_args(argv)

    prior = DiffusionPrior.load(
        PriorConfig(model=a.model, allow_download=a.allow_download, device=a.device, dtype=a.dtype)
    )
    cls = RULES[a.method]
    cfg = cls.config_class(
        negative_prompt=a.negative_prompt,
        seed=a.seed,
        timesteps=TimestepConfig(schedule=a.t_schedule, t_min=a.t_min, t_max=a.t_max, total_steps=max(a.steps, 1)),
    )
    if a.guidance_scale is not None:
        cfg.guidance_scale = a.guidance_scale
    t0 = time.perf_counter()
    images = optimize_2d(
        prior,
        cls(prior, cfg),
        a.prompt,
        a.steps,
        a.lr,
        a.param,
        a.batch,
        a.size,
        a.seed,
        log_every=max(a.steps // 10, 1),
    )
    secs = time.perf_counter() - t0
    save_png(images, Path(a.out))
    summary = {
        "method": a.method,
        "param": a.param,
        "steps": a.steps,
        "seconds": round(secs, 2),
        "seconds_per_step": round(secs / max(a.steps, 1), 4),
        "device": str(prior.device),
        "out": a.out,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
