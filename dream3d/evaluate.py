"""Quality of a generated object against the shape world's ground truth.

The questions, each answered from the exported mesh (``mesh.glb``, +Y up, front +Z, like the world):

- **Geometry**: volumetric IoU with the ground-truth mesh on a shared voxel grid.
- **Colour**: the mean albedo of the object against the ground truth's from the same cameras, and which of
  the world's colours most of its surface is closest to.
- **The judge's view**: the world classifier (trained on world renders only) names colour, shape and view of
  renders from every side, lit as the prior's training images were.
- **Surface** (the reconstruction field's standard measures, as in Occupancy Networks and ConvONet): Chamfer-L1
  distance, F-score at 1 % and 2 % of the object's size and normal consistency, from points sampled on the
  generated surface and on the ground truth's visible surface (:func:`surface_measures`).
- **Appearance**: PSNR and SSIM of the mesh rendered lit under the world's light, against the ground truth, from
  held-out views (:func:`heldout_cameras`, :func:`appearance`); and the colour noise, the spread of the rendered
  albedo inside the ground truth's uniformly coloured parts (:func:`color_noise`), and its fine-grained part, the
  speckle of single Gaussians' colours (:func:`color_speckle`).
- **Janus**: for front-distinct objects, is the front feature there once or twice? The generated renders are
  compared with the ground truth and with its two-faced twin where those two differ (:func:`janus_check`).
  The classifier's own answer (a back-half view judged "front") is kept beside it, but its view head learned
  the world's fixed light as well as the features: it sees a second door on a house, yet reads a snowman's
  view from its shading alone, so a two-faced snowman passes it (tests/test_evaluate.py records both).
- **Far side** (image-to-3D from a front view): is the object the right way round where the image does not show
  it: closer to the ground truth than to it turned around (a door at the back, a mug's handle on the other side)
  and than to its two-faced twin (:func:`far_side_check`, on the same comparison as the Janus check).

Occupancy needs no spatial index (trimesh's ``contains`` wants rtree or embree): rays along each grid axis
are cast through the voxel centres and the crossings counted (parity), per connected component, because
the world's composites are unions of closed parts that overlap and parity alone would carve the overlaps
out. The three axes vote, so a small hole in a generated surface flips at most one of them.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.metrics import structural_similarity

from renderers.cameras import Cameras, orbit_cameras
from renderers.mesh import face_normals, interpolate, rasterize_mesh, sample_texture, shade_lambert

from .world.classifier import VIEWS, load_classifier, predict
from .world.render import AMBIENT, LIGHT_DIR
from .world.shapes import COLORS, COMPOSITES, DETAIL, ColoredMesh, parse_prompt, scene_for_prompt


@dataclass
class EvalConfig:
    iou_resolution: int = 64  # voxels per side of the occupancy grid over [-bound, bound]^3
    bound: float = 1.0  # world objects fit inside the unit sphere
    image_size: int = 64  # the classifier's input size
    supersample: int = 2  # render at image_size * supersample, then average down (anti-aliasing)
    elevation: float = 15.0  # the ring of judged views
    azimuths: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
    overhead_elevation: float = 65.0  # named "overhead" (> 60); higher, a house shows only its dark roof
    radius: float = 2.9  # the middle of the training cameras' 2.6..3.2
    fov_y: float = 45.0  # the middle of 40..50
    back_azimuths: tuple[float, ...] = (135.0, 180.0, 225.0)  # views the classifier must not judge "front"
    janus_image_size: int = 128  # the front features are small: a snowman's eyes are ~1 px at 64
    # far_side_check: the truth must be closer than each other hypothesis by this fraction of the two distances'
    # sum. A house without its door is about as close to the house as to it turned around: margins -0.03 (yellow)
    # to -0.11 (green); the truth itself scores -1
    far_side_margin: float = 0.2
    # surface measures (surface_measures)
    surface_points: int = 100_000  # points sampled on each surface (Occupancy Networks' count)
    surface_seed: int = 0  # the sampling seed: the same mesh always gets the same points
    fscore_fractions: tuple[float, ...] = (0.01, 0.02)  # F-score thresholds, fractions of the object's size
    exact_within: float = 0.04  # nearest neighbours are exact up to this fraction of the size (nearest_points)
    far_step: int = 16  # farther, the nearest of every far_step-th sample is taken
    # appearance and colour noise (heldout_cameras, appearance, color_noise)
    heldout_elevation: float = 30.0  # neither the judged ring (15) nor a bake ring's azimuths (texture.py)
    heldout_azimuths: tuple[float, ...] = (22.5, 67.5, 112.5, 157.5, 202.5, 247.5, 292.5, 337.5)
    heldout_image_size: int = 128  # pixels per side (rendered at supersample times that, averaged down)
    noise_erode: int = 2  # pixels the ground truth's uniformly coloured region is eroded by (edges left out)
    noise_tolerance: float = 0.02  # a ground-truth pixel is "the body colour" within this, per channel


# ---------------------------------------------------------------------------------------------- geometry


def _parity_along(tri: np.ndarray, axis: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Inside (parity of surface crossings) of every voxel centre of a ``shape`` box, for rays along ``axis``.

    ``tri`` (F, 3, 3) is in grid-index units: voxel centre (i, j, k) sits at coordinates (i, j, k). Rays pass
    through the centres, shifted by a tiny irrational offset so that none runs exactly through a shared edge
    or vertex (which would count one crossing twice). Returns a bool array of ``shape``, in x, y, z order."""
    u, v = [a for a in range(3) if a != axis]
    nu, nv, nw = shape[u], shape[v], shape[axis]
    ju, jv = 1e-4 * np.sqrt(2.0), 1e-4 * np.sqrt(3.0)
    pu, pv, pw = tri[..., u] - ju, tri[..., v] - jv, tri[..., axis]  # rays now at integer (i, j)
    area = (pu[:, 1] - pu[:, 0]) * (pv[:, 2] - pv[:, 0]) - (pv[:, 1] - pv[:, 0]) * (pu[:, 2] - pu[:, 0])
    keep = np.abs(area) > 1e-12  # faces seen edge-on are never crossed
    pu, pv, pw, area = pu[keep], pv[keep], pw[keep], area[keep]
    i0 = np.clip(np.ceil(pu.min(1)), 0, nu).astype(np.int64)
    i1 = np.clip(np.floor(pu.max(1)), -1, nu - 1).astype(np.int64)
    j0 = np.clip(np.ceil(pv.min(1)), 0, nv).astype(np.int64)
    j1 = np.clip(np.floor(pv.max(1)), -1, nv - 1).astype(np.int64)
    ni, nj = np.maximum(i1 - i0 + 1, 0), np.maximum(j1 - j0 + 1, 0)
    count = ni * nj
    hist = np.zeros(nu * nv * (nw + 1), np.int64)
    face = np.repeat(np.arange(len(count)), count)
    if len(face):
        offs = np.arange(len(face)) - np.repeat(np.cumsum(count) - count, count)
        i = i0[face] + offs % ni[face]
        j = j0[face] + offs // ni[face]
        a_u, a_v, a_w = pu[face], pv[face], pw[face]

        def edge(p, q):  # twice the signed area of (vertex p, vertex q, ray point)
            return (a_u[:, q] - a_u[:, p]) * (j - a_v[:, p]) - (a_v[:, q] - a_v[:, p]) * (i - a_u[:, p])

        l0, l1, l2 = edge(1, 2), edge(2, 0), edge(0, 1)
        s = np.sign(area[face])
        inside = (l0 * s >= 0) & (l1 * s >= 0) & (l2 * s >= 0)
        w = (l0 * a_w[:, 0] + l1 * a_w[:, 1] + l2 * a_w[:, 2]) / area[face]
        # A crossing at depth w lies before every voxel centre k >= ceil(w).
        k = np.clip(np.ceil(w[inside]), 0, nw).astype(np.int64)
        np.add.at(hist, (i[inside] * nv + j[inside]) * (nw + 1) + k, 1)
    inside_uvw = (np.cumsum(hist.reshape(nu, nv, nw + 1), axis=-1)[..., :nw] % 2).astype(bool)
    order = np.empty(3, np.int64)
    order[[u, v, axis]] = [0, 1, 2]
    return inside_uvw.transpose(order)


def occupancy_grid(mesh: trimesh.Trimesh, resolution: int = 64, bound: float = 1.0) -> np.ndarray:
    """(R, R, R) bool occupancy of voxel centres ``-bound + (k + 0.5) * 2 bound / R``, indexed [x, y, z].

    Vertices are welded by position first (an exported mesh splits them along UV seams) and repeated faces
    dropped (a face counted twice cancels its crossing); then each connected component is filled on its
    own, within its bounding box, and the results are OR-ed: the union of closed parts."""
    if resolution < 2 or bound <= 0:
        raise ValueError(f"need resolution >= 2 and bound > 0; got {resolution}, {bound}")
    occ = np.zeros((resolution,) * 3, bool)
    if mesh is None or len(mesh.faces) == 0:
        return occ
    welded = trimesh.Trimesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64), process=True)
    _, first = np.unique(np.sort(welded.faces, axis=1), axis=0, return_index=True)
    welded.update_faces(np.sort(first))
    step = 2 * bound / resolution
    for part in welded.split(only_watertight=False):
        if len(part.faces) < 4:  # fewer than four triangles enclose nothing
            continue
        tri = (np.asarray(part.triangles, np.float64) + bound) / step - 0.5  # grid-index units
        lo = np.clip(np.floor(tri.min((0, 1))), 0, resolution - 1).astype(int)
        hi = np.clip(np.ceil(tri.max((0, 1))), 0, resolution - 1).astype(int)
        if (tri.max((0, 1)) < 0).any() or (tri.min((0, 1)) > resolution - 1).any():
            continue  # entirely outside the grid
        box = tuple(int(x) for x in hi - lo + 1)
        votes = sum(_parity_along(tri - lo, axis, box).astype(np.int8) for axis in range(3))
        occ[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] |= votes >= 2
    return occ


def volumetric_iou(mesh_a: trimesh.Trimesh, mesh_b: trimesh.Trimesh, resolution: int = 64, bound: float = 1.0) -> float:
    """Intersection over union of the two meshes' insides on one voxel grid (0 when both are empty)."""
    a = occupancy_grid(mesh_a, resolution, bound)
    b = occupancy_grid(mesh_b, resolution, bound)
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0


# ---------------------------------------------------------------------------------------------- renders


@dataclass
class Surface:
    """What the renderer needs of a coloured mesh: geometry and either vertex colours or uv + texture."""

    vertices: torch.Tensor  # (V, 3) float32
    faces: torch.Tensor  # (F, 3) long
    vertex_colors: torch.Tensor | None = None  # (V, 3)
    uv: torch.Tensor | None = None  # (V, 2), OBJ convention (v up), as trimesh loads glTF
    texture: torch.Tensor | None = None  # (H, W, 3), row 0 at the top


def surface_from_colored(mesh: ColoredMesh) -> Surface:
    v, f, c = mesh.flat()
    return Surface(torch.from_numpy(v), torch.from_numpy(f).long(), vertex_colors=torch.from_numpy(c))


def _material_texture(material) -> tuple[np.ndarray | None, np.ndarray]:
    """(texture image (H, W, 3) in [0, 1] or None, colour factor (3,)) of a trimesh material. glTF
    multiplies the texture by ``baseColorFactor``; without a texture the material's main colour is it."""
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    factor = getattr(material, "baseColorFactor", None)
    if factor is None and image is None:
        factor = getattr(material, "main_color", None)
    if factor is None:
        factor = np.ones(3)
    factor = np.asarray(factor)
    factor = factor[:3] / 255.0 if factor.dtype == np.uint8 else factor[:3].astype(np.float64)
    tex = None if image is None else np.asarray(image.convert("RGB"), np.float32) / 255.0
    return tex, factor


def surface_from_trimesh(mesh: trimesh.Trimesh) -> Surface:
    """A renderable surface from a loaded mesh: glTF texture (x base colour factor), vertex or face colours."""
    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    vis = mesh.visual
    if isinstance(vis, trimesh.visual.texture.TextureVisuals):
        tex, factor = _material_texture(vis.material)
        if tex is not None and vis.uv is not None and len(vis.uv) == len(v):
            tex = torch.from_numpy(tex * factor.astype(np.float32))
            return Surface(v, f, uv=torch.as_tensor(np.asarray(vis.uv), dtype=torch.float32), texture=tex)
        return Surface(v, f, vertex_colors=torch.tensor(factor, dtype=torch.float32).expand(len(v), 3).contiguous())
    if isinstance(vis, trimesh.visual.color.ColorVisuals) and vis.kind == "face":
        fc = torch.as_tensor(np.asarray(vis.face_colors)[:, :3] / 255.0, dtype=torch.float32)
        return Surface(
            v[f].reshape(-1, 3), torch.arange(3 * len(f)).reshape(-1, 3), vertex_colors=fc.repeat_interleave(3, 0)
        )
    if isinstance(vis, trimesh.visual.color.ColorVisuals) and vis.kind == "vertex":
        return Surface(
            v, f, vertex_colors=torch.as_tensor(np.asarray(vis.vertex_colors)[:, :3] / 255.0, dtype=torch.float32)
        )
    raise ValueError("the mesh carries no colour (no texture, vertex or face colours); export it with its texture")


def judge_cameras(cfg: EvalConfig, size: int | None = None) -> Cameras:
    """The judged views: a ring at ``cfg.elevation`` over ``cfg.azimuths``, then one overhead view."""
    size = size or cfg.image_size
    el = [cfg.elevation] * len(cfg.azimuths) + [cfg.overhead_elevation]
    az = list(cfg.azimuths) + [0.0]
    return orbit_cameras(torch.tensor(el), torch.tensor(az), cfg.radius, cfg.fov_y, size, size)


def render_views(surface: Surface, cameras: Cameras, supersample: int = 1) -> dict[str, torch.Tensor]:
    """Flat-shaded renders in the world's lighting, as the classifier's training images were made.

    Returns ``shaded`` (B, H, W, 3) on white, ``albedo`` (B, H, W, 3) premultiplied by coverage (unlit
    colour, for colour comparisons) and ``alpha`` (B, H, W, 1). With ``supersample`` s > 1 the cameras
    are rendered s times larger and averaged down, which also smooths the facets of marching-cubes meshes."""
    s = int(supersample)
    cams = cameras.resized(cameras.width * s, cameras.height * s) if s > 1 else cameras
    raster = rasterize_mesh(surface.vertices, surface.faces, cams, backend="torch")
    if surface.texture is not None:
        albedo = sample_texture(surface.texture, interpolate(surface.uv, surface.faces, raster))
    else:
        albedo = interpolate(surface.vertex_colors, surface.faces, raster)
    normals = face_normals(surface.vertices, surface.faces)[raster.face_id.clamp_min(0)]
    alpha = raster.mask[..., None].float()
    albedo = albedo.clamp(0, 1) * alpha
    lit = shade_lambert(albedo, normals, LIGHT_DIR, AMBIENT) * alpha
    out = {"albedo": albedo, "lit": lit, "alpha": alpha}
    if s > 1:
        out = {k: F.avg_pool2d(x.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1) for k, x in out.items()}
    return {"shaded": out["lit"] + (1 - out["alpha"]), "albedo": out["albedo"], "alpha": out["alpha"]}


# ---------------------------------------------------------------------------------------------- colour


def colour_error(gen: dict[str, torch.Tensor], gt: dict[str, torch.Tensor]) -> dict:
    """Colour agreement of two sets of renders from the same cameras (outputs of :func:`render_views`).

    ``color_distance``: RGB distance of the mean foreground albedo over all views (0 to sqrt 3).
    ``color_pixel_error``: mean RGB distance per pixel where both cover (None where they never overlap).
    ``palette_color``: the world colour most foreground pixels of ``gen`` are nearest to (pixels nearest
    the dark detail colour do not vote), a judge that needs no classifier."""

    def mean_colour(r):
        cover = r["alpha"].sum()
        return (r["albedo"].sum((0, 1, 2)) / cover) if cover > 0 else None

    mg, mt = mean_colour(gen), mean_colour(gt)
    out = {
        "color_distance": None if mg is None or mt is None else float((mg - mt).norm()),
        "mean_albedo": None if mg is None else [round(float(x), 4) for x in mg],
    }
    both = (gen["alpha"][..., 0] > 0.99) & (gt["alpha"][..., 0] > 0.99)
    if both.any():
        d = (gen["albedo"] / gen["alpha"].clamp_min(1e-6) - gt["albedo"] / gt["alpha"].clamp_min(1e-6)).norm(dim=-1)
        out["color_pixel_error"] = float(d[both].mean())
    else:
        out["color_pixel_error"] = None
    fg = gen["alpha"][..., 0] > 0.99
    out["palette_color"] = None
    if fg.any():
        pix = (gen["albedo"] / gen["alpha"].clamp_min(1e-6))[fg]
        palette = torch.tensor(list(COLORS.values()) + [DETAIL], dtype=pix.dtype)
        nearest = torch.cdist(pix, palette).argmin(-1)
        votes = torch.bincount(nearest, minlength=len(palette))[: len(COLORS)]
        if votes.sum() > 0:
            out["palette_color"] = list(COLORS)[int(votes.argmax())]
    return out


# ---------------------------------------------------------------------------------------------- surface


def fscore_key(fraction: float) -> str:
    """The result key of the F-score at ``fraction`` of the object's size: 0.01 -> ``fscore_1pct``."""
    return f"fscore_{100 * fraction:g}pct"


def object_size(mesh: trimesh.Trimesh) -> float:
    """The size F-score thresholds are fractions of: the largest side of the axis-aligned bounding box (the
    normalisation of Occupancy Networks and ConvONet, which scale each object to a unit longest side)."""
    return float(np.ptp(np.asarray(mesh.vertices, np.float64), axis=0).max())


def sample_surface(mesh: trimesh.Trimesh, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` points drawn uniformly by area on the mesh (trimesh.sample.sample_surface with ``seed``, so the
    same mesh gets the same points), with the unit normal of the face each lies on and that face's index.
    Returns (points (N, 3), normals (N, 3), faces (N,)), float64; empty arrays for a mesh without area."""
    if len(mesh.faces) == 0 or not mesh.area > 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64)
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, np.float64), np.asarray(mesh.face_normals, np.float64)[faces], np.asarray(faces)


def winding_number(points: np.ndarray, triangles: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Generalised winding number of each point (N, 3) with respect to triangles (F, 3, 3): 1 inside a closed
    outward-wound surface, 0 outside, 1/2 on it. The sum of the triangles' signed solid angles (Van Oosterom and
    Strackee's formula) over 4 pi, in float32 (ample to tell 0 from 1), ``chunk`` point-triangle pairs at a time."""
    out = np.zeros(len(points))
    if len(triangles) == 0:
        return out
    tri = np.asarray(triangles, np.float32)
    per = max(1, chunk // len(tri))
    for s in range(0, len(points), per):
        p = np.asarray(points[s : s + per, None], np.float32)
        ax, ay, az = (tri[None, :, 0, k] - p[..., k] for k in range(3))
        bx, by, bz = (tri[None, :, 1, k] - p[..., k] for k in range(3))
        cx, cy, cz = (tri[None, :, 2, k] - p[..., k] for k in range(3))
        la, lb, lc = (
            np.sqrt(ax * ax + ay * ay + az * az),
            np.sqrt(bx * bx + by * by + bz * bz),
            np.sqrt(cx * cx + cy * cy + cz * cz),
        )
        det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        div = la * lb * lc + (ax * bx + ay * by + az * bz) * lc + (bx * cx + by * cy + bz * cz) * la
        div += (cx * ax + cy * ay + cz * az) * lb
        out[s : s + per] = np.arctan2(det, div).sum(1, dtype=np.float64) / (2 * np.pi)
    return out


def visible_surface(mesh: trimesh.Trimesh, points: np.ndarray, normals: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Which sampled points (from :func:`sample_surface`) lie on the surface of the union of the mesh's parts.

    The world's composites are unions of closed, outward-wound parts that overlap (a snowman's spheres, a
    door half inside a house, a roof resting on the walls): the parts' faces inside another part are not
    surface, and a reconstruction cannot have them. A point is kept unless, moved 1e-4 of the object's size
    along its outward normal, it is inside another part (winding number >= 0.5): the offset decides the
    points where two parts touch face to face (both sides hidden) instead of rounding. Parts are the mesh's
    connected components; only a part whose bounding box holds a point is tested against it."""
    label = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    keep = np.ones(len(points), bool)
    if label.max(initial=0) == 0:
        return keep
    moved = points + 1e-4 * object_size(mesh) * normals
    tri = np.asarray(mesh.triangles, np.float64)
    point_part = label[faces]
    for k in range(int(label.max()) + 1):
        part = tri[label == k]
        lo, hi = part.reshape(-1, 3).min(0), part.reshape(-1, 3).max(0)
        test = (point_part != k) & np.all((moved >= lo) & (moved <= hi), axis=1) & keep
        if test.any():
            keep[test] = winding_number(moved[test], part) < 0.5
    return keep


@dataclass
class SurfaceMatch:
    """Points sampled on the generated surface and on the ground truth, and each one's nearest point on the other."""

    gen_normals: np.ndarray  # (N, 3)
    gt_normals: np.ndarray  # (M, 3)
    accuracy: np.ndarray  # (N,) distance of each generated point to the nearest ground-truth point
    gen_nearest: np.ndarray  # (N,) index of that ground-truth point
    completeness: np.ndarray  # (M,) distance of each ground-truth point to the nearest generated point
    gt_nearest: np.ndarray  # (M,) index of that generated point


def nearest_points(points: np.ndarray, query: np.ndarray, exact_within: float, far_step: int = 16):
    """(distance, index) of the nearest of ``points`` to each ``query`` point (scipy's cKDTree, Euclidean).

    Exact wherever some point lies within ``exact_within``. Farther, the nearest of every ``far_step``-th point
    (a uniform subset: trimesh's samples come in random order) is taken: a query near the centre of a curved
    sampled surface (a ball inside a sphere, a filled torus hole) is nearly as far from all of its points, and
    an exact search would visit them all (minutes for a grey ball against a snowman). The subset's nearest is
    an upper bound of the distance, too large by about lateral_offset^2 / (2 distance): for a radius-0.5 ball
    against the snowman or the chair, where three quarters of the points are far, by 0.3-0.9 % of those points'
    distances on average, 0.2-0.5 % of the mean distance (tests/test_evaluate.py bounds it). No F-score changes
    as long as ``exact_within`` exceeds its threshold."""
    tree = cKDTree(points)
    dist, index = tree.query(query, distance_upper_bound=exact_within)
    far = ~np.isfinite(dist)
    if far.any():
        sub = np.arange(0, len(points), max(1, far_step))
        d, i = cKDTree(points[sub]).query(query[far])
        dist[far], index[far] = d, sub[i]
    return dist, index


def match_surfaces(
    gen: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], exact_within: float, far_step: int = 16
) -> SurfaceMatch:
    """Nearest neighbours both ways (:func:`nearest_points`) between (points, normals) samples."""
    acc, gen_nearest = nearest_points(gt[0], gen[0], exact_within, far_step)
    comp, gt_nearest = nearest_points(gen[0], gt[0], exact_within, far_step)
    return SurfaceMatch(gen[1], gt[1], acc, gen_nearest, comp, gt_nearest)


def chamfer_fscore(match: SurfaceMatch, size: float, fractions=(0.01, 0.02)) -> dict:
    """Chamfer-L1 as Occupancy Networks define it: the mean of accuracy (the mean Euclidean, not squared,
    distance from the generated points to the nearest ground-truth point) and completeness (the same from the
    ground truth to the generated points), in world units. F-score at threshold t = fraction x ``size``: the
    harmonic mean of precision (generated points within t of the ground truth) and recall (ground-truth points
    within t of the generated ones); 0 when either is 0."""
    out = {
        "chamfer_accuracy": float(match.accuracy.mean()),
        "chamfer_completeness": float(match.completeness.mean()),
    }
    out["chamfer_l1"] = (out["chamfer_accuracy"] + out["chamfer_completeness"]) / 2
    for fraction in fractions:
        t = fraction * size
        precision, recall = float((match.accuracy < t).mean()), float((match.completeness < t).mean())
        out[fscore_key(fraction)] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return out


def normal_consistency(match: SurfaceMatch) -> float:
    """Occupancy Networks' normal consistency: the mean absolute cosine between the normal at each generated
    point and the normal at its nearest ground-truth point, and the same from the ground truth, averaged. The
    absolute value makes it blind to orientation (a flipped face counts as aligned); 1 for matching surfaces."""
    acc = np.abs((match.gen_normals * match.gt_normals[match.gen_nearest]).sum(-1)).mean()
    comp = np.abs((match.gt_normals * match.gen_normals[match.gt_nearest]).sum(-1)).mean()
    return float((acc + comp) / 2)


def surface_measures(mesh: trimesh.Trimesh, gt: trimesh.Trimesh, cfg: EvalConfig) -> dict:
    """Chamfer-L1, F-scores and normal consistency of a generated mesh against the ground truth, both in the
    world frame, from ``cfg.surface_points`` points sampled on each (:func:`sample_surface`). The generated mesh
    is taken as exported (all of it); the ground truth's points are those on its visible surface
    (:func:`visible_surface`). ``object_size``: the ground truth's largest side (:func:`object_size`). An empty
    mesh gets F-scores 0 and no Chamfer distance or normal consistency (None)."""
    size = object_size(gt)
    gp, gn, gf = sample_surface(gt, cfg.surface_points, cfg.surface_seed)
    keep = visible_surface(gt, gp, gn, gf)
    out = {"object_size": size}
    mp, mn, _ = sample_surface(mesh, cfg.surface_points, cfg.surface_seed)
    if len(mp) == 0:
        out.update({"chamfer_l1": None, "chamfer_accuracy": None, "chamfer_completeness": None})
        out.update({fscore_key(f): 0.0 for f in cfg.fscore_fractions})
        out["normal_consistency"] = None
        return out
    match = match_surfaces((mp, mn), (gp[keep], gn[keep]), cfg.exact_within * size, cfg.far_step)
    out.update(chamfer_fscore(match, size, cfg.fscore_fractions))
    out["normal_consistency"] = normal_consistency(match)
    return out


# ---------------------------------------------------------------------------------------------- appearance


def heldout_cameras(cfg: EvalConfig) -> Cameras:
    """The appearance views: a ring at ``cfg.heldout_elevation`` over ``cfg.heldout_azimuths`` (30 deg, 22.5 +
    45 k by default), at the judged views' distance and field of view. No camera of a run was placed there:
    training draws its cameras at random, the judged ring is at 15 deg, and the texture bake's 30 deg ring
    is at multiples of 45 deg (around the mesh's own centre)."""
    n, size = len(cfg.heldout_azimuths), cfg.heldout_image_size
    el = torch.full((n,), float(cfg.heldout_elevation))
    return orbit_cameras(el, torch.tensor(cfg.heldout_azimuths), cfg.radius, cfg.fov_y, size, size)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio of two images, 10 log10(data_range^2 / MSE) in dB. Equal images would give
    infinity; the MSE is floored at 1e-10 data_range^2, so the largest value is 100 dB."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float(10 * np.log10(data_range**2 / max(mse, 1e-10 * data_range**2)))


def appearance(gen_shaded: torch.Tensor, gt_shaded: torch.Tensor) -> dict:
    """PSNR and SSIM of renders (B, H, W, 3) in [0, 1] against the ground truth's, whole images (object and
    white background), each the mean over the B views. SSIM is scikit-image's (7x7 window, per channel
    then averaged, data_range 1)."""
    gen, gt = gen_shaded.clamp(0, 1).numpy().astype(np.float64), gt_shaded.clamp(0, 1).numpy().astype(np.float64)
    return {
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(gen, gt)])),
        "ssim": float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=1.0) for a, b in zip(gen, gt)])),
    }


def _body_pixels(
    gen: dict[str, torch.Tensor], gt: dict[str, torch.Tensor], body: tuple, erode: int, tolerance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generated albedo (B, H, W, 3) and the region (B, H, W) bool where the ground truth is its body colour
    (see :func:`color_noise`)."""
    gt_alpha, gen_alpha = gt["alpha"][..., 0], gen["alpha"][..., 0]
    gt_colour = gt["albedo"] / gt["alpha"].clamp_min(1e-6)
    on_body = (gt_alpha > 0.99) & ((gt_colour - torch.tensor(body, dtype=gt_colour.dtype)).abs().amax(-1) < tolerance)
    region = on_body.numpy()
    if erode > 0:
        region = np.stack([ndimage.binary_erosion(r, np.ones((3, 3), bool), iterations=erode) for r in region])
    region = torch.from_numpy(region) & (gen_alpha > 0.99)
    return (gen["albedo"] / gen["alpha"].clamp_min(1e-6)).double(), region


def color_noise(
    gen: dict[str, torch.Tensor], gt: dict[str, torch.Tensor], body: tuple, erode: int = 2, tolerance: float = 0.02
) -> float | None:
    """How uneven the generated colour is where the ground truth is one colour (renders of :func:`render_views`
    from the same cameras).

    The region: pixels fully covered by the ground truth (alpha > 0.99) whose albedo is the body colour
    ``body`` (the prompt's colour, not the dark detail colour) within ``tolerance`` in every channel, eroded by
    ``erode`` pixels (3x3 square, per view) so that anti-aliased edges and the borders of details do not count,
    and fully covered by the generated render. The value: the root mean square over those pixels of all views
    and the three channels of the generated albedo's deviation from its own mean colour there, i.e. the RMS
    RGB distance from the mean divided by sqrt 3, so that independent noise of standard deviation s in every
    channel gives s. 0 for a perfectly uniform colour, whatever colour it is (a wrong but uniform colour is
    colour_distance's business). None where the region is empty."""
    albedo, region = _body_pixels(gen, gt, body, erode, tolerance)
    if not region.any():
        return None
    pix = albedo[region]
    return float(((pix - pix.mean(0)) ** 2).mean().sqrt())


def color_speckle(
    gen: dict[str, torch.Tensor],
    gt: dict[str, torch.Tensor],
    body: tuple,
    erode: int = 2,
    tolerance: float = 0.02,
    window: int = 5,
) -> float | None:
    """The fine-grained part of :func:`color_noise`: the RMS (per channel, over the same region) of the generated
    albedo's deviation from its mean over the ``window`` x ``window`` pixels around it (region pixels only).

    A smooth change of colour across the object (a darker back, a patch larger than the window) is left out;
    a speckle of single Gaussians' colours is kept, as the eye sees it. A linear ramp gives 0 where the window
    lies inside the region; independent noise of standard deviation s gives about s (s * sqrt(1 - 1 / window^2)).
    None where the region is empty."""
    albedo, region = _body_pixels(gen, gt, body, erode, tolerance)
    if not region.any():
        return None
    a, w = albedo.permute(0, 3, 1, 2), region[:, None].double()  # (B, 3, H, W), (B, 1, H, W)
    pool = functools.partial(torch.nn.functional.avg_pool2d, kernel_size=window, stride=1, padding=window // 2)
    local = pool(a * w) / pool(w).clamp_min(1e-12)  # the mean over the window's region pixels
    dev = (a - local).permute(0, 2, 3, 1)[region]
    return float((dev**2).mean().sqrt())


# ---------------------------------------------------------------------------------------------- judge


@functools.lru_cache(maxsize=1)
def _load_default_classifier():
    return load_classifier()


def default_classifier():
    """The shipped world classifier, or None while assets/world_classifier does not exist."""
    try:
        return _load_default_classifier()
    except FileNotFoundError:
        return None


def judge(classifier, shaded: torch.Tensor, cfg: EvalConfig, color: str, shape: str) -> dict:
    """Classifier verdicts on the judged views (``shaded`` from :func:`judge_cameras` order).

    ``janus_classifier`` (front-distinct shapes only; None otherwise): some back-half view is judged "front"."""
    pred = predict(classifier, shaded.clamp(0, 1))
    el = [cfg.elevation] * len(cfg.azimuths) + [cfg.overhead_elevation]
    az = list(cfg.azimuths) + [0.0]
    front = VIEWS.index("front")
    views = [
        {"elevation": e, "azimuth": a, "color": c, "shape": s, "view": v, "p_front": round(float(p[front]), 4)}
        for e, a, c, s, v, p in zip(el, az, pred.color, pred.shape, pred.view, pred.probs["view"])
    ]
    out = {
        "color_accuracy": float(np.mean([c == color for c in pred.color])),
        "shape_accuracy": float(np.mean([s == shape for s in pred.shape])),
        "front_distinct": shape in COMPOSITES,
        "janus_classifier": None,
        "views": views,
    }
    if shape in COMPOSITES:
        back = [
            v
            for v in views
            if v["elevation"] == cfg.elevation
            and any(abs((v["azimuth"] - b + 180) % 360 - 180) < 1e-6 for b in cfg.back_azimuths)
        ]
        out["janus_classifier"] = any(v["view"] == "front" for v in back)
        out["janus_classifier_views"] = [v["azimuth"] for v in back if v["view"] == "front"]
        out["front_seen"] = any(
            v["view"] == "front" for v in views if v["elevation"] == cfg.elevation and v["azimuth"] % 360 == 0
        )
    return out


# ---------------------------------------------------------------------------------------------- Janus


def turned_around(mesh: ColoredMesh) -> ColoredMesh:
    """The object turned 180 degrees about +Y: its front feature at the back (the door at the back, the mug's
    handle on the other side, the chair's backrest in front). What a far side guessed backwards looks like."""
    turned = mesh.vertices * np.array([-1, 1, -1], np.float32)  # a rotation: the winding stays outward
    return ColoredMesh(turned, mesh.faces, mesh.face_colors)


def janus_twin(mesh: ColoredMesh) -> ColoredMesh:
    """The object together with a copy of itself turned 180 degrees about +Y: its front feature (door, face,
    handle, backrest) on both sides. What a two-faced (Janus) result looks like."""
    turned = turned_around(mesh)
    return ColoredMesh(
        np.concatenate([mesh.vertices, turned.vertices]),
        np.concatenate([mesh.faces, turned.faces + len(mesh.vertices)]),
        np.concatenate([mesh.face_colors, turned.face_colors]),
    )


def compare_hypotheses(
    surface: Surface | None, gt: ColoredMesh, others: list[ColoredMesh], color: str, cfg: EvalConfig
) -> list[tuple[float, float] | None]:
    """Is the generated object (``surface``; None when the mesh is empty) closer to ``gt`` or to each of ``others``
    (the ground truth changed where it is front-distinct: :func:`janus_twin`, :func:`turned_around`)?

    Every hypothesis is rendered (unlit albedo over white) from the ring of judged views at ``janus_image_size``;
    only the pixels where ``gt`` and the other differ can tell the two apart, and there the generated render,
    white-balanced to the ground truth's body colour, is compared with each. Needs no learned notion of "front",
    unlike the classifier. Returns, per other, (distance to ``gt``, distance to the other): sums of the per-pixel
    RGB L1 over that region; None where the two hypotheses look the same from every judged view."""
    size = cfg.janus_image_size
    cams = judge_cameras(cfg, size)[: len(cfg.azimuths)]

    def render(surface):
        r = render_views(surface, cams, cfg.supersample)
        return r["albedo"], r["alpha"]

    a1, m1 = render(surface_from_colored(gt))
    one = a1 + (1 - m1)
    if surface is not None:
        # White-balance the generated renders to the body colour, view by view: the gain that takes the
        # median generated colour where the ground truth shows its body colour to that colour. A texture that
        # is darker or tinted overall is then not mistaken for a second dark feature.
        ag, mg = render(surface)
        body = torch.tensor(COLORS[color], dtype=ag.dtype)
        on_body = ((a1 / m1.clamp_min(1e-6) - body).abs().amax(-1) < 0.05) & (m1[..., 0] > 0.99) & (mg[..., 0] > 0.99)
        gain = torch.stack(
            [
                body / (ag[b] / mg[b].clamp_min(1e-6))[on_body[b]].median(0).values.clamp_min(1e-3)
                if on_body[b].sum() > 10
                else torch.ones(3)
                for b in range(len(cams))
            ]
        )
        gen = (ag * gain.clamp(0.25, 4.0)[:, None, None]).clamp(0, 1) + (1 - mg)
    else:
        gen = torch.ones_like(one)
    out = []
    for other in others:
        a2, m2 = render(surface_from_colored(other))
        two = a2 + (1 - m2)
        region = (one - two).abs().sum(-1) > 0.15
        if not region.any():
            out.append(None)
            continue
        out.append((float((gen - one).abs().sum(-1)[region].sum()), float((gen - two).abs().sum(-1)[region].sum())))
    return out


def _margin(d_gt: float, d_other: float) -> float:
    """(d_gt - d_other) / (d_gt + d_other), 4 decimals: near -1 clearly the ground truth, near +1 clearly the other."""
    return round((d_gt - d_other) / max(d_gt + d_other, 1e-9), 4)


def janus_check(surface: Surface | None, gt: ColoredMesh, color: str, cfg: EvalConfig) -> dict:
    """Does the generated object (``surface``; None when the mesh is empty) show its front feature once (as
    ``gt``) or twice (as :func:`janus_twin`)? Compared where the two differ (:func:`compare_hypotheses`).

    ``janus`` is True when it is closer to the two-faced object. Unlike the classifier this needs no learned
    notion of "front", so it also sees a snowman's second face.
    ``janus_margin`` = (d_one - d_two) / (d_one + d_two): near -1 clearly one front, near +1 clearly two."""
    (d,) = compare_hypotheses(surface, gt, [janus_twin(gt)], color, cfg)
    if d is None:
        return {"janus": None, "janus_margin": None}
    return {"janus": d[1] < d[0], "janus_margin": _margin(*d)}


def far_side_check(surface: Surface | None, gt: ColoredMesh, color: str, cfg: EvalConfig) -> dict:
    """Image-to-3D from a front view: is the object the right way round where the image does not show it?

    The generated object (``surface``; None when the mesh is empty) must be closer to ``gt`` than to ``gt``
    turned around (:func:`turned_around`: the door at the back, the mug's handle on the other side) and than to
    its two-faced twin (:func:`janus_twin`: the front feature on both sides), each compared where the two differ
    (:func:`compare_hypotheses`, over the whole ring of judged views: a chair's twin differs at the front, its
    backrest, not behind). ``far_side_margin_turned`` / ``_twin``: (d_gt - d_other) / (d_gt + d_other), below 0
    where ``gt`` is closer. ``far_side_correct``: both margins below ``-cfg.far_side_margin`` (None where neither
    pair differs, as for a primitive; False for an empty mesh)."""
    turned, twin = compare_hypotheses(surface, gt, [turned_around(gt), janus_twin(gt)], color, cfg)
    margins = [None if d is None else _margin(*d) for d in (turned, twin)]
    judged = [m for m in margins if m is not None]
    return {
        "far_side_correct": (surface is not None and all(m < -cfg.far_side_margin for m in judged)) if judged else None,
        "far_side_margin_turned": margins[0],
        "far_side_margin_twin": margins[1],
    }


# ---------------------------------------------------------------------------------------------- entry points


def _as_trimesh(mesh) -> trimesh.Trimesh:
    if isinstance(mesh, trimesh.Trimesh):
        return mesh
    if isinstance(mesh, trimesh.Scene):
        geoms = list(mesh.dump())
        if len(geoms) == 1:
            return geoms[0]
        raise ValueError(f"the scene holds {len(geoms)} meshes; evaluate one mesh (dream3d exports one)")
    raise TypeError(f"expected a trimesh.Trimesh, got {type(mesh).__name__}")


def evaluate_mesh(mesh, prompt: str, classifier="auto", cfg: EvalConfig | None = None) -> dict:
    """Every measure for one generated mesh (world frame, +Y up, front +Z) of a world prompt.

    ``classifier``: a WorldClassifier, "auto" (the shipped one if present) or None (skip its measures, which
    are then None)."""
    cfg = cfg or EvalConfig()
    t0 = time.time()
    color, shape, _ = parse_prompt(prompt)
    mesh = _as_trimesh(mesh)
    gt = scene_for_prompt(prompt)
    gt_mesh = gt.to_trimesh()
    out = {
        "prompt": prompt,
        "color": color,
        "shape": shape,
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "iou": volumetric_iou(mesh, gt_mesh, cfg.iou_resolution, cfg.bound),
    }
    out.update(surface_measures(mesh, gt_mesh, cfg))
    cams = judge_cameras(cfg)
    gt_views = render_views(surface_from_colored(gt), cams, cfg.supersample)
    surface = surface_from_trimesh(mesh) if len(mesh.faces) else None
    if surface is not None:
        gen_views = render_views(surface, cams, cfg.supersample)
    else:
        gen_views = {k: torch.zeros_like(v) for k, v in gt_views.items()}
        gen_views["shaded"] = torch.ones_like(gt_views["shaded"])
    out.update(colour_error(gen_views, gt_views))
    held = heldout_cameras(cfg)
    gt_held = render_views(surface_from_colored(gt), held, cfg.supersample)
    if surface is not None:
        gen_held = render_views(surface, held, cfg.supersample)
    else:  # nothing rendered: white
        gen_held = {k: torch.zeros_like(v) for k, v in gt_held.items()} | {"shaded": torch.ones_like(gt_held["shaded"])}
    out.update(appearance(gen_held["shaded"], gt_held["shaded"]))
    out["color_noise"] = color_noise(gen_held, gt_held, COLORS[color], cfg.noise_erode, cfg.noise_tolerance)
    out["color_speckle"] = color_speckle(gen_held, gt_held, COLORS[color], cfg.noise_erode, cfg.noise_tolerance)
    out["palette_color_correct"] = out["palette_color"] == color
    if classifier == "auto":
        classifier = default_classifier()
    out["classifier"] = classifier is not None
    if classifier is not None:
        out.update(judge(classifier, gen_views["shaded"], cfg, color, shape))
    else:
        out.update(
            {
                "color_accuracy": None,
                "shape_accuracy": None,
                "front_distinct": shape in COMPOSITES,
                "janus_classifier": None,
                "views": None,
            }
        )
    out.update(janus_check(surface, gt, color, cfg) if shape in COMPOSITES else {"janus": None})
    out["eval_seconds"] = round(time.time() - t0, 2)
    return out


def load_mesh(path: str) -> trimesh.Trimesh:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no mesh at {path}; a finished run folder holds mesh.glb (was output.mesh off?)")
    return _as_trimesh(trimesh.load(path, force="mesh"))


def run_prompt(run_dir: str) -> str:
    """The prompt a run was made from, read from its config.yaml."""
    import yaml

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.yaml in {run_dir}: is it a dream3d run folder?")
    with open(path) as fh:
        prompt = (yaml.safe_load(fh) or {}).get("prompt", "")
    if not prompt:
        raise ValueError(f"{path} has no prompt: only text-to-3D runs of world prompts can be evaluated")
    return prompt


def evaluate_run(run_dir: str, classifier="auto", cfg: EvalConfig | None = None) -> dict:
    """:func:`evaluate_mesh` on a run folder's mesh.glb and config.yaml prompt, plus the run's own timing
    from metrics.json (``run``: total seconds, steps, steps per second) when it is there."""
    out = evaluate_mesh(load_mesh(os.path.join(run_dir, "mesh.glb")), run_prompt(run_dir), classifier, cfg)
    out["run_dir"] = run_dir
    mpath = os.path.join(run_dir, "metrics.json")
    if os.path.exists(mpath):
        with open(mpath) as fh:
            m = json.load(fh)
        train = m.get("train", {})
        out["run"] = {
            "total_seconds": m.get("total_seconds"),
            "train_seconds": train.get("train_seconds"),
            "steps": train.get("steps"),
            "steps_per_second": train.get("steps_per_second"),
        }
    return out


def summarize(results: list[dict]) -> dict:
    """Means over objects, of those that have the value (an empty mesh has no Chamfer distance). The Janus rate
    is over front-distinct objects (:func:`janus_check`); the classifier's Janus rate (a back-half view judged
    "front") is reported beside it."""

    def mean(key, rows=results):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    judged = [r for r in results if r.get("front_distinct") and r.get("janus") is not None]
    runs = [r.get("run") or {} for r in results]
    secs = [x["total_seconds"] for x in runs if x.get("total_seconds") is not None]
    sps = [x["steps_per_second"] for x in runs if x.get("steps_per_second") is not None]
    fscores = list(dict.fromkeys(k for r in results for k in r if k.startswith("fscore_")))
    return {
        "objects": len(results),
        "iou": mean("iou"),
        "chamfer_l1": mean("chamfer_l1"),
        **{k: mean(k) for k in fscores},
        "normal_consistency": mean("normal_consistency"),
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "color_noise": mean("color_noise"),
        "color_speckle": mean("color_speckle"),
        "color_accuracy": mean("color_accuracy"),
        "shape_accuracy": mean("shape_accuracy"),
        "palette_color_accuracy": mean("palette_color_correct"),
        "color_distance": mean("color_distance"),
        "janus_rate": float(np.mean([r["janus"] for r in judged])) if judged else None,
        "janus_objects": len(judged),
        "janus_rate_classifier": mean("janus_classifier", [r for r in results if r.get("front_distinct")]),
        "seconds": float(np.mean(secs)) if secs else None,
        "steps_per_second": float(np.mean(sps)) if sps else None,
    }
