"""The embedded prior's architecture: a tiny Stable-Diffusion-format model (VAE, CLIP text encoder and
tokenizer, cross-attention U-Net, DDPM scheduler), built from plain diffusers/transformers configs so
that every code path that runs it also runs a real SD checkpoint."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


@dataclass
class PriorArchConfig:
    image_size: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)  # two downsamples: 64x64 images -> 16x16 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 16


def build_vae(a: PriorArchConfig) -> AutoencoderKL:
    n = len(a.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=a.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=a.vae_channels,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=a.image_size,
    )


def build_unet(a: PriorArchConfig) -> UNet2DConditionModel:
    down = ("CrossAttnDownBlock2D",) * (len(a.unet_channels) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(a.unet_channels) - 1)
    factor = 2 ** (len(a.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=a.image_size // factor,
        in_channels=a.latent_channels,
        out_channels=a.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=a.unet_channels,
        layers_per_block=1,
        cross_attention_dim=a.text_width,
        attention_head_dim=a.unet_heads,
        norm_num_groups=32,
    )


def build_text_encoder(a: PriorArchConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=a.text_width,
        intermediate_size=a.text_width * 2,
        num_hidden_layers=a.text_layers,
        num_attention_heads=a.text_heads,
        max_position_embeddings=a.max_tokens,
        projection_dim=a.text_width,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    return CLIPTextModel(cfg)


def build_scheduler() -> DDPMScheduler:
    # Stable Diffusion's noise schedule, so guidance code tuned on SD behaves the same here.
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def train_tokenizer(captions: list[str], out_dir: str, max_tokens: int) -> CLIPTokenizer:
    """A CLIP-format BPE tokenizer (vocab.json + merges.txt) whose vocabulary covers every caption word
    as one token. Built offline and deterministically from the captions: each word is merged character
    by character from left to right, which is a valid BPE merge list."""
    os.makedirs(out_dir, exist_ok=True)
    words = sorted({w for c in captions for w in _split_words(c)})
    vocab: dict[str, int] = {}

    def add(tok: str):
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for ch in sorted({ch for w in words for ch in w}):
        add(ch)
        add(ch + "</w>")
    merges: list[tuple[str, str]] = []
    seen = Counter()
    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            pair = (cur, nxt)
            if pair not in seen:
                seen[pair] += 1
                merges.append(pair)
            cur = cur + nxt
            add(cur)
    add("<|startoftext|>")
    add("<|endoftext|>")
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(
        os.path.join(out_dir, "vocab.json"),
        os.path.join(out_dir, "merges.txt"),
        model_max_length=max_tokens,
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(out_dir)
    return tok


def _split_words(text: str) -> list[str]:
    """Words and punctuation the way CLIP's pre-tokenizer splits lowercase ASCII text."""
    import re

    return re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower())
