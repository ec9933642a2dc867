"""Mesh stage timing: a Gaussian object (default 20k Gaussians) to a textured, exported mesh.

    python benchmarks/mesh_stage.py                 # 20k Gaussians, 128^3 grid, 1024^2 texture, 2 threads
    python benchmarks/mesh_stage.py --gaussians 50000 --resolution 256 --json out.json

The object is a small snowman (two spheres and a box hat, three colours) filled with anisotropic Gaussians;
the texture is baked from renders of those Gaussians (renderers.gaussians). Prints seconds per stage, the
mesh sizes, how well the mesh matches the analytic shape (IoU) and the texture the analytic colours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

import dream3d.mesh.texture as tm
from dream3d.mesh.density import gaussian_bounds, gaussian_density_grid, make_grid
from dream3d.mesh.export import render_turntable, write_glb, write_obj, write_video
from dream3d.mesh.extract import ExtractConfig, extract_mesh
from dream3d.mesh.stage import gaussian_render_fn
from dream3d.mesh.texture import TextureConfig, texture_mesh
from renderers.mesh import face_normals, sample_texture

BODY, HEAD = (torch.tensor([0.0, -0.3, 0.0]), 0.45), (torch.tensor([0.0, 0.3, 0.0]), 0.3)
HAT_LO, HAT_HI = torch.tensor([-0.2, 0.5, -0.2]), torch.tensor([0.2, 0.8, 0.2])
COLOURS = torch.tensor([[0.85, 0.85, 0.9], [0.95, 0.75, 0.2], [0.6, 0.1, 0.15]])  # body, head, hat


def region(p: torch.Tensor) -> torch.Tensor:
    """0 body, 1 head, 2 hat, -1 outside (the hat wins where parts overlap, then the head)."""
    out = torch.full(p.shape[:-1], -1, dtype=torch.long)
    out[(p - BODY[0]).norm(dim=-1) <= BODY[1]] = 0
    out[(p - HEAD[0]).norm(dim=-1) <= HEAD[1]] = 1
    out[((p >= HAT_LO) & (p <= HAT_HI)).all(-1)] = 2
    return out


def snowman_gaussians(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pts = []
    while sum(len(p) for p in pts) < n:
        p = torch.rand(4 * n, 3, generator=g) * torch.tensor([1.0, 1.7, 1.0]) - torch.tensor([0.5, 0.75, 0.5])
        pts.append(p[region(p) >= 0])
    means = torch.cat(pts)[:n]
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(np.log(0.012), np.log(0.035), generator=g))
    opac = torch.full((n,), 0.7)
    return means, quats, scales, opac, COLOURS[region(means)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, default=20000)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--target-faces", type=int, default=20000)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--view-resolution", type=int, default=256)
    ap.add_argument("--n-azimuth", type=int, default=8)
    ap.add_argument("--turntable-frames", type=int, default=24)
    ap.add_argument("--out", default=None, help="folder for mesh.glb/.obj/turntable (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t: dict[str, tuple[float, float]] = {}  # stage -> (wall s, process CPU s)

    def timed(name, fn):
        def inner(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            out = fn(*a, **k)
            pw, pc = t.get(name, (0.0, 0.0))
            t[name] = (pw + time.perf_counter() - w, pc + time.process_time() - c)
            return out

        return inner

    means, quats, scales, opac, cols = snowman_gaussians(args.gaussians)
    grid = make_grid(gaussian_bounds(means, quats, scales), args.resolution)
    dens = timed("density grid", gaussian_density_grid)(means, quats, scales, opac, grid)
    v, f, level = timed("marching cubes + cleanup", extract_mesh)(
        dens, grid, ExtractConfig(target_faces=args.target_faces)
    )
    cfg = TextureConfig(texture_size=args.texture_size, view_resolution=args.view_resolution, n_azimuth=args.n_azimuth)
    render_fn = timed("  Gaussian renders (render_fn)", gaussian_render_fn(means, quats, scales, opac, cols))

    real = tm.unwrap_uv, tm._texel_surface, tm.rasterize_mesh, tm.fill_texture
    tm.unwrap_uv, tm._texel_surface = (
        timed("UV unwrap (xatlas)", real[0]),
        timed("  texel surface points (UV raster)", real[1]),
    )
    tm.rasterize_mesh, tm.fill_texture = timed("  mesh depth buffers", real[2]), timed("  hole fill", real[3])
    try:
        mesh = timed("texture total (unwrap + bake + fill)", texture_mesh)(v, f, render_fn, cfg)
    finally:
        tm.unwrap_uv, tm._texel_surface, tm.rasterize_mesh, tm.fill_texture = real
    out = args.out or tempfile.mkdtemp(prefix="dream3d_mesh_")

    def export():
        write_glb(os.path.join(out, "mesh.glb"), mesh.vertices, mesh.faces, mesh.uv, mesh.texture)
        write_obj(os.path.join(out, "mesh.obj"), mesh.vertices, mesh.faces, mesh.uv, mesh.texture)

    timed("export .glb + .obj", export)()
    if args.turntable_frames > 0:
        timed(
            "turntable video",
            lambda: write_video(os.path.join(out, "turntable.mp4"), render_turntable(mesh, args.turntable_frames, 256)),
        )()
    stages = ("density grid", "marching cubes + cleanup", "texture total (unwrap + bake + fill)")
    end_to_end = tuple(sum(t[k][i] for k in stages) for i in (0, 1))

    # Quality against the analytic shape and colours.
    P = grid.points().reshape(-1, 3)
    sub = P[torch.randperm(len(P), generator=torch.Generator().manual_seed(0))[:100000]]
    import trimesh

    m = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    inside_mesh = m.voxelized(float(grid.spacing.min()) / 2).fill().is_filled(sub.numpy())
    inside_gt = (region(sub) >= 0).numpy()
    iou = float((inside_mesh & inside_gt).sum() / (inside_mesh | inside_gt).sum())
    fc = mesh.vertices[mesh.faces].mean(1)

    reg = region(fc - 0.02 * face_normals(mesh.vertices, mesh.faces))  # classify a point just inside each face
    ok = reg >= 0
    c = sample_texture(mesh.texture, mesh.uv[mesh.faces].mean(1)[None])[0]
    err = (c[ok] - COLOURS[reg[ok]]).abs().amax(-1)

    print(
        f"mesh stage: {args.gaussians} Gaussians, {args.resolution}^3 grid, {args.texture_size}^2 texture, "
        f"{args.view_resolution}px bake views, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"  {'stage':<40s} {'wall s':>8s} {'CPU s':>8s}")
    for k, (w, c) in t.items():
        print(f"  {k:<40s} {w:8.2f} {c:8.2f}")
    print(f"  {'end to end (density -> textured mesh)':<40s} {end_to_end[0]:8.2f} {end_to_end[1]:8.2f}")
    print(
        f"threshold {level:.3f} (density max {float(dens.max()):.2f}); mesh {mesh.vertices.shape[0]} vertices, {mesh.faces.shape[0]} faces"
    )
    print(
        f"IoU vs analytic shape {iou:.3f}; texture colour error at face centroids: median {float(err.median()):.3f}, "
        f"p90 {float(err.quantile(0.9)):.3f}"
    )
    print(f"files in {out}")
    result = {
        "args": vars(args),
        "seconds_wall_cpu": t,
        "end_to_end_wall_cpu_s": end_to_end,
        "loadavg": os.getloadavg()[0],
        "threshold": level,
        "faces": int(mesh.faces.shape[0]),
        "vertices": int(mesh.vertices.shape[0]),
        "iou": iou,
        "colour_err_median": float(err.median()),
        "colour_err_p90": float(err.quantile(0.9)),
        "threads": torch.get_num_threads(),
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
