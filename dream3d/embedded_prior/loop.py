"""The resumable training loop the embedded priors share (the text prior and Zero123).

A run is a sequence of named phases, each a number of steps of a ``step_fn`` that returns the loss. Everything
random comes from one generator whose state is checkpointed with the modules and optimizers, so a run stopped
anywhere (``stop_after``, a killed process) continues bit for bit as an uninterrupted one would. Progress shows as
a bar (step, loss, it/s, ETA); checkpoints are written atomically every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from ..io import atomic_save_torch


def check_model_out(out: str) -> None:
    """Refuse an output folder whose files the finished training would lose: it replaces ``out`` whole, which is
    right for an earlier model of its own (a diffusers folder: model_index.json) and wrong for anything else."""
    from ..errors import UserError

    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a folder for the model")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "model_index.json")):
        raise UserError(
            f"--out {out} holds files but no model (no model_index.json), and training replaces the folder whole "
            "when it ends: give a new or empty folder, or a model folder to replace"
        )


class Stop(Exception):
    """The step budget of this sitting is spent (``stop_after``): the checkpoint on disk is where to resume."""


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def ema_update(pairs, step: int, decay: float) -> None:
    """Move each EMA module towards its model (``pairs`` of (ema, model)), with the usual warm-up of the decay."""
    d = min(decay, (1 + step) / (10 + step))
    for ema, model in pairs:
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


def optimizer_step(opt, loss: torch.Tensor, lr: float, clip: tuple | None = None) -> float:
    """Set every group's learning rate, back-propagate ``loss`` and step; ``clip`` is (parameters, max norm)."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(*clip)
    opt.step()
    return loss.item()


class ResumableTraining:
    """Phase, step, training seconds, history and the generator, checkpointed with ``self.modules()``.

    A subclass builds its modules and optimizers, then calls :meth:`resume_if_any`; it trains with
    :meth:`run_phase`, and adds what else it must keep with ``extra_state`` / ``load_extra_state``."""

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        check_model_out(cfg.out)  # before hours of training, not at their end
        os.makedirs(cfg.work_dir, exist_ok=True)
        self.ckpt_path = os.path.join(cfg.work_dir, "checkpoint.pt")
        self.g = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # module initialization
        self.phase, self.step = "", 0
        self.history: list[dict] = []
        self.elapsed = 0.0  # training seconds over all sessions
        self.smooth: float | None = None  # the loss, smoothed over steps (kept across sittings: same history)
        self.budget: int | None = None

    def modules(self) -> dict:
        """Everything with a state_dict to checkpoint (models, EMA copies, optimizers), by name."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, s: dict) -> None:
        pass

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> None:
        s = {
            "phase": self.phase,
            "step": self.step,
            "elapsed": self.elapsed,
            "generator": self.g.get_state(),
            "history": json.dumps(self.history),
            "smooth": json.dumps(self.smooth),
            "config": json.dumps(asdict(self.cfg)),
        }
        s.update({name: m.state_dict() for name, m in self.modules().items()})
        s.update(self.extra_state())
        atomic_save_torch(s, self.ckpt_path)

    def resume_if_any(self) -> None:
        if not os.path.exists(self.ckpt_path):
            return
        s = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        if json.loads(s["config"]) != json.loads(json.dumps(asdict(self.cfg))):
            raise RuntimeError(
                f"{self.ckpt_path} was written by a different training config; use another --work-dir or delete it"
            )
        self.phase, self.step, self.elapsed = s["phase"], s["step"], s["elapsed"]
        self.g.set_state(s["generator"])
        for name, m in self.modules().items():
            m.load_state_dict(s[name])
        self.history = json.loads(s["history"])
        self.smooth = json.loads(s.get("smooth", "null"))  # (checkpoints of before it restart the smoothing)
        self.load_extra_state(s)
        self.log(f"resumed {self.ckpt_path}: phase {self.phase}, step {self.step}")

    # -- the loop ------------------------------------------------------------------------------------
    def run_phase(self, name: str, total: int, step_fn) -> None:
        """Steps of ``step_fn`` until ``self.step`` reaches ``total`` (raises :class:`Stop` when the budget is
        spent); a smoothed loss every 50 steps goes to the history, a checkpoint every ``checkpoint_every``."""
        bar = tqdm(total=total, initial=self.step, desc=f"prior {name}", unit="step", dynamic_ncols=True)
        if self.step == 0:
            self.smooth = None  # a new phase
        try:
            while self.step < total:
                if self.budget is not None:
                    if self.budget <= 0:
                        raise Stop
                    self.budget -= 1
                t0 = time.time()
                loss = step_fn()
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"{name} loss became {loss} at step {self.step}; the last good checkpoint is {self.ckpt_path}"
                    )
                self.elapsed += time.time() - t0
                self.step += 1
                self.smooth = loss if self.smooth is None else 0.98 * self.smooth + 0.02 * loss
                bar.update(1)
                bar.set_postfix(loss=f"{self.smooth:.4f}")
                if self.step % 50 == 0 or self.step == total:
                    self.history.append(
                        {"phase": name, "step": self.step, "loss": self.smooth, "elapsed_s": round(self.elapsed, 1)}
                    )
                if self.step % self.cfg.checkpoint_every == 0 or self.step == total:
                    self.save()
        finally:
            bar.close()

    def start(self, stop_after: int | None) -> None:
        """A sitting of at most ``stop_after`` steps (None: to the end), on ``cfg.threads`` torch threads."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.budget = stop_after
