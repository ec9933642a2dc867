"""A dense voxel grid of density and colour, volume-rendered (DVGO / Plenoxels without the extras).

The smallest representation that trains through the Trainer's interface (representations/base.py): two
parameter grids over the cube [-bound, bound]^3, read by trilinear interpolation (``grid_sample``), density
``softplus(raw + blob)`` and colour ``sigmoid``. It starts from a blob, as the NeRF does, and renders through
the same volume renderer. Cheap and easy to read; its resolution limits detail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from renderers.cameras import Cameras
from renderers.volume import render_volume

from ..io import atomic_path
from ..mesh.stage import mesh_from_density_fn
from .base import Render, Representation


@dataclass
class VoxelConfig:
    resolution: int = 48  # cells per side
    bound: float = 1.0  # the grid spans [-bound, bound]^3; rays are clipped to the sphere of this radius
    blob_density: float = 5.0  # density bias at the centre, falling linearly to 0 at blob_radius
    blob_radius: float = 0.5
    num_samples: int = 64  # samples per ray
    lr: float = 0.05
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.resolution < 2:
            raise ValueError(f"voxels.resolution must be at least 2, got {self.resolution}")


class VoxelGrid(Representation):
    config_key = "voxels"
    files = ("voxels.safetensors",)

    def __init__(self, cfg: VoxelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VoxelConfig()
        r = cfg.resolution
        self.density_raw = nn.Parameter(torch.zeros(1, 1, r, r, r))
        self.color_raw = nn.Parameter(torch.zeros(1, 3, r, r, r))  # sigmoid(0) = mid grey

    @classmethod
    def create(cls, cfg, generator: torch.Generator, device: torch.device) -> "VoxelGrid":
        return cls(cfg.voxels).to(device)

    def _sample(self, grid: Tensor, points: Tensor) -> Tensor:
        """Trilinear values (P, C) of a (1, C, R, R, R) grid at points (P, 3); grid_sample's xyz order is WHD."""
        g = (points / self.cfg.bound).clamp(-1, 1).reshape(1, -1, 1, 1, 3)
        return F.grid_sample(grid, g, mode="bilinear", align_corners=True)[0, :, :, 0, 0].T

    def density(self, points: Tensor) -> Tensor:
        """sigma >= 0 at points (..., 3) -> (...); zero outside the sphere rays see."""
        flat = points.reshape(-1, 3)
        blob = self.cfg.blob_density * (1 - flat.norm(dim=-1) / self.cfg.blob_radius)
        sigma = F.softplus(self._sample(self.density_raw, flat)[:, 0] + blob) * (flat.norm(dim=-1) <= self.cfg.bound)
        return sigma.reshape(points.shape[:-1])

    def forward(self, points: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """The field for renderers.volume: (sigma (...), rgb (..., 3))."""
        rgb = torch.sigmoid(self._sample(self.color_raw, points.reshape(-1, 3)))
        return self.density(points), rgb.reshape(*points.shape[:-1], 3)

    def render_views(
        self,
        cameras: Cameras,
        background: Tensor,
        *,
        step: int | None = None,
        generator: torch.Generator | None = None,
        shading: str | None = None,
    ) -> Render:
        bg = torch.tensor(self.cfg.background_color).to(self.density_raw.device, non_blocking=True)
        out = render_volume(
            self,
            cameras.to(self.density_raw.device),
            radius=self.cfg.bound,
            num_samples=self.cfg.num_samples,
            background=bg,
            stratified=step is not None,
            generator=generator,
        )
        return Render(out.rgb, out.alpha, raw=out)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, betas=(0.9, 0.99), eps=1e-15, fused=True)

    def save(self, out_dir: str) -> dict[str, str]:
        from safetensors.torch import save_file

        path = os.path.join(out_dir, "voxels.safetensors")
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, tmp)
        return {"voxels": path}

    @torch.no_grad()
    def extract_mesh(self, mesh_cfg):
        device = self.density_raw.device

        def render_fn(cameras):
            out = render_volume(
                self,
                cameras.to(device),
                radius=self.cfg.bound,
                num_samples=self.cfg.num_samples,
                background=torch.zeros(3, device=device),
            )
            return out.rgb, out.alpha

        return mesh_from_density_fn(self.density, render_fn, mesh_cfg, device=device)
