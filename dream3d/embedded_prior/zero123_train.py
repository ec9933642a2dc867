"""Training the embedded Zero123 on pairs of shape-world renders.

Every world object is rendered from ``views`` random cameras (cached in the work folder). A training example is
two renders of the same object: the input view and the wanted one, with the relative camera between them in
Zero123's numbers (:func:`dream3d.guidance.zero123_prior.relative_camera`). No captions. The VAE is the text prior's,
frozen; the U-Net, the CLIP image encoder and the camera projection train together, with EMA copies. For
classifier-free guidance a fraction of the examples (``cfg_dropout``) get the unconditional input that guidance
gives at inference: zeros for the projected embedding and for the input view's latents.

The loop, checkpoints, resume and progress are :mod:`.loop`'s, so a stopped run continues bit for bit. Objects
named in ``data.holdout`` are never trained on (``dream3d prior eval --kind zero123`` reports them apart).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from renderers.cameras import CameraSampler

from ..assets import EMBEDDED_PRIOR
from ..guidance.zero123_prior import clip_preprocess, relative_camera
from ..world.render import render_colored_mesh
from ..world.shapes import COLORS, SHAPES, build_shape
from .loop import ResumableTraining, Stop, ema_update, lr_factor, optimizer_step
from .zero123 import (
    CLIP_MEAN,
    CLIP_STD,
    Zero123ArchConfig,
    build_image_encoder,
    build_projection,
    build_scheduler,
    build_unet,
    save_zero123,
)


def zero123_cameras() -> CameraSampler:
    """Where the input and wanted views come from: the image-to-3D cameras (configs/zero123.yaml) with some margin.
    One field of view: Zero123 assumes a fixed lens (the reference view's, 45°)."""
    return CameraSampler(radius=(2.6, 3.2), elevation=(-10.0, 70.0), azimuth=(-180.0, 180.0), fov_y=(45.0, 45.0))


@dataclass
class MultiViewDataConfig:
    views: int = 96  # renders per object
    size: int = 64  # pixels; must be the VAE's image size
    cameras: CameraSampler = field(default_factory=zero123_cameras)
    # "colour shape" objects never trained on (one per colour, over six shapes), for dream3d prior eval
    holdout: tuple[str, ...] = ("red torus", "green house", "blue sphere", "yellow mug", "purple cone", "orange chair")
    objects: tuple[str, ...] = ()  # "colour shape" objects to render (empty: the whole world)
    seed: int = 0


@dataclass
class Zero123TrainConfig:
    out: str = "assets/zero123"
    work_dir: str = "runs/zero123"
    seed: int = 0
    vae_from: str | None = None  # a model folder whose vae/ to reuse (None: the embedded text prior's)
    arch: Zero123ArchConfig = field(default_factory=Zero123ArchConfig)
    data: MultiViewDataConfig = field(default_factory=MultiViewDataConfig)
    steps: int = (
        4000  # 82.7 min on 2 CPU cores (1.05-1.15 s a step, 2026-12-04); the shipped assets/zero123 is this run
    )
    batch: int = 32
    lr: float = 5e-4  # the text prior's U-Net rate
    warmup: int = 200
    cfg_dropout: float = 0.1  # fraction of examples with the unconditional input (zeros), so CFG works
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    threads: int = 0  # torch threads; 0 keeps torch's default


def world_objects(data: MultiViewDataConfig | None = None) -> list[tuple[str, str]]:
    """The (colour, shape) objects of ``data`` (default: every one of the world, shape-major), in render order."""
    every = [(c, s) for s in SHAPES for c in COLORS]
    if data is None or not data.objects:
        return every
    unknown = [o for o in data.objects if tuple(o.split(" ")) not in every]
    if unknown:
        raise ValueError(f"data.objects names objects outside the world: {unknown}; write them as 'red cube'")
    return [tuple(o.split(" ")) for o in data.objects]


def render_views(data: MultiViewDataConfig, log=print) -> dict:
    """Each world object from ``data.views`` random cameras: images uint8 (O, V, H, W, 3) and cameras (O, V, 3) as
    (elevation, azimuth, radius). Deterministic in ``data.seed``."""
    g = torch.Generator().manual_seed(data.seed)
    images, cams = [], []
    t0 = time.time()
    for color, shape in tqdm(world_objects(data), desc="render views", unit="object", leave=False):
        mesh = build_shape(shape, COLORS[color])
        c = data.cameras.sample(data.views, data.size, data.size, generator=g)
        rgb = torch.cat([render_colored_mesh(mesh, c[i : i + 100])[0] for i in range(0, data.views, 100)])
        images.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8))
        cams.append(torch.stack(c.spherical(), -1))
    log(f"rendered {len(images) * data.views} views of {len(images)} objects in {time.time() - t0:.0f}s")
    return {"images": torch.stack(images).numpy(), "cameras": torch.stack(cams).numpy()}


def load_or_render_views(data: MultiViewDataConfig, work_dir: str, log=print) -> dict:
    """The renders, cached in ``work_dir/views.npz`` (made again when the data settings differ)."""
    path = os.path.join(work_dir, "views.npz")
    key = json.dumps(asdict(data), sort_keys=True)
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {"images": z["images"], "cameras": z["cameras"]}
    d = render_views(data, log)
    tmp = path + ".tmp.npz"
    np.savez(tmp, key=np.array(key), **d)
    os.replace(tmp, path)
    return d


def trained_objects(data: MultiViewDataConfig) -> list[int]:
    """Indices (into :func:`world_objects`) of the objects training sees: all but the held-out ones."""
    names = [f"{c} {s}" for c, s in world_objects(data)]
    unknown = [h for h in data.holdout if h not in [f"{c} {s}" for c, s in world_objects()]]
    if unknown:
        raise ValueError(f"data.holdout names objects outside the world: {unknown}; write them as 'red cube'")
    keep = [i for i, n in enumerate(names) if n not in data.holdout]
    if not keep:
        raise ValueError("data.holdout holds out every object that data.objects renders: nothing is left to train on")
    return keep


class _Trainer(ResumableTraining):
    def __init__(self, cfg: Zero123TrainConfig, log=print):
        from diffusers import AutoencoderKL

        super().__init__(cfg, log)
        views = load_or_render_views(cfg.data, cfg.work_dir, log)
        keep = torch.tensor(trained_objects(cfg.data))
        self.images = torch.from_numpy(views["images"])[keep]  # uint8 (O, V, H, W, 3)
        self.cameras = torch.from_numpy(views["cameras"])[keep].float()  # (O, V, 3)
        self.vae = AutoencoderKL.from_pretrained(cfg.vae_from or EMBEDDED_PRIOR, subfolder="vae").eval()
        self.vae.requires_grad_(False)
        if self.vae.config.sample_size != cfg.data.size:
            raise ValueError(f"data.size is {cfg.data.size} but the VAE is made for {self.vae.config.sample_size}")
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        channels = self.vae.config.latent_channels
        self.unet = build_unet(cfg.arch, channels, cfg.data.size // factor)
        self.encoder = build_image_encoder(cfg.arch)
        self.proj = build_projection(cfg.arch.embed_width, cfg.arch.embed_width)
        self.ema = {n: copy.deepcopy(getattr(self, n)).requires_grad_(False) for n in ("unet", "encoder", "proj")}
        self.scheduler = build_scheduler()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.opt = torch.optim.AdamW(self._params(), lr=cfg.lr, weight_decay=0.01)
        self.mean, self.std = self._encode_all()
        self.phase = "unet"
        self.resume_if_any()

    def _params(self) -> list:
        return [p for m in (self.unet, self.encoder, self.proj) for p in m.parameters()]

    def modules(self) -> dict:
        ema = {f"ema_{n}": m for n, m in self.ema.items()}
        return {"unet": self.unet, "encoder": self.encoder, "proj": self.proj, "opt": self.opt, **ema}

    @torch.no_grad()
    def _encode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior mean (= mode) and std of every render, (O, V, C, h, w) each."""
        flat = self.images.flatten(0, 1)
        means, stds = [], []
        for i in range(0, len(flat), 256):
            x = flat[i : i + 256].permute(0, 3, 1, 2).float().div(127.5).sub(1)
            post = self.vae.encode(x).latent_dist
            means.append(post.mean)
            stds.append(post.std)
        shape = self.images.shape[:2]
        return torch.cat(means).unflatten(0, shape), torch.cat(stds).unflatten(0, shape)

    def _step(self) -> float:
        cfg, g = self.cfg, self.g
        B, (O, V) = cfg.batch, self.images.shape[:2]
        o = torch.randint(0, O, (B,), generator=g)
        i, j = torch.randint(0, V, (B,), generator=g), torch.randint(0, V, (B,), generator=g)
        ci, cj = self.cameras[o, i], self.cameras[o, j]
        camera = relative_camera(cj[:, 0], cj[:, 1], cj[:, 2], ci[:, 0], ci[:, 1], ci[:, 2])
        scaling = float(self.vae.config.scaling_factor)
        z0 = (self.mean[o, j] + self.std[o, j] * torch.randn(self.mean[o, j].shape, generator=g)) * scaling
        given = self.mean[o, i]  # the input view's latents, unscaled (the public convention)
        pixels = clip_preprocess(
            self.images[o, i].float() / 255, cfg.arch.clip_size, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        )
        emb = self.encoder(pixel_values=pixels).image_embeds[:, None]
        states = self.proj(torch.cat([emb, camera[:, None]], -1))
        keep = (torch.rand(B, generator=g) >= cfg.cfg_dropout).float()
        states, given = states * keep.view(-1, 1, 1), given * keep.view(-1, 1, 1, 1)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = self.unet(torch.cat([zt, given], 1), t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred, noise)
        value = optimizer_step(
            self.opt, loss, cfg.lr * lr_factor(self.step, cfg.steps, cfg.warmup), (self._params(), 1.0)
        )
        ema_update([(self.ema[n], getattr(self, n)) for n in self.ema], self.step, cfg.ema_decay)
        return value

    def run(self, stop_after: int | None = None) -> None:
        self.start(stop_after)
        try:
            if self.phase == "unet":
                self.unet.train()
                self.run_phase("zero123", self.cfg.steps, self._step)
                self.phase = "done"
                self.save()
        except Stop:
            return
        self.export()

    def export(self) -> None:
        info = {
            "config": asdict(self.cfg),
            "train_seconds": round(self.elapsed, 1),
            "history": self.history,
            "threads": torch.get_num_threads(),
        }
        save_zero123(
            self.cfg.out,
            vae=self.vae,
            unet=self.ema["unet"],
            image_encoder=self.ema["encoder"],
            projection=self.ema["proj"],
            scheduler=self.scheduler,
            clip_size=self.cfg.arch.clip_size,
            extra={"training.json": json.dumps(info, indent=1)},
        )
        self.log(f"wrote the Zero123 to {self.cfg.out} (trained {self.elapsed / 60:.1f} min)")


def train_zero123(cfg: Zero123TrainConfig, stop_after: int | None = None, log=print) -> None:
    """Train (or resume) the embedded Zero123; ``stop_after`` ends this sitting after that many steps."""
    _Trainer(cfg, log).run(stop_after)
