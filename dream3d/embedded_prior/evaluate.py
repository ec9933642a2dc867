"""Does the prior draw what it is asked? Sample every colour x shape prompt, and view prompts of the
front-distinct objects, and let the world classifier judge the samples. Also: VAE reconstruction PSNR
on held-out renders (rendered with another seed than the training set)."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..world.classifier import load_classifier, predict
from ..world.render import WorldDatasetConfig, make_dataset
from ..world.shapes import COLORS, COMPOSITES, SHAPES, parse_prompt
from .sample import sample


@torch.no_grad()
def vae_psnr(pipe, per_prompt: int = 4, seed: int = 12345) -> float:
    """Mean PSNR (dB) of VAE reconstructions (posterior mean) of renders the VAE never saw."""
    data = make_dataset(WorldDatasetConfig(per_prompt=per_prompt, size=64, seed=seed))
    x = torch.from_numpy(data["images"]).float().div(255)
    psnrs = []
    for i in range(0, len(x), 128):
        xb = x[i : i + 128].permute(0, 3, 1, 2).to(pipe.device) * 2 - 1
        rec = pipe.vae.decode(pipe.vae.encode(xb).latent_dist.mean).sample.clamp(-1, 1)
        mse = ((rec - xb) / 2).pow(2).flatten(1).mean(1)
        psnrs.append(-10 * torch.log10(mse.clamp_min(1e-10)))
    return float(torch.cat(psnrs).mean())


def evaluate_prior(
    pipe, per_prompt: int = 4, steps: int = 25, guidance_scale: float = 7.5, seed: int = 0, log=print
) -> dict:
    """Accuracy of samples judged by the world classifier."""
    t0 = time.time()
    judge = load_classifier()
    base = [f"a {c} {s}" for s in SHAPES for c in COLORS]
    views = [f"a {c} {s}, {v} view" for s in COMPOSITES for c in COLORS for v in ("front", "side", "back")]
    prompts = base + views
    imgs = sample(pipe, prompts, per_prompt=per_prompt, steps=steps, guidance_scale=guidance_scale, seed=seed)
    pred = predict(judge, torch.from_numpy(imgs))
    want = [parse_prompt(p) for p in prompts for _ in range(per_prompt)]
    color_ok = np.array([pc == w[0] for pc, w in zip(pred.color, want)])
    shape_ok = np.array([ps == w[1] for ps, w in zip(pred.shape, want)])
    view_rows = [i for i, w in enumerate(want) if w[2] is not None]
    view_ok = np.array([pred.view[i] == want[i][2] for i in view_rows])
    per_shape = {s: float(shape_ok[[i for i, w in enumerate(want) if w[1] == s]].mean()) for s in SHAPES}
    res = {
        "color_accuracy": float(color_ok.mean()),
        "shape_accuracy": float(shape_ok.mean()),
        "view_accuracy_front_distinct": float(view_ok.mean()),
        "shape_accuracy_per_shape": per_shape,
        "samples": int(len(imgs)),
        "ddim_steps": steps,
        "guidance_scale": guidance_scale,
        "seconds": round(time.time() - t0, 1),
    }
    log(
        f"prior samples judged by the world classifier: colour {res['color_accuracy']:.1%}, shape {res['shape_accuracy']:.1%}, "
        f"view (front-distinct) {res['view_accuracy_front_distinct']:.1%} over {res['samples']} samples"
    )
    return res | {"_images": imgs, "_prompts": prompts}
