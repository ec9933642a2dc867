"""The mesh stage: density grids, extraction, texturing, refinement and export, against independent references
(brute-force sums, analytic shapes, trimesh's loaders and voxelizer, the Khronos glTF validator)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import TINY_RUN

from dream3d.mesh import texture as texture_mod
from dream3d.mesh.density import function_density_grid, gaussian_density_grid, gaussian_precisions, make_grid
from dream3d.mesh.export import export_mesh, render_turntable, write_glb, write_obj, write_video
from dream3d.mesh.extract import ExtractConfig, blur_field, clean_mesh, decimate, extract_mesh
from dream3d.mesh.stage import (
    MeshConfig,
    gaussian_render_fn,
    median_neighbor_colors,
    mesh_from_density_fn,
    mesh_from_gaussians,
)
from dream3d.mesh.texture import (
    RefineConfig,
    TexturedMesh,
    TextureConfig,
    bake_cameras,
    refine_texture,
    target_loss,
    texture_mesh,
)
from renderers.mesh import sample_texture

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- ground truth: a two-colour box
HALF = torch.tensor([0.5, 0.35, 0.4])
RED, BLUE = torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.1, 0.3, 0.9])


def gt_color(p):
    return torch.where(p[..., 1:2] > 0, RED.to(p), BLUE.to(p))


def box_render(cams):
    """Analytic ray-box render (slab test), premultiplied over black: red above y = 0, blue below."""
    o, d = cams.rays()
    inv = 1 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1, t2 = (-HALF - o) * inv, (HALF - o) * inv
    tn, tf = torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)
    a = ((tf >= tn) & (tf > 0))[..., None].float()
    return gt_color(o + d * tn[..., None]) * a, a


def box_gaussians(step=0.05, sigma=0.04, opacity=0.5, seed=0):
    """Isotropic Gaussians on a jittered lattice filling the box, coloured like the box."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.arange(-h + step / 2, h, step) for h in HALF.tolist()]
    means = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    means = means + 0.3 * step * (torch.rand(means.shape, generator=g) - 0.5)
    N = means.shape[0]
    return (
        means,
        torch.tensor([1.0, 0, 0, 0]).repeat(N, 1),
        torch.full((N, 3), sigma),
        torch.full((N,), opacity),
        gt_color(means),
    )


def small_cfg(texture_size=256, view_res=96) -> MeshConfig:
    cfg = MeshConfig(resolution=64)
    cfg.extract.target_faces = 4000
    cfg.texture.texture_size = texture_size
    cfg.texture.view_resolution = view_res
    return cfg


def face_colour_errors(mesh: TexturedMesh, band: float = 0.1):
    """Max-channel error of the texture at each face centroid against the box colours, away from y = 0."""
    fc = mesh.vertices[mesh.faces].mean(1)
    c = sample_texture(mesh.texture, mesh.uv[mesh.faces].mean(1)[None])[0]
    err = (c - gt_color(fc)).abs().amax(-1)
    return err[fc[:, 1].abs() > band]


def iou_with_box(mesh: TexturedMesh) -> float:
    """Volumetric IoU: both meshes voxelized and filled by trimesh, queried on a common grid."""
    ax = np.arange(-0.6, 0.6, 0.02) + 0.01
    P = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    m = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    gt = trimesh.creation.box(extents=(2 * HALF).tolist())
    a, b = m.voxelized(0.01).fill().is_filled(P), gt.voxelized(0.01).fill().is_filled(P)
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------------------------------- density


def brute_force_density(points, means, quats, scales, opacities, cutoff):
    prec, _ = gaussian_precisions(quats.double(), scales.double())
    d = points.double()[:, None, :] - means.double()[None]
    q = torch.einsum("mni,nij,mnj->mn", d, prec, d)
    return (torch.exp(-0.5 * q) * opacities.double() * (q <= cutoff**2)).sum(-1)


@pytest.mark.parametrize("block", [8, 16])
def test_gaussian_density_matches_brute_force(block):
    g = torch.Generator().manual_seed(1)
    N = 200
    means = torch.randn(N, 3, generator=g) * 0.35 + torch.tensor([0.1, -0.05, 0.0])
    quats = torch.randn(N, 4, generator=g)
    scales = torch.rand(N, 3, generator=g) * 0.1 + 0.005  # anisotropic, some tiny
    op = torch.rand(N, generator=g)
    grid = make_grid([[-0.9, -1.0, -0.8], [1.0, 0.9, 1.1]], 27)  # off-centre box, 27 not a multiple of the block
    dens = gaussian_density_grid(means, quats, scales, op, grid, block=block, cutoff=3.0, max_pairs=5000)
    ref = brute_force_density(grid.points().reshape(-1, 3), means, quats, scales, op, 3.0).reshape(dens.shape)
    assert ref.max() > 1.0
    torch.testing.assert_close(dens.double(), ref, atol=2e-4, rtol=1e-4)


def test_function_density_grid_is_the_function_on_the_grid():
    grid = make_grid(0.8, 19)
    fn = lambda p: torch.exp(-(p * torch.tensor([1.0, 2.0, 3.0])).square().sum(-1)) + p[:, 0]  # noqa: E731
    dens = function_density_grid(fn, grid, chunk=1000)  # chunks do not divide 19^3
    pts = grid.points()
    torch.testing.assert_close(dens, fn(pts.reshape(-1, 3)).reshape(19, 19, 19))
    assert torch.allclose(pts[3, 5, 7], torch.stack([a[i] for a, i in zip(grid.axes(), (3, 5, 7))]))
    with pytest.raises(ValueError, match=r"\(M,\)"):
        function_density_grid(lambda p: p, grid)


# ------------------------------------------------------------------------------------------- extraction


def sphere_field(res=64, r=0.6, bound=1.0):
    grid = make_grid(bound, res)
    return torch.sigmoid((r - grid.points().norm(dim=-1)) * 40) * 3, grid


def test_extracts_closed_outward_sphere_and_drops_floaters():
    field, grid = sphere_field()
    field[4:7, 4:7, 4:7] = 3.0  # a floater in a corner
    v, f, level = extract_mesh(field, grid, ExtractConfig(target_faces=3000))
    assert 0 < level < 3
    m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume > 0  # outward normals: positive signed volume
    r_level = 0.6 - np.log((level / 3) / (1 - level / 3)) / 40  # where the sigmoid field crosses the level
    assert abs(r_level - 0.6) < 0.02
    assert abs(m.volume / (4 / 3 * np.pi * r_level**3) - 1) < 0.02
    assert float(v.norm(dim=-1).max()) < 0.65  # the corner floater is gone
    assert f.shape[0] <= 3000


def test_threshold_follows_the_field_scale():
    """The same shape at density scale 3 and 300 gives the same surface (a fixed level would miss one)."""
    field, grid = sphere_field(res=40)
    v1, _, l1 = extract_mesh(field, grid)
    v2, _, l2 = extract_mesh(field * 100, grid)
    assert l2 == pytest.approx(100 * l1, rel=1e-4)
    assert float(v1.norm(dim=-1).mean()) == pytest.approx(float(v2.norm(dim=-1).mean()), abs=1e-3)


def test_blur_matches_scipy_and_smooths_gaussian_sized_bumps():
    from scipy.ndimage import gaussian_filter

    field = torch.rand(12, 13, 14, generator=torch.Generator().manual_seed(0))
    ref = gaussian_filter(field.numpy().astype(np.float64), 1.5, mode="constant", truncate=5 / 1.5)  # radius 5
    np.testing.assert_allclose(blur_field(field, 1.5).numpy(), ref, atol=1e-5)
    assert blur_field(field, 0.0) is field
    # a sphere of radius 0.6 with blobs of one grid sample on it: the blur takes the normals back to the sphere's
    field, grid = sphere_field(res=48)
    pts = grid.points(field.device)
    bumps = torch.randn(60, 3, generator=torch.Generator().manual_seed(1))
    bumps = 0.62 * bumps / bumps.norm(dim=-1, keepdim=True)
    h = float(grid.spacing[0])
    for b in bumps:
        field = field + 3.0 * torch.exp(-((pts - b) ** 2).sum(-1) / (2 * (1.2 * h) ** 2))

    def normal_error(cfg):
        v, f, _ = extract_mesh(field, grid, cfg)
        m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
        return float(
            1 - (m.vertex_normals * (m.vertices / np.linalg.norm(m.vertices, axis=1, keepdims=True))).sum(1).mean()
        )

    assert normal_error(ExtractConfig(blur_sigma=2.0)) < 0.5 * normal_error(ExtractConfig())


def test_neighbour_median_removes_off_colour_gaussians_and_keeps_edges():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(3000, 3, generator=g) * torch.tensor([2.0, 2.0, 0.05])  # a thin slab, red left, blue right
    truth = torch.where((means[:, :1] < 1.0), torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9]))
    colors = truth.clone()
    off = torch.rand(3000, generator=g) < 0.1
    colors[off] = torch.rand(int(off.sum()), 3, generator=g)
    out = median_neighbor_colors(means, colors, 15, chunk=1000)
    d = torch.cdist(means, means)
    idx = d.topk(15, largest=False).indices
    brute = colors[idx].sort(dim=1).values[:, 7]  # the middle of 15, per channel
    assert torch.equal(out, brute)
    before, after = (colors - truth).abs().max(-1).values, (out - truth).abs().max(-1).values
    assert float(after.mean()) < 0.1 * float(before.mean())  # the outliers are gone
    assert float((means[after > 0.05, 0] - 1).abs().max()) < 0.05  # what is left hugs the edge (k=15 spans ~0.08)
    sh = colors[:, None].expand(-1, 4, -1)  # SH coefficients (N, K, 3): each coefficient on its own
    assert torch.equal(median_neighbor_colors(means, sh, 15)[:, 2], out)
    assert median_neighbor_colors(means, colors, 0) is colors


def test_empty_and_full_fields_raise_clear_errors():
    grid = make_grid(1.0, 16)
    with pytest.raises(ValueError, match="empty"):
        extract_mesh(torch.zeros(16, 16, 16), grid)
    field, grid = sphere_field(res=16)
    with pytest.raises(ValueError, match=r"threshold 10.*\[.*3\]"):
        extract_mesh(field, grid, ExtractConfig(threshold=10.0))
    with pytest.raises(ValueError, match="every sample"):
        extract_mesh(field + 1.0, grid, ExtractConfig(threshold=0.5))
    with pytest.raises(ValueError, match="empty"):
        mesh_from_gaussians(*box_gaussians()[:3], torch.zeros(len(box_gaussians()[0])), box_render, small_cfg())


def test_clipped_object_warns_and_stays_closed():
    field, grid = sphere_field(res=32, r=1.2)  # the sphere sticks out of the box
    with pytest.warns(UserWarning, match="border"):
        v, f, _ = extract_mesh(field, grid)
    assert trimesh.Trimesh(v.numpy(), f.numpy(), process=False).is_watertight


def test_huge_mesh_is_decimated_before_unwrap(monkeypatch):
    big = trimesh.creation.icosphere(subdivisions=7, radius=0.5)  # 327,680 faces
    assert len(big.faces) > 200_000
    v, f = clean_mesh(
        big.vertices, big.faces.astype(np.int64), ExtractConfig(target_faces=20000, smooth_iterations=1), spacing=0.01
    )
    assert 0 < len(f) <= 20000
    seen = []
    real = texture_mod.unwrap_uv
    monkeypatch.setattr(texture_mod, "unwrap_uv", lambda v, f, *a: seen.append(f.shape[0]) or real(v, f, *a))
    cfg = TextureConfig(texture_size=128, view_resolution=32, max_faces=8000, elevations=(0.0,), n_azimuth=4)
    with pytest.warns(UserWarning, match="decimating"):
        mesh = texture_mesh(torch.from_numpy(big.vertices).float(), torch.from_numpy(big.faces).long(), box_render, cfg)
    assert seen and seen[0] <= 8000 and mesh.faces.shape[0] <= 8000


def test_decimate_keeps_shape():
    big = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    v, f = decimate(big.vertices, big.faces.astype(np.int64), 2000)
    m = trimesh.Trimesh(v, f, process=False)
    assert len(f) <= 2000 and m.is_watertight
    assert abs(m.volume / big.volume - 1) < 0.02


# ------------------------------------------------------------------------------------- ground truth


def test_analytic_box_extracts_and_textures_back():
    means, quats, scales, op, _ = box_gaussians()
    mesh, info = mesh_from_gaussians(means, quats, scales, op, box_render, small_cfg())
    assert iou_with_box(mesh) >= 0.8
    err = face_colour_errors(mesh)
    assert err.numel() > 500
    assert float(err.mean()) < 0.01 and float(err.max()) < 0.05
    assert set(info) >= {"threshold", "time_density_s", "time_extract_s", "time_texture_s", "faces"}


def test_gaussian_box_through_the_gaussian_rasterizer():
    means, quats, scales, op, cols = box_gaussians()
    render_fn = gaussian_render_fn(means, quats, scales, op, cols)
    cfg = small_cfg(view_res=80)
    cfg.texture.elevations, cfg.texture.n_azimuth = (-35.0, 35.0), 4
    mesh, _ = mesh_from_gaussians(means, quats, scales, op, render_fn, cfg)
    assert iou_with_box(mesh) >= 0.8
    err = face_colour_errors(mesh)
    assert float(err.mean()) < 0.03 and float(torch.quantile(err, 0.95)) < 0.08


def test_density_fn_path_matches_the_box():
    def density(p):  # a soft box: ~4 inside, 0 outside, half-height on the faces
        return 4 * torch.sigmoid(-((p.abs() - HALF) / 0.02).amax(-1))

    mesh, _ = mesh_from_density_fn(density, box_render, small_cfg())
    assert iou_with_box(mesh) >= 0.85
    assert float(face_colour_errors(mesh).max()) < 0.05
    with pytest.raises(ValueError, match="gaussian_color_median=0"):  # a Gaussians-only setting is not ignored
        mesh_from_density_fn(density, box_render, MeshConfig(gaussian_color_median=9))


def test_fill_texture_against_brute_force_nearest():
    from dream3d.mesh.texture import fill_texture

    g = torch.Generator().manual_seed(3)
    S = 12
    covered = torch.zeros(S, S, dtype=torch.bool)
    covered[2:10, 1:6] = True  # one chart
    covered[3:7, 8:11] = True  # another
    T = int(covered.sum())
    pos = torch.rand(T, 3, generator=g)
    seen_t = torch.rand(T, generator=g) > 0.4
    tex = torch.zeros(S, S, 3)
    cols = torch.rand(T, 3, generator=g)
    tex[covered] = torch.where(seen_t[:, None], cols, torch.zeros_like(cols))
    seen = torch.zeros(S, S, dtype=torch.bool)
    seen[covered] = seen_t
    out = fill_texture(tex, seen, covered, pos)
    # unseen covered texels: colour of the nearest seen texel in 3D
    d3 = torch.cdist(pos[~seen_t], pos[seen_t])
    torch.testing.assert_close(out[covered][~seen_t], cols[seen_t][d3.argmin(1)])
    torch.testing.assert_close(out[covered][seen_t], cols[seen_t])
    # texels outside the charts: colour of the nearest covered texel in the image
    ij = torch.stack(torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij"), -1).float()
    d2 = torch.cdist(ij[~covered], ij[covered])
    unique_nearest = (d2 <= d2.min(1, keepdim=True).values + 1e-6).sum(1) == 1  # ties may go either way
    torch.testing.assert_close(out[~covered][unique_nearest], out[covered][d2.argmin(1)][unique_nearest])
    with pytest.raises(ValueError, match="no bake view"):
        fill_texture(tex, torch.zeros_like(seen), covered, pos)


# ------------------------------------------------------------------------------------------ refinement


@pytest.fixture(scope="module")
def box_mesh() -> TexturedMesh:
    means, quats, scales, op, _ = box_gaussians()
    cfg = small_cfg(texture_size=128)
    cfg.extract.target_faces = 1500
    mesh, _ = mesh_from_gaussians(means, quats, scales, op, box_render, cfg)
    return mesh


def test_refine_pulls_a_wrong_texture_to_the_targets(box_mesh):
    grey = TexturedMesh(box_mesh.vertices, box_mesh.faces, box_mesh.uv, torch.full_like(box_mesh.texture, 0.5))
    before = float(face_colour_errors(grey).mean())
    cams = bake_cameras(grey.vertices, TextureConfig())
    out = refine_texture(
        grey, target_loss(box_render, "l1"), cams, RefineConfig(steps=40, resolution=64, lr_texture=0.05, batch_size=4)
    )
    after = float(face_colour_errors(out).mean())
    assert after < 0.3 * before, (before, after)
    assert out.texture.min() >= 0 and out.texture.max() <= 1


def test_refine_takes_any_loss_and_bounds_vertex_offsets(box_mesh):
    calls = []
    green = torch.tensor([0.0, 1.0, 0.0])

    def loss_fn(rgb, cams):  # any differentiable function of the render, e.g. SDS later
        calls.append(len(cams))
        return (rgb - green).square().mean() + rgb[..., 0].mean()

    cams = bake_cameras(box_mesh.vertices, TextureConfig())
    cfg = RefineConfig(
        steps=6,
        resolution=48,
        batch_size=2,
        lr_texture=0.1,
        lr_vertices=0.05,
        max_offset=0.01,
        background=(0.0, 1.0, 0.0),
    )
    out = refine_texture(box_mesh, loss_fn, cams, cfg)
    assert calls == [2] * 6
    assert float(out.texture[..., 1].mean()) > float(box_mesh.texture[..., 1].mean())
    d = out.vertices - box_mesh.vertices
    diag = float((box_mesh.vertices.amax(0) - box_mesh.vertices.amin(0)).norm())
    assert d.abs().max() > 0 and d.abs().max() <= 0.01 * diag + 1e-6
    # vertices the unwrap split along seams (same position) still share one position
    _, weld = torch.unique(box_mesh.vertices, dim=0, return_inverse=True)
    same = weld[:, None] == weld[None, :]
    assert torch.allclose(
        out.vertices[:, None].expand(-1, len(weld), -1)[same], out.vertices[None].expand(len(weld), -1, -1)[same]
    )


# ----------------------------------------------------------------------------------------------- export


def test_glb_and_obj_round_trip_through_trimesh(box_mesh, tmp_path):
    files = export_mesh(box_mesh, tmp_path, "thing", turntable=False)
    V, Fc, S = box_mesh.vertices.shape[0], box_mesh.faces.shape[0], box_mesh.texture.shape[0]
    g = trimesh.load(files["glb"], force="mesh", process=False)
    o = trimesh.load(files["obj"], force="mesh", process=False)
    for m in (g, o):
        assert m.vertices.shape == (V, 3) and m.faces.shape == (Fc, 3)
        np.testing.assert_allclose(m.vertices, box_mesh.vertices.numpy(), atol=1e-5)
        np.testing.assert_array_equal(m.faces, box_mesh.faces.numpy())
        np.testing.assert_allclose(m.visual.uv, box_mesh.uv.numpy(), atol=1e-5)  # glTF's flipped v comes back
    assert g.visual.material.baseColorTexture.size == (S, S)
    assert o.visual.material.image.size == (S, S)
    tex8 = np.asarray(g.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_allclose(tex8 / 255.0, box_mesh.texture.numpy(), atol=1 / 255)
    assert g.visual.material.metallicFactor == 0 and g.visual.material.roughnessFactor == pytest.approx(0.9)
    # GLB container: 4-byte aligned chunks and a total length that matches the file
    raw = files["glb"].read_bytes()
    assert raw[:4] == b"glTF" and int.from_bytes(raw[8:12], "little") == len(raw) and len(raw) % 4 == 0
    js_len = int.from_bytes(raw[12:16], "little")
    assert js_len % 4 == 0
    gltf = json.loads(raw[20 : 20 + js_len])
    assert all(v["byteOffset"] % 4 == 0 for v in gltf["bufferViews"])
    assert gltf["accessors"][3]["componentType"] == 5125
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_export_rejects_bad_meshes(tmp_path):
    v, f, uv, tex = torch.rand(4, 3), torch.tensor([[0, 1, 5]]), torch.rand(4, 2), torch.rand(8, 8, 3)
    with pytest.raises(ValueError, match="outside"):
        write_glb(tmp_path / "x.glb", v, f, uv, tex)
    with pytest.raises(ValueError, match="no faces"):
        write_obj(tmp_path / "x.obj", v, torch.zeros(0, 3, dtype=torch.long), uv, tex)
    assert not list(tmp_path.iterdir())


def _validator_available() -> bool:
    if shutil.which("node") is None:
        return False
    dirs = [os.environ.get("GLTF_VALIDATOR_DIR"), str(REPO / ".cache" / "node")]
    return any(
        d and (Path(d, "node_modules", "gltf-validator").exists() or Path(d, "gltf-validator").exists()) for d in dirs
    )


@pytest.mark.skipif(
    not _validator_available(), reason="node or gltf-validator missing (cd .cache/node && npm install gltf-validator)"
)
def test_glb_passes_the_khronos_validator(box_mesh, tmp_path):
    path = write_glb(tmp_path / "mesh.glb", box_mesh.vertices, box_mesh.faces, box_mesh.uv, box_mesh.texture)
    r = subprocess.run(
        ["node", str(REPO / "benchmarks" / "validate_gltf.mjs"), str(path)], capture_output=True, text=True, timeout=120
    )
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["errors"] == 0, report["messages"]
    assert report["warnings"] == 0, report["messages"]
    assert r.returncode == 0


def test_turntable_video(box_mesh, tmp_path):
    frames = render_turntable(box_mesh, n_frames=6, resolution=64)
    assert frames.shape == (6, 64, 64, 3) and frames.dtype == np.uint8
    assert (frames[:, 32, 32] != 255).any(-1).all()  # the object is in the middle of every frame
    assert (frames[:, 0, 0] == 255).all()  # white background in the corner
    path = write_video(tmp_path / "turntable.mp4", frames, fps=6)
    import imageio.v2 as imageio

    if path.suffix == ".mp4":
        assert len(imageio.mimread(path, format="FFMPEG")) == 6
    else:
        assert path.suffix == ".gif"


def test_video_falls_back_to_gif(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    real = imageio.mimwrite

    def no_ffmpeg(uri, ims, format=None, **kw):
        if format == "FFMPEG":
            raise RuntimeError("no ffmpeg here")
        return real(uri, ims, format=format, **kw)

    monkeypatch.setattr(imageio, "mimwrite", no_ffmpeg)
    frames = (
        np.zeros((3, 16, 16, 3), np.uint8) + np.array([0, 100, 200], np.uint8)[:, None, None, None]
    )  # distinct frames
    with pytest.warns(UserWarning, match="gif"):
        path = write_video(tmp_path / "t.mp4", frames)
    assert path.suffix == ".gif" and len(imageio.mimread(path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["t.gif"]


def test_an_ffmpeg_without_h264_never_replaces_a_turntable_with_an_empty_file(tmp_path, monkeypatch):
    """An ffmpeg that lacks libx264 exits with an error that imageio does not raise, leaving an empty file; before,
    that empty file replaced the good turntable.mp4 (mode 0600) and the run reported success without a GIF."""
    import imageio.v2 as imageio

    fake = tmp_path / "ffmpeg"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = "-version" ] && { echo "ffmpeg version 6.0"; exit 0; }; done\n'
        "echo \"Unknown encoder 'libx264'\" >&2\ncat > /dev/null\nexit 1\n"
    )
    fake.chmod(0o755)
    out = tmp_path / "run"
    out.mkdir()
    (out / "turntable.mp4").write_bytes(b"\0\0\0\x18ftypisom an earlier, good video")
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake))
    frames = np.zeros((3, 16, 16, 3), np.uint8) + np.array([0, 100, 200], np.uint8)[:, None, None, None]
    with pytest.warns(UserWarning, match="libx264"):
        path = write_video(out / "turntable.mp4", frames)
    assert path == out / "turntable.gif" and len(imageio.mimread(path)) == 3
    assert (out / "turntable.mp4").read_bytes().endswith(b"an earlier, good video")
    assert sorted(p.name for p in out.iterdir()) == ["turntable.gif", "turntable.mp4"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
def test_stage_runs_on_cuda_tensors():
    means, quats, scales, op, cols = (t.cuda() for t in box_gaussians())
    mesh, _ = mesh_from_gaussians(
        means, quats, scales, op, gaussian_render_fn(means, quats, scales, op, cols), small_cfg()
    )
    assert mesh.vertices.is_cuda and mesh.texture.is_cuda
    cpu = TexturedMesh(*(t.cpu() for t in (mesh.vertices, mesh.faces, mesh.uv, mesh.texture)))
    assert iou_with_box(cpu) >= 0.8
    err = face_colour_errors(cpu)
    assert float(err.mean()) < 0.03


def test_hollow_leaky_shell_extracts_as_a_solid():
    """SDS Gaussians sit on the surface only, and their shell has pinholes: the mesh must keep the outer
    surface, with no inner wall, although the inside is connected to the outside."""
    from dream3d.mesh.extract import ExtractConfig, extract_mesh

    grid = make_grid(1.0, 64)
    p = grid.points()
    r = p.norm(dim=-1)
    shell = torch.exp(-(((r - 0.6) / 0.05) ** 2))  # density only near radius 0.6
    for d in ([1.0, 0, 0], [0, -1.0, 0], [0.6, 0.6, 0.53]):  # three pinholes, ~0.1 across, through the shell
        d = torch.tensor(d) / torch.tensor(d).norm()
        shell = torch.where((p - (p @ d)[..., None] * d).norm(dim=-1).lt(0.05) & (p @ d > 0), 0.0, shell)
    cfg = dict(threshold=0.5, smooth_iterations=0, target_faces=0)
    v, f, _ = extract_mesh(shell, grid, ExtractConfig(**cfg))
    m = trimesh.Trimesh(v.numpy(), f.numpy())
    outer = 0.6 + 0.05 * math.sqrt(math.log(2))
    full = 4 / 3 * math.pi * outer**3
    assert len(m.split(only_watertight=False)) == 1, "one surface, no inner wall"
    assert abs(m.volume - full) / full < 0.05
    v2, f2, _ = extract_mesh(shell, grid, ExtractConfig(**cfg, fill_hidden=False))
    assert trimesh.Trimesh(v2.numpy(), f2.numpy()).volume < 0.5 * full  # without the fill: a thin skin


def test_visible_concavities_stay_empty():
    """The fill takes only what no view sees: a torus keeps its hole, a bowl open at the top stays a bowl."""
    from dream3d.mesh.extract import ExtractConfig, extract_mesh

    grid = make_grid(1.0, 64)
    p = grid.points()
    ring = torch.sqrt((p[..., [0, 2]].norm(dim=-1) - 0.55) ** 2 + p[..., 1] ** 2)
    torus = torch.sigmoid((0.2 - ring) / 0.02)
    v, f, _ = extract_mesh(torus, grid, ExtractConfig(threshold=0.5, smooth_iterations=0, target_faces=0))
    m = trimesh.Trimesh(v.numpy(), f.numpy())
    want = 2 * math.pi**2 * 0.55 * 0.2**2
    assert abs(m.volume - want) / want < 0.05
    r = p.norm(dim=-1)
    bowl = torch.sigmoid((0.05 - (r - 0.6).abs()) / 0.01) * (
        p[..., 1] < 0.2
    )  # a spherical shell cut open above y = 0.2
    v, f, _ = extract_mesh(bowl, grid, ExtractConfig(threshold=0.5, smooth_iterations=0, target_faces=0))
    shell_only = trimesh.Trimesh(v.numpy(), f.numpy()).volume
    cap = math.pi * (0.65 - 0.2) ** 2 * (3 * 0.65 - (0.65 - 0.2)) / 3  # the solid ball's part above y = 0.2
    assert shell_only < 0.5 * (4 / 3 * math.pi * 0.65**3 - cap)


def test_remesh_benchmark_meshes_a_copy_and_leaves_the_run_alone(tiny_prior, tmp_path):
    """benchmarks/remesh.py: the copy meshed with the run's own settings is the run's mesh again; with other settings
    it differs; the finished run itself is never written."""
    import importlib.util
    import sys

    from dream3d.config import load_run_config

    src = tmp_path / "runs" / "gaussian-vsd" / "a_red_cube"
    cmd = [sys.executable, "-m", "dream3d.cli", "generate", "a red cube", "-o", str(src)]
    subprocess.run(cmd + TINY_RUN + [f"guidance.prior.model={tiny_prior}"], check=True, capture_output=True)
    before = {p.name: p.stat().st_mtime_ns for p in src.iterdir()}
    spec = importlib.util.spec_from_file_location("remesh", Path(__file__).parents[1] / "benchmarks" / "remesh.py")
    remesh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(remesh)
    assert remesh.finished_runs(str(tmp_path / "runs")) == [("gaussian-vsd", "a_red_cube")]
    remesh.remesh_copy(str(src), str(tmp_path / "base"), [])
    remesh.remesh_copy(str(src), str(tmp_path / "blur"), ["mesh.extract.blur_sigma=2", "mesh.gaussian_color_median=8"])
    assert {p.name: p.stat().st_mtime_ns for p in src.iterdir()} == before
    mesh = lambda d: trimesh.load(d / "mesh.glb", force="mesh")  # noqa: E731
    assert np.allclose(mesh(tmp_path / "base").vertices, mesh(src).vertices)
    assert len(mesh(tmp_path / "blur").vertices) != len(mesh(src).vertices)
    assert load_run_config(str(tmp_path / "blur" / "config.yaml")).mesh.extract.blur_sigma == 2


# ------------------------------------------------------------------------------- the input image projected


def test_input_image_is_painted_where_its_camera_sees_the_surface(box_mesh):
    """project_image: from the input's camera the painted mesh shows the input (where the input's mask covers it);
    what that camera does not see, or sees outside the mask, keeps the bake; the angle ramp blends in between."""
    from dream3d.mesh.texture import ReferenceProjectionConfig, project_image, render_albedo
    from renderers.cameras import orbit_cameras

    S = 96
    cam = orbit_cameras(0.0, 30.0, 2.8, 45.0, S, S)
    _, sil = box_render(cam)  # (1, S, S, 1): the box's silhouette from the input camera
    green, yellow = torch.tensor([0.1, 0.8, 0.2]), torch.tensor([0.9, 0.8, 0.1])
    cols = torch.arange(S)[None, None, :, None]
    pattern = torch.where(cols < S // 2, green, yellow).expand(1, S, S, 3)
    mask = sil * (torch.arange(S)[None, :, None, None] >= S // 2)  # the image's top half is not the object
    rgb = pattern * mask + (1 - mask)  # on white, as load_reference_image gives it
    steep = ReferenceProjectionConfig(cos_start=0.0, cos_full=0.3)  # both faces this camera sees fully painted
    painted, fraction = project_image(box_mesh, rgb, mask, cam, steep, 0.01)
    assert 0.1 < fraction < 0.3  # two of six faces, less the half outside the mask
    before, _ = render_albedo(box_mesh, cam, (1.0, 1.0, 1.0))
    after, alpha = render_albedo(painted, cam, (1.0, 1.0, 1.0))
    inner = torch.nn.functional.max_pool2d(-alpha.permute(0, 3, 1, 2), 5, 1, 2).permute(0, 2, 3, 1)[..., 0] < -0.5
    away = (cols[..., 0] - S // 2 + 0.5).abs() > 3  # off the pattern's seam
    rows = torch.arange(S)[None, :, None]
    shown, hidden = inner & away & (rows >= S // 2 + 3), inner & (rows < S // 2 - 3)
    assert shown.sum() > 300 and hidden.sum() > 300
    err = (after - pattern).abs().amax(-1)[shown]  # the input, texel for texel (the bake differs by ~0.75),
    assert float(err.mean()) < 0.02 and float(torch.quantile(err, 0.9)) < 0.02  # but where the box's rounded edges blur
    assert float((after - before).abs()[hidden].amax()) < 0.02  # outside the mask: the bake
    back = orbit_cameras(0.0, 210.0, 2.8, 45.0, S, S)  # sees the -Z and -X faces only
    torch.testing.assert_close(render_albedo(painted, back)[0], render_albedo(box_mesh, back)[0])

    # The default ramp, from each face's cosine to the camera: the +Z face (about 0.85) takes the input, the +X face
    # (0.25 to 0.45 in this perspective) part of it, the -X face (hidden) none
    flat = green.expand(1, S, S, 3) * sil + (1 - sil)
    painted, _ = project_image(box_mesh, flat, sil, cam, ReferenceProjectionConfig(), 0.01)
    tri = box_mesh.vertices[box_mesh.faces]
    n = torch.nn.functional.normalize(torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1), dim=-1)
    fc = tri.mean(1)
    cos = (torch.nn.functional.normalize(cam.origins - fc, dim=-1) * n).sum(-1)
    uv = box_mesh.uv[box_mesh.faces].mean(1)[None]
    old, new = sample_texture(box_mesh.texture, uv)[0], sample_texture(painted.texture, uv)[0]
    for axis, sign in ((2, 1), (0, 1), (0, -1)):
        on = (sign * n[:, axis] > 0.99) & ((fc.abs() < HALF - 0.05).sum(-1) == 2) & (fc[:, 1].abs() > 0.05)
        assert on.sum() > 20
        weight = ((cos[on] - 0.3) / 0.3).clamp(0, 1)[:, None]
        assert (0.05 < weight).any() == (sign > 0) and ((weight < 0.95).any() if axis == 0 else (weight == 1).all())
        err = (new[on] - torch.lerp(old[on], green.expand_as(old[on]), weight)).abs()
        assert float(err.mean()) < 0.02 and float(err.max()) < 0.15, (axis, sign)  # none painted: mean ~0.2 at +X


def test_surface_hidden_behind_another_part_keeps_the_bake():
    """project_image's depth test: a wall behind a block faces the input camera squarely and lies inside the
    image's mask (the block covers it there), so only the depth test keeps the block's colours off the wall."""
    from dream3d.mesh.texture import ReferenceProjectionConfig, _texel_surface, project_image, render_albedo, unwrap_uv
    from renderers.cameras import orbit_cameras

    wall = trimesh.creation.box(extents=(1.6, 1.6, 0.1))
    wall.apply_translation((0, 0, -0.5))
    block = trimesh.creation.box(extents=(0.6, 0.6, 0.3))
    block.apply_translation((0, 0, 0.3))
    both = trimesh.util.concatenate([wall, block])
    v, f, uv, _ = unwrap_uv(torch.tensor(both.vertices, dtype=torch.float32), torch.tensor(both.faces), 128)
    grey = TexturedMesh(v, f, uv, torch.full((128, 128, 3), 0.5))
    S = 128
    cam = orbit_cameras(0.0, 0.0, 2.8, 45.0, S, S)  # on +Z, looking at the block in front of the wall
    _, sil = render_albedo(grey, cam)
    green = torch.tensor([0.1, 0.8, 0.2])
    painted, _ = project_image(grey, green * sil + (1 - sil), sil, cam, ReferenceProjectionConfig(), 0.01)

    covered, pos, nrm = _texel_surface(v, f, uv, 128)
    tex = painted.texture[covered]
    front_of_wall = (nrm[:, 2] > 0.99) & ((pos[:, 2] + 0.45).abs() < 1e-3) & (pos[:, :2].abs() < 0.75).all(-1)
    # the wall texels whose ray to the camera passes through the block (slab test)
    d = torch.nn.functional.normalize(cam.origins[0] - pos, dim=-1)
    lo, hi = torch.tensor([-0.3, -0.3, 0.15]), torch.tensor([0.3, 0.3, 0.45])
    inv = 1 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1, t2 = (lo - pos) * inv, (hi - pos) * inv
    behind = (torch.minimum(t1, t2).amax(-1) < torch.maximum(t1, t2).amin(-1)) & front_of_wall
    # away from the edge of the block's shadow on the wall (about 0.3 * 3.3 / 2.65 = 0.37 from the centre)
    deep = behind & (pos[:, :2].abs() < 0.3).all(-1)
    clear = front_of_wall & ~behind & (pos[:, :2].abs() > 0.45).any(-1)
    assert deep.sum() > 200 and clear.sum() > 200, (deep.sum(), clear.sum())
    assert float((tex[deep] - 0.5).abs().amax()) < 0.02  # hidden: the bake (without the depth test: green)
    assert float((tex[clear] - green).abs().amax()) < 0.02  # seen squarely: the input
    block_front = (nrm[:, 2] > 0.99) & ((pos[:, 2] - 0.45).abs() < 1e-3)
    assert float((tex[block_front] - green).abs().amax(-1).median()) < 0.02


def test_mesh_stage_paints_the_image_the_run_trained_on_and_goes_on_without_it(box_mesh, tmp_path):
    """pipeline.extract_textured_mesh: an image run with mesh.reference_projection on paints the input it trained
    on (RUN/reference.png) onto the mesh, where its camera sees it: a render from that camera shows the input. An
    input image replaced since training changes nothing. A run without reference.png (made before it was saved)
    reads its image; if that is spoiled or gone the bake stands alone, a warning names the file and the fix (a
    finished training is never lost to the mesh stage) and metrics.json records why. Text runs are not painted."""
    import types

    import imageio.v3 as iio

    from dream3d.config import RunConfig
    from dream3d.mesh.texture import render_albedo
    from dream3d.pipeline import REFERENCE_FILE, extract_textured_mesh, resize_reference, run_reference, save_reference
    from renderers.cameras import orbit_cameras

    trainer = types.SimpleNamespace(model=types.SimpleNamespace(extract_mesh=lambda cfg: (box_mesh, {})))
    image = tmp_path / "input.png"
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[12:52, 8:32] = (20, 200, 40, 255)  # left green, right yellow: a camera off by a mirror or a shift shows
    rgba[12:52, 32:56] = (230, 200, 30, 255)
    iio.imwrite(image, rgba)
    cfg = RunConfig(prompt="", image=str(image))
    cfg.reference.elevation, cfg.reference.azimuth = 0.0, 0.0  # sees the box's +Z face only, squarely
    cfg.mesh.reference_projection.enabled = True
    run = tmp_path / "run"
    run.mkdir()
    save_reference(str(run / REFERENCE_FILE), run_reference(cfg))
    iio.imwrite(image, np.ascontiguousarray(rgba[:, ::-1]))  # replaced since training: not what is painted
    mesh, info = extract_textured_mesh(trainer, cfg, str(run))
    assert 0 < info["reference_projected"] < 0.5

    S = cfg.mesh.reference_projection.resolution
    want, mask = resize_reference(run_reference(cfg, str(run), resume=True), S)
    r = cfg.reference
    got, alpha = render_albedo(mesh, orbit_cameras(r.elevation, r.azimuth, r.radius, r.fov_y, S, S), (1, 1, 1))
    core = torch.nn.functional.max_pool2d(-torch.minimum(alpha, mask).permute(0, 3, 1, 2), 9, 1, 4) < -0.5
    seam = (torch.arange(S) - S / 2 + 0.5).abs() < 6
    inner = core[0, 0] & ~seam[None, :]
    assert inner.sum() > 0.1 * S * S
    err = (got - want)[0].abs().amax(-1)[inner]
    assert float(err.mean()) < 0.005 and float(torch.quantile(err, 0.95)) < 0.01  # a camera 12° off: mean 0.04

    kept = (run / REFERENCE_FILE).read_bytes()
    (run / REFERENCE_FILE).write_bytes(b"spoiled")  # the bake stands; the warning names the file and the retry
    with pytest.warns(UserWarning, match=r"reference\.png.*delete it.*renders alone.*dream3d mesh .*run"):
        mesh, info = extract_textured_mesh(trainer, cfg, str(run))
    assert torch.equal(mesh.texture, box_mesh.texture) and info["reference_projected"].startswith("skipped: ")
    (run / REFERENCE_FILE).write_bytes(kept)

    (run / REFERENCE_FILE).unlink()  # an older run: its image is read (now the mirrored one), with a warning,
    with pytest.warns(UserWarning, match=r"reference\.png is missing: painting .*input\.png as it is now"):
        mesh, _ = extract_textured_mesh(trainer, cfg, str(run))
    assert (run / REFERENCE_FILE).is_file()  # and kept, so later meshes paint the same
    (run / REFERENCE_FILE).unlink()
    got_old, _ = render_albedo(mesh, orbit_cameras(r.elevation, r.azimuth, r.radius, r.fov_y, S, S), (1, 1, 1))
    assert float((got_old - want)[0].abs().amax(-1)[inner].mean()) > 0.2  # green and yellow swapped

    image.write_bytes(b"not an image")  # spoiled, then gone: the mesh stage goes on with the bake
    for _ in range(2):
        with pytest.warns(UserWarning, match=r"input\.png.*renders alone.*reference_projection\.enabled=false"):
            mesh, info = extract_textured_mesh(trainer, cfg, str(run))
        assert info["reference_projected"].startswith("skipped: ") and "input.png" in info["reference_projected"]
        assert torch.equal(mesh.texture, box_mesh.texture)
        image.unlink(missing_ok=True)

    text = RunConfig(prompt="a green box")
    text.mesh.reference_projection.enabled = True
    mesh, info = extract_textured_mesh(trainer, text, str(run))
    assert info["reference_projected"] == "skipped: a text run has no input image"
    assert torch.equal(mesh.texture, box_mesh.texture)
