"""Density grids: sample a Gaussian opacity field or a NeRF density on a regular grid inside a box.

The grid holds ``resolution`` samples per axis at the box's corners and evenly in between
(``torch.linspace(lo, hi, resolution)``), indexed ``[x, y, z]``, so marching cubes on it with
``spacing = (hi - lo) / (resolution - 1)`` returns world coordinates after adding ``lo``.

The Gaussian field is ``sum_i o_i exp(-0.5 d^T Sigma_i^-1 d)`` with ``d = x - mu_i``, each kernel cut off at
``cutoff`` standard deviations (Mahalanobis distance), so the field does not depend on how it is blocked.
It is evaluated block by block (DreamGaussian's local density query): each block of ``block^3`` samples
meets only the Gaussians whose cutoff boxes overlap it, so memory stays bounded at 256^3 and the cost
grows with the number of (Gaussian, block) overlaps rather than with samples x Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from renderers.gaussians import quat_to_rotmat


@dataclass
class Grid:
    """An axis-aligned box sampled at ``resolution`` points per axis (corners included)."""

    lo: Tensor  # (3,)
    hi: Tensor  # (3,)
    resolution: int

    @property
    def spacing(self) -> Tensor:
        """(3,) distance between neighbouring samples along x, y, z."""
        return (self.hi - self.lo) / (self.resolution - 1)

    def axes(self, device=None) -> list[Tensor]:
        return [torch.linspace(float(self.lo[k]), float(self.hi[k]), self.resolution, device=device) for k in range(3)]

    def points(self, device=None) -> Tensor:
        """(R, R, R, 3) sample positions, indexed [x, y, z]."""
        return torch.stack(torch.meshgrid(*self.axes(device), indexing="ij"), -1)


def make_grid(bound: float | Sequence | Tensor, resolution: int) -> Grid:
    """A grid over ``[-bound, bound]^3`` (float) or over an AABB given as ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``."""
    if resolution < 2:
        raise ValueError(f"grid resolution must be at least 2, got {resolution}")
    b = torch.as_tensor(bound, dtype=torch.float32)
    if b.ndim == 0:
        if float(b) <= 0:
            raise ValueError(f"bound must be positive, got {float(b)}")
        lo, hi = -b.expand(3).clone(), b.expand(3).clone()
    elif b.shape == (2, 3):
        lo, hi = b[0].clone(), b[1].clone()
    else:
        raise ValueError(f"bound must be a float or a (2, 3) [min, max] box, got shape {tuple(b.shape)}")
    if not bool((hi > lo).all()):
        raise ValueError(f"the box is empty: min {lo.tolist()} is not below max {hi.tolist()} on every axis")
    return Grid(lo, hi, int(resolution))


def gaussian_precisions(quats: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse covariances ``R diag(1/s^2) R^T`` (N, 3, 3) and the per-axis standard deviations
    ``sqrt(diag(Sigma))`` (N, 3) that bound each Gaussian's extent along x, y and z."""
    R = quat_to_rotmat(quats)
    s = scales.clamp_min(1e-8)
    precision = (R / s[:, None, :] ** 2) @ R.transpose(1, 2)
    axis_std = ((R * s[:, None, :]) ** 2).sum(-1).sqrt()  # sqrt(sum_k R_ik^2 s_k^2) = sqrt(Sigma_ii)
    return precision, axis_std


def gaussian_bounds(means: Tensor, quats: Tensor, scales: Tensor, cutoff: float = 3.0, pad: float = 0.05) -> Tensor:
    """(2, 3) box holding every Gaussian's ``cutoff``-sigma extent, enlarged by ``pad`` of its size."""
    _, std = gaussian_precisions(quats.detach().float(), scales.detach().float())
    lo = (means.detach().float() - cutoff * std).amin(0)
    hi = (means.detach().float() + cutoff * std).amax(0)
    margin = pad * (hi - lo).max()
    return torch.stack([lo - margin, hi + margin]).cpu()


def _quadratic_coefficients(precision: Tensor, centred_means: Tensor) -> Tensor:
    """(N, 10) coefficients c such that ``feat(p) @ c = (p - m)^T A (p - m)`` with
    ``feat(p) = [x^2, y^2, z^2, xy, xz, yz, x, y, z, 1]``: one GEMM then evaluates a block of samples
    against all its Gaussians."""
    A, m = precision, centred_means
    Am = (A @ m[:, :, None])[..., 0]
    return torch.stack(
        [
            A[:, 0, 0],
            A[:, 1, 1],
            A[:, 2, 2],
            2 * A[:, 0, 1],
            2 * A[:, 0, 2],
            2 * A[:, 1, 2],
            -2 * Am[:, 0],
            -2 * Am[:, 1],
            -2 * Am[:, 2],
            (m * Am).sum(-1),
        ],
        -1,
    )


def _features(p: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    return torch.stack([x * x, y * y, z * z, x * y, x * z, y * z, x, y, z, torch.ones_like(x)], -1)


@torch.no_grad()
def gaussian_density_grid(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    grid: Grid,
    block: int = 8,
    cutoff: float = 3.0,
    max_pairs: int = 1 << 22,
) -> Tensor:
    """Opacity field of N Gaussians on ``grid``: (R, R, R) float32 on the means' device.

    ``quats`` are wxyz (normalised here), ``scales`` linear standard deviations (N, 3), ``opacities`` in [0, 1],
    shape (N,) or (N, 1). Each block of ``block^3`` samples is evaluated against the Gaussians whose
    ``cutoff``-sigma boxes overlap it, in chunks whose (samples x Gaussians) size stays below ``max_pairs``.
    """
    N = means.shape[0]
    if quats.shape != (N, 4) or scales.shape != (N, 3):
        raise ValueError(
            f"expected means (N,3), quats (N,4) wxyz, scales (N,3); got {tuple(means.shape)}, {tuple(quats.shape)}, {tuple(scales.shape)}"
        )
    opacities = opacities.reshape(-1)
    if opacities.shape[0] != N:
        raise ValueError(f"opacities hold {opacities.shape[0]} values for {N} Gaussians")
    dev = means.device
    R = grid.resolution
    out = torch.zeros(R, R, R, device=dev)
    if N == 0:
        return out
    means, quats, scales, opacities = (t.detach().float() for t in (means, quats, scales, opacities))
    lo, h = grid.lo.to(dev), grid.spacing.to(dev)
    precision, std = gaussian_precisions(quats, scales)
    ext = cutoff * std
    # Sample index range of each Gaussian's box, then the blocks it touches.
    i_lo = torch.ceil((means - ext - lo) / h).long().clamp_min(0)
    i_hi = torch.floor((means + ext - lo) / h).long().clamp_max(R - 1)
    keep = (i_lo <= i_hi).all(-1) & (opacities > 0)
    idx = keep.nonzero()[:, 0]
    if idx.numel() == 0:
        return out
    b_lo, b_hi = i_lo[idx] // block, i_hi[idx] // block
    nb = (R + block - 1) // block
    span = b_hi - b_lo + 1  # (K, 3) blocks per axis
    count = span.prod(-1)
    # Enumerate every (Gaussian, block) pair without a Python loop over Gaussians.
    owner = torch.repeat_interleave(torch.arange(idx.numel(), device=dev), count)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(owner.numel(), device=dev) - start[owner]
    sx, sy = span[owner, 0], span[owner, 1]
    bx = b_lo[owner, 0] + local % sx
    by = b_lo[owner, 1] + (local // sx) % sy
    bz = b_lo[owner, 2] + local // (sx * sy)
    block_id = (bx * nb + by) * nb + bz
    order = torch.argsort(block_id)
    block_id, gauss = block_id[order], idx[owner[order]]
    ids, counts = torch.unique_consecutive(block_id, return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    axes = grid.axes(dev)
    cut2 = cutoff * cutoff
    for b, off, cnt in zip(ids.tolist(), offsets.tolist(), counts.tolist()):
        bx, by, bz = b // (nb * nb), (b // nb) % nb, b % nb
        sl = [slice(k * block, min(R, (k + 1) * block)) for k in (bx, by, bz)]
        px, py, pz = (axes[k][sl[k]] for k in range(3))
        pts = torch.stack(torch.meshgrid(px, py, pz, indexing="ij"), -1)
        shape = pts.shape[:3]
        # Centre coordinates on the block so the expanded quadratic form keeps float32 precision.
        centre = pts.reshape(-1, 3).mean(0)
        feat = _features(pts.reshape(-1, 3) - centre)
        acc = torch.zeros(feat.shape[0], device=dev)
        g_all = gauss[off : off + cnt]
        chunk = max(1, max_pairs // feat.shape[0])
        for c in range(0, cnt, chunk):
            g = g_all[c : c + chunk]
            coef = _quadratic_coefficients(precision[g], means[g] - centre)
            q = (feat @ coef.T).clamp_min(0)  # (M, K) squared Mahalanobis distances
            w = torch.exp(-0.5 * q) * opacities[g]
            acc += torch.where(q <= cut2, w, torch.zeros_like(w)).sum(-1)
        out[sl[0], sl[1], sl[2]] = acc.reshape(shape)
    return out


@torch.no_grad()
def function_density_grid(
    density_fn: Callable[[Tensor], Tensor], grid: Grid, chunk: int = 1 << 18, device=None
) -> Tensor:
    """``density_fn(points (M, 3)) -> (M,)`` (a NeRF's density, or any field) on ``grid``, ``chunk`` points a call."""
    R = grid.resolution
    axes = grid.axes(device)
    out = torch.empty(R * R * R, device=axes[0].device)
    # Generate the points of each chunk from flat indices, so the full (R^3, 3) array never exists.
    for s in range(0, R**3, chunk):
        flat = torch.arange(s, min(s + chunk, R**3), device=axes[0].device)
        p = torch.stack([axes[0][flat // (R * R)], axes[1][(flat // R) % R], axes[2][flat % R]], -1)
        d = density_fn(p)
        if d.shape not in ((p.shape[0],), (p.shape[0], 1)):
            raise ValueError(
                f"density_fn must map (M, 3) points to (M,) densities; got {tuple(d.shape)} for M={p.shape[0]}"
            )
        out[s : s + p.shape[0]] = d.reshape(-1).float().to(out.device)
    return out.reshape(R, R, R)
