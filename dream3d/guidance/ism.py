"""Interval Score Matching (LucidDreamer, Liang et al. 2023).

SDS compares eps_hat(x_t) with the random noise it added, so its target is a blurry average. ISM instead
reaches x_t by *deterministic DDIM inversion* of the clean latents and compares two model predictions an
interval apart:

    x_0 --(DDIM inversion, unconditional eps, n steps)--> x_s --(one more step with eps_s)--> x_t,  s = t - delta_t
    grad = w(t) (eps_hat_cfg(x_t, t) - eps_uncond(x_s, s))

Inversion: the clean latents stand in for x at the start (abar = 1), then n equal DDIM steps (eta = 0) reach
s, each using the unconditional (empty-prompt) prediction at the current point, as LucidDreamer does;
n = ceil(max(s) / inversion_stride) clipped to [1, max_inversion_steps] (defaults 200 and 5: at most 5 steps),
the same n for the whole batch with per-view equal step sizes. Cost per call: n + 1 unconditional U-Net
evaluations of the batch plus the one batched CFG evaluation, i.e. up to 6 + 2 against SDS's 2.
The random noise of SDS plays no part (the ``noise`` argument is ignored). The CFG branch uses the negative
prompt as usual; the inversion always uses the empty prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Guidance, GuidanceConfig, Views, guided_eps
from .prior import TextConditioning
from .schedules import Scheduled, scheduled


@dataclass
class ISMConfig(GuidanceConfig):
    guidance_scale: Scheduled = 7.5
    weighting: str = "lucid"  # sqrt((1 - abar) / abar), LucidDreamer's
    delta_t: int = 80  # interval t - s, in timesteps of a 1000-step model (scaled for others)
    inversion_stride: int = 200  # at most this many timesteps per inversion step ...
    max_inversion_steps: int = 5  # ... but never more steps than this


def ddim_move(x: Tensor, eps: Tensor, abar_from: Tensor, abar_to: Tensor) -> Tensor:
    """Deterministic DDIM transfer of x (at noise level abar_from) to abar_to with the predicted eps."""
    x0 = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


class ISM(Guidance):
    config_class = ISMConfig

    def residual(
        self, latents: Tensor, noise: Tensor, t: Tensor, text: TextConditioning, step: int, views: Views
    ) -> tuple[Tensor, dict]:
        prior, cfg = self.prior, self.cfg
        B = latents.shape[0]
        ac = prior.alphas_cumprod
        view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
        delta = int(round(cfg.delta_t * prior.num_train_timesteps / 1000))
        s = (t - delta).clamp_min(0)
        n = min(max(math.ceil(int(s.max()) / cfg.inversion_stride), 1), cfg.max_inversion_steps)
        empty = prior.text_embeddings([""]).expand(B, -1, -1)
        x, cur, abar = latents, torch.zeros_like(s), torch.ones(B, device=latents.device)
        for i in range(1, n + 1):
            nxt = torch.div(s * i + n // 2, n, rounding_mode="floor")  # round(s * i / n)
            eps = prior.predict_noise(x, cur, empty)
            x = ddim_move(x, eps, view(abar), view(ac[nxt]))
            cur, abar = nxt, ac[nxt]
        eps_s = prior.predict_noise(x, s, empty)
        x_t = ddim_move(x, eps_s, view(ac[s]), view(ac[t]))
        eps_hat, _, _ = guided_eps(prior, x_t, t, text, scheduled(cfg.guidance_scale, step))
        return eps_hat - eps_s, {"s": s, "inversion_steps": n}
