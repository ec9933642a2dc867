"""Stable-Diffusion-format folders with random weights, for tests and benchmarks (no real weights exist here).

``make_sd_folder(path, **SD15_FULL)`` writes a diffusers ``StableDiffusionPipeline`` folder of SD 1.5's full
size (1.1 B parameters; with ``torch.set_default_device("cuda")`` it builds in seconds on a GPU), ``SD15_SMALL``
has SD 1.5's layers and 512-pixel images with tiny channel counts. The tokenizer is character level (no merges),
so no vocabulary file is needed. Loading, shapes, dtypes and speed can be tested with them, never quality.
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
