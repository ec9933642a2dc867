"""Score Distillation Sampling (DreamFusion, Poole et al. 2022).

Noise the render's latents to x_t = sqrt(abar) x + sqrt(1 - abar) eps, predict eps_hat with classifier-free
guidance (cond and uncond in one batched U-Net call, no gradient through the U-Net), and push the latents
along grad = w(t) (eps_hat - eps). The U-Net Jacobian is dropped, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Guidance, GuidanceConfig, Views, guided_eps
from .prior import TextConditioning
from .schedules import Scheduled, scheduled


@dataclass
class SDSConfig(GuidanceConfig):
    guidance_scale: Scheduled = 100.0  # DreamFusion's large CFG
    weighting: str = "sds"


class SDS(Guidance):
    config_class = SDSConfig

    def residual(
        self, latents: Tensor, noise: Tensor, t: Tensor, text: TextConditioning, step: int, views: Views
    ) -> tuple[Tensor, dict]:
        x_t = self.prior.add_noise(latents, noise, t)
        eps_hat, _, _ = guided_eps(self.prior, x_t, t, text, scheduled(self.cfg.guidance_scale, step))
        return eps_hat - noise, {}
