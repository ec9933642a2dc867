"""The 3D representations, by the name ``representation:`` takes in a run config (see base.py for the interface)."""

from .base import Render, Representation
from .gaussians import GaussianModel
from .nerf import NeRFModel
from .voxels import VoxelGrid

REPRESENTATIONS: dict[str, type[Representation]] = {"gaussians": GaussianModel, "nerf": NeRFModel, "voxels": VoxelGrid}

__all__ = ["REPRESENTATIONS", "Render", "Representation", "GaussianModel", "NeRFModel", "VoxelGrid"]
