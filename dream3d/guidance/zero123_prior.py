"""The frozen Zero-1-to-3 backbone (Liu et al. 2023): a latent diffusion model conditioned on one input image and
the camera of the wanted view relative to the input's.

It loads the folder layout of the public diffusers conversions ("zero123-xl-diffusers", the one DreamGaussian and
threestudio load): ``vae`` (AutoencoderKL), ``image_encoder`` (CLIPVisionModelWithProjection), ``feature_extractor``
(a CLIP preprocessor config), ``clip_camera_projection`` (a linear map, ``proj.weight``/``proj.bias``; the other
public conversion, the diffusers community pipeline's, names it ``cc_projection`` with ``projection.*``, and loads
too), ``unet`` (UNet2DConditionModel with 8 input channels), ``scheduler``, ``model_index.json``. The embedded one
in ``assets/zero123`` has the same layout, so the same code runs both.

The public conventions, followed exactly (threestudio's zero123 guidance, DreamGaussian's zero123_utils, the
community pipeline):

- The camera numbers: ``[Δpolar, sin Δazimuth, cos Δazimuth, Δradius]`` with angles in **radians**, polar =
  90° - elevation (so a camera that moves up has a negative Δpolar), azimuth growing counter-clockwise seen from
  above (dream3d's: 0 at the front, +Z, and 90° at +X), Δradius in world units (:func:`relative_camera`).
- The cross-attention input is ``proj(cat(image_embeds, camera))``: one token per view.
- The U-Net input is ``cat(noisy_latents, input_latents)``, where the input view's latents are the VAE posterior's
  mode **without** the scaling factor (as the original's ``encode_first_stage(...).mode()``).
- Classifier-free guidance: the unconditional branch has the projected embedding **and** the concatenated latents
  set to zeros; ``eps = eps_uncond + s (eps_cond - eps_uncond)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..assets import EMBEDDED_ZERO123
from ..devices import resolve_device
from .prior import LatentBackbone, PriorConfig, PriorNotFoundError, _resolve_dtype

# The projection's folder and the name of its Linear layer, in the public conversions: first the
# zero123-xl-diffusers one (the layout dream3d writes), then the diffusers community pipeline's.
PROJECTION_LAYOUTS = {"clip_camera_projection": "proj", "cc_projection": "projection"}
CAMERA_NUMBERS = 4  # [Δpolar, sin Δazimuth, cos Δazimuth, Δradius]
_REQUIRED = {
    "unet": "config.json",
    "vae": "config.json",
    "image_encoder": "config.json",
    "feature_extractor": "preprocessor_config.json",
    "scheduler": "scheduler_config.json",
}
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# A hub snapshot fetches only what loading reads.
_HUB_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/diffusion_pytorch_model.bin", "*/*model.bin"]


def relative_camera(
    elevation: Tensor | float,
    azimuth: Tensor | float,
    radius: Tensor | float,
    ref_elevation: Tensor | float,
    ref_azimuth: Tensor | float,
    ref_radius: Tensor | float,
) -> Tensor:
    """(B, 4) Zero123 camera numbers of cameras at (elevation, azimuth, radius) (degrees, world units, dream3d's
    convention) relative to the input view's camera at the ``ref_*`` values: ``[Δpolar, sin Δaz, cos Δaz, Δr]``,
    in radians. Polar is 90° - elevation, so Δpolar = ref_elevation - elevation; Δazimuth = azimuth - ref_azimuth.
    Every argument is a number, or B values (a tensor or a list). The result is on the tensors' device; numbers
    are never copied to it, so cameras on a GPU cost no host-device synchronisation."""
    args = [v if isinstance(v, (Tensor, int, float)) else torch.as_tensor(v) for v in (
        elevation, azimuth, radius, ref_elevation, ref_azimuth, ref_radius
    )]  # fmt: skip
    devices = [v.device for v in args if isinstance(v, Tensor)]
    device = next((d for d in devices if d.type != "cpu"), devices[0] if devices else None)  # an accelerator's first
    el, az, r, el0, az0, r0 = (
        v.to(device, torch.float32, non_blocking=True).reshape(-1) if isinstance(v, Tensor) else float(v) for v in args
    )

    def lift(x: Tensor | float) -> Tensor:
        return x if isinstance(x, Tensor) else torch.full((1,), x, device=device)

    d_polar, d_az, d_r = torch.broadcast_tensors(lift(el0 - el), lift(az - az0), lift(r - r0))
    d_polar, d_az = torch.deg2rad(d_polar), torch.deg2rad(d_az)
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), d_r], -1)


@dataclass
class ImageConditioning:
    """What the input view gives every prediction: its CLIP image embedding and its (unscaled) latents."""

    embedding: Tensor  # (1, 1, D) image_embeds
    latents: Tensor  # (1, C, h, w) VAE posterior mode, not scaled


def clip_preprocess(rgb: Tensor, size: int, mean: Tensor, std: Tensor) -> Tensor:
    """(B, H, W, 3) square images in [0, 1] -> (B, 3, size, size) CLIP pixel values: bicubic resize (antialiased
    when shrinking), then CLIP's mean/std normalization, as the feature extractor does for square images."""
    x = rgb.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=shrink).clamp(0, 1)
    return (x - mean.view(1, 3, 1, 1).to(x)) / std.view(1, 3, 1, 1).to(x)


def read_preprocessor(folder: str) -> tuple[int, Tensor, Tensor]:
    """(crop size, mean, std) from a CLIP ``preprocessor_config.json`` (any of its spellings of the sizes)."""
    with open(os.path.join(folder, "preprocessor_config.json")) as f:
        c = json.load(f)
    crop = c.get("crop_size", c.get("size", 224))
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("shortest_edge"))
    return (
        int(crop),
        torch.tensor(c["image_mean"], dtype=torch.float32),
        torch.tensor(c["image_std"], dtype=torch.float32),
    )


def projection_folder(folder: Path) -> tuple[str | None, Path | None]:
    """(name of the Linear inside, weights file) of the camera projection in a model folder, or (None, None)."""
    for sub, layer in PROJECTION_LAYOUTS.items():
        for w in _WEIGHT_FILES:
            if (folder / sub / w).exists():
                return layer, folder / sub / w
    return None, None


def missing_parts(folder: Path) -> list[str]:
    """The parts a Zero123 folder lacks, named as the layout names them."""
    missing = [f"{sub}/{name}" for sub, name in _REQUIRED.items() if not (folder / sub / name).exists()]
    if projection_folder(folder)[0] is None:
        missing.append(f"clip_camera_projection/{_WEIGHT_FILES[0]} (or cc_projection/)")
    return missing


def _how_to_provide() -> str:
    return (
        "Give a Zero123 diffusers folder with guidance.prior.model=<folder> (the zero123-xl-diffusers layout: vae/, "
        "image_encoder/, feature_extractor/, clip_camera_projection/ or cc_projection/, unet/, scheduler/), or a hub "
        "id such as guidance.prior.model=ashawkey/zero123-xl-diffusers with guidance.prior.allow_download=true; or "
        "train the embedded one with `dream3d prior train --kind zero123`."
    )


def resolve_zero123(cfg: PriorConfig) -> str:
    """A local folder holding every part of a Zero123 model: the embedded one (model None), a folder, or the local
    snapshot of a hub id (downloaded only with allow_download). Raises PriorNotFoundError naming what is missing."""
    if cfg.model is None:
        folder = Path(EMBEDDED_ZERO123)
        missing = missing_parts(folder) if folder.is_dir() else ["the folder"]
        if missing:
            raise PriorNotFoundError(
                f"The embedded Zero123 was not found in {folder} (missing {', '.join(missing)}). " + _how_to_provide()
            )
        return str(folder)
    model = os.path.expanduser(str(cfg.model))
    p = Path(model)
    if not p.is_dir():
        if p.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1 or p.exists():
            raise PriorNotFoundError(f"No Zero123 model folder at {p.resolve()}. " + _how_to_provide())
        from huggingface_hub import snapshot_download

        try:
            p = Path(snapshot_download(model, allow_patterns=_HUB_PATTERNS, local_files_only=not cfg.allow_download))
        except Exception as e:  # not cached / not found / offline: the hub raises many kinds
            where = (
                "is not in the local Hugging Face cache and downloads are off"
                if not cfg.allow_download
                else "could not be downloaded"
            )
            raise PriorNotFoundError(
                f"The Zero123 model {model!r} {where} ({type(e).__name__}). " + _how_to_provide()
            ) from None
    missing = missing_parts(p)
    if missing:
        raise PriorNotFoundError(
            f"{p} is not a Zero123 diffusers folder: missing {', '.join(missing)}. " + _how_to_provide()
        )
    return str(p)


def load_projection(folder: Path) -> torch.nn.Linear:
    """The camera projection as a plain Linear, from either public layout (safetensors or a torch .bin)."""
    layer, path = projection_folder(folder)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    w, b = state[f"{layer}.weight"], state[f"{layer}.bias"]
    proj = torch.nn.Linear(w.shape[1], w.shape[0])
    proj.load_state_dict({"weight": w, "bias": b})
    return proj


class Zero123Prior(LatentBackbone):
    """A frozen Zero123: VAE, CLIP image encoder, camera projection and the 8-channel U-Net.

    ``set_input(rgb)`` once per input image, then ``guided_eps(x_t, t, cond, camera, scale)`` per step."""

    def __init__(
        self, vae, unet, image_encoder, projection, scheduler, clip, device="cpu", dtype=torch.float32, source=None
    ):
        self._setup(vae, unet, scheduler, (vae, unet, image_encoder, projection), device, dtype, source)
        self.image_encoder, self.projection = image_encoder, projection
        self.clip_size, self.clip_mean, self.clip_std = clip
        embed = int(image_encoder.config.projection_dim)
        if (
            projection.in_features != embed + CAMERA_NUMBERS
            or projection.out_features != unet.config.cross_attention_dim
        ):
            raise ValueError(
                f"the camera projection maps {projection.in_features} -> {projection.out_features}, but the image "
                f"embedding has {embed} numbers (+{CAMERA_NUMBERS} camera) and the U-Net attends to "
                f"{unet.config.cross_attention_dim}"
            )
        if unet.config.in_channels != 2 * self.latent_channels:
            raise ValueError(
                f"a Zero123 U-Net takes the noisy latents and the input view's latents ({2 * self.latent_channels} "
                f"channels); this one takes {unet.config.in_channels}"
            )

    @classmethod
    def load(cls, cfg: PriorConfig = PriorConfig()) -> "Zero123Prior":
        source = resolve_zero123(cfg)  # before the heavy imports: a missing model fails at once
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection

        device = resolve_device(cfg.device)
        dtype = _resolve_dtype(cfg.dtype, device)
        folder = Path(source)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")  # reads DDIM's config too
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
        encoder = CLIPVisionModelWithProjection.from_pretrained(source, subfolder="image_encoder", dtype=dtype)
        clip = read_preprocessor(str(folder / "feature_extractor"))
        prior = cls(vae, unet, encoder, load_projection(folder), scheduler, clip, device, dtype, source)
        if cfg.channels_last:
            for m in (prior.unet, prior.vae):
                m.to(memory_format=torch.channels_last)
        return prior

    # What the pipeline asks any prior about a prompt: Zero123 reads none.
    def caption(self, prompt: str) -> str:
        return prompt

    def outside_vocabulary(self, prompt: str) -> str | None:
        return None

    # ---------------------------------------------------------------- conditioning

    @torch.no_grad()
    def image_conditioning(self, rgb: Tensor) -> ImageConditioning:
        """The input view (1, H, W, 3) in [0, 1] (on white) as the CLIP embedding and unscaled latents."""
        pixels = clip_preprocess(rgb, self.clip_size, self.clip_mean, self.clip_std).to(self.device, self.dtype)
        emb = self.image_encoder(pixel_values=pixels).image_embeds.float()[:, None]
        x = rgb.permute(0, 3, 1, 2).float()
        S = self.image_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=x.shape[-1] > S)
        lat = self.vae.encode((x * 2 - 1).to(self.device, self.dtype)).latent_dist.mode().float()
        return ImageConditioning(emb, lat)

    def camera_states(self, cond: ImageConditioning, camera: Tensor) -> Tensor:
        """(B, 1, W) cross-attention states: the projection of [image embedding, camera numbers] per view."""
        # (non_blocking from the host, as Cameras.to: training cameras are drawn there, and the copy need not wait)
        cam = camera.to(self.device, torch.float32, non_blocking=camera.device.type == "cpu")[:, None, :]
        x = torch.cat([cond.embedding.to(self.device).expand(len(cam), -1, -1), cam], -1)
        return self.projection(x.to(self.dtype)).float()

    # ---------------------------------------------------------------- diffusion

    def predict_noise(self, noisy_latents: Tensor, t: Tensor | int, states: Tensor, input_latents: Tensor) -> Tensor:
        """fp32 epsilon for (B, C, h, w) noisy latents given the cross-attention states and the input latents."""
        t = self._t(t, noisy_latents.shape[0])
        x = torch.cat([noisy_latents.float(), input_latents.float().expand(len(noisy_latents), -1, -1, -1)], 1)
        out = self.unet_output(x.to(self.dtype), t, states.to(self.dtype))
        return self.as_epsilon(out.float(), noisy_latents, t)

    def guided_eps(
        self, noisy_latents: Tensor, t: Tensor, cond: ImageConditioning, camera: Tensor, scale: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(eps_hat, eps_cond, eps_uncond) from one batched U-Net call over [cond, uncond]: the unconditional
        branch has zeros for both the projected embedding and the input latents (the public convention)."""
        B = noisy_latents.shape[0]
        states = self.camera_states(cond, camera)
        lat = cond.latents.to(self.device).expand(B, -1, -1, -1)
        eps = self.predict_noise(
            noisy_latents.repeat(2, 1, 1, 1),
            self._t(t, B).repeat(2),
            torch.cat([states, torch.zeros_like(states)]),
            torch.cat([lat, torch.zeros_like(lat)]),
        )
        eps_c, eps_u = eps.chunk(2)
        return eps_u + scale * (eps_c - eps_u), eps_c, eps_u
