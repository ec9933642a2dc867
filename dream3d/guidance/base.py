"""What every score-distillation rule shares: the call interface, timestep/noise sampling, prompts, the
guided epsilon, the weighting w(t), gradient clean-up and the loss whose gradient is the rule's.

A rule (SDS, VSD, ISM, CSD) only writes :meth:`Guidance.residual`: the bracket in
``grad = w(t) * (...)`` for fixed latents, noise and t. Everything else is here, so rules compare like with
like in ablations.

The loss: ``0.5 * sum((latents - (latents - grad).detach())**2) / B`` has d loss / d latents = grad / B
exactly: each view's latents receive its own distillation gradient, averaged over the batch of views
(so the learning rate does not depend on how many views are rendered per step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from renderers.cameras import Cameras

from ..profiling import PhaseTimer
from .perpneg import PerpNegConfig, perpneg_combine, perpneg_conditioning
from .prior import DiffusionPrior, PriorConfig, TextConditioning, ViewPromptConfig, view_prompts
from .schedules import Scheduled, TimestepConfig, sample_timesteps, scheduled

Views = Union[Cameras, tuple[Tensor, Tensor], tuple[Sequence[float], Sequence[float]], None]

# w(t) as a function of alpha_bar_t; all three are used in the field:
#   sds:        1 - abar  (sigma_t^2; DreamFusion, ProlificDreamer)
#   uniform:    1         (Magic3D-style, "w(t) = 1")
#   fantasia3d: sqrt(abar) (1 - abar)  (Fantasia3D; damps the noisiest steps)
#   lucid:      sqrt((1 - abar) / abar) = 1/sqrt(SNR)  (LucidDreamer's ISM)
WEIGHTINGS = ("sds", "uniform", "fantasia3d", "lucid")


def timestep_weight(kind: str, abar: Tensor) -> Tensor:
    if kind == "sds":
        return 1 - abar
    if kind == "uniform":
        return torch.ones_like(abar)
    if kind == "fantasia3d":
        return abar.sqrt() * (1 - abar)
    if kind == "lucid":
        return ((1 - abar) / abar).sqrt()
    raise ValueError(f"unknown weighting {kind!r}; choose one of {', '.join(WEIGHTINGS)}")


@dataclass
class GuidanceConfig:
    """Fields shared by every rule. Scheduled fields take a number or [start_step, start, end, end_step]."""

    guidance_scale: Scheduled = 100.0  # classifier-free guidance scale
    weighting: str = "sds"  # one of WEIGHTINGS
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    view_prompts: ViewPromptConfig = field(default_factory=ViewPromptConfig)
    negative_prompt: str = ""  # the unconditional branch of CFG ("" = the model's unconditional)
    perpneg: PerpNegConfig = field(default_factory=PerpNegConfig)
    grad_clip_value: Scheduled | None = None  # clamp each gradient element to [-v, v]
    grad_clip_norm: Scheduled | None = None  # rescale each view's gradient to at most this L2 norm
    nonfinite: str = "raise"  # a NaN/Inf gradient: "raise" FloatingPointError, or "zero" it and flag extra["nonfinite"]
    seed: int = 0  # seeds the rule's generator when none is passed in

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.nonfinite not in ("raise", "zero"):
            raise ValueError(f"nonfinite must be 'raise' or 'zero', got {self.nonfinite!r}")


@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar; d loss / d latents = grad / B (backprop it into the renderer)
    t: Tensor  # (B,) long timesteps used
    grad_norm: Tensor  # scalar: mean over views of the L2 norm of each view's (clipped) gradient
    extra: dict  # "grad" (B,C,h,w) the applied gradient, "latents", "nonfinite", rule-specific entries


def view_angles(views: Views, batch: int) -> tuple[Tensor | None, Tensor | None]:
    """(elevation, azimuth) in degrees, each (B,), from Cameras or an (elevation, azimuth) pair."""
    if views is None:
        return None, None
    if isinstance(views, Cameras):
        el, az, _ = views.spherical()
    else:
        try:  # (an (elevation, azimuth, radius) triple too: the radius is for rules that read it, zero123)
            el, az = views[:2] if isinstance(views, (tuple, list)) and len(views) == 3 else views
        except (TypeError, ValueError):
            raise TypeError(
                f"views must be Cameras, an (elevation, azimuth) pair, or None; got {type(views).__name__}"
            ) from None
    el = torch.as_tensor(el, dtype=torch.float32).reshape(-1).cpu()
    az = torch.as_tensor(az, dtype=torch.float32).reshape(-1).cpu()
    el, az = torch.broadcast_tensors(el, az)
    if el.numel() == 1 and batch > 1:
        el, az = el.expand(batch), az.expand(batch)
    if el.numel() != batch:
        raise ValueError(f"got {el.numel()} views for a batch of {batch} images")
    return el, az


def distillation_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """A scalar whose gradient w.r.t. ``latents`` is ``grad / B`` (B = latents.shape[0])."""
    lat = latents.float()
    return 0.5 * F.mse_loss(lat, (lat - grad).detach(), reduction="sum") / lat.shape[0]


def guided_eps(
    prior: DiffusionPrior, x_t: Tensor, t: Tensor, text: TextConditioning, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(eps_hat, eps_cond, eps_uncond): CFG, or Perp-Neg when ``text`` carries negatives, from ONE batched
    U-Net call over [cond, uncond, negatives...]. Call under ``torch.no_grad()``."""
    embeds = [text.cond, text.uncond]
    if text.neg is not None:
        embeds += list(text.neg.unbind(1))
    n = len(embeds)
    eps = prior.predict_noise(x_t.repeat(n, 1, 1, 1), t.repeat(n), torch.cat(embeds)).chunk(n)
    eps_c, eps_u = eps[0], eps[1]
    if text.neg is None:
        return eps_u + scale * (eps_c - eps_u), eps_c, eps_u
    return perpneg_combine(eps_u, eps_c, torch.stack(eps[2:], 1), text.neg_weights, scale), eps_c, eps_u


class Guidance:
    """Base of the distillation rules. Call it on renders (or :meth:`latent_loss` on latents):

        out = guidance(rgb, cameras, "a red cube", step)
        out.loss.backward()   # the rule's gradient flows through the VAE encoder into the renderer

    ``noise`` and ``t`` may be fixed by the caller (tests, ablations); otherwise they are drawn from the
    rule's generator (seeded from ``cfg.seed`` unless one is passed), so runs replay.
    """

    config_class = GuidanceConfig
    # Whether the rule is conditioned on the input image (image-to-3D only): the pipeline then calls set_reference.
    needs_reference = False

    @classmethod
    def load_prior(cls, cfg: PriorConfig):
        """The backbone this rule scores with, from ``guidance.prior``: here a Stable-Diffusion-format model."""
        return DiffusionPrior.load(cfg)

    def set_reference(self, rgb: Tensor, elevation: float, azimuth: float, radius: float) -> None:
        """Image-to-3D: the input image (1, H, W, 3) in [0, 1] and its camera. Text rules leave it to the
        reference-view losses."""

    def priors(self) -> list:
        """The diffusion models this rule has loaded (the Trainer compiles them, or graphs their U-Nets, on CUDA)."""
        return [self.prior]

    def prompt_readers(self) -> list[tuple[object, str]]:
        """The priors that read the prompt, each with the config key that sets it (the pipeline names a prompt one
        of them does not know)."""
        return [(self.prior, "guidance.prior.model")]

    def __init__(
        self, prior: DiffusionPrior, cfg: GuidanceConfig | None = None, generator: torch.Generator | None = None
    ):
        self.prior = prior
        self.cfg = self.config_class() if cfg is None else cfg
        if not isinstance(self.cfg, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(self.cfg).__name__}"
            )
        self.generator = generator if generator is not None else torch.Generator().manual_seed(self.cfg.seed)
        # nonfinite="raise" checks the gradient on the host, a wait for the device on every call; the Trainer
        # turns this off and skips non-finite steps on the device instead.
        self.check_finite = True
        self.timer = PhaseTimer()  # off; the Trainer shares its own (benchmarks/speed.py's phase breakdown)

    def __call__(
        self, rgb: Tensor, views: Views, prompt: str, step: int, *, noise: Tensor | None = None, t: Tensor | None = None
    ) -> GuidanceOutput:
        """rgb: (B, H, W, 3) in [0, 1], any size (resized to the model's native size)."""
        with self.timer("encode"):
            latents = self.prior.encode(rgb)
        return self.latent_loss(latents, views, prompt, step, noise=noise, t=t)

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume this rule exactly: the random stream (and, for VSD, the student)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    # ------------------------------------------------------------------ pieces

    def conditioning(
        self, prompt: str, elevation: Tensor | None, azimuth: Tensor | None, batch: int
    ) -> TextConditioning:
        cfg = self.cfg
        if cfg.perpneg.enabled:
            if azimuth is None:
                raise ValueError("Perp-Neg needs the cameras (or elevation, azimuth) of the views; got views=None")
            return perpneg_conditioning(self.prior, prompt, azimuth, cfg.perpneg, cfg.view_prompts, cfg.negative_prompt)
        prompts = [prompt] * batch if elevation is None else view_prompts(prompt, elevation, azimuth, cfg.view_prompts)
        cond = self.prior.text_embeddings(prompts)
        return TextConditioning(cond=cond, uncond=self.prior.text_embeddings([cfg.negative_prompt]).expand_as(cond))

    def sample_t(self, step: int, batch: int) -> Tensor:
        return sample_timesteps(
            self.cfg.timesteps, step, batch, self.prior.num_train_timesteps, self.generator, self.prior.device
        )

    def sample_noise(self, shape) -> Tensor:
        # drawn on the host, so a run's random stream is the same on every device; the copy does not wait
        return torch.randn(shape, generator=self.generator).to(self.prior.device, non_blocking=True)

    def residual(
        self, latents: Tensor, noise: Tensor, t: Tensor, text: TextConditioning, step: int, views: Views
    ) -> tuple[Tensor, dict]:
        """The rule: the bracket of grad = w(t) * (...), for fp32 detached latents. Runs under no_grad."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the call

    def latent_loss(
        self,
        latents: Tensor,
        views: Views,
        prompt: str,
        step: int,
        *,
        noise: Tensor | None = None,
        t: Tensor | None = None,
    ) -> GuidanceOutput:
        """The distillation loss on (B, C, h, w) latents (differentiable w.r.t. them)."""
        B = latents.shape[0]
        el, az = view_angles(views, B)
        text = self.conditioning(prompt, el, az, B)
        t = (
            self.sample_t(step, B)
            if t is None
            else torch.as_tensor(t, device=self.prior.device).long().reshape(-1).expand(B)
        )
        noise = self.sample_noise(latents.shape) if noise is None else noise.to(self.prior.device, torch.float32)
        with torch.no_grad(), self.timer("unet"):
            res, extra = self.residual(latents.detach().float(), noise, t, text, step, views)
            w = timestep_weight(self.cfg.weighting, self.prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
            grad = self._clean(w * res, step, t, extra)
        extra.update(grad=grad, latents=latents)
        grad_norm = grad.flatten(1).norm(dim=1).mean()
        return GuidanceOutput(loss=distillation_loss(latents, grad), t=t, grad_norm=grad_norm, extra=extra)

    def _clean(self, grad: Tensor, step: int, t: Tensor, extra: dict) -> Tensor:
        cfg = self.cfg
        finite = torch.isfinite(grad)
        if cfg.nonfinite == "raise":
            if self.check_finite and not bool(finite.all()):
                raise FloatingPointError(
                    f"non-finite score-distillation gradient at step {step} (t={t.tolist()}): the prior produced NaN/Inf. "
                    "Try prior.dtype=fp32 or bf16, a lower guidance_scale, or guidance.nonfinite=zero to skip such elements."
                )
        else:
            extra["nonfinite"] = ~finite.all()
            grad = torch.where(finite, grad, torch.zeros_like(grad))
        if cfg.grad_clip_value is not None:
            v = scheduled(cfg.grad_clip_value, step)
            grad = grad.clamp(-v, v)
        if cfg.grad_clip_norm is not None:
            m = scheduled(cfg.grad_clip_norm, step)
            norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            grad = grad * (m / norm.clamp_min(1e-12)).clamp(max=1.0)
        return grad
