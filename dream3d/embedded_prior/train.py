"""Training the embedded prior on renders of the shape world.

Three phases in one resumable run: render the world (cached), train the VAE, then train the U-Net and
the text encoder together on the VAE's latents with classifier-free-guidance dropout. Everything random
comes from one generator whose state is checkpointed, so a resumed run continues bit for bit as an
uninterrupted one would. The result is written as a diffusers StableDiffusionPipeline folder.
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

from ..guidance.prior import VOCABULARY_FILE
from ..io import atomic_write_text
from ..world.render import WorldDatasetConfig, make_dataset
from ..world.vocabulary import prior_vocabulary
from .loop import ResumableTraining, Stop, ema_update, lr_factor, optimizer_step
from .model import PriorArchConfig, build_scheduler, build_text_encoder, build_unet, build_vae, train_tokenizer


@dataclass
class PriorTrainConfig:
    out: str = "assets/prior"
    work_dir: str = "runs/prior"
    seed: int = 0
    arch: PriorArchConfig = field(default_factory=PriorArchConfig)
    data: WorldDatasetConfig = field(default_factory=lambda: WorldDatasetConfig(per_prompt=400))
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 6000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    warmup: int = 200
    cfg_dropout: float = 0.1  # fraction of captions replaced by "" so the U-Net also learns p(x)
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    threads: int = 0  # torch threads; 0 keeps torch's default


def _to_model_images(uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def load_or_make_dataset(cfg: PriorTrainConfig, log=print) -> dict:
    path = os.path.join(cfg.work_dir, "dataset.npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        d["captions"] = [str(c) for c in d["captions"]]
        return d
    t0 = time.time()
    bar = tqdm(total=1, desc="render world", unit="prompt", leave=False)

    def progress(k, n):
        bar.total = n
        bar.update(k - bar.n)

    d = make_dataset(cfg.data, progress)
    bar.close()
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: (np.array(v) if k == "captions" else v) for k, v in d.items()})
    os.replace(tmp, path)
    log(f"rendered {len(d['captions'])} world images in {time.time() - t0:.0f}s")
    return d


class _Trainer(ResumableTraining):
    def __init__(self, cfg: PriorTrainConfig, log=print):
        super().__init__(cfg, log)
        self.data = load_or_make_dataset(cfg, log)
        self.images = torch.from_numpy(self.data["images"])  # uint8 (N, H, W, 3)
        self.tokenizer = train_tokenizer(
            sorted(set(self.data["captions"])) + [""], os.path.join(cfg.work_dir, "tokenizer"), cfg.arch.max_tokens
        )
        tok = self.tokenizer
        self.vae = build_vae(cfg.arch)
        self.unet = build_unet(cfg.arch)
        self.text = build_text_encoder(cfg.arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text).requires_grad_(False)
        self.scheduler = build_scheduler()
        self.opt_vae = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        self.opt_unet = torch.optim.AdamW(
            list(self.unet.parameters()) + list(self.text.parameters()), lr=cfg.unet_lr, weight_decay=0.01
        )
        self.phase, self.scaling = "vae", 1.0
        ids = tok(
            list(self.data["captions"]),
            padding="max_length",
            max_length=cfg.arch.max_tokens,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        self.caption_ids = ids
        self.empty_ids = tok([""], padding="max_length", max_length=cfg.arch.max_tokens, return_tensors="pt").input_ids
        self.resume_if_any()

    # -- checkpoints ---------------------------------------------------------------------------------
    def modules(self) -> dict:
        names = ("vae", "opt_vae", "unet", "text", "ema_unet", "ema_text", "opt_unet")
        return {name: getattr(self, name) for name in names}

    def extra_state(self) -> dict:
        return {"scaling": self.scaling}

    def load_extra_state(self, s: dict) -> None:
        self.scaling = s["scaling"]

    # -- phases --------------------------------------------------------------------------------------
    def _vae_step(self) -> float:
        cfg = self.cfg
        idx = torch.randint(0, len(self.images), (cfg.vae_batch,), generator=self.g)
        x = _to_model_images(self.images[idx].numpy())
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=self.g)
        rec = self.vae.decode(z).sample
        loss = F.mse_loss(rec, x) + cfg.vae_kl_weight * post.kl().mean()
        return optimizer_step(self.opt_vae, loss, cfg.vae_lr * lr_factor(self.step, cfg.vae_steps, cfg.warmup))

    @torch.no_grad()
    def _encode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std of every image (deterministic given the VAE)."""
        means, stds = [], []
        for i in range(0, len(self.images), 256):
            post = self.vae.encode(_to_model_images(self.images[i : i + 256].numpy())).latent_dist
            means.append(post.mean)
            stds.append(post.std)
        return torch.cat(means), torch.cat(stds)

    def _unet_step(self, mean: torch.Tensor, std: torch.Tensor) -> float:
        cfg = self.cfg
        B = cfg.unet_batch
        idx = torch.randint(0, len(mean), (B,), generator=self.g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=self.g)) * self.scaling
        ids = self.caption_ids[idx].clone()
        drop = torch.rand(B, generator=self.g) < cfg.cfg_dropout
        ids[drop] = self.empty_ids[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=self.g)
        noise = torch.randn(z0.shape, generator=self.g)
        zt = self.scheduler.add_noise(z0, noise, t)
        emb = self.text(ids).last_hidden_state
        pred = self.unet(zt, t, emb).sample
        loss = F.mse_loss(pred, noise)
        lr = cfg.unet_lr * lr_factor(self.step, cfg.unet_steps, cfg.warmup)
        value = optimizer_step(
            self.opt_unet, loss, lr, (list(self.unet.parameters()) + list(self.text.parameters()), 1.0)
        )
        ema_update(((self.ema_unet, self.unet), (self.ema_text, self.text)), self.step, cfg.ema_decay)
        return value

    def run(self, stop_after: int | None = None) -> None:
        """Train to the end (or for ``stop_after`` more steps, to test interruption)."""
        self.start(stop_after)
        try:
            if self.phase == "vae":
                self.vae.train()
                self.run_phase("vae", self.cfg.vae_steps, self._vae_step)
                self.vae.eval()
                mean, std = self._encode_all()
                self.scaling = float(
                    1.0
                    / (
                        mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(self.cfg.seed))
                    ).std()
                )
                self.phase, self.step = "unet", 0
                self.save()
            if self.phase == "unet":
                self.vae.eval()
                mean, std = self._encode_all()
                self.run_phase("unet+text", self.cfg.unet_steps, lambda: self._unet_step(mean, std))
                self.phase = "done"
                self.save()
        except Stop:
            return
        self.export()

    def export(self) -> None:
        from diffusers import StableDiffusionPipeline

        self.vae.register_to_config(scaling_factor=self.scaling)
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.ema_text,
            tokenizer=self.tokenizer,
            unet=self.ema_unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        tmp = self.cfg.out.rstrip("/") + ".tmp"
        pipe.save_pretrained(tmp, safe_serialization=True)
        # the prompts it knows travel with its weights (DiffusionPrior.outside_vocabulary warns about others)
        atomic_write_text(os.path.join(tmp, VOCABULARY_FILE), json.dumps(prior_vocabulary(), indent=1))
        atomic_write_text(
            os.path.join(tmp, "training.json"),
            json.dumps(
                {
                    "config": asdict(self.cfg),
                    "train_seconds": round(self.elapsed, 1),
                    "history": self.history,
                    "threads": torch.get_num_threads(),
                },
                indent=1,
            ),
        )
        if os.path.exists(self.cfg.out):
            import shutil

            shutil.rmtree(self.cfg.out)
        os.replace(tmp, self.cfg.out)
        self.log(f"wrote the prior to {self.cfg.out} (trained {self.elapsed / 60:.1f} min)")


def train_prior(cfg: PriorTrainConfig, stop_after: int | None = None, log=print) -> None:
    """Train (or resume) the embedded prior; ``stop_after`` stops early after that many steps."""
    _Trainer(cfg, log).run(stop_after)
