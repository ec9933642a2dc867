"""UV unwrap, colour back-projection into a texture, hole filling, and texture refinement.

The source (Gaussians, a NeRF, anything) is seen only through ``render_fn(cameras) -> (rgb, alpha)``:
rgb (B, H, W, 3) **premultiplied by alpha** (composited over black) and alpha (B, H, W, 1). Premultiplied
colour lets a texel divide the alpha out again, so a silhouette pixel half covered by the object does
not tint the texture with the background.

Back-projection works per texel, not per pixel: each texel's surface point and normal come from
rasterizing the mesh in UV space; each view then contributes the source colour where the texel projects,
if the mesh's own depth buffer in that view shows the texel is the nearest surface there (occlusion), with
weight ``cos(normal, view)^angle_power``, so views that face a surface dominate it and grazing views, whose
pixels smear across many texels, count little. Texels no view sees take the colour of the nearest seen
texel in 3D (so the fill never crosses to an unrelated chart); texels outside every chart take the colour
of the nearest covered texel in the image, so bilinear and mipmap lookups at chart borders stay clean.

UV convention (OBJ/trimesh, as in ``renderers.mesh``): u right, v up, texel row 0 at v = 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from renderers.cameras import Cameras, orbit_cameras, project_points
from renderers.mesh import face_normals, interpolate, rasterize_mesh, rasterize_uv, sample_texture

from .extract import decimate

RenderFn = Callable[[Cameras], tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Cameras], Tensor]


@dataclass
class TexturedMesh:
    vertices: Tensor  # (V, 3) float32 world space
    faces: Tensor  # (F, 3) int64, counter-clockwise seen from outside
    uv: Tensor  # (V, 2) float32 in [0, 1], OBJ convention (v up)
    texture: Tensor  # (S, S, 3) float32 in [0, 1], row 0 at the top (v = 1)


@dataclass
class TextureConfig:
    texture_size: int = 1024
    max_faces: int = 50000  # a larger mesh is decimated before the unwrap (xatlas time grows fast)
    uv_padding: int = 4  # atlas texels between charts
    # Bake views: ``n_azimuth`` cameras on each elevation ring (rings alternate by half a step), plus poles.
    view_resolution: int = 512
    elevations: tuple[float, ...] = (-30.0, 0.0, 30.0)
    n_azimuth: int = 8
    poles: bool = True
    fov_y: float = 40.0
    views_per_batch: int = 4  # cameras per render_fn / rasterizer call
    angle_power: float = 2.0
    min_cos: float = 0.1  # views more grazing than this contribute nothing
    depth_tolerance: float = (
        0.01  # x the mesh's bounding diagonal: how far behind the depth buffer still counts as visible
    )


@dataclass
class RefineConfig:
    """DreamGaussian's second stage: optimise the texture (and optionally small vertex offsets)."""

    steps: int = 0  # 0 turns refinement off
    batch_size: int = 4
    resolution: int = 256
    lr_texture: float = 0.02
    lr_vertices: float = 0.0  # 0 keeps the geometry fixed
    max_offset: float = 0.01  # x the mesh's bounding diagonal
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)  # black matches a premultiplied render_fn
    seed: int = 0


@dataclass
class ReferenceProjectionConfig:
    """Image-to-3D: the input image painted onto the surface its camera sees, after the bake. The representation's
    renders are blurrier than the input (small features such as a snowman's eyes fade), so where the input shows
    the surface its own pixels are the texture (DreamGaussian's second stage fits the texture to the input by
    optimisation; this projects it directly). Blended in by the angle, so no seam marks where its view turns
    grazing. Only runs with an input image use it."""

    enabled: bool = False
    resolution: int = 256  # the input is resized to this (from the run's reference.png, at most 512 px)
    cos_start: float = 0.3  # weight 0 at this cosine between the surface normal and the direction to the camera,
    cos_full: float = 0.6  # rising to 1 (the input's colour alone) at this one

    def __post_init__(self):
        if not 0 <= self.cos_start < self.cos_full <= 1 or self.resolution < 8:
            raise ValueError(
                f"need 0 <= cos_start < cos_full <= 1 and resolution >= 8; got {self.cos_start}, {self.cos_full} "
                f"and {self.resolution}"
            )


# ----------------------------------------------------------------------------------------------- unwrap


def unwrap_uv(
    vertices: Tensor, faces: Tensor, texture_size: int = 1024, padding: int = 4
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xatlas UV atlas. Returns (vertices (V', 3), faces (F, 3), uv (V', 2), vmapping (V',)): vertices on chart
    seams are split, and ``vmapping`` maps each new vertex to its original one."""
    import xatlas

    v = vertices.detach().cpu().numpy().astype(np.float32)
    f = faces.detach().cpu().numpy().astype(np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas made {atlas.atlas_count} atlases; expected one (texels_per_unit must stay 0)")
    vmap, idx, uv = atlas[0]
    vmap = torch.from_numpy(vmap.astype(np.int64))
    return (
        vertices.detach().cpu()[vmap],
        torch.from_numpy(idx.astype(np.int64)),
        torch.from_numpy(uv.astype(np.float32)),
        vmap,
    )


# ------------------------------------------------------------------------------------------- bake views


def bake_cameras(vertices: Tensor, cfg: TextureConfig, resolution: int | None = None) -> Cameras:
    """Cameras around the mesh's bounding box centre, far enough that its bounding sphere fills the view."""
    lo, hi = vertices.detach().amin(0).cpu(), vertices.detach().amax(0).cpu()
    centre = (lo + hi) / 2
    radius = float((vertices.detach().cpu() - centre).norm(dim=-1).max())
    dist = 1.05 * radius / math.sin(math.radians(cfg.fov_y) / 2)
    els, azs = [], []
    for k, el in enumerate(cfg.elevations):
        step = 360.0 / cfg.n_azimuth
        for a in range(cfg.n_azimuth):
            els.append(el)
            azs.append(a * step + (step / 2 if k % 2 else 0.0))
    if cfg.poles:
        els += [89.0, -89.0]
        azs += [0.0, 0.0]
    res = resolution or cfg.view_resolution
    return orbit_cameras(torch.tensor(els), torch.tensor(azs), dist, cfg.fov_y, res, res, target=centre)


# ------------------------------------------------------------------------------------------- back-project


def _sample_image(img: Tensor, xy: Tensor) -> Tensor:
    """Bilinear samples of images (B, H, W, C) at pixel coordinates xy (B, T, 2) -> (B, T, C)."""
    H, W = img.shape[1:3]
    grid = torch.stack([xy[..., 0] / W * 2 - 1, xy[..., 1] / H * 2 - 1], -1)[:, :, None]
    out = F.grid_sample(
        img.permute(0, 3, 1, 2), grid.to(img.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[..., 0].transpose(1, 2)


def _texel_surface(vertices: Tensor, faces: Tensor, uv: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Texels that hold some face, with that face's surface point and normal at the texel.

    Rasterizing the UV layout covers only texels whose centre a triangle contains, so a sliver one texel wide
    can own no texel at all and would later borrow a colour from a neighbouring chart. Each face is therefore
    also sampled on a barycentric lattice fine enough to touch every texel it overlaps; a texel the
    rasterizer left empty takes the first face sample that lands in it (conservative coverage).
    Returns the covered mask (S, S), points (T, 3) and normals (T, 3) in the mask's row-major order."""
    dev = vertices.device
    S = size
    uvr = rasterize_uv(uv, faces, S)
    fid = uvr.face_id[0].reshape(-1).clone()
    bary = uvr.bary[0].reshape(-1, 3).clone()
    tri = torch.stack([uv[:, 0] * S, (1 - uv[:, 1]) * S], -1)[faces]  # (F, 3, 2) texel coordinates
    edge = (tri - tri.roll(1, dims=1)).norm(dim=-1).amax(-1)
    n_per_face = edge.ceil().long().clamp(1, 32)
    for n in n_per_face.unique().tolist():
        fs = (n_per_face == n).nonzero()[:, 0]
        i, j = torch.meshgrid(torch.arange(n + 1, device=dev), torch.arange(n + 1, device=dev), indexing="ij")
        keep = (i + j) <= n
        lat = torch.stack([i[keep], j[keep], n - i[keep] - j[keep]], -1).float() / n  # (P, 3)
        xy = torch.einsum("pk,fkc->fpc", lat, tri[fs])  # (f, P, 2)
        col = xy[..., 0].floor().long().clamp(0, S - 1)
        row = xy[..., 1].floor().long().clamp(0, S - 1)
        flat = (row * S + col).reshape(-1)
        face = fs[:, None].expand(-1, lat.shape[0]).reshape(-1)
        bc = lat[None].expand(fs.shape[0], -1, -1).reshape(-1, 3)
        empty = fid[flat] < 0
        flat, face, bc = flat[empty], face[empty], bc[empty]
        # First sample per empty texel (any of them lies on a face overlapping the texel).
        order = torch.argsort(flat, stable=True)
        flat, face, bc = flat[order], face[order], bc[order]
        first = torch.ones_like(flat, dtype=torch.bool)
        first[1:] = flat[1:] != flat[:-1]
        fid[flat[first]] = face[first]
        bary[flat[first]] = bc[first]
    covered = fid >= 0
    f_cov = faces[fid[covered]]
    pos = (vertices[f_cov] * bary[covered][..., None]).sum(1)
    nrm = face_normals(vertices, faces)[fid[covered]]
    return covered.reshape(S, S), pos, nrm


def _world_tolerance(vertices: Tensor, fraction: float) -> float:
    """``fraction`` of the mesh's bounding-box diagonal, in world units (the depth test's tolerance)."""
    return fraction * float((vertices.amax(0) - vertices.amin(0)).norm())


def _texel_views(
    vertices: Tensor, faces: Tensor, pos: Tensor, nrm: Tensor, cams: Cameras, tol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Where each texel's surface point ``pos`` (T, 3) lands in each camera: whether it is the nearest surface
    there (the mesh's own depth buffer, within ``tol`` plus the depth a tilted surface spans across one pixel,
    counted up to a tilt of 72 degrees), its pixel coordinates (B, T, 2), and the cosine between its normal and the
    direction to the camera (B, T)."""
    depth = rasterize_mesh(vertices, faces, cams).depth  # (B, H, W), 0 where empty
    xy, z = project_points(pos, cams)
    H, W = depth.shape[1:]
    j, i = xy[..., 0].floor().long(), xy[..., 1].floor().long()
    inside = (j >= 0) & (j < W) & (i >= 0) & (i < H) & (z > 0)
    b = torch.arange(len(cams), device=pos.device)[:, None].expand_as(j)
    d = depth[b, i.clamp(0, H - 1), j.clamp(0, W - 1)]
    to_cam = F.normalize(cams.origins.to(pos.device)[:, None, :] - pos[None], dim=-1)
    cos = (to_cam * nrm[None]).sum(-1)
    pixel = z / cams.K.to(pos)[:, None, 0, 0]  # a pixel's width in world units at the texel's depth
    tilt = (1 - cos.clamp(0.3, 1) ** 2).sqrt() / cos.clamp(0.3, 1)  # depth change per unit of width
    visible = inside & (d > 0) & ((z - d).abs() < tol + pixel * tilt)
    return visible, xy, cos


@torch.no_grad()
def back_project(
    vertices: Tensor, faces: Tensor, uv: Tensor, render_fn: RenderFn, cameras: Cameras, cfg: TextureConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Colour every texel from the source renders. Returns the texture (S, S, 3) (zero where unseen), the mask
    (S, S) of texels some view saw, the mask (S, S) of texels on some face, and the surface point (T, 3) of each
    covered texel (row-major order of that mask); :func:`fill_texture` takes all four."""
    S = cfg.texture_size
    dev = vertices.device
    covered, pos, nrm = _texel_surface(vertices, faces, uv.to(dev), S)
    num = torch.zeros(pos.shape[0], 3, device=dev)
    den = torch.zeros(pos.shape[0], device=dev)
    tol = _world_tolerance(vertices, cfg.depth_tolerance)
    for s in range(0, len(cameras), cfg.views_per_batch):
        cams = cameras[s : s + cfg.views_per_batch].to(dev)
        rgb, alpha = render_fn(cams)
        rgb, alpha = rgb.to(dev).float(), alpha.to(dev).float()
        visible, xy, cos = _texel_views(vertices, faces, pos, nrm, cams, tol)
        w = torch.where(visible & (cos > cfg.min_cos), cos.clamp_min(0) ** cfg.angle_power, torch.zeros_like(cos))
        num += (w[..., None] * _sample_image(rgb, xy)).sum(0)
        den += (w * _sample_image(alpha, xy)[..., 0]).sum(0)
    seen_t = den > 1e-4
    tex = torch.zeros(S, S, 3, device=dev)
    seen = torch.zeros(S, S, dtype=torch.bool, device=dev)
    col = (num / den.clamp_min(1e-4)[:, None]).clamp(0, 1)
    tex[covered] = torch.where(seen_t[:, None], col, torch.zeros_like(col))
    seen[covered] = seen_t
    return tex, seen, covered, pos


def fill_texture(tex: Tensor, seen: Tensor, covered: Tensor, pos: Tensor) -> Tensor:
    """Give unseen covered texels the colour of the nearest seen texel in 3D, then every texel outside the
    charts the colour of the nearest covered texel in the image (gutter padding)."""
    from scipy.spatial import cKDTree

    out = tex.detach().cpu().numpy().copy()
    seen_np, cov_np = seen.cpu().numpy(), covered.cpu().numpy()
    if not seen_np.any():
        raise ValueError(
            "no bake view saw any texel of the mesh: check that render_fn renders the object in the bake cameras"
        )
    seen_in_cov = seen_np[cov_np]  # (T,)
    pos_np = pos.detach().cpu().numpy()
    if not seen_in_cov.all():
        tree = cKDTree(pos_np[seen_in_cov])
        _, nn = tree.query(pos_np[~seen_in_cov])
        cov_cols = out[cov_np]
        cov_cols[~seen_in_cov] = cov_cols[seen_in_cov][nn]
        out[cov_np] = cov_cols
    return _pad_gutter(torch.from_numpy(out).to(tex.device), covered)


def _pad_gutter(tex: Tensor, covered: Tensor) -> Tensor:
    """Every texel outside the charts (``covered`` False) takes the colour of the nearest covered texel."""
    from scipy.ndimage import distance_transform_edt

    cov_np = covered.cpu().numpy()
    if cov_np.all():
        return tex
    _, (ii, jj) = distance_transform_edt(~cov_np, return_indices=True)
    return tex[torch.from_numpy(ii).to(tex.device), torch.from_numpy(jj).to(tex.device)]


@torch.no_grad()
def project_image(
    mesh: TexturedMesh,
    rgb: Tensor,
    mask: Tensor,
    camera: Cameras,
    cfg: ReferenceProjectionConfig,
    depth_tolerance: float,
) -> tuple[TexturedMesh, float]:
    """``mesh`` with the image (``rgb`` (1, H, W, 3) on white, ``mask`` (1, H, W, 1)) painted onto the texels
    ``camera`` (one camera of H x W) sees, blended by :class:`ReferenceProjectionConfig`'s angle ramp and the
    mask (the silhouette's edge and any surface outside it keep the bake). ``depth_tolerance``: the depth test's, as a
    fraction of the mesh's bounding-box diagonal (:class:`TextureConfig`'s). Returns the mesh and the fraction of covered texels that took some of the image."""
    dev = mesh.vertices.device
    S = mesh.texture.shape[0]
    covered, pos, nrm = _texel_surface(mesh.vertices, mesh.faces, mesh.uv, S)
    tol = _world_tolerance(mesh.vertices, depth_tolerance)
    visible, xy, cos = _texel_views(mesh.vertices, mesh.faces, pos, nrm, camera.to(dev), tol)
    rgb, mask = rgb.to(dev).float(), mask.to(dev).float()
    premult = rgb - (1 - mask)  # rgb on white is colour * mask + (1 - mask)
    m = _sample_image(mask, xy)[0, :, 0]
    colour = (_sample_image(premult, xy)[0] / m.clamp_min(1e-3)[:, None]).clamp(0, 1)
    w = ((cos[0] - cfg.cos_start) / (cfg.cos_full - cfg.cos_start)).clamp(0, 1)
    w = w * ((m - 0.5) / 0.5).clamp(0, 1) * visible[0]
    tex = mesh.texture.clone()
    tex[covered] = torch.lerp(tex[covered], colour, w[:, None])
    painted = float((w > 0).float().mean()) if len(w) else 0.0
    return TexturedMesh(mesh.vertices, mesh.faces, mesh.uv, _pad_gutter(tex, covered)), painted


def texture_mesh(
    vertices: Tensor,
    faces: Tensor,
    render_fn: RenderFn,
    cfg: TextureConfig | None = None,
    cameras: Cameras | None = None,
) -> TexturedMesh:
    """Unwrap (after decimating to ``cfg.max_faces`` if needed) and bake the source's colours into a texture."""
    cfg = cfg or TextureConfig()
    if faces.shape[0] > cfg.max_faces:
        warnings.warn(
            f"decimating the mesh from {faces.shape[0]} to {cfg.max_faces} faces before the UV unwrap", stacklevel=2
        )
        v, f = decimate(vertices.detach().cpu().double().numpy(), faces.cpu().numpy(), cfg.max_faces)
        vertices, faces = (
            torch.from_numpy(v).float().to(vertices.device),
            torch.from_numpy(f).long().to(vertices.device),
        )
    v, f, uv, _ = unwrap_uv(vertices, faces, cfg.texture_size, cfg.uv_padding)
    dev = vertices.device
    v, f, uv = v.to(dev), f.to(dev), uv.to(dev)
    cameras = cameras if cameras is not None else bake_cameras(v, cfg)
    tex, seen, covered, pos = back_project(v, f, uv, render_fn, cameras, cfg)
    tex = fill_texture(tex, seen, covered, pos)
    return TexturedMesh(v, f, uv, tex)


# ------------------------------------------------------------------------------------------------ refine


def render_albedo(
    mesh: TexturedMesh,
    cameras: Cameras,
    background=(0.0, 0.0, 0.0),
    vertices: Tensor | None = None,
    texture: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Unlit textured render: rgb (B, H, W, 3) over ``background`` and alpha (B, H, W, 1)."""
    v = mesh.vertices if vertices is None else vertices
    tex = mesh.texture if texture is None else texture
    raster = rasterize_mesh(v, mesh.faces, cameras)
    col = sample_texture(tex, interpolate(mesh.uv, mesh.faces, raster))
    alpha = raster.mask[..., None].to(col.dtype)
    bg = torch.as_tensor(background, dtype=col.dtype, device=col.device)
    return col * alpha + bg * (1 - alpha), alpha


def target_loss(render_fn: RenderFn, kind: str = "l1") -> LossFn:
    """A ``loss_fn(rgb, cameras)`` comparing a mesh render with the source's render of the same cameras
    (premultiplied: pair it with a black refine background)."""
    if kind not in ("l1", "mse"):
        raise ValueError(f"unknown target loss {kind!r}; choose 'l1' or 'mse'")

    def loss_fn(rgb: Tensor, cameras: Cameras) -> Tensor:
        with torch.no_grad():
            target, _ = render_fn(cameras)
        d = rgb - target.to(rgb)
        return d.abs().mean() if kind == "l1" else (d * d).mean()

    return loss_fn


def refine_texture(mesh: TexturedMesh, loss_fn: LossFn, cameras: Cameras, cfg: RefineConfig) -> TexturedMesh:
    """Optimise the texture (and, with ``lr_vertices > 0``, per-vertex offsets bounded by ``max_offset``) for
    ``cfg.steps`` Adam steps; each step renders ``batch_size`` cameras drawn from ``cameras`` (resized to
    ``cfg.resolution``) and minimises ``loss_fn(rgb, cameras)``. Any differentiable loss plugs in: the
    target-render loss of :func:`target_loss`, or score distillation in text-to-3D."""
    if cfg.steps <= 0:
        return mesh
    gen = torch.Generator().manual_seed(cfg.seed)
    cams_all = cameras.resized(cfg.resolution, cfg.resolution)
    tex = mesh.texture.detach().clone().requires_grad_(True)
    params = [{"params": [tex], "lr": cfg.lr_texture}]
    offset = None
    if cfg.lr_vertices > 0:
        # One offset per position, not per vertex: the unwrap split seam vertices, which must move together.
        _, weld = torch.unique(mesh.vertices.detach(), dim=0, return_inverse=True)
        offset = torch.zeros(int(weld.max()) + 1, 3, device=mesh.vertices.device, requires_grad=True)
        params.append({"params": [offset], "lr": cfg.lr_vertices})
    diag = float((mesh.vertices.amax(0) - mesh.vertices.amin(0)).norm())
    opt = torch.optim.Adam(params)
    for _ in range(cfg.steps):
        idx = torch.randint(len(cams_all), (min(cfg.batch_size, len(cams_all)),), generator=gen)
        cams = Cameras(cams_all.c2w[idx], cams_all.K[idx], cams_all.width, cams_all.height).to(mesh.vertices.device)
        v = mesh.vertices if offset is None else mesh.vertices + offset[weld]
        rgb, _ = render_albedo(mesh, cams, cfg.background, vertices=v, texture=tex)
        loss = loss_fn(rgb, cams)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            tex.clamp_(0, 1)
            if offset is not None:
                offset.clamp_(-cfg.max_offset * diag, cfg.max_offset * diag)
    v = mesh.vertices if offset is None else (mesh.vertices + offset[weld]).detach()
    return TexturedMesh(v, mesh.faces, mesh.uv, tex.detach())
