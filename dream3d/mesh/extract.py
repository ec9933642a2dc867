"""Density grid to a clean triangle mesh: threshold choice, marching cubes, cleanup, decimation, smoothing.

The threshold and the hidden-interior fill run on the field's device (the run's: the density grid is made
there). Marching cubes runs with scikit-image on the CPU (the grid is moved there), and the cleanup with
numpy, scipy and fast-simplification; there is no GPU path for those. At 256^3 that costs a few seconds,
small next to the rest of the stage.

The order matters: floaters go first (they would waste the face budget), then near-duplicate vertices, a
light Taubin smoothing on the dense mesh (it removes the voxel staircase without shrinking the shape the
way plain Laplacian smoothing does), and the decimation to ``target_faces`` comes last, so the UV unwrap that
follows (xatlas, seconds per 10k faces) never sees the raw marching-cubes mesh.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from renderers.cameras import Cameras, orbit_cameras, pixel_bins, project_points

from .density import Grid


@dataclass
class ExtractConfig:
    # Iso level. None: ``threshold_ratio`` x the density-weighted ``density_quantile`` of the field (see
    # choose_threshold). Set an absolute level for fields whose scale is known, e.g. a NeRF's sigma.
    threshold: float | None = None
    threshold_ratio: float = 0.4
    density_quantile: float = 0.5
    # Gaussian blur of the field before the threshold, in grid samples (0: none). Gaussians that SDS leaves on the
    # surface make bumps of their own size; a blur wider than them leaves the surface they form together.
    blur_sigma: float = 0.0
    # Cleanup.
    min_component_diameter: float = 0.1  # drop pieces smaller than this x the largest piece's diameter
    min_component_faces: int = 16
    merge_distance: float = 0.02  # in grid spacings
    smooth_iterations: int = 5  # Taubin (lambda, mu) pairs; 0 turns smoothing off
    smooth_lambda: float = 0.5
    smooth_mu: float = -0.53
    target_faces: int = 20000  # decimate above this face count (0: never)
    fill_hidden: bool = True  # what (almost) no camera around the object can see is inside (see fill_hidden)
    fill_views: int = 26
    fill_max_visible: int = 2  # a sample seen from at most this many of the views still counts as hidden


def blur_field(field: Tensor, sigma: float) -> Tensor:
    """``field`` (R, R, R) convolved with a Gaussian of ``sigma`` samples (separable, truncated at 3 sigma, zero
    outside the grid)."""
    if sigma <= 0:
        return field
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=field.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = field.float()[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = torch.nn.functional.conv3d(torch.nn.functional.pad(out, pad), k.view(shape))
    return out[0, 0].to(field.dtype)


def choose_threshold(field: Tensor, cfg: ExtractConfig) -> float:
    """The iso level for ``field``: ``cfg.threshold`` if given, else ``threshold_ratio`` x the density-weighted
    ``density_quantile`` of the samples.

    The density-weighted median is the value below which half of the field's mass lies: the typical density
    *inside* the object, which neither the faint fringe around it (many samples, little mass) nor a few
    samples where Gaussians pile up can move much. A solid blurred by a kernel crosses half its interior
    density at the true boundary; 0.4 rather than 0.5 keeps the noise of randomly placed Gaussians from
    punching holes in the interior, and moves a sharp surface outwards by only about a quarter of the
    kernel width (measured: IoU 0.94 against 0.77 for half of the 99th percentile on the benchmark object)."""
    if cfg.threshold is not None:
        return float(cfg.threshold)
    f = field.detach().reshape(-1).float()
    fmax = float(f.max())
    if not fmax > 0:
        raise ValueError(
            f"the density field is empty: its values lie in [{float(f.min()):.4g}, {fmax:.4g}] inside the grid. "
            "Check that the grid bound covers the object and that the representation has non-zero opacity/density."
        )
    v = f[f > 0].sort().values  # on the field's device: R^3 values
    mass = v.double().cumsum(0)
    k = int(torch.searchsorted(mass, cfg.density_quantile * mass[-1:]).clamp_max(v.numel() - 1))
    return cfg.threshold_ratio * float(v[k])


def marching_cubes(field: Tensor, grid: Grid, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Isosurface of ``field`` (R, R, R) at ``level``: vertices (V, 3) float64 in world units, faces (F, 3) int64,
    oriented outward (towards lower density). The grid is padded with a layer of empty samples so an object
    the box cuts through still gives a closed surface (with a warning, as the cut is rarely intended)."""
    from skimage.measure import marching_cubes as sk_mc

    f = field.detach().float().cpu().numpy()
    lo_v, hi_v = float(f.min()), float(f.max())
    if not hi_v > level:
        raise ValueError(
            f"no sample of the density field exceeds the threshold {level:.4g} (values lie in [{lo_v:.4g}, {hi_v:.4g}]): "
            "the mesh would be empty. Lower the threshold (or set threshold=None to choose it from the field) "
            "or check that the grid bound covers the object."
        )
    if not lo_v < level:
        raise ValueError(
            f"every sample of the density field exceeds the threshold {level:.4g} (values lie in [{lo_v:.4g}, {hi_v:.4g}]): "
            "there is no surface inside the grid. Raise the threshold or enlarge the grid bound."
        )
    border = np.concatenate([f[[0, -1]].ravel(), f[:, [0, -1]].ravel(), f[:, :, [0, -1]].ravel()])
    if (border > level).any():
        warnings.warn(
            f"the density exceeds the threshold {level:.4g} on the grid's border: the box cuts the object, "
            "whose mesh is closed along the box. Enlarge the bound to keep the whole object.",
            stacklevel=2,
        )
    pad_value = min(lo_v, level) - 1.0
    fp = np.pad(f, 1, constant_values=pad_value)
    spacing = grid.spacing.double().numpy()
    verts, faces, _, _ = sk_mc(fp, level=level, spacing=tuple(spacing), allow_degenerate=False)
    verts = verts - spacing + grid.lo.double().numpy()  # undo the padding, then move to the box
    faces = faces.astype(np.int64)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def remove_small_components(
    v: np.ndarray, f: np.ndarray, min_diameter: float, min_faces: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected pieces with fewer than ``min_faces`` faces or a bounding-box diagonal below
    ``min_diameter`` x that of the largest piece (floaters). The largest piece always stays."""
    import trimesh

    if len(f) == 0:
        return v, f
    labels = trimesh.graph.connected_component_labels(trimesh.graph.face_adjacency(f), node_count=len(f))
    n = labels.max() + 1
    if n == 1:
        return v, f
    fv = v[f].reshape(-1, 3)
    fl = np.repeat(labels, 3)
    lo = np.full((n, 3), np.inf)
    hi = np.full((n, 3), -np.inf)
    np.minimum.at(lo, fl, fv)
    np.maximum.at(hi, fl, fv)
    diam = np.linalg.norm(hi - lo, axis=1)
    nfaces = np.bincount(labels, minlength=n)
    keep = (diam >= min_diameter * diam.max()) & (nfaces >= min_faces)
    keep[np.argmax(nfaces)] = True
    return _compact(v, f[keep[labels]])


def _compact(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unreferenced vertices and renumber faces."""
    used = np.zeros(len(v), bool)
    used[f.ravel()] = True
    remap = np.cumsum(used) - 1
    return v[used], remap[f]


def merge_close_vertices(v: np.ndarray, f: np.ndarray, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Weld vertices that fall in the same ``distance``-sized cell, then drop the faces that collapse
    and duplicated faces. Marching cubes leaves such slivers where the level nearly hits a sample."""
    if distance <= 0 or len(f) == 0:
        return v, f
    key = np.floor(v / distance).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    v2 = v[first]
    f2 = inverse[f]
    ok = (f2[:, 0] != f2[:, 1]) & (f2[:, 1] != f2[:, 2]) & (f2[:, 0] != f2[:, 2])
    f2 = f2[ok]
    _, uniq = np.unique(np.sort(f2, axis=1), axis=0, return_index=True)
    f2 = f2[np.sort(uniq)]
    return _compact(v2, f2)


def taubin_smooth(v: np.ndarray, f: np.ndarray, iterations: int, lamb: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin's lambda|mu smoothing with uniform neighbour weights: a shrink step then an inflate step."""
    import scipy.sparse as sp

    if iterations <= 0 or len(f) == 0:
        return v
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    A = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(v), len(v))).tocsr()
    A.data[:] = 1.0  # repeated edges count once
    deg = np.asarray(A.sum(1)).ravel()
    W = sp.diags(1.0 / np.maximum(deg, 1)) @ A
    out = v.copy()
    for _ in range(iterations):
        out = out + lamb * (W @ out - out)
        out = out + mu * (W @ out - out)
    return out


def decimate(v: np.ndarray, f: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse (fast-simplification) down to at most ``target_faces`` faces."""
    import fast_simplification

    if target_faces <= 0 or len(f) <= target_faces:
        return v, f
    # Ask for a little less than the target: the collapse may stop a few faces above the count it is given.
    v2, f2 = fast_simplification.simplify(
        v.astype(np.float64), f.astype(np.int32), target_count=int(target_faces * 0.98)
    )
    return np.asarray(v2, np.float64), np.asarray(f2, np.int64)


def clean_mesh(v: np.ndarray, f: np.ndarray, cfg: ExtractConfig, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Floaters, welding, smoothing, then decimation, in that order (see the module docstring)."""
    v, f = remove_small_components(v, f, cfg.min_component_diameter, cfg.min_component_faces)
    v, f = merge_close_vertices(v, f, cfg.merge_distance * spacing)
    v = taubin_smooth(v, f, cfg.smooth_iterations, cfg.smooth_lambda, cfg.smooth_mu)
    v, f = decimate(v, f, cfg.target_faces)
    if len(f) and _signed_volume(v, f) < 0:
        f = f[:, ::-1].copy()
    return v, f


def surrounding_cameras(grid: Grid, n: int, resolution: int, fov_y: float = 40.0) -> Cameras:
    """``n`` views of the grid's box from all sides (a ring, a raised and a lowered ring offset by half a
    step, then straight down and up), far enough that the box's bounding sphere fills the view."""
    centre = (grid.lo + grid.hi) / 2
    dist = 1.05 * float((grid.hi - grid.lo).norm() / 2) / math.sin(math.radians(fov_y) / 2)
    per_ring = max(1, (n - 2) // 3)
    rings = [(0.0, 0.0), (45.0, 0.5), (-45.0, 0.5)]
    el, az = [], []
    for k, (e, off) in enumerate(rings):
        m = per_ring if k < 2 else n - 2 - 2 * per_ring
        el += [e] * m
        az += [360.0 * (j + off) / max(m, 1) for j in range(m)]
    el, az = el + [89.0, -89.0], az + [0.0, 0.0]
    return orbit_cameras(torch.tensor(el[:n]), torch.tensor(az[:n]), dist, fov_y, resolution, resolution, target=centre)


def fill_hidden(field: Tensor, grid: Grid, level: float, views: int = 26, max_visible: int = 0) -> Tensor:
    """Raise every sample that at most ``max_visible`` of ``views`` cameras around the grid can see above ``level``.

    Score distillation only sees the outside: SDS piles Gaussians up on the visible surface and leaves
    faint ones inside, so the field at the level a solid would need is a thin shell with pinholes, and
    marching cubes returns a hollow, leaky skin. A sample that lies behind the surface (``field > level``)
    from (nearly) every direction is inside the object as far as any render can tell; filling those keeps
    the outer surface only. Unlike filling enclosed cavities, this survives pinholes: a hole exposes the
    inside to a few views only, hence ``max_visible``. Visible concavities (the torus's hole, the space under
    a chair) are seen from many views and stay empty (tests/test_mesh_stage.py).
    Measured on the ten SDS objects of benchmarks/quality.py (dreamgaussian preset), mean IoU with the
    ground truth: 0.58 filling only what no view sees (max_visible 0), 0.62 with 2 (the default), 0.64 with 4;
    4 already fills most of an open bowl (tests/test_mesh_stage.py). On "a red sphere" alone: 0.40 with no
    fill at all.

    Each view is a pinhole camera whose pixels (half the grid resolution across) each see several samples,
    so the surface has no gaps between pixels; a sample counts as hidden only if it lies more than two samples
    behind the first surface sample of its pixel, so the coarse pixels do not thicken the surface outwards."""
    dev = field.device  # R^3 points x views projections: on the field's (the run's) device
    occupied = field > level
    if not occupied.any():
        return field
    res = max(8, grid.resolution // 2)
    cams = surrounding_cameras(grid, views, res).to(dev)
    pts = grid.points(dev).reshape(-1, 3)
    surf = occupied.reshape(-1)
    seen = torch.zeros(pts.shape[0], dtype=torch.int32, device=dev)
    margin = 2.0 * float(
        grid.spacing.max()
    )  # a pixel spans ~2 samples: nearer than this behind the surface is not hidden
    for b in range(len(cams)):
        xy, z = project_points(pts, cams[b : b + 1])
        pix, z = pixel_bins(xy[0], res, res), z[0]
        on_screen = pix < res * res
        first_hit = torch.full((res * res + 1,), float("inf"), device=dev).scatter_reduce(0, pix[surf], z[surf], "amin")
        seen += ~(on_screen & (z > first_hit[pix] + margin))
    hidden = ~surf & (seen <= max_visible)
    if not hidden.any():
        return field
    return torch.where(hidden.reshape(field.shape), torch.full_like(field, 2.0 * level if level > 0 else 1.0), field)


def extract_mesh(
    field: Tensor, grid: Grid, cfg: ExtractConfig | None = None, level: float | None = None
) -> tuple[Tensor, Tensor, float]:
    """Density grid to a cleaned mesh: vertices (V, 3) float32, faces (F, 3) int64 (CPU tensors) and the
    threshold used: ``level`` if given, else :func:`choose_threshold`. Raises ValueError when the field is
    empty or full at that threshold."""
    cfg = cfg or ExtractConfig()
    if field.shape != (grid.resolution,) * 3:
        raise ValueError(f"field has shape {tuple(field.shape)} but the grid is {grid.resolution}^3")
    field = blur_field(field, cfg.blur_sigma)
    level = choose_threshold(field, cfg) if level is None else float(level)
    if cfg.fill_hidden:
        field = fill_hidden(field, grid, level, cfg.fill_views, cfg.fill_max_visible)
    v, f = marching_cubes(field, grid, level)
    v, f = clean_mesh(v, f, cfg, float(grid.spacing.min()))
    if len(f) == 0:
        raise ValueError(
            f"cleanup removed every face of the isosurface at threshold {level:.4g}; lower min_component_* settings"
        )
    return torch.from_numpy(v).float(), torch.from_numpy(f).long(), level
