"""Does the Zero123 draw the object as it looks from the asked camera? For world objects seen from a random
front-ish camera (a seed no training render used), sample 8 views around it and compare each with the true
render from that camera: PSNR, mask IoU (foreground: not white), and the world classifier's colour and shape.
Beside each, the same scores of the input view itself against the true view ("copy"): a model that ignored the
camera would score that, so the gap says how much the camera is used. Objects held out of training (the model's training.json names them) are reported apart from the others."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from renderers.cameras import orbit_cameras

from ..guidance.zero123_prior import Zero123Prior, relative_camera
from ..world.classifier import load_classifier, predict
from ..world.render import render_colored_mesh
from ..world.shapes import COLORS, build_shape
from .zero123_sample import novel_views
from .zero123_train import MultiViewDataConfig, world_objects

FOV = 45.0  # the lens the embedded Zero123 is trained for (zero123_train.zero123_cameras)


def foreground(rgb: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """(B, H, W) mask of the pixels that are not the white background."""
    return rgb.min(-1).values < threshold


def holdout_of(prior: Zero123Prior) -> tuple[str, ...]:
    """The objects the model never trained on, from its training.json (the default set when there is none)."""
    path = os.path.join(prior.source or "", "training.json")
    if os.path.exists(path):
        with open(path) as f:
            return tuple(json.load(f)["config"]["data"]["holdout"])
    return MultiViewDataConfig().holdout


def eval_cameras(g: torch.Generator, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A front-ish input camera (elevation 0-30°, azimuth within 45° of the front) and ``views`` wanted cameras
    evenly around it in azimuth, at random elevations in [-10°, 50°], all at one radius; each (n, 3)."""
    u = torch.rand(3 + views, generator=g)
    el0, az0, r = 30 * u[0], -45 + 90 * u[1], 2.6 + 0.6 * u[2]
    az = az0 + torch.arange(views) * (360.0 / views)
    el = -10 + 60 * u[3:]
    ref = torch.stack([el0, az0, r])[None]
    return ref, torch.stack([el, az, r.expand(views)], -1)


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)


def _psnr(mse: torch.Tensor) -> float:
    return float(-10 * torch.log10(mse.clamp_min(1e-10)))


@torch.no_grad()
def evaluate_zero123(
    prior: Zero123Prior,
    views: int = 8,
    objects: list[tuple[str, str]] | None = None,
    steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 12345,
    log=print,
) -> dict:
    """Scores over every world object (or ``objects``); ``_sheet`` holds (input | generated | true) rows."""
    t0 = time.time()
    judge = load_classifier()
    held = set(holdout_of(prior))
    g = torch.Generator().manual_seed(seed)
    S = prior.image_size
    rows, sheet = [], []
    for color, shape in objects or world_objects():
        mesh = build_shape(shape, COLORS[color])
        ref, cams = eval_cameras(g, views)
        every = torch.cat([ref, cams])
        rgb, alpha = render_colored_mesh(mesh, orbit_cameras(every[:, 0], every[:, 1], every[:, 2], FOV, S, S))
        rgb = rgb.clamp(0, 1)
        cond = prior.image_conditioning(rgb[:1])
        cam = relative_camera(cams[:, 0], cams[:, 1], cams[:, 2], ref[0, 0], ref[0, 1], ref[0, 2])
        gen = novel_views(prior, cond, cam, steps, guidance_scale, seed=int(torch.randint(0, 2**31, (1,), generator=g)))
        true, true_mask = rgb[1:], alpha[1:, ..., 0] > 0.5
        mse = (gen - true).pow(2).flatten(1).mean(1)
        iou = _mask_iou(foreground(gen), true_mask)
        copy_mse = (rgb[:1] - true).pow(2).flatten(1).mean(1)
        copy_iou = _mask_iou(foreground(rgb[:1]).expand_as(true_mask), true_mask)
        pred = predict(judge, gen)
        for k in range(views):
            rows.append(
                {
                    "object": f"{color} {shape}",
                    "held_out": f"{color} {shape}" in held,
                    "psnr": _psnr(mse[k]),
                    "mask_iou": float(iou[k]),
                    "copy_psnr": _psnr(copy_mse[k]),
                    "copy_mask_iou": float(copy_iou[k]),
                    "color_ok": pred.color[k] == color,
                    "shape_ok": pred.shape[k] == shape,
                }
            )
        sheet.append(np.concatenate([rgb[:1].numpy(), gen.numpy()], 0))
        sheet.append(np.concatenate([np.ones_like(rgb[:1].numpy()), true.numpy()], 0))

    def summary(rs: list[dict]) -> dict:
        if not rs:
            return {"views": 0}
        return {
            "views": len(rs),
            "psnr_db": float(np.mean([r["psnr"] for r in rs])),
            "mask_iou": float(np.mean([r["mask_iou"] for r in rs])),
            "copy_psnr_db": float(np.mean([r["copy_psnr"] for r in rs])),
            "copy_mask_iou": float(np.mean([r["copy_mask_iou"] for r in rs])),
            "color_accuracy": float(np.mean([r["color_ok"] for r in rs])),
            "shape_accuracy": float(np.mean([r["shape_ok"] for r in rs])),
        }

    res = {
        "all": summary(rows),
        "held_out_objects": summary([r for r in rows if r["held_out"]]),
        "trained_objects_new_cameras": summary([r for r in rows if not r["held_out"]]),
        "per_object": {
            o: summary([r for r in rows if r["object"] == o]) for o in dict.fromkeys(r["object"] for r in rows)
        },
        "views_per_object": views,
        "ddim_steps": steps,
        "guidance_scale": guidance_scale,
        "seconds": round(time.time() - t0, 1),
    }
    a = res["all"]
    log(
        f"Zero123 novel views against the truth over {a['views']} views: PSNR {a['psnr_db']:.2f} dB, mask IoU "
        f"{a['mask_iou']:.3f}, colour {a['color_accuracy']:.1%}, shape {a['shape_accuracy']:.1%} (the input view "
        f"copied: {a['copy_psnr_db']:.2f} dB, mask IoU {a['copy_mask_iou']:.3f})"
    )
    return res | {"_sheet": np.stack(sheet)}
