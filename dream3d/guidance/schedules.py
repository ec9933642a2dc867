"""Scheduled scalars and diffusion-timestep annealing for score distillation.

A *scheduled scalar* is either a plain number or ``[start_step, start_value, end_value, end_step]``: the
value is ``start_value`` up to ``start_step``, ``end_value`` from ``end_step`` on, and linear in between.
Anything that changes over a run (t range, CFG scale, clip thresholds, learning rates) is written this way
in the YAML, so a run's whole behaviour stays in its config.

Timesteps are fractions of the model's training steps in the config (``t_min=0.02`` is timestep 20 of
1000) and integer timesteps in the returned tensors. The kinds:

- ``random``: t ~ U[t_min, t_max] (DreamFusion). ``t_min``/``t_max`` may themselves be scheduled scalars,
  which expresses ProlificDreamer's two-stage range, e.g. ``t_max: [5000, 0.98, 0.5, 5001]``.
- ``linear`` / ``sqrt``: deterministic, t falls from t_max to t_min over ``total_steps``, linearly in the
  step (DreamGaussian) or with the square root of it (HiFA). The whole batch shares one t.
- ``dreamtime``: DreamTime's time-prioritized schedule (Huang et al. 2023): t(i) is where the tail mass of a
  weight W(t) over [t, t_max] equals i / total_steps, so t falls monotonically and lingers where W is large.
  W is the paper's prior weight: 1 on [m2, m1], a Gaussian fall-off above m1 (width s1) and below m2 (width
  s2); defaults m1=800, m2=500, s1=300, s2=100 (for 1000 training steps; scaled for other counts).
- ``random_decreasing``: t ~ U[t_min, u(step)] with the upper bound u falling linearly from t_max to t_min
  over ``total_steps``: random like DreamFusion early, annealed like DreamGaussian late.

Randomness only comes from the ``torch.Generator`` passed in, so a run with a seeded generator replays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, Union

import torch
from torch import Tensor

Scheduled = Union[float, int, Sequence[float]]

TIMESTEP_SCHEDULES = ("random", "linear", "sqrt", "dreamtime", "random_decreasing")


def scheduled(value: Scheduled, step: int) -> float:
    """The value of a scheduled scalar at ``step`` (see the module docstring for the forms)."""
    if isinstance(value, bool):
        raise TypeError(
            f"a scheduled scalar must be a number or [start_step, start_value, end_value, end_step], got {value!r}"
        )
    if isinstance(value, (int, float)):
        return float(value)
    try:
        s0, v0, v1, s1 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"a scheduled scalar must be a number or [start_step, start_value, end_value, end_step], got {value!r}"
        ) from None
    if s1 < s0:
        raise ValueError(f"scheduled scalar {list(value)!r}: end_step {s1:g} is before start_step {s0:g}")
    if step <= s0:
        return v0
    if step >= s1:
        return v1
    return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


@dataclass
class TimestepConfig:
    """How the diffusion timestep is drawn at each optimisation step."""

    schedule: str = "random"  # one of TIMESTEP_SCHEDULES
    t_min: Scheduled = 0.02  # fraction of the training timesteps
    t_max: Scheduled = 0.98
    # run length over which the annealed kinds go from t_max to t_min; None: the run's train.steps (a run config
    # fills it in when it is built, dream3d.config.resolve_run_length; a rule used alone needs a number)
    total_steps: int | None = None
    dreamtime_m1: float = 800.0  # DreamTime's prior weight (in timesteps of a 1000-step model)
    dreamtime_m2: float = 500.0
    dreamtime_s1: float = 300.0
    dreamtime_s2: float = 100.0

    def __post_init__(self):
        if self.schedule not in TIMESTEP_SCHEDULES:
            raise ValueError(
                f"unknown timestep schedule {self.schedule!r}; choose one of {', '.join(TIMESTEP_SCHEDULES)}"
            )
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        ends = [v[i] for v in (self.t_min, self.t_max) if isinstance(v, (list, tuple)) and len(v) == 4 for i in (0, 3)]
        for step in (0, *ends, 1 << 40):  # both are linear between these steps: checking them checks every step
            try:
                lo, hi = scheduled(self.t_min, int(step)), scheduled(self.t_max, int(step))
            except (TypeError, ValueError):
                return  # not a schedule: config.validate names the key
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"need 0 <= t_min <= t_max <= 1 (fractions of the timesteps), got {lo} and {hi}")


def timestep_bounds(cfg: TimestepConfig, step: int, num_train_timesteps: int) -> tuple[int, int]:
    """Integer [lo, hi] timestep range at ``step``; both inside [0, num_train_timesteps - 1]."""
    T = num_train_timesteps
    lo_f, hi_f = scheduled(cfg.t_min, step), scheduled(cfg.t_max, step)
    if not (0.0 <= lo_f <= hi_f <= 1.0):
        raise ValueError(
            f"timestep range must satisfy 0 <= t_min <= t_max <= 1; at step {step} it is [{lo_f:g}, {hi_f:g}]"
        )
    lo = min(max(int(round(lo_f * T)), 0), T - 1)
    hi = min(max(int(round(hi_f * T)), lo), T - 1)
    return lo, hi


def sample_timesteps(
    cfg: TimestepConfig,
    step: int,
    batch: int,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(batch,) long timesteps for optimisation step ``step``."""
    lo, hi = timestep_bounds(cfg, step, num_train_timesteps)
    kind = cfg.schedule
    if kind != "random" and cfg.total_steps is None:
        raise ValueError(
            f"the {kind!r} timestep schedule needs total_steps (the run length); a run config sets it to train.steps"
        )
    r = min(max(step / cfg.total_steps, 0.0), 1.0) if kind != "random" else 0.0  # run progress
    if kind == "random":
        t = torch.randint(lo, hi + 1, (batch,), generator=generator)
    elif kind in ("linear", "sqrt"):
        frac = r if kind == "linear" else math.sqrt(r)
        t = torch.full((batch,), int(round(hi - (hi - lo) * frac)), dtype=torch.long)
    elif kind == "random_decreasing":
        upper = int(round(hi - (hi - lo) * r))
        t = torch.randint(lo, upper + 1, (batch,), generator=generator)
    else:  # dreamtime
        ts, tail = _dreamtime_table(
            lo, hi, num_train_timesteps, cfg.dreamtime_m1, cfg.dreamtime_m2, cfg.dreamtime_s1, cfg.dreamtime_s2
        )
        # The t whose tail mass is closest to the run progress (ties go to the larger t).
        i = int(torch.argmin((tail - r).abs()))
        t = torch.full((batch,), int(ts[i]), dtype=torch.long)
    return t.to(device, non_blocking=True) if device is not None else t


@lru_cache(maxsize=16)
def _dreamtime_table(lo: int, hi: int, T: int, m1: float, m2: float, s1: float, s2: float) -> tuple[Tensor, Tensor]:
    """Timesteps hi..lo (descending) and the normalised tail mass sum_{tau >= t} W(tau) of each."""
    scale = T / 1000.0  # the paper's constants are for a 1000-step model
    m1, m2, s1, s2 = m1 * scale, m2 * scale, s1 * scale, s2 * scale
    ts = torch.arange(hi, lo - 1, -1, dtype=torch.float64)
    w = torch.ones_like(ts)
    above, below = ts > m1, ts < m2
    w[above] = torch.exp(-((ts[above] - m1) ** 2) / (2 * s1**2))
    w[below] = torch.exp(-((ts[below] - m2) ** 2) / (2 * s2**2))
    tail = torch.cumsum(w, 0) / w.sum()  # rises from W(hi)/Z at t = hi to 1 at t = lo
    return ts.long(), tail
