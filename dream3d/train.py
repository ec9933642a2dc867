"""The text-to-3D (and image-to-3D) optimization loop.

    cameras ~ sampler  ->  render(representation, cameras)  ->  guidance loss (+ regularizers, + reference view)
        ->  backward  ->  NaN guard  ->  optimizer step  ->  densify (Gaussians)  ->  checkpoint / validation

Randomness comes from generators seeded from ``cfg.seed`` and saved in every checkpoint, so a resumed run
reaches the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from renderers.cameras import Cameras, orbit_cameras

from .devices import resolve_device
from .guidance.schedules import Scheduled, scheduled
from .io import atomic_save_torch
from .images import save_png
from .optim import as_fused, skip_if_nonfinite
from .profiling import PhaseTimer
from .representations import REPRESENTATIONS


# torch.compile's inductor modes, and dynamo's debugging backends (trace only: a quick check that a model compiles)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "eager", "aot_eager")


@dataclass
class TrainConfig:
    steps: int = 400
    batch_size: int = 4  # cameras rendered per step
    resolution: Scheduled = 64  # render size; [start_step, start, end, end_step] for progressive resolution
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # Gaussians render over this colour
    checkpoint_every: int = 100  # steps; 0 = only at the end
    val_every: int = 100  # steps between validation renders; 0 = off
    nan_policy: str = "skip"  # a non-finite loss or gradient: "skip" the step, or "stop" (last good checkpoint kept)
    max_nan_skips: int = 20  # more skipped steps than this stops the run
    # Steps between reads of the step's numbers (loss, t, skipped) for the progress bar, the history and the
    # NaN policy. Each read makes the host wait for the device, so a step itself never does.
    log_every: int = 10
    device: str = "auto"
    # torch.compile the prior's U-Net and VAE encoder (opt-in: the first steps pay the compile time). A
    # torch.compile mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune", ...; None: eager.
    compile: str | None = None
    # With the prior on CUDA, replay its U-Net calls without gradient as CUDA graphs (guidance/cuda_graphs.py): a
    # GPU step is bound by the host's kernel launches, not the card. Off under any train.compile (its
    # "reduce-overhead" makes graphs of its own; the others are left as torch.compile makes them).
    cuda_graphs: bool = True

    def __post_init__(self):
        if self.nan_policy not in ("skip", "stop"):
            raise ValueError(f"train.nan_policy must be 'skip' or 'stop', got {self.nan_policy!r}")
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(
                f"compile must be null (eager) or one of {', '.join(COMPILE_MODES[1:])}; got {self.compile!r}"
            )


@dataclass
class ReferenceViewConfig:
    """Image-to-3D: the input image is the front view at a fixed camera (DreamGaussian / Magic123)."""

    elevation: float = 0.0
    azimuth: float = 0.0
    radius: float = 2.8
    fov_y: float = 45.0
    resolution: int = 64  # the image is resized to this square size
    # Crop to the object and pad so its larger side fills this fraction of the frame, centred (as DreamGaussian's
    # preprocessing does for photos); None: the image as it is. Off by default: the shape world's renders
    # (objects 0.5-0.72 of the frame, centred in 3D) fit better as they are (README, Image-to-3D).
    object_fraction: float | None = None
    # Scheduled scalars: [0, 0, 1000, 400] ramps the colour loss in over 400 steps, as DreamGaussian's
    # warmup_rgb_loss, so that the prior shapes the object before the input's colours pin it
    lambda_rgb: Scheduled = 1000.0
    lambda_mask: Scheduled = 100.0
    every: int = 1  # fit the reference view on every n-th step

    def __post_init__(self):
        if self.every < 1 or self.radius <= 0 or not 0 < self.fov_y < 180:
            raise ValueError(
                f"need every >= 1, radius > 0 and 0 < fov_y < 180 (degrees); got {self.every}, {self.radius} and "
                f"{self.fov_y}"
            )


class NonFiniteError(FloatingPointError):
    pass


@contextmanager
def _interrupt_between_steps():
    """Yield a function that says whether Ctrl-C was pressed. The first Ctrl-C only sets that flag, so the
    loop can finish the step and checkpoint (stopping mid-step would leave parameters half updated);
    a second one interrupts at once. Where Ctrl-C is ignored or cannot be caught, nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
        signal.SIG_IGN,
        None,
    ):
        yield lambda: False  # no Ctrl-C to catch here (a thread, nohup, or a handler installed outside Python)
        return
    hits = []

    def on_sigint(signum, frame):
        hits.append(signum)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class StepResult:
    loss: float
    guidance_loss: float
    grad_norm: float
    t: float
    skipped: bool = False


class Trainer:
    """Owns the representation, its optimizer, the guidance and the generators; ``run`` trains."""

    def __init__(self, cfg, prompt: str, out_dir: str, guidance=None, reference=None, log=print):
        self.cfg, self.prompt, self.out_dir, self.log = cfg, prompt, out_dir, log
        self.device = resolve_device(cfg.train.device, "train.device")
        self.g_cam = torch.Generator().manual_seed(cfg.seed)
        self.g_model = torch.Generator().manual_seed(cfg.seed + 1)
        torch.manual_seed(cfg.seed)
        self.model = REPRESENTATIONS[cfg.representation].create(cfg, self.g_model, self.device)
        self.opt = self.model.make_optimizer()
        self.timer = PhaseTimer(self.device)  # off: benchmarks/speed.py turns it on for a breakdown
        self._bar = None  # the progress bar while run() runs
        self.guidance = guidance
        if guidance is not None:
            guidance.check_finite = False  # the step's own guard skips non-finite steps without a host wait
            guidance.timer = self.timer
            for prior in guidance.priors():
                if cfg.train.compile:
                    prior.compile(cfg.train.compile)
                elif cfg.train.cuda_graphs and prior.device.type == "cuda":
                    prior.use_cuda_graphs()
        # (rgb (1,H,W,3), mask (1,H,W,1)) for image-to-3D, or None
        self.reference = None if reference is None else tuple(x.to(self.device) for x in reference)
        self.background = torch.tensor(cfg.train.background, device=self.device)
        self._pending: list[tuple[int, dict, Tensor]] = []  # (step, summary, its numbers on the device) not yet read
        self._last_read: StepResult | None = None
        self._last_good: StepResult | None = None
        self.step = 0
        self.checkpoint_step = None  # the step the checkpoint on disk holds
        self.nan_skips = 0
        self.history: list[dict] = []
        self.ckpt_path = os.path.join(out_dir, "checkpoint.pt")
        self.train_seconds = 0.0

    # -- rendering ------------------------------------------------------------------------------
    def render(self, cameras: Cameras, step: int | None = None, shading: str | None = None, generator=None):
        """rgb (B,H,W,3), alpha (B,H,W,1) and the representation's Render (with its regularizers when ``step``
        is given: a training render)."""
        out = self.model.render_views(
            cameras.to(self.device), self.background, step=step, generator=generator, shading=shading
        )
        return out.rgb, out.alpha, out

    def _reference_cameras(self, size: int) -> Cameras:
        r = self.cfg.reference
        return orbit_cameras(r.elevation, r.azimuth, r.radius, r.fov_y, size, size)

    # -- one step -------------------------------------------------------------------------------
    def train_step(self) -> Tensor:
        """One optimizer step. Returns (loss, guidance loss, grad norm, mean t, skipped) as one device tensor,
        without waiting for the device: a non-finite loss or gradient skips the update on the device (the
        fused optimizer's ``found_inf``), and the host learns of it when it reads the numbers (:meth:`_read`)."""
        cfg, step = self.cfg, self.step
        with self.timer("cameras"):
            res = int(round(scheduled(cfg.train.resolution, step)))
            cams = cfg.cameras.sample(cfg.train.batch_size, res, res, generator=self.g_cam)  # on the host
            self.model.before_step(step, self.opt)
        with self.timer("render"):
            rgb, alpha, raw = self.render(cams, step=step, generator=self.g_model)
        loss = torch.zeros((), device=self.device)
        gl = gn = tt = torch.full((), float("nan"), device=self.device)
        if self.guidance is not None:
            gout = self.guidance(rgb, cams, self.prompt, step)
            # (.to: the prior may sit on another device than the representation, guidance.prior.device)
            loss = loss + gout.loss.to(self.device)
            gl, gn, tt = (
                x.detach().float().to(self.device) for x in (gout.loss, gout.grad_norm, gout.t.float().mean())
            )
        for term in raw.losses.values():  # the representation's regularizers
            loss = loss + term
        with self.timer("render"):
            if self.reference is not None and step % cfg.reference.every == 0:
                ref_rgb, ref_mask = self.reference
                rc = self._reference_cameras(ref_rgb.shape[1])
                prgb, palpha, _ = self.render(rc, shading="albedo", generator=self.g_model)
                loss = (
                    loss
                    + scheduled(cfg.reference.lambda_rgb, step) * torch.nn.functional.mse_loss(prgb, ref_rgb)
                    + scheduled(cfg.reference.lambda_mask, step) * torch.nn.functional.mse_loss(palpha, ref_mask)
                )
        with self.timer("backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with self.timer("optimizer"):
            bad = skip_if_nonfinite(self.opt, loss)
            self.model.after_backward(raw, ~bad, cfg.train.batch_size)
            self.opt.step()  # (VSD's student takes its own LoRA step inside the guidance call)
        with self.timer("densify"):
            self.model.after_step(step, self.opt, self.g_model, ~bad)
        return torch.stack([loss.detach().float(), gl.float(), gn.float(), tt, bad.float()])

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict:
        s = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "g_cam": self.g_cam.get_state(),
            "g_model": self.g_model.get_state(),
            "nan_skips": self.nan_skips,
            "train_seconds": self.train_seconds,
            "history": self.history,
        }
        s.update(self.model.extra_state())
        if self.guidance is not None:
            s["g_guidance"] = self.guidance.generator.get_state()
            if hasattr(self.guidance, "state_dict"):
                s["guidance"] = self.guidance.state_dict()
        return s

    def save_checkpoint(self) -> None:
        atomic_save_torch(self.state(), self.ckpt_path)
        self.checkpoint_step = self.step

    def load_checkpoint(self, path: str | None = None) -> None:
        s = torch.load(path or self.ckpt_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(s["model"])
        self.opt = self.model.make_optimizer()  # over the loaded parameters (their count may have changed)
        self.opt.load_state_dict(as_fused(s["optimizer"]))
        self.model.load_extra_state(s)
        self.g_cam.set_state(s["g_cam"])
        self.g_model.set_state(s["g_model"])
        if self.guidance is not None and "g_guidance" in s:
            self.guidance.generator.set_state(s["g_guidance"])
            if "guidance" in s and hasattr(self.guidance, "load_state_dict"):
                self.guidance.load_state_dict(s["guidance"])
        self.step, self.nan_skips = s["step"], s["nan_skips"]
        self.train_seconds, self.history = s["train_seconds"], list(s["history"])

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validation_views(self, size: int = 64) -> np.ndarray:
        """Front, side, back and overhead renders side by side, (size, 4*size, 3) in [0, 1]."""
        c = self.cfg.cameras
        r, fov = sum(c.radius) / 2, sum(c.fov_y) / 2
        cams = orbit_cameras([15.0, 15.0, 15.0, 75.0], [0.0, 90.0, 180.0, 0.0], r, fov, size, size)
        rgb, _, _ = self.render(cams, shading="albedo")
        return torch.cat(list(rgb.clamp(0, 1).cpu()), 1).numpy()

    # -- the loop -------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict:
        """Train to ``train.steps``, or for ``stop_after`` steps of this sitting. Stopping early, or Ctrl-C
        (which ends the current step first), writes a checkpoint to resume from."""
        cfg = self.cfg.train
        done_now = 0
        self._bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="text-to-3D" if self.reference is None else "image-to-3D",
            unit="step",
            dynamic_ncols=True,
        )
        try:
            with _interrupt_between_steps() as interrupted:
                while self.step < cfg.steps:
                    if (stop_after is not None and done_now >= stop_after) or interrupted():
                        self._read()
                        last = self._last_read
                        if (
                            last is not None and not last.skipped and self.checkpoint_step != self.step
                        ):  # where --resume starts
                            self.save_checkpoint()
                        break
                    self._one_step(cfg)
                    done_now += 1
                self._read()
                if interrupted():
                    self._bar.close()
                    self.log(
                        f"interrupted after step {self.step}/{cfg.steps}; the checkpoint {self.ckpt_path} is where --resume starts"
                    )
                    raise KeyboardInterrupt
        finally:
            self._bar.close()
        last_good = self._last_good
        return {
            "steps": self.step,
            "train_seconds": round(self.train_seconds, 2),
            "nan_skips": self.nan_skips,
            "steps_per_second": round(self.step / max(self.train_seconds, 1e-9), 3) if self.step else 0.0,
            "final_loss": None if last_good is None else last_good.loss,
            "final_grad_norm": None if last_good is None else last_good.grad_norm,
        }

    def _one_step(self, cfg) -> None:
        """One optimizer step, then (every ``log_every`` steps) the progress bar and the NaN policy, and the
        validation renders and checkpoints that are due."""
        t0 = time.time()
        self._queue_step()
        self._bar.update(1)
        checkpoint_due = (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self.step == cfg.steps
        if checkpoint_due or self.step % cfg.log_every == 0:
            self._read()
        self.train_seconds += time.time() - t0  # (a read waits for the step's work to finish)
        if cfg.val_every and self.step % cfg.val_every == 0:
            save_png(os.path.join(self.out_dir, "val", f"step_{self.step:05d}.png"), self.validation_views())
        if checkpoint_due and not self._last_read.skipped:  # a bad step never overwrites the last good checkpoint
            self.save_checkpoint()

    def advance(self, n: int) -> None:
        """``n`` training steps without checkpoints, validation renders or progress bar (benchmarks); the numbers
        are read every ``train.log_every`` steps and at the end, as :meth:`run` reads them."""
        for _ in range(n):
            self._queue_step()
            if self.step % self.cfg.train.log_every == 0:
                self._read()
        self._read()

    def _non_finite_advice(self, step: int) -> str:
        """Why training stopped, what is saved, and only advice that a command will accept (a resumed run keeps
        its learning rates and guidance scale; it may change the NaN policy, which no finite step reads)."""
        cfg = self.cfg.train
        head = f"non-finite loss or gradient at step {step}; stopped after {self.nan_skips} bad steps"
        start_again = "start again (--overwrite) with lower learning rates or a lower guidance scale"
        if self.checkpoint_step is None or not os.path.exists(self.ckpt_path):
            return f"{head}, before any checkpoint was written. To go on, {start_again}"
        past = (
            "--resume train.nan_policy=skip, which skips such steps"
            if cfg.nan_policy == "stop"
            else f"--resume train.max_nan_skips={2 * cfg.max_nan_skips + 1}"
        )
        return (
            f"{head}. The last good checkpoint (step {self.checkpoint_step}) is kept in {self.ckpt_path}: "
            f"continue from it with {past}, or {start_again}"
        )

    def _queue_step(self) -> None:
        stats = self.train_step()
        self.step += 1
        self._pending.append((self.step, self.model.summary(), stats))  # the summary is host data: no wait

    def _read(self) -> None:
        """Read the numbers of the steps since the last read (one wait for the device), record them, and apply
        the NaN policy; ``_last_read`` is then the last step's result."""
        if not self._pending:
            return
        cfg = self.cfg.train
        rows = torch.stack([v for _, _, v in self._pending]).tolist()
        meta = [(step, summary) for step, summary, _ in self._pending]
        self._pending.clear()
        for (step, summary), (loss, gl, gn, tt, skipped) in zip(meta, rows):
            r = self._last_read = StepResult(loss, gl, gn, tt, skipped=bool(skipped))
            if step % 10 == 0 or step == cfg.steps:
                self.history.append(
                    {"step": step, "loss": loss, "guidance_loss": gl, "grad_norm": gn, "t": tt} | summary
                )
            if not r.skipped:
                self._last_good = r
                continue
            self.nan_skips += 1
            if cfg.nan_policy == "stop" or self.nan_skips > cfg.max_nan_skips:
                if self._bar is not None:
                    self._bar.close()
                raise NonFiniteError(self._non_finite_advice(step))
            self.log(f"step {step}: non-finite loss or gradient; step skipped ({self.nan_skips}/{cfg.max_nan_skips})")
        if self._bar is not None:
            self._bar.set_postfix({"loss": f"{r.loss:.4g}", "t": f"{r.t:.0f}"} | summary, refresh=False)
