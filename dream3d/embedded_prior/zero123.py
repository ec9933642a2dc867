"""The embedded Zero-1-to-3's architecture and its folder: a small view-conditioned latent diffusion model written in
the public "zero123-xl-diffusers" layout, so that :class:`dream3d.guidance.zero123_prior.Zero123Prior` loads it
and a real checkpoint the same way.

The parts and their public names: ``vae`` (here the text prior's trained VAE, reused), ``image_encoder``
(CLIPVisionModelWithProjection: its ``image_embeds`` describe the input view), ``feature_extractor`` (the CLIP
preprocessor config: size, mean, std), ``clip_camera_projection`` (a Linear from embedding + 4 camera numbers to
the cross-attention width, saved as the public conversions save it: ``config.json`` with ``embedding_dim`` and
``additional_embeddings``, weights ``proj.weight`` and ``proj.bias``), ``unet`` (8 input channels: noisy latents
and the input view's latents), ``scheduler`` (DDIM, Stable Diffusion's betas) and ``model_index.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import torch

from ..guidance.zero123_prior import CAMERA_NUMBERS
from ..io import atomic_write_text

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalization, as every CLIP preprocessor writes it
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Zero123ArchConfig:
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_heads: int = 4
    embed_width: int = 128  # CLIP projection_dim = the U-Net's cross-attention width
    vision_width: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    clip_size: int = 64  # the image encoder reads the input view at this size ...
    patch_size: int = 8  # ... in patches of this size


def build_unet(a: Zero123ArchConfig, latent_channels: int, latent_size: int):
    """The denoiser: like the text prior's U-Net, with the input view's latents concatenated to its input."""
    from diffusers import UNet2DConditionModel

    n = len(a.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=2 * latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=a.unet_channels,
        layers_per_block=1,
        cross_attention_dim=a.embed_width,
        attention_head_dim=a.unet_heads,
        norm_num_groups=32,
    )


def build_image_encoder(a: Zero123ArchConfig):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=a.vision_width,
            intermediate_size=2 * a.vision_width,
            num_hidden_layers=a.vision_layers,
            num_attention_heads=a.vision_heads,
            image_size=a.clip_size,
            patch_size=a.patch_size,
            projection_dim=a.embed_width,
        )
    )


def build_projection(embed_width: int, cross_width: int) -> torch.nn.Linear:
    """embedding + camera -> cross-attention width. Starts as the identity on the embedding with a zero bias (as
    Zero123 initialised it from an image-variation model), so training begins from "copy the image's meaning"."""
    proj = torch.nn.Linear(embed_width + CAMERA_NUMBERS, cross_width)
    with torch.no_grad():
        proj.weight[:, :embed_width].copy_(torch.eye(cross_width, embed_width))
        proj.bias.zero_()
    return proj


def build_scheduler():
    """DDIM with Stable Diffusion's scaled-linear betas, the scheduler the public Zero123 folders ship."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def preprocessor_config(size: int) -> dict:
    """A CLIP image preprocessor config (what ``CLIPImageProcessor.from_pretrained`` reads) for ``size`` pixels."""
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": 3,  # bicubic
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }


def model_index() -> dict:
    """model_index.json as the zero123-xl-diffusers conversions write it (Zero123Pipeline, its module ``zero123``)."""
    import diffusers

    return {
        "_class_name": "Zero123Pipeline",
        "_diffusers_version": diffusers.__version__,
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def save_projection(proj: torch.nn.Linear, folder: str) -> None:
    """The projection as the public conversions save their CLIPCameraProjection (a diffusers ModelMixin)."""
    import diffusers
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    config = {
        "_class_name": "CLIPCameraProjection",
        "_diffusers_version": diffusers.__version__,
        "additional_embeddings": proj.in_features - proj.out_features,
        "embedding_dim": proj.out_features,
    }
    atomic_write_text(os.path.join(folder, "config.json"), json.dumps(config, indent=2))
    state = {"proj.weight": proj.weight.detach().contiguous(), "proj.bias": proj.bias.detach().contiguous()}
    save_file(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def save_zero123(
    out: str, *, vae, unet, image_encoder, projection, scheduler, clip_size: int, extra: dict | None = None
) -> str:
    """Write a Zero123 folder (safetensors) into ``out``, whole or not at all: it is built beside ``out`` and then
    renamed over it. ``extra`` maps file names to text written into the folder too (training.json)."""
    if projection.in_features - projection.out_features != CAMERA_NUMBERS:
        raise ValueError(
            f"the public layout needs a projection with as many outputs as embedding numbers (+{CAMERA_NUMBERS}); "
            f"got {projection.in_features} -> {projection.out_features}"
        )
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(os.path.join(tmp, "vae"), safe_serialization=True)
    unet.save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
    image_encoder.save_pretrained(os.path.join(tmp, "image_encoder"), safe_serialization=True)
    scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
    save_projection(projection, os.path.join(tmp, "clip_camera_projection"))
    fe = os.path.join(tmp, "feature_extractor", "preprocessor_config.json")
    os.makedirs(os.path.dirname(fe))
    atomic_write_text(fe, json.dumps(preprocessor_config(clip_size), indent=2))
    for name, text in {"model_index.json": json.dumps(model_index(), indent=2), **(extra or {})}.items():
        atomic_write_text(os.path.join(tmp, name), text)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
