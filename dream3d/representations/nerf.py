"""A NeRF for score distillation (DreamFusion; ProlificDreamer's first stage).

Geometry and colour come from one multi-resolution hash grid (Instant-NGP) written in plain PyTorch,
read by two small MLP heads: density and albedo. At initialisation a density bias "blob" (high at the
centre, falling linearly with radius, negative far out) gives the optimiser a solid object to carve
rather than empty space to fill; without it early SDS gradients have nothing to shade.

Shading follows DreamFusion: ``"albedo"`` (colour as is), ``"lambertian"`` (albedo lit by a random point
light, or a fixed directional one, plus ambient), ``"textureless"`` (the same lighting on a white albedo, which forces geometry to
explain shape), and ``"normal"`` (normals as colours, for viewing). Normals are minus the normalised
density gradient, by central finite differences (cheap, and smooth at hash-grid resolution) or autograd.

The scene lives in the cube [-bound, bound]^3; rays are clipped to the sphere of radius ``bound``.
On CUDA with nerfacc installed, training marches rays through nerfacc's occupancy grid
(:func:`occupancy_grid_for`, :func:`refresh_occupancy_grid`), skipping empty cells; elsewhere every ray
gets ``num_samples`` dense samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from renderers.cameras import Cameras
from renderers.volume import make_occupancy_grid, nerfacc_available, render_volume, update_occupancy_grid

from ..io import atomic_path
from ..mesh.stage import mesh_from_density_fn
from .base import Render, Representation, entropy_loss, opacity_loss

SHADINGS = ("albedo", "lambertian", "textureless", "normal")
# Instant-NGP's spatial hash: XOR of the integer vertex coordinates times these primes, modulo T.
HASH_PRIMES = (1, 2654435761, 805459861)


@dataclass
class NeRFConfig:
    bound: float = 1.0  # scene cube [-bound, bound]^3; rays are clipped to the sphere of this radius
    # hash grid (Instant-NGP): L levels of T = 2**log2_table_size entries with F features each,
    # resolutions growing geometrically from base_resolution to max_resolution cells per side
    levels: int = 16
    log2_table_size: int = 19
    features_per_level: int = 2
    base_resolution: int = 16
    max_resolution: int = 2048
    # MLP heads
    hidden_dim: int = 64
    hidden_layers: int = 1
    density_activation: str = "softplus"  # "softplus" or "exp" (exp with its gradient clamped)
    blob_density: float = 10.0  # density bias at the centre ...
    blob_radius: float = 0.5  # ... falling linearly to 0 at this radius (and negative beyond)
    normal_method: str = "finite_difference"  # or "autograd"
    normal_eps: float = 1e-2  # finite-difference step, in world units
    # Samples whose compositing weight is below this get no normal (shaded as a surface facing the
    # camera) but keep their density and albedo gradients; 0 computes normals at every sample.
    normal_weight_eps: float = 1e-3
    # background: "mlp" (a small MLP of the view direction) or "fixed" (background_color)
    background: str = "mlp"
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # regularizers of training renders (DreamFusion): weights of the mean accumulated opacity (sparsity), of its
    # entropy (opacity towards 0 or 1), and of the orientation loss (normals facing away from the camera)
    lambda_opacity: float = 0.0
    lambda_entropy: float = 0.0
    lambda_orientation: float = 0.0
    # rendering and shading
    num_samples: int = 64
    ambient_ratio: float = 0.1
    light_jitter: float = 1.0  # std of the noise added to the camera position to place the light
    light_distance: tuple[float, float] = (0.8, 1.5)  # light distance, as a multiple of the camera's
    # A fixed directional light (world space, pointing from the object to the light) instead of the random
    # point lights above: for a prior that only ever saw one light, such as the embedded one (the shape
    # world's dream3d.world.render.LIGHT_DIR with ambient 0.45).
    light_direction: tuple[float, float, float] | None = None
    albedo_warmup_steps: int = 0  # albedo-only shading before this step (see pick_shading)
    albedo_prob: float = 0.0  # afterwards: albedo with this probability, ...
    textureless_prob: float = 0.5  # ... textureless with this one, lambertian otherwise
    # learning rates (hash tables like a larger one than the MLPs)
    lr_grid: float = 1e-2
    lr_mlp: float = 1e-3
    lr_background: float = 1e-3
    # nerfacc's occupancy grid (used on CUDA when nerfacc is installed): cells whose opacity over one
    # marching step, sigma * 2 * bound / num_samples, stays below the threshold are skipped.
    occupancy_grid: bool = True
    occupancy_resolution: int = 128
    occupancy_every: int = 16  # refresh every N training steps (an EMA of the density, as nerfacc does)
    occupancy_threshold: float = 0.01
    # Rays rendered at once; 0: 32k on the dense path, 256k with the occupancy grid, whose samples are sparse and
    # whose marcher waits on the device several times a chunk (7 host syncs per chunk: 57 a step at 512 px in 32k
    # chunks), in training renders: under autograd every chunk's samples are kept for the backward anyway. Renders
    # without gradients (validation, the mesh stage) keep 32k, where a chunk bounds the memory.
    ray_chunk: int = 0

    def __post_init__(self):
        if self.density_activation not in ("softplus", "exp"):
            raise ValueError(f"density_activation must be 'softplus' or 'exp'; got {self.density_activation!r}")
        if self.normal_method not in ("finite_difference", "autograd"):
            raise ValueError(f"normal_method must be 'finite_difference' or 'autograd'; got {self.normal_method!r}")
        if self.ray_chunk < 0:
            raise ValueError(f"ray_chunk must be 0 (chosen by the path) or a number of rays; got {self.ray_chunk}")
        if self.background not in ("mlp", "fixed"):
            raise ValueError(f"background must be 'mlp' or 'fixed'; got {self.background!r}")
        if self.light_direction is not None and (len(self.light_direction) != 3 or not any(self.light_direction)):
            raise ValueError(f"light_direction must be a non-zero 3-vector or null; got {self.light_direction!r}")
        if self.max_resolution < self.base_resolution or self.levels < 1:
            raise ValueError("need levels >= 1 and max_resolution >= base_resolution")


# ----------------------------------------------------------------------------------------------------
# Hash grid


class HashGrid(nn.Module):
    """Multi-resolution hash encoding of points in [0, 1]^3 -> (P, levels * features).

    Level l has N_l cells per side (vertices at k / N_l, k = 0..N_l). Where the (N_l + 1)^3 vertices fit
    in the table the level is indexed densely (no collisions); finer levels share a table of T entries
    through the spatial hash. Features are trilinearly interpolated from the 8 vertices of the cell.
    All levels live in one parameter, level l at rows ``offsets[l]:offsets[l+1]``.
    """

    def __init__(
        self,
        levels: int = 16,
        log2_table_size: int = 19,
        features: int = 2,
        base_resolution: int = 16,
        max_resolution: int = 2048,
    ):
        super().__init__()
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (levels - 1)) if levels > 1 else 1.0
        self.resolutions = [int(math.floor(base_resolution * growth**l + 1e-6)) for l in range(levels)]
        self.table_size = 2**log2_table_size
        self.dense = [(n + 1) ** 3 <= self.table_size for n in self.resolutions]
        sizes = [(n + 1) ** 3 if d else self.table_size for n, d in zip(self.resolutions, self.dense)]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.features = features
        self.out_dim = levels * features
        # Instant-NGP's init: tiny uniform values, so the MLPs start from an almost constant input.
        self.table = nn.Parameter(torch.empty(self.offsets[-1], features).uniform_(-1e-4, 1e-4))

    def level_corners(self, x: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Table rows (P, 8) and trilinear weights (P, 8) of the cell around each point at ``level``.

        Corner k = 4 bx + 2 by + bz sits at the cell's low (b = 0) or high (b = 1) side per axis; both
        the index and the weight factor per axis, so they are built from (P, 2) pieces by broadcasting.
        """
        n = self.resolutions[level]
        pos = x * n
        i0 = pos.detach().floor().clamp(0, n - 1)
        frac = pos - i0  # in [0, 1]; differentiable in x
        c = i0.long()[:, :, None] + torch.arange(2, device=x.device)  # (P, 3, 2) low/high vertex per axis
        if self.dense[level]:
            m = n + 1
            idx = c[:, 0, :, None, None] * (m * m) + c[:, 1, None, :, None] * m + c[:, 2, None, None, :]
        else:
            h = torch.stack(
                [c[:, axis] * prime for axis, prime in enumerate(HASH_PRIMES)], 1
            )  # (python ints: no copy to the device)
            idx = (h[:, 0, :, None, None] ^ h[:, 1, None, :, None] ^ h[:, 2, None, None, :]) & (self.table_size - 1)
        w = torch.stack([1 - frac, frac], -1)  # (P, 3, 2)
        w = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
        return idx.reshape(-1, 8) + self.offsets[level], w.reshape(-1, 8)

    def encode(self, x: Tensor, table: Tensor) -> Tensor:
        """Plain autograd implementation (differentiable in x too, for autograd normals)."""
        out = []
        for level in range(len(self.resolutions)):
            idx, w = self.level_corners(x, level)
            out.append((w[..., None] * F.embedding(idx, table)).sum(1))
        return torch.cat(out, -1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"HashGrid expects points (P, 3) in [0, 1]; got shape {tuple(x.shape)}")
        if x.requires_grad and torch.is_grad_enabled():
            return self.encode(x, self.table)
        return _HashEncode.apply(x, self.table, self)


class _HashEncode(torch.autograd.Function):
    """The hash encoding for inputs that need no gradient, saving only the points.

    Autograd would keep every level's (P, 8) corner rows and weights for the backward pass, about
    0.8 KB per point at 16 levels; recomputing them in backward keeps 12 bytes. The table gradient is
    a scatter-add of weight x output-gradient into the rows each point touched.
    """

    @staticmethod
    def forward(ctx, x, table, grid):
        ctx.save_for_backward(x)
        ctx.grid = grid
        ctx.table_shape = table.shape
        return grid.encode(x, table)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        grid, Fdim = ctx.grid, ctx.grid.features
        grad_table = torch.zeros(ctx.table_shape, device=grad_out.device, dtype=grad_out.dtype)
        for level in range(len(grid.resolutions)):
            idx, w = grid.level_corners(x, level)
            g = grad_out[:, level * Fdim : (level + 1) * Fdim]
            grad_table.index_add_(0, idx.reshape(-1), (w[..., None] * g[:, None, :]).reshape(-1, Fdim))
        return None, grad_table, None


class _TruncExp(torch.autograd.Function):
    """exp whose backward clamps its input, so one large density cannot blow up a step."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def _mlp(n_in: int, hidden: int, n_out: int, layers: int) -> nn.Sequential:
    mods, d = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


def _freq_encode(d: Tensor, n_freqs: int) -> Tensor:
    f = 2.0 ** torch.arange(n_freqs, device=d.device, dtype=d.dtype) * math.pi
    x = d[..., None] * f  # (..., 3, n)
    return torch.cat([d, torch.sin(x).flatten(-2), torch.cos(x).flatten(-2)], -1)


# ----------------------------------------------------------------------------------------------------
# Regularisers


def orientation_penalty(normals: Tensor, dirs: Tensor) -> Tensor:
    """DreamFusion's per-sample orientation term max(0, n . d)^2: zero where a normal faces the camera
    (against the ray direction d), positive where it faces away."""
    return (normals * dirs).sum(-1).clamp_min(0) ** 2


def orientation_per_ray(weights: Tensor, normals: Tensor, dirs: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """(n_rays,) sum over each ray's samples of stopgrad(w) * orientation_penalty; packed (N,) inputs.

    The weights are detached as in DreamFusion: the term moves normals, not where density sits."""
    pen = weights.detach() * orientation_penalty(normals, dirs)
    return torch.zeros(n_rays, device=pen.device, dtype=pen.dtype).index_add(0, ray_indices, pen)


# ----------------------------------------------------------------------------------------------------
# Lights and shading choice


def sample_light_positions(cameras: Cameras, cfg: NeRFConfig, generator: torch.Generator | None = None) -> Tensor:
    """(B, 3) point lights near each camera: the camera direction jittered by ``light_jitter``, at
    ``light_distance`` times the camera's distance (DreamFusion samples lights around the camera).
    With ``cfg.light_direction`` set, every light is that direction at 1e4 units: directional to within
    1e-4 rad inside the scene."""
    o = cameras.origins
    B = o.shape[0]
    if cfg.light_direction is not None:
        light = torch.tensor(cfg.light_direction, dtype=o.dtype).to(
            o.device, non_blocking=True
        )  # made on the host, copied without a wait
        return F.normalize(light, dim=0).expand(B, 3) * 1e4
    noise = torch.randn(B, 3, generator=generator).to(o, non_blocking=True)
    direction = F.normalize(F.normalize(o, dim=-1) + cfg.light_jitter * noise, dim=-1)
    lo, hi = cfg.light_distance
    scale = lo + (hi - lo) * torch.rand(B, 1, generator=generator).to(o, non_blocking=True)
    return direction * o.norm(dim=-1, keepdim=True) * scale


def occupancy_grid_for(cfg: NeRFConfig, device) -> object | None:
    """nerfacc's occupancy grid over the scene cube, or None where it cannot run (no CUDA, no nerfacc) or
    ``cfg.occupancy_grid`` is off. Pass it to ``NeRFModel.render(estimator=...)``. nerfacc jitters samples
    and grid updates with the global CUDA RNG, so a resumed CUDA run is close to, not bit-identical with,
    an uninterrupted one."""
    if not cfg.occupancy_grid or torch.device(device).type != "cuda" or not nerfacc_available():
        return None
    return make_occupancy_grid(cfg.bound, cfg.occupancy_resolution, device=device)


def refresh_occupancy_grid(estimator, model: "NeRFModel", step: int) -> None:
    """Re-mark the grid's occupied cells from the model's current density (every ``occupancy_every`` steps)."""
    cfg = model.cfg
    update_occupancy_grid(
        estimator,
        model.density,
        step,
        step_size=2 * cfg.bound / cfg.num_samples,
        every=cfg.occupancy_every,
        occ_thre=cfg.occupancy_threshold,
    )


def pick_shading(step: int, cfg: NeRFConfig, generator: torch.Generator | None = None) -> str:
    """The shading mode for a training step: albedo during warm-up, then random as configured."""
    if step < cfg.albedo_warmup_steps:
        return "albedo"
    u = float(torch.rand((), generator=generator))
    if u < cfg.albedo_prob:
        return "albedo"
    if u < cfg.albedo_prob + cfg.textureless_prob:
        return "textureless"
    return "lambertian"


# ----------------------------------------------------------------------------------------------------
# The model


@dataclass
class NeRFRender:
    rgb: Tensor  # (B, H, W, 3)
    alpha: Tensor  # (B, H, W, 1)
    depth: Tensor  # (B, H, W, 1)
    normal: Tensor | None = None  # (B, H, W, 3) composited normals (sum of w n), when computed
    orientation: Tensor | None = None  # (B, H, W, 1) per-pixel orientation term, when asked for

    def regularizers(self) -> dict[str, Tensor]:
        """Scalar regularisers: "opacity", "entropy", and "orientation" when it was rendered."""
        out = {"opacity": opacity_loss(self.alpha), "entropy": entropy_loss(self.alpha)}
        if self.orientation is not None:
            out["orientation"] = self.orientation.mean()
        return out


class NeRFModel(Representation):
    config_key = "nerf"
    files = ("nerf.safetensors",)

    def __init__(self, cfg: NeRFConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or NeRFConfig()
        self.occupancy = None  # nerfacc's occupancy grid on CUDA (see create); not a submodule: not in the weights
        self.encoding = HashGrid(
            cfg.levels, cfg.log2_table_size, cfg.features_per_level, cfg.base_resolution, cfg.max_resolution
        )
        self.density_net = _mlp(self.encoding.out_dim, cfg.hidden_dim, 1, cfg.hidden_layers)
        self.albedo_net = _mlp(self.encoding.out_dim, cfg.hidden_dim, 3, cfg.hidden_layers)
        self.background_net = _mlp(3 + 3 * 2 * 4, 32, 3, 1) if cfg.background == "mlp" else None
        self.register_buffer(
            "background_color", torch.tensor(cfg.background_color, dtype=torch.float32), persistent=False
        )

    # -- fields -----------------------------------------------------------------------------------

    def _features(self, p: Tensor) -> Tensor:
        x = (p / self.cfg.bound + 1) / 2
        return self.encoding(x.clamp(0, 1))

    def density_bias(self, points: Tensor) -> Tensor:
        """The blob: blob_density * (1 - |p| / blob_radius), added to the raw density."""
        return self.cfg.blob_density * (1 - points.norm(dim=-1) / self.cfg.blob_radius)

    def _activate(self, raw: Tensor) -> Tensor:
        return F.softplus(raw) if self.cfg.density_activation == "softplus" else _TruncExp.apply(raw)

    def raw_density(self, points: Tensor) -> Tensor:
        """Pre-activation density (P,) of flat points (P, 3)."""
        return self.density_net(self._features(points))[:, 0] + self.density_bias(points)

    def density(self, points: Tensor, chunk: int = 1 << 18) -> Tensor:
        """Density sigma >= 0 at points (..., 3) -> (...); evaluated in chunks (for grids of millions)."""
        flat = points.reshape(-1, 3)
        out = [self._activate(self.raw_density(flat[s : s + chunk])) for s in range(0, flat.shape[0], chunk)]
        return (torch.cat(out) if out else flat.new_zeros(0)).reshape(points.shape[:-1])

    def seen_density(self, points: Tensor) -> Tensor:
        """``density`` inside the sphere of radius ``bound`` and 0 outside it, where no ray ever sampled (rays
        are clipped to that sphere), so the field there is untrained. The mesh stage queries the whole cube."""
        return self.density(points) * (points.norm(dim=-1) <= self.cfg.bound)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(sigma (...), albedo (..., 3)) at points (..., 3)."""
        flat = points.reshape(-1, 3)
        h = self._features(flat)
        sigma = self._activate(self.density_net(h)[:, 0] + self.density_bias(flat))
        albedo = torch.sigmoid(self.albedo_net(h))
        return sigma.reshape(points.shape[:-1]), albedo.reshape(*points.shape[:-1], 3)

    def normals(self, points: Tensor) -> Tensor:
        """Unit outward normals (..., 3): minus the normalised gradient of the raw density."""
        flat = points.reshape(-1, 3)
        if self.cfg.normal_method == "finite_difference":
            e = self.cfg.normal_eps
            steps = torch.cat([torch.eye(3), -torch.eye(3)]).to(flat) * e  # (6, 3)
            raw = self.raw_density((flat[:, None, :] + steps).reshape(-1, 3)).reshape(-1, 6)
            grad = (raw[:, :3] - raw[:, 3:]) / (2 * e)
        else:
            keep_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                p = flat.detach().requires_grad_(True)
                raw = self.raw_density(p)
                (grad,) = torch.autograd.grad(raw.sum(), p, create_graph=keep_graph)
            if not keep_graph:
                grad = grad.detach()
        return (-F.normalize(grad, dim=-1, eps=1e-12)).reshape(points.shape)

    def background(self, dirs: Tensor) -> Tensor:
        """Background colour (..., 3) seen along unit view directions (..., 3)."""
        if self.background_net is None:
            return self.background_color.to(dirs).expand(*dirs.shape[:-1], 3)
        return torch.sigmoid(self.background_net(_freq_encode(dirs, 4)))

    def field(
        self, shading: str = "albedo", ambient_ratio: float | None = None, with_normals: bool = False
    ) -> "ShadedField":
        """A field callable for :mod:`renderers.volume` that shades as asked."""
        return ShadedField(
            self, shading, self.cfg.ambient_ratio if ambient_ratio is None else ambient_ratio, with_normals
        )

    # -- rendering --------------------------------------------------------------------------------

    def render(
        self,
        cameras: Cameras,
        shading: str = "albedo",
        light_positions: Tensor | None = None,
        ambient_ratio: float | None = None,
        orientation: bool = False,
        background: Tensor | None = None,
        num_samples: int | None = None,
        stratified: bool = True,
        generator: torch.Generator | None = None,
        backend: str = "auto",
        estimator=None,
        chunk: int | None = None,
    ) -> NeRFRender:
        """Render a batch of cameras.

        light_positions: (B, 3) point lights for "lambertian"/"textureless" (see sample_light_positions).
        orientation: also render the per-pixel orientation term (needs normals, so costs more).
        background: (3,), (B, 3) or (B, H, W, 3) to override the model's own background.
        """
        if shading not in SHADINGS:
            raise ValueError(f"shading must be one of {SHADINGS}; got {shading!r}")
        if shading in ("lambertian", "textureless") and light_positions is None:
            raise ValueError(f"shading={shading!r} needs light_positions (B, 3); see sample_light_positions()")
        cameras = cameras.to(self.encoding.table.device)
        if background is None:
            _, d = cameras.rays()
            background = self.background(d)
        with_normals = shading != "albedo" or orientation
        fld = self.field(shading, ambient_ratio, with_normals)

        def per_ray(r, rays_o, rays_d):
            pen = orientation_per_ray(
                r.sample_weights, r.sample_extras["normal"], rays_d[r.ray_indices], r.ray_indices, rays_o.shape[0]
            )
            return {"orientation": pen[:, None]}

        imgs = render_volume(
            fld,
            cameras,
            radius=self.cfg.bound,
            num_samples=num_samples or self.cfg.num_samples,
            background=background,
            stratified=stratified,
            generator=generator,
            backend=backend,
            estimator=estimator,
            ray_cond=light_positions,
            per_ray=per_ray if orientation else None,
            chunk=chunk
            or self.cfg.ray_chunk
            or (1 << 18 if estimator is not None and torch.is_grad_enabled() else 1 << 15),
            detail_eps=self.cfg.normal_weight_eps if with_normals else 0.0,
        )
        return NeRFRender(imgs.rgb, imgs.alpha, imgs.depth, imgs.extras.get("normal"), imgs.extras.get("orientation"))

    # -- the Trainer's interface (representations/base.py) ---------------------------------------

    @classmethod
    def create(cls, cfg, generator: torch.Generator, device: torch.device) -> "NeRFModel":
        model = cls(cfg.nerf).to(device)
        model.occupancy = occupancy_grid_for(cfg.nerf, device)  # None off CUDA: dense samples
        return model

    def __setattr__(self, name, value):
        if name == "occupancy":  # a plain attribute, though nerfacc's grid is an nn.Module
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameter_groups(), betas=(0.9, 0.99), eps=1e-15, fused=True)

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if self.occupancy is not None:
            refresh_occupancy_grid(self.occupancy, self, step)

    def render_views(
        self,
        cameras: Cameras,
        background: Tensor,
        *,
        step: int | None = None,
        generator: torch.Generator | None = None,
        shading: str | None = None,
    ) -> Render:
        """Training renders (``step`` given) draw their shading and lights from ``generator``, jitter their
        samples and carry the regularizers; others are albedo unless ``shading`` says otherwise. The NeRF
        renders over its own background (``nerf.background``), not ``background``."""
        cfg, training = self.cfg, step is not None
        if shading is None:
            shading = pick_shading(step, cfg, generator) if training else "albedo"
        lights = (
            sample_light_positions(cameras.to(self.encoding.table.device), cfg, generator)
            if shading in ("lambertian", "textureless")
            else None
        )
        out = self.render(
            cameras,
            shading=shading,
            light_positions=lights,
            orientation=cfg.lambda_orientation > 0 and training,
            stratified=training,
            generator=generator,
            estimator=self.occupancy,
        )
        losses = {}
        if training:
            reg = out.regularizers()
            losses["density"] = cfg.lambda_opacity * reg["opacity"] + cfg.lambda_entropy * reg["entropy"]
            if "orientation" in reg:
                losses["orientation"] = cfg.lambda_orientation * reg["orientation"]
        return Render(out.rgb, out.alpha, losses, out)

    def extra_state(self) -> dict:
        return {} if self.occupancy is None else {"occupancy": self.occupancy.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if self.occupancy is not None and "occupancy" in state:
            self.occupancy.load_state_dict(state["occupancy"])

    def save(self, out_dir: str) -> dict[str, str]:
        from safetensors.torch import save_file

        path = os.path.join(out_dir, "nerf.safetensors")
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)}, tmp)
        return {"nerf": path}

    @torch.no_grad()
    def extract_mesh(self, mesh_cfg):
        """The density inside the sphere rays see, on a grid; albedo renders for the colours."""
        device = self.encoding.table.device

        def render_fn(cameras):
            out = self.render(cameras, shading="albedo", background=torch.zeros(3, device=device), stratified=False)
            return out.rgb, out.alpha

        return mesh_from_density_fn(self.seen_density, render_fn, mesh_cfg, device=device)

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups with the config's learning rates (grid, MLP heads, background)."""
        groups = [
            {"params": [self.encoding.table], "lr": self.cfg.lr_grid, "name": "grid"},
            {
                "params": list(self.density_net.parameters()) + list(self.albedo_net.parameters()),
                "lr": self.cfg.lr_mlp,
                "name": "mlp",
            },
        ]
        if self.background_net is not None:
            groups.append(
                {"params": list(self.background_net.parameters()), "lr": self.cfg.lr_background, "name": "background"}
            )
        return groups


class ShadedField:
    """``field(points, dirs[, light]) -> (sigma, rgb, extras)`` for the volume renderer.

    ``light`` is the point-light position per sample (the renderer gathers it from per-ray data).
    ``extras`` holds "normal" when normals were computed, so the renderer composites a normal map.
    """

    def __init__(self, model: NeRFModel, shading: str, ambient_ratio: float, with_normals: bool):
        if shading not in SHADINGS:
            raise ValueError(f"shading must be one of {SHADINGS}; got {shading!r}")
        self.model, self.shading, self.ambient = model, shading, ambient_ratio
        self.with_normals = with_normals or shading != "albedo"

    def density(self, points: Tensor) -> Tensor:
        return self.model.density(points)

    def coarse(self, points: Tensor, dirs: Tensor, light: Tensor | None = None):
        """The field without normals, for samples that barely show (see ``NeRFConfig.normal_weight_eps``)."""
        return self(points, dirs, light, coarse=True)

    def __call__(self, points: Tensor, dirs: Tensor, light: Tensor | None = None, *, coarse: bool = False):
        shape = points.shape[:-1]
        p = points.reshape(-1, 3)
        sigma, albedo = self.model(p)
        extras = {}
        if self.with_normals:
            # coarse: a stand-in normal facing the camera (lit like a front-facing surface, no orientation
            # penalty) instead of six more density queries
            n = -F.normalize(dirs.reshape(-1, 3).to(p), dim=-1) if coarse else self.model.normals(p)
            extras["normal"] = n.reshape(*shape, 3)
        if self.shading == "albedo":
            rgb = albedo
        elif self.shading == "normal":
            rgb = (n + 1) / 2
        else:
            if light is None:
                raise ValueError(f"shading={self.shading!r} needs a light position per sample")
            to_light = F.normalize(light.reshape(-1, 3).to(p) - p, dim=-1)
            lit = self.ambient + (1 - self.ambient) * (n * to_light).sum(-1, keepdim=True).clamp_min(0)
            rgb = (albedo if self.shading == "lambertian" else torch.ones_like(albedo)) * lit
        return sigma.reshape(shape), rgb.reshape(*shape, 3), extras
