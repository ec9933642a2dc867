"""What the Trainer, the run folder and the mesh stage need of a 3D representation.

A representation is an ``nn.Module`` whose parameters are optimized; the Trainer talks to it only through
this interface, and never asks which one it is. Adding one is one file (a subclass) and one line in
``dream3d.representations.REPRESENTATIONS``, plus its config section in ``dream3d.config.RunConfig``.

One training step, as the Trainer drives it::

    rep.before_step(step, optimizer)                  # learning rates, acceleration structures
    out = rep.render_views(cameras, background, step=step, generator=g)
    loss = guidance(out.rgb) + sum(out.losses.values())
    loss.backward()
    rep.after_backward(out, valid, batch_size)        # statistics from the gradients (densification)
    optimizer.step()
    rep.after_step(step, optimizer, g, valid)         # changes of structure (densify / prune)
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from renderers.cameras import Cameras


@dataclass
class Render:
    rgb: Tensor  # (B, H, W, 3)
    alpha: Tensor  # (B, H, W, 1)
    losses: dict[str, Tensor] = field(default_factory=dict)  # weighted regularizers to add to the training loss
    raw: Any = None  # the representation's own render object (read back by after_backward)


def opacity_loss(alpha: Tensor) -> Tensor:
    """Sparsity of rendered alpha: mean sqrt(alpha^2 + 0.01), a smoothed L1 that discourages filling the scene."""
    return torch.sqrt(alpha**2 + 0.01).mean()


def entropy_loss(alpha: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean binary entropy of rendered alpha: pushes pixels to fully opaque or fully clear."""
    a = alpha.clamp(eps, 1 - eps)
    return -(a * torch.log(a) + (1 - a) * torch.log(1 - a)).mean()


class Representation(nn.Module, metaclass=ABCMeta):
    """The interface; subclasses implement the abstract methods and override the hooks they need."""

    config_key: ClassVar[str]  # its section of the run config: ``getattr(run_cfg, config_key)``
    files: ClassVar[tuple[str, ...]]  # the files :meth:`save` writes into a run folder

    @classmethod
    @abstractmethod
    def create(cls, cfg, generator: torch.Generator, device: torch.device) -> "Representation":
        """A fresh representation for the run config ``cfg`` (its own section is ``getattr(cfg, cls.config_key)``)."""

    @abstractmethod
    def make_optimizer(self) -> torch.optim.Optimizer:
        """A fused optimizer over the parameters (fused: the Trainer skips a non-finite step with ``found_inf``)."""

    @abstractmethod
    def render_views(
        self,
        cameras: Cameras,
        background: Tensor,
        *,
        step: int | None = None,
        generator: torch.Generator | None = None,
        shading: str | None = None,
    ) -> Render:
        """Render the cameras. ``step`` is given for training renders (random shading, regularizers, jittered
        samples); without it the render is deterministic and plainly coloured (validation, reference view)."""

    @abstractmethod
    def save(self, out_dir: str) -> dict[str, str]:
        """Write the trained representation into a run folder; returns {kind: path}."""

    @abstractmethod
    def extract_mesh(self, mesh_cfg) -> tuple[Any, dict]:
        """The mesh stage on this representation: (textured mesh, info)."""

    # -- hooks (default: nothing to do) ------------------------------------------------------------

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_backward(self, render: Render, valid: Tensor, batch_size: int) -> None:
        """After ``loss.backward()``; ``valid`` is a device bool, False on a non-finite (skipped) step."""

    def after_step(
        self, step: int, optimizer: torch.optim.Optimizer, generator: torch.Generator, valid: Tensor
    ) -> None:
        """After ``optimizer.step()``; ``valid`` as in :meth:`after_backward` (read it only where a change of
        structure is due anyway: reading it makes the host wait for the device)."""

    def extra_state(self) -> dict:
        """Checkpoint state beyond the module's state_dict (e.g. an acceleration grid)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def summary(self) -> dict[str, int | float]:
        """Numbers for the progress bar and the run's history (e.g. the Gaussian count)."""
        return {}
