"""Zero123 SDS: score distillation from a view-conditioned prior (DreamGaussian's and threestudio's image mode).

Each render is scored by Zero-1-to-3 given the input image and the render's camera relative to the input's
camera, so the far side is drawn from what *this* object looks like there, not from a prompt:

    x_t = sqrt(abar) x + sqrt(1 - abar) eps
    eps_hat = eps_u + s (eps_c - eps_u)     eps_c: input image + relative camera; eps_u: zeros for both
    grad = w(t) (eps_hat - eps)

The backbone (:class:`~dream3d.guidance.zero123_prior.Zero123Prior`) holds the public conventions; this file is
the rule. With ``text_weight > 0`` and a prompt, SDS from a text prior (``text_prior``, the embedded one by default)
is added with that weight, as Magic123 adds its 2D prior; the shared settings (Perp-Neg, view prompts, the
negative prompt, timesteps, clipping) then apply to that text half.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from renderers.cameras import Cameras

from .base import Guidance, GuidanceConfig, GuidanceOutput, Views
from .prior import DiffusionPrior, PriorConfig, TextConditioning
from .schedules import Scheduled, scheduled
from .sds import SDS, SDSConfig
from .zero123_prior import Zero123Prior, relative_camera


@dataclass
class Zero123Config(GuidanceConfig):
    guidance_scale: Scheduled = 5.0  # DreamGaussian's Zero123 scale (threestudio's zero123 preset: 3)
    weighting: str = "sds"
    text_weight: float = 0.0  # Magic123's text half: SDS of text_prior with this weight (0: off; needs a prompt)
    text_prior: PriorConfig = field(default_factory=PriorConfig)  # the text model (default: the embedded prior)
    text_guidance_scale: Scheduled = 50.0

    def __post_init__(self):
        super().__post_init__()
        if self.text_weight < 0:
            raise ValueError(f"text_weight must be >= 0, got {self.text_weight}")


class Zero123SDS(Guidance):
    config_class = Zero123Config
    needs_reference = True

    @classmethod
    def load_prior(cls, cfg: PriorConfig) -> Zero123Prior:
        return Zero123Prior.load(cfg)

    def __init__(self, prior: Zero123Prior, cfg: Zero123Config | None = None, generator: torch.Generator | None = None):
        super().__init__(prior, cfg, generator)
        self.reference = None  # (ImageConditioning, elevation, azimuth, radius) of the input view
        self._text: SDS | None = None
        self._text_seed = None
        self._shared_latents = False
        if self.cfg.text_weight > 0:  # drawn now, so this rule's own stream is the same with or without a prompt
            self._text_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))

    @property
    def text(self) -> SDS | None:
        """The text half (SDS of ``text_prior``), loaded on first use: a run without a prompt never loads it."""
        if self._text is None and self._text_seed is not None:
            c = self.cfg
            text_cfg = SDSConfig(
                guidance_scale=c.text_guidance_scale,
                weighting=c.weighting,
                timesteps=c.timesteps,
                view_prompts=c.view_prompts,
                negative_prompt=c.negative_prompt,
                perpneg=c.perpneg,
                grad_clip_value=c.grad_clip_value,
                grad_clip_norm=c.grad_clip_norm,
                nonfinite=c.nonfinite,
            )
            prior = DiffusionPrior.load(c.text_prior)
            self._text = SDS(prior, text_cfg, torch.Generator().manual_seed(self._text_seed))
            self._shared_latents = prior.encodes_like(self.prior)  # then one VAE pass (and backward) serves both
        return self._text

    def priors(self) -> list:
        return [self.prior] + ([self._text.prior] if self._text is not None else [])  # the text half once loaded

    def prompt_readers(self) -> list[tuple[object, str]]:
        return [] if self.text is None else [(self.text.prior, "guidance.text_prior.model")]  # Zero123 reads none

    def set_reference(self, rgb: Tensor, elevation: float, azimuth: float, radius: float) -> None:
        self.reference = (self.prior.image_conditioning(rgb), float(elevation), float(azimuth), float(radius))

    def relative_cameras(self, views: Views, batch: int) -> Tensor:
        """(B, 4) camera numbers of the views relative to the input view. ``views``: Cameras, or (elevation,
        azimuth[, radius]) in degrees (without a radius, the input's)."""
        if self.reference is None:
            raise RuntimeError(
                "the zero123 rule needs the input image and its camera (set_reference; dream3d generate --image)"
            )
        _, el0, az0, r0 = self.reference
        if isinstance(views, Cameras):
            el, az, r = views.spherical()
        elif isinstance(views, (tuple, list)) and len(views) in (2, 3):
            el, az, r = (*views, r0) if len(views) == 2 else views
        else:
            raise TypeError("zero123 needs the cameras of the views: Cameras or (elevation, azimuth[, radius])")
        cam = relative_camera(el, az, r, el0, az0, r0)
        if len(cam) == 1 and batch > 1:
            cam = cam.expand(batch, -1)
        if len(cam) != batch:
            raise ValueError(f"got {len(cam)} views for a batch of {batch} images")
        return cam

    def conditioning(self, prompt: str, elevation, azimuth, batch: int) -> TextConditioning | None:
        return None  # Zero123 reads no text: its conditioning is the input image and the camera (residual)

    def residual(
        self, latents: Tensor, noise: Tensor, t: Tensor, text: TextConditioning | None, step: int, views: Views
    ) -> tuple[Tensor, dict]:
        cam = self.relative_cameras(views, latents.shape[0])
        x_t = self.prior.add_noise(latents, noise, t)
        eps_hat, _, _ = self.prior.guided_eps(x_t, t, self.reference[0], cam, scheduled(self.cfg.guidance_scale, step))
        return eps_hat - noise, {"camera": cam}

    def __call__(
        self, rgb: Tensor, views: Views, prompt: str, step: int, *, noise: Tensor | None = None, t: Tensor | None = None
    ) -> GuidanceOutput:
        with self.timer("encode"):
            latents = self.prior.encode(rgb)
        out = self.latent_loss(latents, views, prompt, step, noise=noise, t=t)
        if self._text_seed is None or not prompt.strip():
            return out
        self.text.check_finite, self.text.timer = self.check_finite, self.timer
        if self._shared_latents:
            text = self.text.latent_loss(latents, views, prompt, step)
        else:
            text = self.text(rgb, views, prompt, step)
        loss = out.loss + self.cfg.text_weight * text.loss.to(out.loss.device)
        return GuidanceOutput(loss, out.t, out.grad_norm, out.extra | {"text": text})

    def state_dict(self) -> dict:
        s = super().state_dict()
        if self._text is not None:  # only once loaded: a run without a prompt has no text half
            s["text"] = self._text.state_dict()
        return s

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "text" in state and self.text is not None:
            self.text.load_state_dict(state["text"])
