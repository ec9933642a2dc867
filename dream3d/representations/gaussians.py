"""3D Gaussians for score distillation (DreamGaussian's first stage).

Parameters are stored raw and activated on use, as in 3D Gaussian Splatting: log scales (``exp``),
opacity logits (``sigmoid``), unnormalised quaternions in wxyz order (normalised), and colours either as
spherical-harmonic coefficients (``color_mode="sh"``: ``rgb = SH(dir) + 0.5``, the 3DGS convention, so
the PLY opens in every 3DGS viewer) or as sigmoid logits (``color_mode="sigmoid"``: view-independent).

Densification follows 3DGS with the SDS pipelines' threshold. After each backward pass,
:meth:`GaussianModel.add_densification_stats` accumulates the norm of every visible Gaussian's view-space
gradient (the gradient of the loss at its projected centre, ``render.means2d.grad``, converted to NDC units
as 3DGS measures it). Every so often, Gaussians whose average exceeds ``densify_grad_threshold`` are
cloned (if small) or split into two smaller ones (if large); faint or huge ones are pruned. SDS gradients
are far larger and noisier than a photometric loss's, so the threshold is 0.01 rather than 3DGS's 2e-4.

Every change of the Gaussian count rewrites the optimiser's state with the same rows (kept rows keep
their Adam moments, new rows start at zero), so training continues without rebuilding the optimiser.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from renderers.cameras import Cameras
from renderers.gaussians import GaussianRender, quat_to_rotmat, rasterize_gaussians

from ..mesh.stage import gaussian_render_fn, median_neighbor_colors, mesh_from_gaussians
from .base import Render, Representation, entropy_loss, opacity_loss

SH_C0 = 0.28209479177387814  # the degree-0 SH basis value, 1 / (2 sqrt(pi))
PARAM_NAMES = ("means", "features_dc", "features_rest", "opacity_logits", "log_scales", "quats")


@dataclass
class GaussianConfig:
    # initialisation (random): points uniform in a ball
    num_points: int = 5000
    init_radius: float = 0.5
    init_opacity: float = 0.1
    init_scale: float | None = None  # None: sqrt of the mean squared distance to the 3 nearest points
    # colours start at 0.5 + init_color_spread * (uniform - 0.5): 1 is uniform random, 0 is grey (DreamGaussian's
    # SH ~ 0). Far-off starting colours in the sigmoid's flat tails barely move where SDS's colour signal is weak
    init_color_spread: float = 1.0
    # appearance
    sh_degree: int = 0  # highest SH degree (0..3); the active degree starts at 0, see oneup_sh_degree
    color_mode: str = "sh"  # "sh": SH coefficients (3DGS); "sigmoid": view-independent colour logits
    # learning rates (Adam); the position one decays exponentially from init to final over max_steps
    position_lr_init: float = 1e-3
    position_lr_final: float = 2e-5
    position_lr_max_steps: int | None = 500  # null in a run config: train.steps (config.resolve_run_length)
    color_lr: float = 1e-2  # SH DC (or sigmoid colour logits)
    sh_rest_lr: float = 5e-4  # higher SH bands (3DGS: color_lr / 20)
    opacity_lr: float = 5e-2
    scaling_lr: float = 5e-3
    rotation_lr: float = 5e-3
    # densification: when and how
    densify_from_step: int = 100
    densify_until_step: int | None = 3000  # null in a run config: 3/4 of train.steps (DreamGaussian: 300 of 400)
    densify_interval: int = 100
    opacity_reset_interval: int = 700  # 0: never
    densify_grad_threshold: float = 0.01  # mean view-space gradient norm (NDC units) that densifies
    split_size: float = 0.04  # world size (largest scale) above which a Gaussian is split, not cloned
    split_count: int = 2  # a split Gaussian becomes this many, each with scales / (0.8 * count)
    min_opacity: float = 0.01  # prune fainter Gaussians
    max_world_size: float = 0.4  # prune Gaussians whose largest scale exceeds this
    max_screen_size: float | None = None  # prune Gaussians whose screen radius (px) exceeded this; None: off
    max_gaussians: int | None = None  # no densification beyond this many Gaussians; None: no cap
    opacity_reset_value: float = 0.01
    # regularizers on the training renders' alpha (as nerf.*): sparsity clears space no view asks to fill
    lambda_opacity: float = 0.0
    lambda_entropy: float = 0.0

    def __post_init__(self):
        if self.color_mode not in ("sh", "sigmoid"):
            raise ValueError(f"color_mode must be 'sh' or 'sigmoid', got {self.color_mode!r}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3 (the 3DGS PLY layout holds up to 3), got {self.sh_degree}")
        if self.color_mode == "sigmoid" and self.sh_degree != 0:
            raise ValueError("color_mode='sigmoid' is view-independent: set sh_degree=0, or use color_mode='sh'")
        if self.densify_interval < 1 or self.opacity_reset_interval < 0:
            raise ValueError(
                f"densify_interval must be at least 1 and opacity_reset_interval at least 0 (never), got "
                f"{self.densify_interval} and {self.opacity_reset_interval}"
            )
        if self.split_count < 2:
            raise ValueError(f"split_count must be at least 2, got {self.split_count}")
        if not 0 <= self.init_color_spread <= 1:
            raise ValueError(f"init_color_spread must be in [0, 1] (0: grey, 1: uniform), got {self.init_color_spread}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Log-linear interpolation from ``lr_init`` at step 0 to ``lr_final`` at ``max_steps`` (then held)."""
    if max_steps <= 0:
        return lr_final
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr_init) + t * math.log(lr_final))


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    return dc * SH_C0 + 0.5


def nearest_neighbour_scale(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """(N,) sqrt of the mean squared distance of each point to its k nearest others (3DGS's init size)."""
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    out = []
    for i in range(0, n, chunk):
        d2 = torch.cdist(points[i : i + chunk], points).square()
        d2 = d2.topk(k + 1, dim=1, largest=False).values[:, 1:]  # drop the point itself
        out.append(d2.mean(1))
    return torch.cat(out).clamp_min(1e-14).sqrt()


class GaussianModel(Representation):
    """N Gaussians as raw parameters (see the module docstring for the activations).

    Parameters (nn.Parameter, first dim N): ``means`` (N, 3), ``features_dc`` (N, 1, 3) SH DC or colour
    logits, ``features_rest`` (N, (sh_degree+1)^2 - 1, 3), ``opacity_logits`` (N,), ``log_scales`` (N, 3),
    ``quats`` (N, 4) wxyz. Buffers: densification statistics ``grad_accum``, ``grad_count``,
    ``max_radii`` (N,).
    """

    def __init__(
        self, cfg: GaussianConfig | None = None, generator: torch.Generator | None = None, num_points: int | None = None
    ):
        super().__init__()
        self.cfg = cfg = cfg or GaussianConfig()
        self.active_sh_degree = 0
        n = cfg.num_points if num_points is None else num_points
        # uniform in the ball: direction from a normal sample, radius ~ u^(1/3)
        d = F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
        means = d * cfg.init_radius * torch.rand(n, 1, generator=generator) ** (1 / 3)
        rgb = 0.5 + cfg.init_color_spread * (torch.rand(n, 3, generator=generator) - 0.5)
        self._init_from(means, rgb)

    config_key = "gaussians"
    files = ("gaussians.ply",)

    @classmethod
    def create(cls, cfg, generator: torch.Generator, device: torch.device) -> "GaussianModel":
        return cls(cfg.gaussians, generator=generator).to(device)

    @classmethod
    def from_points(cls, points: Tensor, colors: Tensor, cfg: GaussianConfig | None = None) -> "GaussianModel":
        """Gaussians at ``points`` (N, 3) with RGB ``colors`` (N, 3) in [0, 1]."""
        if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
            raise ValueError(
                f"points and colors must both be (N, 3), got {tuple(points.shape)} and {tuple(colors.shape)}"
            )
        model = cls(cfg, num_points=0)
        model._init_from(points.detach().float(), colors.detach().float())
        return model

    def _init_from(self, means: Tensor, rgb: Tensor):
        cfg, n, dev = self.cfg, means.shape[0], means.device
        if cfg.init_scale is not None:
            scale = torch.full((n,), float(cfg.init_scale), device=dev)
        else:
            scale = nearest_neighbour_scale(means)
        k = (cfg.sh_degree + 1) ** 2
        rgb = rgb.to(dev).clamp(1e-4, 1 - 1e-4)
        dc = rgb_to_sh_dc(rgb) if cfg.color_mode == "sh" else torch.logit(rgb)
        self.means = nn.Parameter(means.clone())
        self.features_dc = nn.Parameter(dc[:, None, :].clone())
        self.features_rest = nn.Parameter(torch.zeros(n, k - 1, 3, device=dev))
        self.opacity_logits = nn.Parameter(
            torch.full((n,), math.log(cfg.init_opacity / (1 - cfg.init_opacity)), device=dev)
        )
        self.log_scales = nn.Parameter(torch.log(scale)[:, None].repeat(1, 3))
        self.quats = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).repeat(n, 1))
        for name in ("grad_accum", "grad_count", "max_radii"):
            self.register_buffer(name, torch.zeros(n, device=dev))

    # ---------------------------------------------------------------------------------------------
    # activations and rendering

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def get_scales(self) -> Tensor:
        return torch.exp(self.log_scales)

    def get_opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def get_quats(self) -> Tensor:
        return F.normalize(self.quats, dim=-1)

    def get_sh(self) -> Tensor:
        """(N, (sh_degree+1)^2, 3) all SH coefficients (``color_mode="sh"``)."""
        return torch.cat([self.features_dc, self.features_rest], 1)

    def get_base_colors(self) -> Tensor:
        """(N, 3) view-independent RGB (the DC term), for exports and the mesh stage."""
        dc = self.features_dc[:, 0]
        return sh_dc_to_rgb(dc).clamp_min(0) if self.cfg.color_mode == "sh" else torch.sigmoid(dc)

    def render_inputs(self) -> dict:
        """Keyword arguments for :func:`renderers.gaussians.rasterize_gaussians` (all activated)."""
        if self.cfg.color_mode == "sh":
            k = (self.active_sh_degree + 1) ** 2
            colors, degree = self.get_sh()[:, :k], self.active_sh_degree
        else:
            colors, degree = torch.sigmoid(self.features_dc[:, 0]), None
        return dict(
            means=self.means,
            quats=self.quats,
            scales=self.get_scales(),
            opacities=self.get_opacities(),
            colors=colors,
            sh_degree=degree,
        )

    def render(self, cameras: Cameras, background: Tensor | None = None, backend: str = "auto", **kw) -> GaussianRender:
        """Render every camera; ``means2d`` keeps its gradient for :meth:`add_densification_stats`."""
        out = rasterize_gaussians(**self.render_inputs(), cameras=cameras, background=background, backend=backend, **kw)
        if out.means2d.requires_grad:
            out.means2d.retain_grad()
        return out

    # -- the Trainer's interface (representations/base.py) ---------------------------------------

    def render_views(
        self,
        cameras: Cameras,
        background: Tensor,
        *,
        step: int | None = None,
        generator: torch.Generator | None = None,
        shading: str | None = None,
    ) -> Render:
        out = self.render(cameras, background=background)
        c, losses = self.cfg, {}
        if step is not None and (c.lambda_opacity or c.lambda_entropy):
            losses["alpha"] = c.lambda_opacity * opacity_loss(out.alpha) + c.lambda_entropy * entropy_loss(out.alpha)
        return Render(out.rgb, out.alpha, losses, raw=out)

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self.update_learning_rate(optimizer, step)

    def after_backward(self, render: Render, valid: Tensor, batch_size: int) -> None:
        self.add_densification_stats(render.raw, grad_scale=batch_size, valid=valid)

    def after_step(
        self, step: int, optimizer: torch.optim.Optimizer, generator: torch.Generator, valid: Tensor
    ) -> None:
        c = self.cfg
        due = (
            c.densify_from_step <= step <= c.densify_until_step
            and step > 0
            and (step % c.densify_interval == 0 or (c.opacity_reset_interval and step % c.opacity_reset_interval == 0))
        )
        if due and bool(valid):  # (densifying reads the statistics on the host anyway) not after a skipped step
            self.densify_step(step, optimizer, generator)

    def summary(self) -> dict[str, int]:
        return {"num_gaussians": len(self)}

    def save(self, out_dir: str) -> dict[str, str]:
        path = os.path.join(out_dir, "gaussians.ply")
        self.save_ply(path)
        return {"ply": path}

    @torch.no_grad()
    def extract_mesh(self, mesh_cfg):
        """DreamGaussian's mesh stage: the Gaussians' density on a grid, their renders for the colours."""
        inp = {k: v.detach() if torch.is_tensor(v) else v for k, v in self.render_inputs().items()}
        colors = median_neighbor_colors(inp["means"], inp["colors"], mesh_cfg.gaussian_color_median)
        render_fn = gaussian_render_fn(
            inp["means"], inp["quats"], inp["scales"], inp["opacities"], colors, inp["sh_degree"]
        )
        return mesh_from_gaussians(inp["means"], inp["quats"], inp["scales"], inp["opacities"], render_fn, mesh_cfg)

    def oneup_sh_degree(self) -> None:
        """Use one more SH band, up to ``cfg.sh_degree`` (3DGS raises it every 1000 steps)."""
        self.active_sh_degree = min(self.active_sh_degree + 1, self.cfg.sh_degree)

    # ---------------------------------------------------------------------------------------------
    # optimisation

    def optimizer_param_groups(self) -> list[dict]:
        """Adam parameter groups, one per parameter, each named (``group["name"]``) with its own rate."""
        c = self.cfg
        return [
            dict(params=[self.means], lr=c.position_lr_init, name="means"),
            dict(params=[self.features_dc], lr=c.color_lr, name="features_dc"),
            dict(params=[self.features_rest], lr=c.sh_rest_lr, name="features_rest"),
            dict(params=[self.opacity_logits], lr=c.opacity_lr, name="opacity_logits"),
            dict(params=[self.log_scales], lr=c.scaling_lr, name="log_scales"),
            dict(params=[self.quats], lr=c.rotation_lr, name="quats"),
        ]

    def make_optimizer(self) -> torch.optim.Adam:
        """Adam over :meth:`optimizer_param_groups` with 3DGS's eps. Fused: one kernel per step, and it takes
        ``found_inf`` (the trainer skips a non-finite step on the device, without waiting for it)."""
        return torch.optim.Adam(self.optimizer_param_groups(), lr=0.0, eps=1e-15, fused=True)

    def position_lr(self, step: int) -> float:
        c = self.cfg
        return expon_lr(step, c.position_lr_init, c.position_lr_final, c.position_lr_max_steps)

    def update_learning_rate(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the position group's rate for ``step``; returns it."""
        lr = self.position_lr(step)
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = lr
        return lr

    # ---------------------------------------------------------------------------------------------
    # densification

    @torch.no_grad()
    def add_densification_stats(
        self, render: GaussianRender, grad_scale: float = 1.0, valid: Tensor | None = None
    ) -> None:
        """Accumulate view-space gradient norms after ``loss.backward()``.

        ``render.means2d.grad`` is in pixels; it is converted to NDC units (x W/2, x H/2) as 3DGS measures
        it, so ``densify_grad_threshold`` means what it means in 3DGS-based SDS code. Pass
        ``grad_scale=B`` if the loss averaged over B cameras and you want per-view magnitudes. ``valid``: a
        device bool; where it is False (a skipped, non-finite step) nothing is added.
        """
        g = render.means2d.grad
        if g is None:
            raise RuntimeError(
                "render.means2d has no gradient: render with GaussianModel.render (or call means2d.retain_grad()) and run loss.backward() first"
            )
        H, W = render.rgb.shape[1:3]
        g = torch.stack([g[..., 0] * (W / 2), g[..., 1] * (H / 2)], -1) * grad_scale  # (B, N, 2)
        seen = render.radii > 0  # (B, N)
        if valid is not None:
            seen = seen & valid
            g = torch.where(valid, g, torch.zeros_like(g))  # (NaN * 0 would still be NaN)
        self.grad_accum += (g.norm(dim=-1) * seen).sum(0)
        self.grad_count += seen.sum(0)
        self.max_radii = torch.maximum(self.max_radii, (render.radii * seen).amax(0).to(self.max_radii.dtype))

    def mean_grads(self) -> Tensor:
        """(N,) average accumulated view-space gradient norm (0 where never seen)."""
        return torch.where(
            self.grad_count > 0, self.grad_accum / self.grad_count.clamp_min(1), torch.zeros_like(self.grad_accum)
        )

    def reset_densification_stats(self) -> None:
        for name in ("grad_accum", "grad_count", "max_radii"):
            getattr(self, name).zero_()

    @torch.no_grad()
    def _edit_rows(
        self, keep: Tensor | None, new_rows: dict[str, Tensor] | None, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """Keep rows ``keep`` (bool, or all when None) of every per-Gaussian tensor and append ``new_rows``;
        the optimiser's per-parameter state gets the same edit (zeros for new rows)."""
        n_new = 0 if not new_rows else next(iter(new_rows.values())).shape[0]

        def edit(t: Tensor, new: Tensor | None = None) -> Tensor:
            base = t if keep is None else t[keep]
            if n_new == 0:
                return base.clone()
            return torch.cat([base, new if new is not None else base.new_zeros((n_new,) + tuple(t.shape[1:]))], 0)

        for name in PARAM_NAMES:
            old = getattr(self, name)
            new_param = nn.Parameter(
                edit(old.data, None if not new_rows else new_rows[name].to(old.dtype)), requires_grad=old.requires_grad
            )
            if optimizer is not None:
                _swap_in_optimizer(
                    optimizer,
                    old,
                    new_param,
                    lambda v, o=old: edit(v) if torch.is_tensor(v) and v.shape == o.shape else v,
                )
            setattr(self, name, new_param)
        for name in ("grad_accum", "grad_count", "max_radii"):
            setattr(self, name, edit(getattr(self, name)))

    def clone(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Append a copy of every Gaussian in ``mask`` (N,) bool; returns how many were added."""
        mask = self._check_mask(mask)
        self._edit_rows(None, {name: getattr(self, name).detach()[mask] for name in PARAM_NAMES}, optimizer)
        return int(mask.sum())

    def split(
        self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None
    ) -> int:
        """Replace every Gaussian in ``mask`` by ``cfg.split_count`` Gaussians sampled from it, with scales
        divided by 0.8 x count (1.6 for two); returns how many were split."""
        mask = self._check_mask(mask)
        k = self.cfg.split_count
        with torch.no_grad():
            sel = {name: getattr(self, name).detach()[mask].repeat_interleave(k, 0) for name in PARAM_NAMES}
            std = torch.exp(sel["log_scales"])
            z = torch.randn(std.shape, generator=generator, dtype=std.dtype).to(std.device) * std
            sel["means"] = sel["means"] + (quat_to_rotmat(sel["quats"]) @ z[..., None])[..., 0]
            sel["log_scales"] = sel["log_scales"] - math.log(0.8 * k)
        self._edit_rows(~mask, sel, optimizer)
        return int(mask.sum())

    def prune(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Remove every Gaussian in ``mask``; returns how many were removed."""
        mask = self._check_mask(mask)
        self._edit_rows(~mask, None, optimizer)
        return int(mask.sum())

    def _check_mask(self, mask: Tensor) -> Tensor:
        mask = torch.as_tensor(mask, device=self.means.device)
        if mask.dtype != torch.bool or mask.shape != (len(self),):
            raise ValueError(
                f"mask must be a bool tensor of shape ({len(self)},), got {mask.dtype} {tuple(mask.shape)}"
            )
        return mask

    @torch.no_grad()
    def densify_and_prune(
        self, optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None
    ) -> dict[str, int]:
        """One 3DGS densification round from the accumulated statistics, then reset them.

        Clone the small high-gradient Gaussians, split the large ones, then prune the faint
        (opacity < min_opacity), the huge (largest scale > max_world_size) and, if set, those whose screen
        radius exceeded max_screen_size. Returns the counts.
        """
        c = self.cfg
        grads = self.mean_grads()
        hot = grads >= c.densify_grad_threshold
        big = self.get_scales().amax(-1) > c.split_size
        if c.max_gaussians is not None:
            hot = _within_budget(hot, big, grads, c.max_gaussians - len(self), c.split_count - 1)
        n_clone = self.clone(hot & ~big, optimizer)
        pad = torch.zeros(n_clone, dtype=torch.bool, device=hot.device)  # clones are not split again
        n_split = self.split(torch.cat([hot & big, pad]), optimizer, generator)
        prune = (self.get_opacities() < c.min_opacity) | (self.get_scales().amax(-1) > c.max_world_size)
        if c.max_screen_size is not None:
            prune |= self.max_radii > c.max_screen_size
        n_prune = self.prune(prune, optimizer)
        self.reset_densification_stats()
        return dict(cloned=n_clone, split=n_split, pruned=n_prune, total=len(self))

    @torch.no_grad()
    def reset_opacity(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Cap every opacity at ``opacity_reset_value`` and zero that parameter's optimiser state."""
        v = self.cfg.opacity_reset_value
        new = torch.minimum(self.opacity_logits.data, torch.full_like(self.opacity_logits.data, math.log(v / (1 - v))))
        old = self.opacity_logits
        new_param = nn.Parameter(new)
        if optimizer is not None:
            _swap_in_optimizer(
                optimizer,
                old,
                new_param,
                lambda x: torch.zeros_like(x) if torch.is_tensor(x) and x.shape == old.shape else x,
            )
        self.opacity_logits = new_param

    def densify_step(
        self, step: int, optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None
    ) -> dict[str, int] | None:
        """The schedule: call once per step after :meth:`add_densification_stats` and ``optimizer.step()``.
        Densifies every ``densify_interval`` steps within [densify_from_step, densify_until_step] and resets
        opacities every ``opacity_reset_interval`` steps in that window. Returns the counts when it densified."""
        c = self.cfg
        if not (c.densify_from_step <= step <= c.densify_until_step):
            return None
        info = None
        if step > 0 and step % c.densify_interval == 0:
            info = self.densify_and_prune(optimizer, generator)
        if c.opacity_reset_interval and step > 0 and step % c.opacity_reset_interval == 0:
            self.reset_opacity(optimizer)
        return info

    # ---------------------------------------------------------------------------------------------
    # files

    def ply_property_names(self) -> list[str]:
        n_rest = self.features_rest.shape[1] * 3
        return (
            ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
        )

    @torch.no_grad()
    def save_ply(self, path: str | os.PathLike) -> None:
        """Write the standard 3DGS PLY (binary little-endian float32): position, zero normals, SH DC and
        rest (channel-major, as 3DGS flattens them), opacity logit, log scales, quaternion wxyz. Colour
        logits (``color_mode="sigmoid"``) are written as the equivalent SH DC so viewers show the same
        colour. Written to a temporary file, then renamed."""
        n = len(self)
        dc = self.features_dc.detach().float().cpu()
        if self.cfg.color_mode == "sigmoid":
            dc = rgb_to_sh_dc(torch.sigmoid(dc))
        cols = [
            self.means.detach().float().cpu(),
            torch.zeros(n, 3),
            dc.transpose(1, 2).reshape(n, -1),
            self.features_rest.detach().float().cpu().transpose(1, 2).reshape(n, -1),
            self.opacity_logits.detach().float().cpu()[:, None],
            self.log_scales.detach().float().cpu(),
            self.quats.detach().float().cpu(),
        ]
        data = torch.cat(cols, 1).numpy().astype("<f4")
        names = self.ply_property_names()
        assert data.shape[1] == len(names)
        header = (
            "ply\nformat binary_little_endian 1.0\n"
            f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in names) + "end_header\n"
        )
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(np.ascontiguousarray(data).tobytes())
        os.replace(tmp, path)

    @classmethod
    def load_ply(cls, path: str | os.PathLike, cfg: GaussianConfig | None = None) -> "GaussianModel":
        """Read a 3DGS PLY (binary little-endian, float properties). Its SH degree comes from the number
        of ``f_rest_*`` properties; ``cfg.sh_degree`` must be at least that (default: the file's). All SH
        bands are active after loading."""
        names, n, data = _read_ply(path)
        n_rest = sum(1 for p in names if p.startswith("f_rest_"))
        degree = round(math.sqrt(n_rest / 3 + 1)) - 1
        if 3 * ((degree + 1) ** 2 - 1) != n_rest:
            raise ValueError(f"{path}: {n_rest} f_rest properties is not 3 x ((d+1)^2 - 1) for any SH degree d")
        if cfg is None:
            cfg = GaussianConfig(sh_degree=degree)
        elif cfg.sh_degree < degree:
            raise ValueError(
                f"{path} holds SH degree {degree} but cfg.sh_degree is {cfg.sh_degree}; raise cfg.sh_degree"
            )
        col = {p: i for i, p in enumerate(names)}

        def take(*props):
            missing = [p for p in props if p not in col]
            if missing:
                raise ValueError(f"{path} is not a 3DGS PLY: missing properties {missing}")
            return torch.from_numpy(np.stack([data[:, col[p]] for p in props], 1).astype(np.float32))

        model = cls(cfg, num_points=0)
        k = (cfg.sh_degree + 1) ** 2
        dc = take("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :]
        if cfg.color_mode == "sigmoid":
            dc = torch.logit(sh_dc_to_rgb(dc).clamp(1e-6, 1 - 1e-6))
        rest = torch.zeros(n, k - 1, 3)
        if n_rest:
            rest[:, : (degree + 1) ** 2 - 1] = (
                take(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, -1).transpose(1, 2)
            )
        tensors = dict(
            means=take("x", "y", "z"),
            features_dc=dc,
            features_rest=rest,
            opacity_logits=take("opacity")[:, 0],
            log_scales=take("scale_0", "scale_1", "scale_2"),
            quats=take("rot_0", "rot_1", "rot_2", "rot_3"),
        )
        model._set_tensors(tensors)
        model.active_sh_degree = cfg.sh_degree
        return model

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Replace every parameter (and zero the statistics) with tensors of a possibly new count."""
        n = tensors["means"].shape[0]
        dev = self.means.device
        for name in PARAM_NAMES:
            setattr(self, name, nn.Parameter(tensors[name].to(dev, torch.float32).clone()))
        for name in ("grad_accum", "grad_count", "max_radii"):
            setattr(self, name, torch.zeros(n, device=dev))

    # checkpoints: the state dict holds every parameter and buffer plus the active SH degree; loading
    # resizes this model to the saved count first (make the optimiser afterwards, then load its state).
    def get_extra_state(self):
        return {"active_sh_degree": self.active_sh_degree, "num_gaussians": len(self)}

    def set_extra_state(self, state):
        self.active_sh_degree = int(state["active_sh_degree"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "means" in state_dict:
            n = state_dict["means"].shape[0]
            shapes = {name: state_dict[name].shape for name in PARAM_NAMES if name in state_dict}
            self._set_tensors(
                {
                    name: torch.zeros(shapes.get(name, (n,) + tuple(getattr(self, name).shape[1:])))
                    for name in PARAM_NAMES
                }
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _swap_in_optimizer(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, edit_state) -> None:
    """Put ``new`` where ``old`` is in the optimiser, with its state passed through ``edit_state``."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state:
                    optimizer.state[new] = {k: edit_state(v) for k, v in state.items()}
                return


def _read_ply(path) -> tuple[list[str], int, np.ndarray]:
    """(property names, vertex count, (n, P) float array) of a binary little-endian PLY whose vertex
    properties are all float (as 3DGS writes them)."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path} is not a PLY file")
        names, n, fmt, in_vertex = [], None, None, False
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    n = int(words[2])
                elif n is None:
                    raise ValueError(f"{path}: the vertex element must come first in the PLY")
            elif words[0] == "property" and in_vertex:
                if words[1] != "float" and words[1] != "float32":
                    raise ValueError(
                        f"{path}: vertex property {words[-1]} is {words[1]}; only float properties (3DGS layout) are supported"
                    )
                names.append(words[-1])
            elif words[0] == "end_header":
                break
        if fmt != "binary_little_endian":
            raise ValueError(f"{path}: PLY format {fmt!r} is not supported; save it as binary_little_endian")
        if n is None:
            raise ValueError(f"{path}: PLY has no vertex element")
        raw = fh.read(n * len(names) * 4)
    if len(raw) != n * len(names) * 4:
        raise ValueError(f"{path}: file is truncated ({len(raw)} of {n * len(names) * 4} data bytes)")
    return names, n, np.frombuffer(raw, dtype="<f4").reshape(n, len(names))


def _within_budget(hot: Tensor, big: Tensor, grads: Tensor, budget: int, split_extra: int) -> Tensor:
    """The subset of ``hot`` with the largest gradients whose densification adds at most ``budget`` Gaussians
    (a clone adds one, a split ``split_extra``), so ``max_gaussians`` is a cap rather than a starting line."""
    if budget <= 0:
        return torch.zeros_like(hot)
    cost = torch.where(big, split_extra, 1)
    order = torch.argsort(torch.where(hot, grads, torch.full_like(grads, -1.0)), descending=True)
    fits = (torch.cumsum(cost[order] * hot[order], 0) <= budget) & hot[order]
    out = torch.zeros_like(hot)
    out[order[fits]] = True
    return out
