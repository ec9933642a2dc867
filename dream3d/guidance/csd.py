"""Classifier Score Distillation (Yu et al. 2023): keep only the classifier part of the SDS gradient.

grad = w(t) (eps_hat - eps_uncond) = w(t) s (eps_cond - eps_uncond), with eps_uncond from the negative
prompt when one is given (the paper's negative-prompt variant), or Perp-Neg's guided direction when that
is on. The default scale 100 gives it the magnitude of SDS at the same scale, so one learning rate serves
both in ablations. Costs the same single batched U-Net call as SDS.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Guidance, GuidanceConfig, Views, guided_eps
from .prior import TextConditioning
from .schedules import Scheduled, scheduled


@dataclass
class CSDConfig(GuidanceConfig):
    guidance_scale: Scheduled = 100.0
    weighting: str = "sds"


class CSD(Guidance):
    config_class = CSDConfig

    def residual(
        self, latents: Tensor, noise: Tensor, t: Tensor, text: TextConditioning, step: int, views: Views
    ) -> tuple[Tensor, dict]:
        x_t = self.prior.add_noise(latents, noise, t)
        eps_hat, _, eps_u = guided_eps(self.prior, x_t, t, text, scheduled(self.cfg.guidance_scale, step))
        return eps_hat - eps_u, {}
