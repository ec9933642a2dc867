"""Volume rendering of radiance fields: dense stratified sampling in PyTorch, or nerfacc's occupancy grid.

A *field* is any callable ``field(points (..., 3), dirs (..., 3)) -> (sigma (...), rgb (..., 3))`` with
density ``sigma >= 0`` and colour in [0, 1]. Two optional extensions keep shading models out of this file:

- it may return a third item, a dict of per-sample extras ``{name: (..., C)}`` (normals, say); each is
  composited with the ray weights into a per-ray ``(R, C)`` value, and kept per sample too;
- when ``render_rays`` gets ``ray_cond`` (R, C) (a light position per ray, say), the field is called as
  ``field(points, dirs, cond)`` with ``cond`` gathered per sample, since a field only sees samples.

A field may also offer ``field.density(points) -> sigma``; the occupancy grid then queries that instead
of the full field when it skips empty space, and the torch path uses it for a no-grad pass that finds the
samples worth evaluating. A field may offer ``field.coarse``, called like the field, for samples that
barely show (``detail_eps``): a NeRF's finite-difference normals cost six density queries per sample, so
skipping them where the weight is tiny is most of the speed of a shaded render.

Compositing follows the usual quadrature: a sample on the interval [t0, t1] has opacity
``1 - exp(-sigma (t1 - t0))``, transmittance ``exp(-sum of earlier sigma dt)``, and weight T * alpha.
``depth`` is the expected distance along the ray *given that it hits*: sum(w t) / alpha (as nerfacc and
gsplat's "ED" mode); ``rgb`` is composited over ``background`` (premultiplied colour when it is None).

Two backends, chosen here and nowhere else:

- ``"torch"``: S samples per ray at stratified positions in [near, far] (bin centres without jitter).
  It uses nerfacc's dense ``render_weight_from_density`` / ``accumulate_along_rays`` when nerfacc is
  importable (they are plain PyTorch on dense inputs and run on CPU), and its own equivalent code otherwise.
- ``"nerfacc"`` (CUDA): ``nerfacc.OccGridEstimator`` marches rays with a fixed step (the longest ray span
  divided by S), skipping cells the grid marks empty and stopping once transmittance is spent; then
  ``nerfacc.rendering`` composites the packed samples. Build the grid with :func:`make_occupancy_grid` and
  refresh it during training with :func:`update_occupancy_grid`.

``"auto"`` picks nerfacc only when an ``estimator`` is given (skipping empty space is its point), the
rays are on CUDA and nerfacc's kernels load (``renderers.backends``: a failure warns once); otherwise the
dense torch path.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field as dc_field
from typing import Callable

import torch
from torch import Tensor

from . import backends
from .cameras import Cameras

Field = Callable[..., tuple]


@functools.cache
def _nerfacc():
    """nerfacc if it imports, else None: the pure-Python use (the dense helpers), which needs no CUDA.
    Whether its CUDA kernels load is ``renderers.backends``' question."""
    return None if backends.import_error("nerfacc") else importlib.import_module("nerfacc")


def nerfacc_available(device: torch.device | str | None = None) -> bool:
    """Whether nerfacc can serve ``device`` (default: CUDA when torch sees a GPU, else the CPU). On a CUDA
    device that means its CUDA kernels load (a failure warns once and answers False); elsewhere only that
    it imports, for the dense helpers."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if _nerfacc() is None:
        return False
    return device.type != "cuda" or backends.available("nerfacc", device)


@dataclass
class VolumeRender:
    """The result of :func:`render_rays` for R rays.

    Per-sample arrays line up with ``ray_indices`` after flattening: on the dense path ``t_starts``,
    ``t_ends`` and ``weights`` are (R, S) and ``.reshape(-1)`` lines them up; on the nerfacc path they are
    already packed (N,) and ``weights`` is None.
    """

    rgb: Tensor  # (R, 3) composited over the background
    alpha: Tensor  # (R, 1) accumulated opacity
    depth: Tensor  # (R, 1) expected hit distance, sum(w t) / alpha
    weights: Tensor | None  # (R, S) dense path only
    t_starts: Tensor  # (R, S) or (N,) interval starts
    t_ends: Tensor  # (R, S) or (N,) interval ends
    t_samples: Tensor  # like t_starts: where the field was evaluated
    ray_indices: Tensor  # (N,) long: the ray of each flattened sample
    sample_weights: Tensor  # (N,) the compositing weight of each sample
    extras: dict[str, Tensor] = dc_field(default_factory=dict)  # per ray (R, C): sum of w * extra
    sample_extras: dict[str, Tensor] = dc_field(default_factory=dict)  # per sample (N, C)


@dataclass
class VolumeImages:
    """Images from :func:`render_volume`, channels-last like the other renderers."""

    rgb: Tensor  # (B, H, W, 3)
    alpha: Tensor  # (B, H, W, 1)
    depth: Tensor  # (B, H, W, 1)
    extras: dict[str, Tensor] = dc_field(default_factory=dict)  # (B, H, W, C) each


# ----------------------------------------------------------------------------------------------------
# Geometry


def ray_sphere_intersect(
    rays_o: Tensor, rays_d: Tensor, radius: float = 1.0, center: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Where unit-direction rays enter and leave a sphere: ``near`` (R,), ``far`` (R,), ``hit`` (R,) bool.

    ``near`` is clamped to 0 (a camera inside the sphere starts at itself). Rays that miss, or meet the
    sphere only behind the origin, get ``near == far``, an empty span that renders as transparent.
    """
    oc = rays_o if center is None else rays_o - center
    b = (oc * rays_d).sum(-1)
    c = (oc * oc).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp_min(0).sqrt()
    near = (-b - root).clamp_min(0)
    far = torch.maximum(-b + root, near)
    hit = hit & (far > near)
    near = torch.where(hit, near, torch.zeros_like(near))
    far = torch.where(hit, far, near)
    return near, far, hit


# ----------------------------------------------------------------------------------------------------
# Compositing


def _dense_backend(use_nerfacc: bool | None):
    """nerfacc's module for the dense functions, or None for the PyTorch code here."""
    if use_nerfacc is False:
        return None
    mod = _nerfacc()
    if use_nerfacc and mod is None:
        raise RuntimeError("use_nerfacc=True needs nerfacc; install it with `pip install nerfacc`")
    return mod


def composite_dense(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, use_nerfacc: bool | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, transmittance and opacity of dense samples (R, S) from their density.

    ``use_nerfacc`` None uses nerfacc's ``render_weight_from_density`` when importable; False forces the
    pure-PyTorch code below, which computes the same thing.
    """
    nerfacc = _dense_backend(use_nerfacc)
    if nerfacc is not None:
        return nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    tau = sigmas * (t_ends - t_starts)  # optical depth of each interval
    alphas = 1.0 - torch.exp(-tau)
    # Transmittance before each sample: exp of minus the optical depth of all *earlier* intervals.
    before = torch.cat([torch.zeros_like(tau[..., :1]), torch.cumsum(tau[..., :-1], dim=-1)], -1)
    trans = torch.exp(-before)
    return trans * alphas, trans, alphas


def accumulate_dense(weights: Tensor, values: Tensor | None = None, use_nerfacc: bool | None = None) -> Tensor:
    """Sum of ``weights`` (R, S) times ``values`` (R, S, C) along each ray -> (R, C); (R, 1) for None."""
    nerfacc = _dense_backend(use_nerfacc)
    if nerfacc is not None:
        return nerfacc.accumulate_along_rays(weights, values)
    if values is None:
        return weights.sum(-1, keepdim=True)
    return (weights[..., None] * values).sum(-2)


def _split_field_output(out) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        raise TypeError("a field must return (sigma, rgb) or (sigma, rgb, extras: dict); got " + type(out).__name__)
    sigma, rgb = out[0], out[1]
    extras = dict(out[2]) if len(out) == 3 and out[2] is not None else {}
    return sigma, rgb, extras


def _per_ray(x, R: int, name: str, device, dtype) -> Tensor:
    """A scalar, (R,) or (R, 1) near/far as an (R,) tensor."""
    t = torch.as_tensor(x, dtype=dtype).to(
        device, non_blocking=True
    )  # (a Python number: made on the host, copied without a wait)
    if t.ndim == 2 and t.shape[-1] == 1:
        t = t[:, 0]
    if t.ndim == 0:
        t = t.expand(R)
    if t.shape != (R,):
        raise ValueError(f"{name} must be a scalar, (R,) or (R, 1) with R={R}; got shape {tuple(t.shape)}")
    return t


def _background(background, R: int, device, dtype) -> Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=dtype).to(device, non_blocking=True)
    if bg.shape == (3,):
        return bg.expand(R, 3)
    if bg.shape != (R, 3):
        raise ValueError(f"background must be (3,) or (R, 3) with R={R}; got shape {tuple(bg.shape)}")
    return bg


def render_rays(
    field: Field,
    rays_o: Tensor,
    rays_d: Tensor,
    near: Tensor | float,
    far: Tensor | float,
    num_samples: int = 64,
    background: Tensor | None = None,
    stratified: bool = True,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    estimator=None,
    ray_cond: Tensor | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    detail_eps: float = 0.0,
    step_size: float | None = None,
) -> VolumeRender:
    """Render R rays through ``field``.

    rays_o, rays_d: (R, 3); directions must be unit length (depth and step sizes are in their units).
    near, far: scalars, (R,) or (R, 1); see :func:`ray_sphere_intersect` for a bounding sphere.
    num_samples: S samples per ray on the torch path; on the nerfacc path the marching step is
        ``step_size``, by default the longest ray span divided by S.
    background: (3,) or (R, 3) colour behind the volume; None leaves colour premultiplied (black).
    stratified: jitter each sample within its bin (training); bin centres otherwise. ``generator`` drives
        the jitter on the torch path; nerfacc jitters with the global RNG.
    backend: "auto", "torch" or "nerfacc" (see the module docstring).
    estimator: a ``nerfacc.OccGridEstimator`` (from :func:`make_occupancy_grid`) for the nerfacc path.
    ray_cond: optional (R, C) per-ray data handed to the field per sample as a third argument.
    early_stop_eps: skip samples whose transmittance has fallen below this. nerfacc's marching does so
        itself; the torch path does it when the field offers ``.density`` (a no-grad density pass first,
        then the full field only where it matters). 0 evaluates every sample. The torch path always
        skips samples on empty spans (near == far).
    step_size: nerfacc only: the marching step (render_volume passes one for all its chunks, so that
        every part of an image is marched alike).
    alpha_thre: nerfacc only: also skip samples with opacity below this (0 keeps empty space, so density
        can still grow there).
    detail_eps: torch path, fields with ``.density`` and ``.coarse``: samples whose compositing weight in
        the no-grad density pass is below this are evaluated by ``field.coarse`` (same signature and
        outputs, cheaper: no normals, say) instead of the full field. They keep their gradients. 0: off.
    """
    if rays_o.ndim != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
        raise ValueError(f"rays_o and rays_d must both be (R, 3); got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    R = rays_o.shape[0]
    unit = ((rays_d.norm(dim=-1) - 1).abs() <= 1e-3).all() if R > 0 else None
    if unit is not None and rays_d.is_cuda:  # checked on the device: a host check would make every render wait
        torch._assert_async(unit, "rays_d must be unit length; normalize the directions (Cameras.rays() already does)")
    elif unit is not None and not unit:
        raise ValueError("rays_d must be unit length; normalize the directions (Cameras.rays() already does)")
    if ray_cond is not None and (ray_cond.ndim != 2 or ray_cond.shape[0] != R):
        raise ValueError(f"ray_cond must be (R, C) with R={R}; got shape {tuple(ray_cond.shape)}")
    near_t = _per_ray(near, R, "near", rays_o.device, rays_o.dtype)
    far_t = _per_ray(far, R, "far", rays_o.device, rays_o.dtype)
    bg = _background(background, R, rays_o.device, rays_o.dtype)

    backend = _pick_backend(backend, rays_o.device, estimator)
    if backend == "nerfacc":
        if step_size is None:
            step_size = float((far_t - near_t).max().clamp_min(1e-8)) / num_samples
        return _render_nerfacc(
            field,
            rays_o,
            rays_d,
            near_t,
            far_t,
            step_size,
            bg,
            stratified,
            estimator,
            ray_cond,
            early_stop_eps,
            alpha_thre,
        )
    return _render_dense(
        field,
        rays_o,
        rays_d,
        near_t,
        far_t,
        num_samples,
        bg,
        stratified,
        generator,
        ray_cond,
        early_stop_eps,
        detail_eps,
    )


def _pick_backend(backend: str, device: torch.device, estimator) -> str:
    if backend not in ("auto", "torch", "nerfacc"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'nerfacc'; got {backend!r}")
    if backend == "auto":
        return "nerfacc" if estimator is not None and backends.available("nerfacc", device) else "torch"
    if backend == "nerfacc":
        backends.require("nerfacc", device)
    return backend


def _render_dense(
    field, rays_o, rays_d, near, far, S, bg, stratified, generator, ray_cond, early_stop_eps, detail_eps
) -> VolumeRender:
    R, dev, dt = rays_o.shape[0], rays_o.device, rays_o.dtype
    steps = torch.linspace(0, 1, S + 1, device=dev, dtype=dt)
    edges = near[:, None] + (far - near)[:, None] * steps  # (R, S+1)
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    if stratified:
        # Draw on the generator's own device (a run's one seeded generator may live on the CPU).
        gdev = generator.device if generator is not None else dev
        u = torch.rand(R, S, generator=generator, device=gdev, dtype=dt).to(dev, non_blocking=True)
    else:
        u = torch.full((R, S), 0.5, device=dev, dtype=dt)
    t = t_starts + (t_ends - t_starts) * u
    points = rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]  # (R, S, 3)
    dirs = rays_d[:, None, :].expand(R, S, 3)
    cond = None if ray_cond is None else ray_cond[:, None, :].expand(R, S, ray_cond.shape[-1])

    # Which samples need the full field: not those on empty spans (rays that miss the bounds), and,
    # when the field offers a cheap .density, not those hidden behind transmittance < early_stop_eps.
    # Skipped samples keep their (gradient-free) density in the compositing, so alpha and depth stay
    # exact; their colour, worth less than early_stop_eps each, is dropped. With detail_eps and a field
    # that offers .coarse, samples whose weight is below detail_eps are evaluated by .coarse instead.
    keep = (t_ends > t_starts).expand(R, S)
    coarse = torch.zeros_like(keep)
    sigma_base = torch.zeros(R, S, device=dev, dtype=dt)
    use_coarse = detail_eps > 0 and hasattr(field, "coarse")
    if (early_stop_eps > 0 or use_coarse) and hasattr(field, "density") and keep.any():
        with torch.no_grad():
            sigma_base[keep] = field.density(points[keep]).reshape(-1).to(dt)
            w_base, trans, _ = composite_dense(t_starts, t_ends, sigma_base)
            if early_stop_eps > 0:
                keep = keep & (trans > early_stop_eps)
            if use_coarse:
                coarse, keep = keep & (w_base < detail_eps), keep & (w_base >= detail_eps)

    def call(fn, idx):
        out = fn(points[idx], dirs[idx]) if cond is None else fn(points[idx], dirs[idx], cond[idx])
        return _split_field_output(out)

    if bool(keep.all()):
        out = field(points, dirs) if cond is None else field(points, dirs, cond)
        sigma, rgb, sample_extras = _split_field_output(out)
        if sigma.shape == (R, S, 1):
            sigma = sigma[..., 0]
        if sigma.shape != (R, S) or rgb.shape != (R, S, 3):
            raise ValueError(
                f"the field returned sigma {tuple(sigma.shape)} and rgb {tuple(rgb.shape)} for points {tuple(points.shape)}; expected (...,) and (..., 3)"
            )
    else:
        sigma, rgb, sample_extras = sigma_base, None, {}
        for fn, mask in ((field, keep), (getattr(field, "coarse", None), coarse)):
            if not mask.any():
                continue
            idx = mask.nonzero(as_tuple=True)
            sig_k, rgb_k, ext_k = call(fn, idx)
            sigma = sigma.index_put(idx, sig_k.reshape(-1).to(dt))
            rgb = (torch.zeros(R, S, 3, device=dev, dtype=rgb_k.dtype) if rgb is None else rgb).index_put(idx, rgb_k)
            for k, v in ext_k.items():
                sample_extras[k] = sample_extras.get(
                    k, torch.zeros(R, S, v.shape[-1], device=dev, dtype=v.dtype)
                ).index_put(idx, v)
        if rgb is None:
            rgb = torch.zeros(R, S, 3, device=dev, dtype=dt)

    weights, _, _ = composite_dense(t_starts, t_ends, sigma)
    alpha = accumulate_dense(weights)
    color = accumulate_dense(weights, rgb)
    depth = accumulate_dense(weights, t[..., None]) / alpha.clamp_min(torch.finfo(dt).eps)
    if bg is not None:
        color = color + bg * (1.0 - alpha)
    extras = {k: accumulate_dense(weights, v) for k, v in sample_extras.items()}
    ray_indices = torch.arange(R, device=dev).repeat_interleave(S)
    return VolumeRender(
        rgb=color,
        alpha=alpha,
        depth=depth,
        weights=weights,
        t_starts=t_starts,
        t_ends=t_ends,
        t_samples=t,
        ray_indices=ray_indices,
        sample_weights=weights.reshape(-1),
        extras=extras,
        sample_extras={k: v.reshape(R * S, -1) for k, v in sample_extras.items()},
    )


def _render_nerfacc(
    field, rays_o, rays_d, near, far, step, bg, stratified, estimator, ray_cond, early_stop_eps, alpha_thre
) -> VolumeRender:
    if not rays_o.is_cuda:
        raise RuntimeError(
            "backend='nerfacc' needs CUDA tensors (its ray marching is a CUDA kernel); use backend='torch' on CPU"
        )
    nerfacc = _nerfacc()
    if nerfacc is None:
        raise RuntimeError(
            "backend='nerfacc' needs nerfacc; install it with `pip install nerfacc` or use backend='torch'"
        )
    if estimator is None:
        raise ValueError("backend='nerfacc' needs an occupancy grid: pass estimator=make_occupancy_grid(...)")

    def sigma_fn(t0, t1, ridx):
        p = rays_o[ridx] + rays_d[ridx] * ((t0 + t1)[:, None] / 2)
        if hasattr(field, "density"):
            return field.density(p).reshape(-1)
        out = field(p, rays_d[ridx]) if ray_cond is None else field(p, rays_d[ridx], ray_cond[ridx])
        return _split_field_output(out)[0].reshape(-1)

    # The marcher steps from `near` by `step` and keeps a step when its midpoint is before `far` and in an
    # occupied cell, so it samples a lattice per ray, not the dense path's S bins of [near, far].
    ray_indices, t_starts, t_ends = estimator.sampling(
        rays_o,
        rays_d,
        sigma_fn=sigma_fn,
        t_min=near,
        t_max=far,
        render_step_size=step,
        stratified=stratified,
        early_stop_eps=early_stop_eps,
        alpha_thre=alpha_thre,
    )
    return _render_packed(field, rays_o, rays_d, ray_indices.long(), t_starts, t_ends, bg, ray_cond, nerfacc)


def _render_packed(field, rays_o, rays_d, ray_indices, t_starts, t_ends, bg, ray_cond, nerfacc) -> VolumeRender:
    """Composite packed samples (N,) sorted by ray with ``nerfacc.rendering``: the nerfacc path after marching."""
    R = rays_o.shape[0]
    captured: dict[str, Tensor] = {}

    def call(t0, t1, ridx):
        p = rays_o[ridx] + rays_d[ridx] * ((t0 + t1)[:, None] / 2)
        out = field(p, rays_d[ridx]) if ray_cond is None else field(p, rays_d[ridx], ray_cond[ridx])
        sigma, rgb, extras = _split_field_output(out)
        return sigma.reshape(-1), rgb, extras

    def rgb_sigma_fn(t0, t1, ridx):
        sigma, rgb, extras = call(t0, t1, ridx)
        captured.update(extras)
        return rgb, sigma

    if t_starts.numel() == 0:  # nerfacc skips the field for no samples; ask it once so extras keep their keys
        captured.update(call(t_starts, t_ends, ray_indices)[2])
    color, alpha, depth, aux = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=R, rgb_sigma_fn=rgb_sigma_fn)
    weights = aux["weights"]
    if bg is not None:
        color = color + bg * (1.0 - alpha)
    per_sample = {k: _flat_per_sample(v) for k, v in captured.items()}
    extras = {k: nerfacc.accumulate_along_rays(weights, v, ray_indices, R) for k, v in per_sample.items()}
    t_mid = (t_starts + t_ends) / 2
    return VolumeRender(
        rgb=color,
        alpha=alpha,
        depth=depth,
        weights=None,
        t_starts=t_starts,
        t_ends=t_ends,
        t_samples=t_mid,
        ray_indices=ray_indices,
        sample_weights=weights,
        extras=extras,
        sample_extras=per_sample,
    )


def _flat_per_sample(v: Tensor) -> Tensor:
    """(N, ...) as (N, C). Not ``reshape(N, -1)``: that cannot infer C when N is 0, as in a chunk of rays that
    all miss the occupancy grid (the corners of a 512-px image)."""
    return v.reshape(v.shape[0], math.prod(v.shape[1:]))


# ----------------------------------------------------------------------------------------------------
# Occupancy grid (nerfacc)


def make_occupancy_grid(radius: float = 1.0, resolution: int = 128, levels: int = 1, device="cuda"):
    """A ``nerfacc.OccGridEstimator`` over the cube [-radius, radius]^3.

    Every cell starts occupied, so rendering before the first :func:`update_occupancy_grid` skips nothing
    rather than everything (nerfacc's own grid starts empty).
    """
    nerfacc = _nerfacc()
    if nerfacc is None:
        raise RuntimeError("make_occupancy_grid needs nerfacc; install it with `pip install nerfacc`")
    aabb = torch.tensor([-radius, -radius, -radius, radius, radius, radius], dtype=torch.float32)
    est = nerfacc.OccGridEstimator(roi_aabb=aabb, resolution=resolution, levels=levels).to(device)
    est.binaries.fill_(True)
    return est


def update_occupancy_grid(
    estimator,
    density_fn: Callable[[Tensor], Tensor],
    step: int,
    step_size: float,
    every: int = 16,
    occ_thre: float = 0.01,
    ema_decay: float = 0.95,
    warmup_steps: int = 256,
) -> None:
    """Refresh the grid from the current density every ``every`` training steps (nerfacc's EMA rule).

    ``step_size`` should be the marching step ``render_rays`` uses (longest span / num_samples), so that
    a cell's occupancy ``sigma * step_size`` is the opacity one step through it would have.

    A cell is empty when that opacity is below ``min(occ_thre, mean occupancy)``, judged at one random
    point per cell. This drops faint haze by design, and a ray through many such cells loses up to about
    ``threshold / step_size`` times its path length in them as optical depth: a finer step skips denser haze.
    """
    estimator.train()

    def occ_eval_fn(x: Tensor) -> Tensor:
        return density_fn(x).reshape(-1, 1) * step_size

    estimator.update_every_n_steps(
        step=step, occ_eval_fn=occ_eval_fn, occ_thre=occ_thre, ema_decay=ema_decay, warmup_steps=warmup_steps, n=every
    )


# ----------------------------------------------------------------------------------------------------
# Images


def render_volume(
    field: Field,
    cameras: Cameras,
    radius: float = 1.0,
    near: float | None = None,
    far: float | None = None,
    num_samples: int = 64,
    background: Tensor | None = None,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    estimator=None,
    ray_cond: Tensor | None = None,
    per_ray: Callable[[VolumeRender, Tensor, Tensor], dict[str, Tensor]] | None = None,
    chunk: int = 1 << 15,
    early_stop_eps: float = 1e-4,
    detail_eps: float = 0.0,
) -> VolumeImages:
    """Render every pixel of a batch of cameras -> :class:`VolumeImages` (B, H, W, C) tensors.

    Rays are clipped to the sphere of ``radius`` about the origin unless ``near`` and ``far`` (scalars)
    are both given. ``background`` is (3,), (B, 3) or (B, H, W, 3). ``ray_cond`` is (B, C) per camera,
    handed to the field per sample. ``chunk`` bounds the rays rendered at once (and so the memory, even
    under autograd, because each chunk's samples are reduced to per-ray values before the next).
    ``per_ray(render, rays_o, rays_d) -> {name: (R, C)}`` runs on each chunk so callers can reduce
    per-sample data (a regulariser, say) to per-pixel maps; they land in ``extras`` with the field's
    composited extras. ``stratified`` defaults to False here (clean images); training passes True.
    ``early_stop_eps`` and ``detail_eps`` are as in :func:`render_rays`.
    """
    B, H, W = len(cameras), cameras.height, cameras.width
    o, d = cameras.rays()
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    n = o.shape[0]
    if (near is None) != (far is None):
        raise ValueError("give both near and far, or neither (then rays are clipped to the sphere of `radius`)")
    if near is None:
        near_t, far_t, _ = ray_sphere_intersect(o, d, radius)
    else:
        near_t, far_t = torch.full((n,), float(near), device=o.device), torch.full((n,), float(far), device=o.device)
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, dtype=o.dtype).to(o.device, non_blocking=True)
        if bg.shape == (3,):
            bg = bg.expand(n, 3)
        elif bg.shape == (B, 3):
            bg = bg[:, None, :].expand(B, H * W, 3).reshape(n, 3)
        elif bg.shape == (B, H, W, 3):
            bg = bg.reshape(n, 3)
        else:
            raise ValueError(f"background must be (3,), (B, 3) or (B, H, W, 3) = {(B, H, W, 3)}; got {tuple(bg.shape)}")
    cond = None
    if ray_cond is not None:
        if ray_cond.ndim != 2 or ray_cond.shape[0] != B:
            raise ValueError(f"ray_cond must be (B, C) with B={B}; got {tuple(ray_cond.shape)}")
        cond = ray_cond.to(o.device)[:, None, :].expand(B, H * W, ray_cond.shape[-1]).reshape(n, -1)

    # nerfacc marches every chunk with the same step: the longest span in the whole image / S
    step_size = float((far_t - near_t).max().clamp_min(1e-8)) / num_samples if (estimator is not None and n) else None
    parts: dict[str, list[Tensor]] = {}
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        r = render_rays(
            field,
            o[s:e],
            d[s:e],
            near_t[s:e],
            far_t[s:e],
            num_samples,
            background=None if bg is None else bg[s:e],
            stratified=stratified,
            generator=generator,
            backend=backend,
            estimator=estimator,
            ray_cond=None if cond is None else cond[s:e],
            early_stop_eps=early_stop_eps,
            detail_eps=detail_eps,
            step_size=step_size,
        )
        maps = {"rgb": r.rgb, "alpha": r.alpha, "depth": r.depth, **r.extras}
        if per_ray is not None:
            maps.update(per_ray(r, o[s:e], d[s:e]))
        for k, v in maps.items():
            parts.setdefault(k, []).append(v)
    out = {k: torch.cat(v, 0).reshape(B, H, W, -1) for k, v in parts.items()}
    return VolumeImages(out.pop("rgb"), out.pop("alpha"), out.pop("depth"), out)
