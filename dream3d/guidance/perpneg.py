"""Perp-Neg (Armandpour et al. 2023): view-dependent negative prompts against the Janus problem.

Plain CFG with view prompts still lets "a red cube, back view" drift towards the front (the model has
seen far more fronts), which grows a second face on the back. Perp-Neg adds negative prompts for the views
the camera is *not* looking at, but only subtracts the part of each negative score that is perpendicular
to the positive score, so the negative cannot cancel what the positive prompt asks for:

    d_pos = eps(pos) - eps(uncond),  d_k = eps(neg_k) - eps(uncond)
    eps   = eps(uncond) + s * (d_pos - sum_k w_k * perp(d_k, d_pos)),  perp(a, b) = a - <a,b>/<b,b> b

(per sample, over all latent elements). With every w_k = 0 this is plain CFG.

Views, from the azimuth a = |azimuth| in [0, 180] (0 = front): the positive embedding interpolates the
view prompts, front -> side over [0, 90] and side -> back over [90, 180]. The negatives are the side and the
opposite end (back for the front half, front for the back half). The side negative's weight fades as the
camera turns to the side (where it would equal the positive); the opposite one keeps ``opposite_weight``.
Elevation is not used: the overhead word plays no part here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .prior import DiffusionPrior, TextConditioning, ViewPromptConfig


@dataclass
class PerpNegConfig:
    enabled: bool = False
    side_weight: float = 0.5  # in units of the guidance scale
    opposite_weight: float = 1.0


def perpendicular(a: Tensor, b: Tensor) -> Tensor:
    """The component of ``a`` perpendicular to ``b``, per sample (dim 0), over all other dims."""
    dims = tuple(range(1, a.ndim))
    coef = (a * b).sum(dims, keepdim=True) / (b * b).sum(dims, keepdim=True).clamp_min(1e-20)
    return a - coef * b


def perpneg_combine(eps_uncond: Tensor, eps_pos: Tensor, eps_negs: Tensor, weights: Tensor, scale: float) -> Tensor:
    """Perp-Neg's guided epsilon. eps_uncond, eps_pos: (B, C, H, W); eps_negs: (B, K, C, H, W);
    weights: (B, K)."""
    d_pos = eps_pos - eps_uncond
    corr = torch.zeros_like(d_pos)
    for k in range(eps_negs.shape[1]):
        w = weights[:, k].view(-1, *([1] * d_pos.ndim)[1:]).to(d_pos)
        corr = corr + w * perpendicular(eps_negs[:, k] - eps_uncond, d_pos)
    return eps_uncond + scale * (d_pos - corr)


def perpneg_conditioning(
    prior: DiffusionPrior,
    prompt: str,
    azimuth: Tensor,
    cfg: PerpNegConfig,
    view_cfg: ViewPromptConfig = ViewPromptConfig(),
    negative_prompt: str = "",
) -> TextConditioning:
    """Interpolated positive embeddings and two weighted negatives per view (see the module docstring)."""
    az = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1).to(prior.device, non_blocking=True)
    a = ((az + 180.0) % 360.0 - 180.0).abs()  # [0, 180]
    front, side, back = prior.text_embeddings(
        [view_cfg.template.format(prompt=prompt, view=v) for v in ("front", "side", "back")]
    )
    in_front = (a <= 90.0).view(-1, 1, 1)
    u = torch.where(a <= 90.0, a / 90.0, (a - 90.0) / 90.0).view(-1, 1, 1)  # position within the half
    pos = torch.where(in_front, (1 - u) * front + u * side, (1 - u) * side + u * back)
    opposite = torch.where(in_front, back, front)
    neg = torch.stack([side.expand_as(pos), opposite], 1)  # (B, 2, L, D)
    side_w = cfg.side_weight * torch.where(a <= 90.0, 1 - a / 90.0, (a - 90.0) / 90.0)
    weights = torch.stack([side_w, torch.full_like(side_w, cfg.opposite_weight)], 1)
    uncond = prior.text_embeddings([negative_prompt]).expand_as(pos)
    return TextConditioning(cond=pos, uncond=uncond, neg=neg, neg_weights=weights)
