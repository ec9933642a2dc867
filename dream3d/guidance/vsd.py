"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023).

SDS's target is the pretrained score alone; VSD subtracts the score of the *current renders'* distribution,
estimated online by a LoRA student of the U-Net that is fine-tuned on the renders as they evolve:

    grad = w(t) (eps_pretrained_cfg(x_t, t, y) - eps_lora(x_t, t, y, camera))

and, after each guidance call, the student takes ``lora_steps_per_call`` steps of the ordinary diffusion
loss on the detached render latents (its own AdamW and learning rate; its own random t in
[lora_t_min, lora_t_max]). Set ``lora_steps_per_call=0`` to drive it yourself with :meth:`VSD.lora_step`.

Design choices:
- The LoRA goes through peft (``unet.add_adapter(LoraConfig(...))`` on attention to_q/to_k/to_v/to_out.0) on
  the prior's *own* U-Net, switched on only inside the student branch (diffusers' enable/disable_adapters).
  The frozen weights are shared: a separate copy would double the U-Net's memory (1.7 GB more in fp16 for
  SD 1.5), and disabled LoRA layers reduce exactly to the base layers, so the prior stays the pretrained
  model for every other caller. LoRA weights are kept in fp32 (peft casts activations to them), so Adam
  never updates fp16 weights.
- Camera conditioning: the frozen U-Net has no class embedding, so a small trainable MLP (flattened 4x4
  camera-to-world, 16 -> time-embedding width -> time-embedding width) is attached as the U-Net's
  ``class_embedding`` only inside the student branch; diffusers then adds its output to the time embedding
  for the ``class_labels`` we pass. Its last layer starts at zero, and so does LoRA's B, so the student
  starts exactly equal to the pretrained model. During student training the camera is dropped (zeroed) with
  probability ``camera_dropout``, which lets ``lora_guidance_scale != 1`` use the camera-free student as
  the unconditional branch.
"""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from renderers.cameras import Cameras, look_at, positions_from_spherical

from ..optim import as_fused, skip_if_nonfinite
from .base import Guidance, GuidanceConfig, GuidanceOutput, Views, guided_eps, view_angles
from .prior import DiffusionPrior, TextConditioning
from .schedules import Scheduled, scheduled

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class VSDConfig(GuidanceConfig):
    guidance_scale: Scheduled = 7.5  # the pretrained branch's CFG
    weighting: str = "sds"  # 1 - abar, as ProlificDreamer
    lora_rank: int = 4
    lora_alpha: float | None = None  # None: = rank (LoRA scale 1)
    lora_lr: Scheduled = 1e-3
    lora_guidance_scale: float = 1.0  # >1: CFG between the student with and without the camera
    camera_condition: bool = True
    camera_dropout: float = 0.1
    lora_t_min: float = 0.0  # student training timesteps, fractions of the model's steps
    lora_t_max: float = 1.0
    lora_steps_per_call: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.lora_rank < 1 or self.lora_steps_per_call < 1:
            raise ValueError(
                f"lora_rank and lora_steps_per_call must be at least 1, got {self.lora_rank} and "
                f"{self.lora_steps_per_call} (for SDS without a student, use guidance.method=sds)"
            )
        if not 0 <= self.lora_t_min < self.lora_t_max <= 1 or not 0 <= self.camera_dropout <= 1:
            raise ValueError(
                "need 0 <= lora_t_min < lora_t_max <= 1 and camera_dropout in [0, 1], got "
                f"{self.lora_t_min}, {self.lora_t_max} and {self.camera_dropout}"
            )


def camera_features(views: Views, batch: int, device) -> Tensor:
    """(B, 16) flattened camera-to-world matrices (orbit poses at radius 1 for (elevation, azimuth) views;
    zeros without views)."""
    if views is None:
        return torch.zeros(batch, 16, device=device)
    if isinstance(views, Cameras):
        c2w = views.c2w
    else:
        el, az = view_angles(views, batch)
        c2w = look_at(positions_from_spherical(el, az, torch.ones_like(el)))
    if c2w.shape[0] != batch:
        raise ValueError(f"got {c2w.shape[0]} cameras for a batch of {batch} images")
    return c2w.reshape(batch, 16).to(device=device, dtype=torch.float32, non_blocking=True)


class VSD(Guidance):
    config_class = VSDConfig
    _ids = itertools.count()

    def __init__(self, prior: DiffusionPrior, cfg: VSDConfig | None = None, generator: torch.Generator | None = None):
        super().__init__(prior, cfg, generator)
        from peft import LoraConfig

        cfg, unet = self.cfg, prior.unet
        if cfg.camera_condition and unet.class_embedding is not None:
            raise ValueError(
                "this U-Net already has a class embedding, so VSD cannot attach its camera MLP there; set camera_condition=False"
            )
        self.adapter_name = f"vsd{next(VSD._ids)}"  # unique, so several VSD rules can share one prior
        alpha = cfg.lora_rank if cfg.lora_alpha is None else cfg.lora_alpha
        unet.add_adapter(
            LoraConfig(r=cfg.lora_rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights=True),
            adapter_name=self.adapter_name,
        )
        unet.disable_adapters()  # outside the student branch the shared U-Net is the pretrained model
        # The U-Net's LoRA-wrapped layers, toggled directly in student(): diffusers' set_adapter/enable_adapters
        # walk all of the U-Net's modules each time (901 in the embedded prior: 11 ms per student() on 2 CPU cores)
        self._lora_layers = [m for m in unet.modules() if hasattr(m, "enable_adapters") and m is not unet]
        self.lora_parameters = [p for n, p in unet.named_parameters() if f".{self.adapter_name}." in n]
        for p in self.lora_parameters:
            p.data = p.data.float()
        width = unet.time_embedding.linear_2.out_features
        self.camera_mlp = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width)).to(prior.device)
        nn.init.zeros_(self.camera_mlp[2].weight)
        nn.init.zeros_(self.camera_mlp[2].bias)
        params = self.lora_parameters + (list(self.camera_mlp.parameters()) if cfg.camera_condition else [])
        self.optimizer = torch.optim.AdamW(params, lr=scheduled(cfg.lora_lr, 0), weight_decay=0.0, fused=True)

    def trainable_parameters(self) -> list[Tensor]:
        """The student's weights (LoRA, and the camera MLP when camera conditioning is on)."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "lora": [p.detach().cpu().clone() for p in self.lora_parameters],
            "camera_mlp": {k: v.detach().cpu().clone() for k, v in self.camera_mlp.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not live references
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if len(state["lora"]) != len(self.lora_parameters):
            raise ValueError(
                f"checkpoint holds {len(state['lora'])} LoRA tensors, this VSD has {len(self.lora_parameters)}: different U-Net or LoRA targets"
            )
        with torch.no_grad():
            for p, v in zip(self.lora_parameters, state["lora"]):
                p.copy_(v)
        self.camera_mlp.load_state_dict(state["camera_mlp"])
        self.optimizer.load_state_dict(as_fused(copy.deepcopy(state["optimizer"])))

    @contextmanager
    def student(self):
        """Within this block the prior's U-Net is the LoRA student (camera MLP attached if enabled)."""
        unet = self.prior.unet
        for m in self._lora_layers:  # what unet.set_adapter(name) and unet.enable_adapters() do, layer by layer
            if m.active_adapters != [self.adapter_name]:  # (another VSD rule on this U-Net was the last student)
                m.set_adapter(self.adapter_name)
            m.enable_adapters(True)
        if self.cfg.camera_condition:
            unet.class_embedding = self.camera_mlp
        try:
            yield
        finally:
            for m in self._lora_layers:
                m.enable_adapters(False)
            if self.cfg.camera_condition:
                unet.class_embedding = None

    def student_eps(self, x_t: Tensor, t: Tensor, cond: Tensor, cam: Tensor) -> Tensor:
        """The student's epsilon (with its own camera CFG when lora_guidance_scale != 1)."""
        s = self.cfg.lora_guidance_scale
        with self.student():
            if not self.cfg.camera_condition:
                return self.prior.predict_noise(x_t, t, cond)
            if s == 1.0:
                return self.prior.predict_noise(x_t, t, cond, class_labels=cam)
            e = self.prior.predict_noise(
                x_t.repeat(2, 1, 1, 1),
                t.repeat(2),
                cond.repeat(2, 1, 1),
                class_labels=torch.cat([cam, torch.zeros_like(cam)]),
            )
            e_c, e_u = e.chunk(2)
            return e_u + s * (e_c - e_u)

    def residual(
        self, latents: Tensor, noise: Tensor, t: Tensor, text: TextConditioning, step: int, views: Views
    ) -> tuple[Tensor, dict]:
        x_t = self.prior.add_noise(latents, noise, t)
        eps_pre, _, _ = guided_eps(self.prior, x_t, t, text, scheduled(self.cfg.guidance_scale, step))
        eps_lora = self.student_eps(x_t, t, text.cond, camera_features(views, latents.shape[0], self.prior.device))
        return eps_pre - eps_lora, {}

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
        """The VSD loss on latents, then ``lora_steps_per_call`` student updates on them (the gradient is
        computed with the student as it was before the update)."""
        out = super().latent_loss(latents, views, prompt, step, noise=noise, t=t)
        for _ in range(self.cfg.lora_steps_per_call):
            with self.timer("lora"):
                out.extra["lora_loss"] = self.lora_step(latents, views, prompt, step)
        return out

    def lora_step(self, latents: Tensor, views: Views, prompt: str, step: int = 0) -> Tensor:
        """One AdamW step of the student's diffusion loss on the detached latents; returns the loss."""
        cfg, prior = self.cfg, self.prior
        x0 = latents.detach().float()
        B = x0.shape[0]
        el, az = view_angles(views, B)
        cond = self.conditioning(prompt, el, az, B).cond
        T = prior.num_train_timesteps
        lo = min(max(int(round(cfg.lora_t_min * T)), 0), T - 1)
        hi = min(max(int(round(cfg.lora_t_max * T)), lo), T - 1)
        t = torch.randint(lo, hi + 1, (B,), generator=self.generator).to(prior.device, non_blocking=True)
        noise = self.sample_noise(x0.shape)
        x_t = prior.add_noise(x0, noise, t)
        cam = None
        if cfg.camera_condition:
            keep = (
                (torch.rand(B, generator=self.generator) >= cfg.camera_dropout)
                .float()
                .to(prior.device, non_blocking=True)
            )
            cam = camera_features(views, B, prior.device) * keep[:, None]
        for g in self.optimizer.param_groups:
            g["lr"] = scheduled(cfg.lora_lr, step)
        with self.student():
            loss = F.mse_loss(prior.model_output(x_t, t, cond, class_labels=cam), prior.training_target(x0, noise, t))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            skip_if_nonfinite(self.optimizer, loss)  # a bad render leaves the student as it was, without a host wait
            self.optimizer.step()
        return loss.detach()
