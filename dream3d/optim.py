"""Skipping a non-finite optimizer step on the device, without the host waiting for it.

The fused Adam/AdamW kernels take ``found_inf``: where it is 1 they leave the parameters, the moments and the
step count as they were (what mixed-precision training's GradScaler relies on). The flag itself comes from
:func:`nonfinite`, computed on the device; nothing reads it back inside a step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_fused(optimizer_state: dict) -> dict:
    """An optimizer state_dict saved by a non-fused Adam (checkpoints before fused optimizers) made to load as a
    fused one: load_state_dict takes the saved groups' settings, and only the fused step takes ``found_inf``.
    Changes the dict in place and returns it."""
    for group in optimizer_state["param_groups"]:
        group["fused"], group["foreach"] = True, None
    return optimizer_state


def skip_if_nonfinite(optimizer: torch.optim.Optimizer, loss: Tensor) -> Tensor:
    """Set the optimizer's ``found_inf`` from the loss and its gradients; returns the device bool."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    bad = nonfinite(loss, grads)
    optimizer.found_inf = bad.float()  # the fused step leaves everything as it was where this is 1
    return bad


def nonfinite(loss: Tensor, grads: list[Tensor]) -> Tensor:
    """A device bool: is the loss or any gradient NaN or infinite? (one norm per tensor, no host wait)"""
    total = loss.detach().float()
    if grads:  # the max-norm: NaN or inf exactly where an element is (a 2-norm overflows for finite 1e20)
        total = total + torch.stack(torch._foreach_norm(grads, ord=float("inf"))).float().sum()
    return ~torch.isfinite(total)
