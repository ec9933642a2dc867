"""Triangle-mesh rasterization: face ids, barycentrics and depth per pixel, in camera or UV space.

Two backends behind one interface, as nvdiffrast splits the work: rasterization finds, per pixel, the
nearest face and its perspective-correct barycentrics; :func:`interpolate` and :func:`sample_texture`
turn those into attributes. Barycentrics are differentiable with respect to vertex positions (inside
faces; like nvdiffrast without ``antialias``, silhouettes carry no gradient).

- ``torch``: our own. Each face is tested against the pixel centres of its bounding box, all faces at
  once (chunked to bound memory), and a z-buffer keeps the nearest. Runs anywhere.
- ``nvdiffrast``: ``nvdiffrast.torch.rasterize`` on CUDA, loaded by ``renderers.backends`` when first used.

UV convention (OBJ/trimesh): u right, v up, (0, 0) is the bottom-left of the texture image, so texel
(row i, column j) of a ``size`` x ``size`` texture has its centre at uv ((j + 0.5) / size, 1 - (i + 0.5) / size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends
from .cameras import Cameras

_MAX_CANDIDATES = 8_000_000  # (face, pixel) pairs tested at once by the torch backend


@dataclass
class MeshRaster:
    face_id: Tensor  # (B, H, W) long, -1 where no face covers the pixel
    bary: Tensor  # (B, H, W, 3) perspective-correct barycentrics (0 where empty)
    depth: Tensor  # (B, H, W) camera-space z of the surface (0 where empty)

    @property
    def mask(self) -> Tensor:
        return self.face_id >= 0


def _check_mesh(vertices: Tensor, faces: Tensor) -> None:
    if vertices.ndim != 2 or vertices.shape[-1] not in (2, 3):
        raise ValueError(f"vertices must be (V, 3); got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3) vertex indices; got {tuple(faces.shape)}")
    if faces.numel() and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise ValueError(f"faces index vertices outside [0, {vertices.shape[0]})")


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nvdiffrast" if backends.available("nvdiffrast", device) else "torch"
    if backend == "nvdiffrast":
        if device.type != "cuda":
            raise RuntimeError("backend='nvdiffrast' needs the mesh on a CUDA device; use backend='torch' on CPU")
        backends.require("nvdiffrast", device)
        return backend
    if backend != "torch":
        raise ValueError(f"unknown mesh backend {backend!r}; choose 'auto', 'torch' or 'nvdiffrast'")
    return backend


def project_vertices(vertices: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Pixel coordinates (B, V, 2) and camera-space depth (B, V) of world-space vertices."""
    vm = cameras.viewmats.to(vertices)
    cam = torch.einsum("bij,vj->bvi", vm[:, :3, :3], vertices) + vm[:, None, :3, 3]
    z = cam[..., 2]
    zs = z.clamp_min(1e-8)
    K = cameras.K.to(vertices)
    x = K[:, None, 0, 0] * cam[..., 0] / zs + K[:, None, 0, 2]
    y = K[:, None, 1, 1] * cam[..., 1] / zs + K[:, None, 1, 2]
    return torch.stack([x, y], -1), z


def _edge(a: Tensor, b: Tensor, p: Tensor) -> Tensor:
    """Twice the signed area of triangle (a, b, p); the sign says on which side of a->b p lies."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _screen_bary(tri_xy: Tensor, p: Tensor) -> Tensor:
    """Screen-space barycentrics (..., 3) of points p (..., 2) in triangles tri_xy (..., 3, 2)."""
    a, b, c = tri_xy[..., 0, :], tri_xy[..., 1, :], tri_xy[..., 2, :]
    area = _edge(a, b, c)
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    return torch.stack([_edge(b, c, p), _edge(c, a, p), _edge(a, b, p)], -1) / area[..., None]


def _perspective_bary(l: Tensor, tri_z: Tensor) -> tuple[Tensor, Tensor]:
    """Perspective-correct barycentrics and depth from screen barycentrics l and vertex depths."""
    w = l / tri_z
    s = w.sum(-1, keepdim=True)
    return w / s, 1.0 / s.squeeze(-1)


def _zbuffer_torch(xy: Tensor, z: Tensor, faces: Tensor, H: int, W: int, near: float) -> Tensor:
    """(B, H, W) id of the nearest face covering each pixel centre, -1 where none. No gradients."""
    B, Fn = xy.shape[0], faces.shape[0]
    dev = xy.device
    best_z = torch.full((B * H * W,), float("inf"), device=dev, dtype=xy.dtype)
    best_f = torch.full((B * H * W,), -1, dtype=torch.long, device=dev)
    if Fn == 0:
        return best_f.view(B, H, W)
    tri_xy = xy[:, faces]  # (B, F, 3, 2)
    tri_z = z[:, faces]  # (B, F, 3)
    lo = tri_xy.amin(2)
    hi = tri_xy.amax(2)
    # pixel centres j + 0.5 inside [lo, hi]  <=>  j in [ceil(lo - 0.5), floor(hi - 0.5)]
    x0 = torch.ceil(lo[..., 0] - 0.5).clamp(0, W).long()
    x1 = torch.floor(hi[..., 0] - 0.5).clamp(-1, W - 1).long()
    y0 = torch.ceil(lo[..., 1] - 0.5).clamp(0, H).long()
    y1 = torch.floor(hi[..., 1] - 0.5).clamp(-1, H - 1).long()
    nx, ny = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
    valid = (tri_z > near).all(-1)
    count = torch.where(valid, nx * ny, torch.zeros_like(nx)).reshape(-1)  # (B*F,)
    ends = count.cumsum(0)
    start = 0
    while start < count.numel():
        # Take as many faces as fit in the candidate budget (at least one).
        base = ends[start - 1] if start > 0 else torch.tensor(0, device=dev)
        stop = int(torch.searchsorted(ends, base + _MAX_CANDIDATES, right=True))
        stop = max(stop, start + 1)
        idx = torch.arange(start, stop, device=dev)
        start = stop
        cnt = count[idx]
        if int(cnt.sum()) == 0:
            continue
        bf = torch.repeat_interleave(idx, cnt)  # flat (b, f) index per candidate
        offs = torch.arange(bf.numel(), device=dev) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)
        b, f = bf // Fn, bf % Fn
        w = nx.reshape(-1)[bf]
        px = x0.reshape(-1)[bf] + offs % w
        py = y0.reshape(-1)[bf] + offs // w
        p = torch.stack([px, py], -1).to(xy.dtype) + 0.5
        l = _screen_bary(tri_xy[b, f], p)
        inside = (l >= -1e-7).all(-1)
        _, zc = _perspective_bary(l, tri_z[b, f])
        inside &= zc > near
        pix = (b * H + py) * W + px
        pix, zc, f = pix[inside], zc[inside], f[inside]
        best_z_chunk = torch.full_like(best_z, float("inf")).scatter_reduce(0, pix, zc, "amin")
        win = zc <= best_z_chunk[pix]
        best_f_chunk = torch.full_like(best_f, -1).scatter_reduce(0, pix[win], f[win], "amax")
        closer = best_z_chunk < best_z
        best_z = torch.where(closer, best_z_chunk, best_z)
        best_f = torch.where(closer, best_f_chunk, best_f)
    return best_f.view(B, H, W)


def _raster_from_ids(face_id: Tensor, xy: Tensor, z: Tensor, faces: Tensor) -> MeshRaster:
    """Differentiable barycentrics and depth for known per-pixel face ids."""
    B, H, W = face_id.shape
    mask = face_id >= 0
    bary = xy.new_zeros(B, H, W, 3)
    depth = xy.new_zeros(B, H, W)
    if mask.any():
        b, i, j = mask.nonzero(as_tuple=True)
        f = face_id[b, i, j]
        tri = faces[f]
        p = torch.stack([j, i], -1).to(xy.dtype) + 0.5
        l = _screen_bary(xy[b[:, None], tri], p)
        bc, zc = _perspective_bary(l, z[b[:, None], tri])
        bary = bary.index_put((b, i, j), bc)
        depth = depth.index_put((b, i, j), zc)
    return MeshRaster(face_id, bary, depth)


def _rasterize_nvdiffrast(xy: Tensor, z: Tensor, faces: Tensor, H: int, W: int, near: float, far: float) -> MeshRaster:
    import nvdiffrast.torch as dr

    # Clip space from pixel coordinates: ndc = 2 * pixel / size - 1 with NDC y growing with the pixel
    # row, so nvdiffrast's first output row is our top row and no flip is needed.
    w = z
    zc = (far + near) / (far - near) * z - 2 * far * near / (far - near)
    clip = (
        torch.stack([(2 * xy[..., 0] / W - 1) * w, (2 * xy[..., 1] / H - 1) * w, zc, w], -1).float().contiguous()
    )  # float32 only
    ctx = _nvdiffrast_context(xy.device)
    rast, _ = dr.rasterize(ctx, clip, faces.int().contiguous(), resolution=[H, W])
    face_id = rast[..., 3].long() - 1
    u, v = rast[..., 0], rast[..., 1]
    mask = face_id >= 0
    bary = torch.where(mask[..., None], torch.stack([u, v, 1 - u - v], -1), torch.zeros_like(rast[..., :3]))
    # nvdiffrast orders barycentrics so that attr = u * v0 + v * v1 + (1 - u - v) * v2.
    raster = MeshRaster(face_id, bary, torch.zeros_like(u))
    raster.depth = _interp_batched(z[..., None], faces, raster)[..., 0]
    return raster


def _nvdiffrast_context(device: torch.device):
    return backends.nvdiffrast_context(device)  # one per device, with the plugin-path fix


def rasterize_screen(
    xy: Tensor,
    z: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    near: float = 1e-4,
    far: float = 100.0,
    backend: str = "auto",
) -> MeshRaster:
    """Rasterize triangles already projected to pixel coordinates ``xy`` (B, V, 2) with depths z (B, V)."""
    backend = _pick_backend(backend, xy.device)
    faces = faces.long()
    # Clip space is rebuilt from pixel coordinates (xy * z), which is exact only for vertices in front of
    # the camera; a face reaching behind ``near`` is dropped by the torch path, so it renders such views
    # (a camera inside the mesh) for both backends, as it does empty meshes.
    if backend == "nvdiffrast" and faces.shape[0] > 0 and not (z[:, faces] < near).any():
        return _rasterize_nvdiffrast(xy, z, faces, height, width, near, far)
    with torch.no_grad():
        face_id = _zbuffer_torch(xy.detach(), z.detach(), faces, height, width, near)
    return _raster_from_ids(face_id, xy, z, faces)


def rasterize_mesh(
    vertices: Tensor, faces: Tensor, cameras: Cameras, backend: str = "auto", near: float = 1e-3, far: float = 100.0
) -> MeshRaster:
    """Rasterize a world-space mesh into every camera of the batch."""
    _check_mesh(vertices, faces)
    xy, z = project_vertices(vertices, cameras)
    return rasterize_screen(xy, z, faces, cameras.height, cameras.width, near, far, backend)


def rasterize_uv(uv: Tensor, faces: Tensor, size: int, backend: str = "auto") -> MeshRaster:
    """Rasterize a mesh in its UV layout onto a ``size`` x ``size`` texture (batch of 1), for texture baking."""
    _check_mesh(uv, faces)
    xy = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size], -1)[None]
    z = torch.ones_like(xy[..., 0])
    return rasterize_screen(xy, z, faces, size, size, near=0.5, far=2.0, backend=backend)


def _interp_batched(attr: Tensor, faces: Tensor, raster: MeshRaster) -> Tensor:
    """Interpolate per-camera vertex attributes attr (B, V, C)."""
    B = attr.shape[0]
    fid = raster.face_id.clamp_min(0)
    tri = faces.long()[fid]  # (B, H, W, 3)
    vals = attr[torch.arange(B, device=attr.device)[:, None, None, None], tri]  # (B, H, W, 3, C)
    out = (vals * raster.bary[..., None]).sum(-2)
    return out * raster.mask[..., None]


def interpolate(attr: Tensor, faces: Tensor, raster: MeshRaster) -> Tensor:
    """Per-pixel attributes (B, H, W, C) from vertex attributes (V, C) or (B, V, C); zero where empty."""
    if attr.ndim == 2:
        attr = attr[None].expand(raster.face_id.shape[0], -1, -1)
    return _interp_batched(attr, faces, raster)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of ``texture`` (Ht, Wt, C) at ``uv`` (..., 2) in the OBJ convention (v up)."""
    shape = uv.shape[:-1]
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], -1).reshape(1, -1, 1, 2)
    img = texture.permute(2, 0, 1)[None]
    out = F.grid_sample(img, grid.to(img.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*shape, texture.shape[-1])


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(F, 3) unit normals, counter-clockwise faces pointing outwards."""
    v = vertices[faces.long()]
    return F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(V, 3) area-weighted vertex normals."""
    v = vertices[faces.long()]
    n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    out = torch.zeros_like(vertices).index_add_(0, faces.long().reshape(-1), n.repeat_interleave(3, 0))
    return F.normalize(out, dim=-1)


def shade_lambert(albedo: Tensor, normals: Tensor, light_dir: Tensor, ambient: float = 0.35) -> Tensor:
    """Lambertian shading with a directional light (pointing from the surface to the light)."""
    light = F.normalize(torch.as_tensor(light_dir, dtype=albedo.dtype, device=albedo.device), dim=-1)
    cos = (normals * light).sum(-1, keepdim=True).clamp_min(0)
    return albedo * (ambient + (1 - ambient) * cos)


def render_mesh(
    vertices: Tensor,
    faces: Tensor,
    cameras: Cameras,
    vertex_colors: Tensor | None = None,
    texture: Tensor | None = None,
    uv: Tensor | None = None,
    light_dir=(0.4, 0.8, 0.6),
    ambient: float = 0.35,
    background=(1.0, 1.0, 1.0),
    flat: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Shaded render of a coloured or textured mesh: rgb (B, H, W, 3) and alpha (B, H, W, 1)."""
    raster = rasterize_mesh(vertices, faces, cameras, backend=backend)
    if texture is not None:
        if uv is None:
            raise ValueError("a texture needs per-vertex uv coordinates")
        albedo = sample_texture(texture, interpolate(uv, faces, raster))
    elif vertex_colors is not None:
        albedo = interpolate(vertex_colors, faces, raster)
    else:
        albedo = torch.full((*raster.face_id.shape, 3), 0.8, dtype=vertices.dtype, device=vertices.device)
    if flat:
        normals = face_normals(vertices, faces)[raster.face_id.clamp_min(0)]
    else:
        normals = F.normalize(interpolate(vertex_normals(vertices, faces), faces, raster), dim=-1)
    rgb = shade_lambert(albedo, normals, light_dir, ambient)
    alpha = raster.mask[..., None].to(rgb.dtype)
    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    return rgb * alpha + bg * (1 - alpha), alpha
