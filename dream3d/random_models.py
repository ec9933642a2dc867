"""Stable-Diffusion-format folders with random weights, for tests and benchmarks (no real weights exist here).

``make_sd_folder(path, **SD15_FULL)`` writes a diffusers ``StableDiffusionPipeline`` folder of SD 1.5's full
size (1.1 B parameters; with ``torch.set_default_device("cuda")`` it builds in seconds on a GPU), ``SD15_SMALL``
has SD 1.5's layers and 512-pixel images with tiny channel counts. The tokenizer is character level (no merges),
so no vocabulary file is needed. ``make_zero123_folder(path, **ZERO123_XL_FULL)`` (or ``ZERO123_XL_SMALL``) writes a
Zero123 folder of Zero123-XL's architecture. Loading, shapes, dtypes and speed can be tested with them, never quality.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE vocabularies use."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_sd_folder(
    path: Path, *, unet: dict, vae: dict, text: dict, max_length: int, prediction_type: str = "epsilon"
) -> Path:
    """Save a random-weight StableDiffusionPipeline folder (character-level CLIP tokenizer, no merges)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    text_cfg = dict(
        vocab_size=len(vocab),
        max_position_embeddings=max_length,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    text_cfg.update(text)
    text_cfg["vocab_size"] = max(text_cfg["vocab_size"], len(vocab))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        tokenizer=tok,
        unet=UNet2DConditionModel(**unet),
        scheduler=DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type=prediction_type,
            clip_sample=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


SD15_SMALL = dict(
    # SD 1.5's architecture (4 U-Net levels, 3 with cross-attention; 4-level VAE, 8x downsampling; 64x64
    # latents for 512x512 images) with tiny channel counts
    unet=dict(
        sample_size=64,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    vae=dict(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
        scaling_factor=0.18215,
    ),
    text=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        hidden_act="quick_gelu",
    ),
    max_length=77,
)

SD15_FULL = dict(
    unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),  # the rest are diffusers' SD 1.5 defaults
    vae=dict(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    ),
    text=dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
    max_length=77,
)


def make_zero123_folder(path: Path, *, unet: dict, vae: dict, vision: dict) -> Path:
    """Save a random-weight Zero123 folder in the public zero123-xl-diffusers layout (see
    :mod:`dream3d.embedded_prior.zero123`), with the given U-Net, VAE and CLIP vision configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .embedded_prior.zero123 import build_projection, build_scheduler, save_zero123

    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
    unet = UNet2DConditionModel(**unet)
    proj = build_projection(vision["projection_dim"], unet.config.cross_attention_dim)
    save_zero123(
        str(path),
        vae=AutoencoderKL(**vae),
        unet=unet,
        image_encoder=encoder,
        projection=proj,
        scheduler=build_scheduler(),
        clip_size=vision["image_size"],
    )
    return path


# Zero123-XL's architecture: SD 1.x's U-Net with 8 input channels at 256x256 images (32x32 latents), SD's VAE,
# and CLIP ViT-L/14's vision tower (224 pixels, 768-number image embeddings; 772 -> 768 camera projection).
ZERO123_XL_FULL = dict(
    unet=dict(sample_size=32, in_channels=8, out_channels=4, cross_attention_dim=768, attention_head_dim=8),
    vae=dict(SD15_FULL["vae"], sample_size=256),
    vision=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
)

# The same layers (4 U-Net levels, 8x VAE, 224-pixel ViT with 14-pixel patches) with tiny channel counts.
ZERO123_XL_SMALL = dict(
    unet=dict(SD15_SMALL["unet"], sample_size=32, in_channels=8, out_channels=4),
    vae=dict(SD15_SMALL["vae"], sample_size=256),
    vision=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=14,
        projection_dim=32,
        hidden_act="quick_gelu",
    ),
)
