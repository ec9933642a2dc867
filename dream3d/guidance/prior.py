"""The frozen diffusion backbone that every distillation rule shares.

:class:`DiffusionPrior` wraps any Stable-Diffusion-format diffusers folder (AutoencoderKL, CLIP text
encoder + tokenizer, UNet2DConditionModel, a DDPM-family scheduler config): the embedded prior in
``assets/prior``, a local SD 1.5/2.1 folder, or a hub id (downloaded only when allowed). It encodes renders
into latents, noises them, embeds prompts and predicts epsilon; the rules (SDS, VSD, ISM, CSD) are small
functions over these outputs.

Dtypes: weights live in the prior's dtype (fp16 on CUDA by default, fp32 on CPU); every tensor this module
returns is fp32, so the rules do their arithmetic in fp32 regardless of the backbone.

Also here: prompt processing that every rule needs: DreamFusion's view-dependent prompts and negative
prompts (the unconditional branch of classifier-free guidance).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from renderers.cameras import view_names

from ..assets import EMBEDDED_PRIOR
from ..devices import resolve_device

# A model folder may list the prompts it was trained on (the embedded prior does): see outside_vocabulary.
VOCABULARY_FILE = "vocabulary.json"
_REQUIRED = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "scheduler": "scheduler_config.json",
    "tokenizer": None,
}
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class PriorNotFoundError(FileNotFoundError):
    """The diffusion model could not be found (or is not a Stable-Diffusion-format diffusers folder)."""


@dataclass
class PriorConfig:
    model: str | None = None  # local diffusers folder or hub id; None = the embedded prior (assets/prior)
    allow_download: bool = False  # only then may a hub id be fetched from the network
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    channels_last: bool = False  # U-Net and VAE in channels-last memory (faster fp16 convolutions on recent GPUs)

    def __post_init__(self):
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose auto, {', '.join(_DTYPES)}")


def default_prior_candidates() -> list[Path]:
    """Where the embedded prior lives (see :mod:`dream3d.assets`: in the package, the repository, or $DREAM3D_ASSETS)."""
    return [Path(EMBEDDED_PRIOR)]


def _missing_parts(folder: Path) -> list[str]:
    missing = []
    for sub, fname in _REQUIRED.items():
        p = folder / sub if fname is None else folder / sub / fname
        if not p.exists():
            missing.append(str(p.relative_to(folder)))
    return missing


def _how_to_provide() -> str:
    return (
        "Provide a model with `guidance.prior.model=<folder>` (a diffusers Stable Diffusion folder holding unet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/), or a hub id such as `guidance.prior.model=runwayml/stable-diffusion-v1-5` "
        "together with `guidance.prior.allow_download=true` (`--model` and `--allow-download` for `dream3d prior "
        "sample/eval`); or train the embedded prior with `dream3d prior train`."
    )


def resolve_model(cfg: PriorConfig) -> tuple[str, bool]:
    """(source, is_local): a local folder that holds every component, or a hub id. Raises
    :class:`PriorNotFoundError` naming what was looked for and how to provide it."""
    if cfg.model is None:
        cands = default_prior_candidates()
        for c in cands:
            if c.is_dir() and not _missing_parts(c):
                return str(c), True
        raise PriorNotFoundError(
            "The embedded diffusion prior was not found; looked in: "
            + ", ".join(str(c) for c in cands)
            + ". "
            + _how_to_provide()
        )
    model = os.path.expanduser(str(cfg.model))
    p = Path(model)
    if p.is_dir():
        missing = _missing_parts(p)
        if missing:
            raise PriorNotFoundError(
                f"{p.resolve()} is not a Stable-Diffusion-format diffusers folder: missing {', '.join(missing)}. "
                + _how_to_provide()
            )
        return str(p), True
    looks_like_path = p.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1 or p.exists()
    if looks_like_path:
        raise PriorNotFoundError(f"No diffusion model folder at {p.resolve()}. " + _how_to_provide())
    return model, False  # "owner/name": a hub id


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown prior dtype {dtype!r}; choose auto, fp32, fp16 or bf16")
    return _DTYPES[dtype]


@dataclass
class ViewPromptConfig:
    """DreamFusion's view-dependent prompting: append the view word of each camera to the prompt."""

    enabled: bool = True
    front_deg: float = 45.0  # |azimuth| <= front_deg is the front
    back_deg: float = 45.0  # |azimuth| >= 180 - back_deg is the back
    overhead_deg: float = 60.0  # elevation above this is overhead (wins over the azimuth words)
    template: str = "{prompt}, {view} view"

    def __post_init__(self):
        try:
            ok = "PROMPT" in self.template.format(prompt="PROMPT", view="VIEW")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"template {self.template!r} must be a format string of {{prompt}} and {{view}} only ({e!r})"
            ) from None
        if not ok:
            raise ValueError(f"template {self.template!r} must hold {{prompt}}")


def view_prompts(
    prompt: str,
    elevation: Tensor | Sequence[float],
    azimuth: Tensor | Sequence[float],
    cfg: ViewPromptConfig = ViewPromptConfig(),
) -> list[str]:
    """One prompt per camera: ``"a red cube, front view"`` etc. (angles in degrees, the conventions of
    :mod:`renderers.cameras`: azimuth 0 looks at the object's front)."""
    el = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1)
    az = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1)
    if el.shape != az.shape:
        raise ValueError(f"elevation and azimuth hold different numbers of views: {el.numel()} vs {az.numel()}")
    if not cfg.enabled:
        return [prompt] * el.numel()
    names = view_names(el, az, front_deg=cfg.front_deg, back_deg=cfg.back_deg, overhead_deg=cfg.overhead_deg)
    return [cfg.template.format(prompt=prompt, view=v) for v in names]


@dataclass
class TextConditioning:
    """Per-view text embeddings for one guided prediction.

    ``uncond`` is the negative prompt's embedding (the empty prompt's when none is given): CFG pushes away
    from it. ``neg``/``neg_weights`` are Perp-Neg's extra negatives (see :mod:`.perpneg`), None otherwise.
    """

    cond: Tensor  # (B, L, D)
    uncond: Tensor  # (B, L, D)
    neg: Tensor | None = None  # (B, K, L, D)
    neg_weights: Tensor | None = None  # (B, K)


def read_vocabulary(source: str | None) -> dict | None:
    """The prompts a model folder says it was trained on (its vocabulary.json), or None."""
    path = os.path.join(source, VOCABULARY_FILE) if source and os.path.isdir(source) else None
    if path is None or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def caption_for(vocabulary: dict | None, prompt: str) -> str:
    """``prompt`` in the form of the training captions that ``vocabulary`` gives (its "caption" and, for a prompt
    with a view, "view_caption", filled from the pattern's named groups); unchanged where there is none or the
    prompt does not match."""
    v = vocabulary
    if v is None or "caption" not in v:
        return prompt
    m = re.match(v["pattern"], prompt, re.IGNORECASE)
    if not m or not all(m[group].lower() in words for group, words in v["words"].items()):
        return prompt
    groups = {k: x.lower() for k, x in m.groupdict().items() if x is not None}
    return (v["view_caption"] if groups.get("view") else v["caption"]).format(**groups)


class LatentBackbone:
    """What every frozen latent diffusion backbone here shares, whatever conditions it: the VAE (images <->
    latents), the noise schedule (noising, the training target) and the U-Net's output read as epsilon.
    :class:`DiffusionPrior` (text) and :class:`~dream3d.guidance.zero123_prior.Zero123Prior` (an image and a
    relative camera) add their own conditioning on top."""

    def _setup(self, vae, unet, scheduler, modules, device, dtype, source: str | None) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.source = source  # the folder or hub id it was loaded from (None: built from components)
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        for m in modules:
            if next(m.parameters()).dtype != dtype:  # (diffusers warns on a dtype-carrying .to(); load() cast them)
                m.to(dtype=dtype)
            m.to(self.device)
            m.eval()
            m.requires_grad_(False)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)  # (T,)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} in the scheduler config")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.latent_channels = int(unet.config.out_channels)  # (the input may hold more: Zero123 concatenates)
        sample_size = unet.config.sample_size
        self.latent_size = int(sample_size if isinstance(sample_size, int) else sample_size[0])
        self.image_size = self.latent_size * self.vae_scale_factor  # the model's native resolution
        self.graphed_unet = None  # a GraphedUNet once use_cuda_graphs() is called

    def use_cuda_graphs(self) -> None:
        """Replay the U-Net's no-grad calls as CUDA graphs on a CUDA device (:mod:`.cuda_graphs`); other calls,
        and every call on CPU, run as before."""
        from .cuda_graphs import GraphedUNet

        self.graphed_unet = GraphedUNet(self.unet)

    def unet_output(self, sample: Tensor, t: Tensor, states: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The U-Net's raw output for inputs already in the model's dtype, through its CUDA graphs when on."""
        if self.graphed_unet is not None:
            return self.graphed_unet(sample, t, states, class_labels)
        return self.unet(sample, t, encoder_hidden_states=states, class_labels=class_labels, return_dict=False)[0]

    def compile(self, mode: str = "default") -> None:
        """torch.compile the U-Net and the VAE encoder in place (the modules stay the same objects, so peft
        adapters and VSD's class embedding keep working; each distinct branch compiles once). ``mode`` is an
        inductor mode ("default", "reduce-overhead", "max-autotune", ...), or "eager" / "aot_eager": dynamo's
        debugging backends, which trace without generating code (a quick check that the model compiles)."""
        kw = {"backend": mode} if mode in ("eager", "aot_eager") else {"mode": mode}
        self.unet.compile(**kw)
        self.vae.encoder.compile(**kw)

    # ---------------------------------------------------------------- images <-> latents

    def encodes_like(self, other: "LatentBackbone") -> bool:
        """Whether :meth:`encode` gives the same latents as ``other``'s: the same native size, dtype, device,
        latent scaling and VAE weights (Zero123 keeps Stable Diffusion's VAE, so Magic123's two priors share one)."""
        if (self.image_size, self.dtype, self.device, self.scaling_factor, self.shift_factor) != (
            other.image_size,
            other.dtype,
            other.device,
            other.scaling_factor,
            other.shift_factor,
        ):
            return False
        if self.vae is other.vae:
            return True
        mine, theirs = self.vae.state_dict(), other.vae.state_dict()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, H, W, 3) images in [0, 1] -> (B, C, h, w) fp32 latents, differentiable through the VAE encoder.

        Images are resized (bilinear, antialiased when shrinking) to the model's native ``image_size``.
        The posterior mean is used unless a ``generator`` is given, in which case it is sampled: the mean
        keeps the gradient deterministic, and the encoder's variance is tiny next to the diffusion noise.
        """
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"encode expects channels-last rgb of shape (B, H, W, 3); got {tuple(rgb.shape)}")
        x = rgb.permute(0, 3, 1, 2)
        S = self.image_size
        if x.shape[-2:] != (S, S):
            shrink = x.shape[-2] > S or x.shape[-1] > S
            x = F.interpolate(x.float(), size=(S, S), mode="bilinear", align_corners=False, antialias=shrink)
        x = (x * 2 - 1).to(device=self.device, dtype=self.dtype)
        dist = self.vae.encode(x).latent_dist
        z = (
            dist.mean
            if generator is None
            else dist.mean
            + dist.std * torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean)
        )
        return (z.float() - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) latents -> (B, H, W, 3) fp32 images in [0, 1]."""
        z = latents.to(self.dtype) / self.scaling_factor + self.shift_factor
        x = self.vae.decode(z).sample.float()
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    # ---------------------------------------------------------------- diffusion

    def _t(self, t: Tensor | int, batch: int) -> Tensor:
        t = torch.as_tensor(t, device=self.device).long().reshape(-1)
        return t.expand(batch) if t.numel() == 1 else t

    def _abar(self, t: Tensor) -> Tensor:
        return self.alphas_cumprod[t].view(-1, 1, 1, 1)

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, in fp32."""
        a = self._abar(self._t(t, latents.shape[0]))
        return a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()

    def as_epsilon(self, out: Tensor, noisy_latents: Tensor, t: Tensor) -> Tensor:
        """The U-Net's fp32 output ``out`` at ``noisy_latents`` read as epsilon (converted from v or x0 for models
        trained on those)."""
        if self.prediction_type == "epsilon":
            return out
        a = self._abar(self._t(t, noisy_latents.shape[0]))
        x = noisy_latents.float()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()  # "sample"

    def training_target(self, latents: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """What the U-Net is trained to output at x_t = add_noise(latents, noise, t)."""
        if self.prediction_type == "epsilon":
            return noise.float()
        if self.prediction_type == "sample":
            return latents.float()
        a = self._abar(self._t(t, latents.shape[0]))
        return a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()


class DiffusionPrior(LatentBackbone):
    """A frozen latent diffusion model: VAE, text encoder, U-Net and its noise schedule.

    Build one with :meth:`load` (from a folder or hub id) or directly from loaded components.
    """

    def __init__(
        self,
        vae,
        unet,
        text_encoder,
        tokenizer,
        scheduler,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str | None = None,
    ):
        self._setup(vae, unet, scheduler, (vae, unet, text_encoder), device, dtype, source)
        self.vocabulary = read_vocabulary(source)
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        max_len = getattr(tokenizer, "model_max_length", None) or 77
        self.max_length = int(min(max_len, text_encoder.config.max_position_embeddings))
        self._text_cache: dict[str, Tensor] = {}

    @classmethod
    def load(cls, cfg: PriorConfig = PriorConfig()) -> "DiffusionPrior":
        """Load every component from ``cfg.model`` with ``local_files_only=not cfg.allow_download``."""
        source, is_local = resolve_model(cfg)  # before the heavy imports: a missing model fails at once
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        device = resolve_device(cfg.device)
        dtype = _resolve_dtype(cfg.dtype, device)
        kw = dict(local_files_only=not cfg.allow_download)
        try:
            # DDPMScheduler reads any DDPM-family config (SD ships PNDM's) and yields the same alphas_cumprod.
            scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
            tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **kw)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw)
        except OSError as e:
            if is_local:
                raise
            where = (
                "is not in the local Hugging Face cache and downloads are off"
                if not cfg.allow_download
                else "could not be downloaded"
            )
            raise PriorNotFoundError(
                f"The diffusion model {source!r} {where} ({type(e).__name__}: {e}). " + _how_to_provide()
            ) from e
        prior = cls(vae, unet, text_encoder, tokenizer, scheduler, device=device, dtype=dtype, source=source)
        if cfg.channels_last:
            for m in (prior.unet, prior.vae):
                m.to(memory_format=torch.channels_last)
        return prior

    def caption(self, prompt: str) -> str:
        """``prompt`` as the model's training captions write it, where its vocabulary.json gives their form (the
        embedded prior's captions are always "a <colour> <shape>": its tokenizer never saw "an", and "an orange
        torus" read as written makes a red ball); any other prompt, and every prompt of other models, unchanged."""
        return caption_for(self.vocabulary, prompt)

    def outside_vocabulary(self, prompt: str) -> str | None:
        """Why ``prompt`` lies outside the prompts this model was trained on, where its folder lists them in
        vocabulary.json (the embedded prior's does); None when it lies inside, or nothing is listed."""
        v = self.vocabulary
        if v is None or not prompt.strip():
            return None
        m = re.match(v["pattern"], prompt, re.IGNORECASE)
        if m and all(m[group].lower() in words for group, words in v["words"].items()):
            return None
        return f"prompt {prompt!r} is outside the prompts the model in {self.source} was trained on: {v['description']}"

    # ---------------------------------------------------------------- text

    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """(B, L, D) fp32 CLIP hidden states, one per prompt, each read in the form of the model's captions
        (:meth:`caption`); each distinct prompt is encoded once."""
        if isinstance(prompts, str):
            prompts = [prompts]
        new = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        for p in new:
            n = len(self.tokenizer(self.caption(p)).input_ids)
            if n > self.max_length:
                warnings.warn(
                    f"the prompt {p!r} is {n} tokens long; the text encoder reads only the first {self.max_length}, "
                    "so the rest is ignored",
                    stacklevel=2,
                )
        if new:
            tok = self.tokenizer(
                [self.caption(p) for p in new],
                padding="max_length",
                max_length=self.max_length,
                truncation=True,
                return_tensors="pt",
            )
            mask = (
                tok.attention_mask.to(self.device)
                if getattr(self.text_encoder.config, "use_attention_mask", False)
                else None
            )
            with torch.no_grad():
                h = self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0].float()
            for p, e in zip(new, h):
                self._text_cache[p] = e
        return torch.stack([self._text_cache[p] for p in prompts])

    # ---------------------------------------------------------------- diffusion

    def model_output(
        self, noisy_latents: Tensor, t: Tensor | int, text_embeds: Tensor, class_labels: Tensor | None = None
    ) -> Tensor:
        """The U-Net's raw fp32 output (epsilon, v or x0, per ``prediction_type``)."""
        t = self._t(t, noisy_latents.shape[0])
        return self.unet_output(noisy_latents.to(self.dtype), t, text_embeds.to(self.dtype), class_labels).float()

    def predict_noise(
        self, noisy_latents: Tensor, t: Tensor | int, text_embeds: Tensor, class_labels: Tensor | None = None
    ) -> Tensor:
        """fp32 epsilon prediction, converted from v or x0 for models trained on those.

        ``class_labels`` reach the U-Net's class-embedding input; a U-Net without a class embedding
        ignores them (VSD's camera conditioning attaches one for its LoRA branch only).
        """
        t = self._t(t, noisy_latents.shape[0])
        return self.as_epsilon(self.model_output(noisy_latents, t, text_embeds, class_labels), noisy_latents, t)
