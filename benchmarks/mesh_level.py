"""Which mesh level suits a preset: silhouette agreement (and ground-truth IoU) per threshold ratio.

    python benchmarks/mesh_level.py runs/quality/dreamgaussian/*          # finished Gaussian runs
    python benchmarks/mesh_level.py RUN... --ratios 0.1,0.2,0.4 --json out.json

For each finished Gaussian run (a folder written by ``dream3d generate``), the density grid of its checkpoint
is thresholded at ``ratio`` x the density-weighted median (mesh.extract.threshold_ratio), with the run's own
fill_hidden setting, for every ratio. Two numbers per ratio:

- silhouette IoU: the occupied samples projected into 16 views (8 azimuths at elevations 0 and 35 deg), against
  the Gaussians' own alpha > 0.5 in the same views. It needs no ground truth, so it can pick the level for any
  prompt: the level at which the mesh shows what the Gaussians render.
- IoU against the shape world's ground truth (benchmarks/quality.py's measure), for world prompts only.

Prints a table per run and the means; the best mean silhouette IoU names the ratio to put in the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
import torch
import trimesh

from dream3d.config import load_run_config
from dream3d.evaluate import volumetric_iou
from dream3d.mesh.density import gaussian_density_grid
from dream3d.mesh.extract import choose_threshold, extract_mesh, fill_hidden
from dream3d.mesh.stage import gaussian_grid
from dream3d.train import Trainer
from dream3d.world.shapes import parse_prompt, scene_for_prompt
from renderers.cameras import Cameras, orbit_cameras, pixel_bins, project_points

SIZE = 64


def silhouette_views() -> Cameras:
    """The 16 views the silhouettes are compared in: 8 azimuths at elevations 0 and 35 deg, 64 px."""
    el = torch.tensor([0.0] * 8 + [35.0] * 8)
    az = torch.tensor([45.0 * i for i in range(8)] * 2)
    return orbit_cameras(el, az, 2.9, 45.0, SIZE, SIZE)


def silhouette_iou(occupied: torch.Tensor, pix: torch.Tensor, target: torch.Tensor) -> float:
    """occupied: (T,) bool samples; pix: (V, T) pixel index of each sample per view (SIZE^2 = off screen);
    target: (V, SIZE^2) bool."""
    idx = torch.where(occupied, pix, SIZE * SIZE)
    hits = torch.zeros(pix.shape[0], SIZE * SIZE + 1, dtype=torch.int32).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.int32)
    )
    sil = hits[:, :-1] > 0
    return float((sil & target).sum() / (sil | target).sum().clamp_min(1))


def measure_run(run_dir: str, ratios: list[float]) -> dict:
    cfg = load_run_config(os.path.join(run_dir, "config.yaml"))
    if cfg.representation != "gaussians":
        raise SystemExit(f"{run_dir}: only Gaussian runs are measured here (got {cfg.representation})")
    trainer = Trainer(cfg, cfg.prompt, run_dir, log=lambda *a: None)
    trainer.load_checkpoint()
    mc, cams = cfg.mesh, silhouette_views()
    with torch.no_grad():
        g = trainer.model.render_inputs()
        grid = gaussian_grid(g["means"], g["quats"], g["scales"], mc)
        dens = gaussian_density_grid(g["means"], g["quats"], g["scales"], g["opacities"], grid, mc.block, mc.cutoff)
        _, alpha, _ = trainer.render(cams)
    target = (alpha[..., 0] > 0.5).reshape(len(cams), -1).cpu()
    pix = pixel_bins(project_points(grid.points().reshape(-1, 3), cams)[0], SIZE, SIZE)
    median = choose_threshold(dens, dataclasses.replace(mc.extract, threshold=None, threshold_ratio=1.0))
    try:
        parse_prompt(cfg.prompt)
        gt = scene_for_prompt(cfg.prompt).to_trimesh()
    except ValueError:
        gt = None  # not a shape-world prompt: silhouettes only
    rows = []
    for r in ratios:
        level = r * median
        field = (
            fill_hidden(dens, grid, level, mc.extract.fill_views, mc.extract.fill_max_visible)
            if mc.extract.fill_hidden
            else dens
        )
        row = {"ratio": r, "silhouette_iou": silhouette_iou((field > level).reshape(-1).cpu(), pix, target)}
        if gt is not None:  # the stage's extraction at this level, on the field already filled
            vtx, faces, _ = extract_mesh(field, grid, dataclasses.replace(mc.extract, fill_hidden=False), level=level)
            row["gt_iou"] = volumetric_iou(trimesh.Trimesh(vtx.numpy(), faces.numpy(), process=False), gt)
        rows.append(row)
    return {"run": run_dir, "prompt": cfg.prompt, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished Gaussian run folders")
    ap.add_argument("--ratios", default="0.1,0.15,0.2,0.25,0.3,0.4,0.5")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    ratios = [float(x) for x in args.ratios.split(",")]
    results = []
    print("ratio            " + " ".join(f"{r:>6.2f}" for r in ratios))
    for run in args.runs:
        res = measure_run(run, ratios)
        results.append(res)
        print(
            f"{res['prompt'][:16]:16s} sil " + " ".join(f"{x['silhouette_iou']:.3f}" for x in res["rows"]), flush=True
        )
        if "gt_iou" in res["rows"][0]:
            print(f"{'':16s} gt  " + " ".join(f"{x['gt_iou']:.3f}" for x in res["rows"]), flush=True)
    sil = np.mean([[x["silhouette_iou"] for x in r["rows"]] for r in results], 0)
    print("mean silhouette IoU " + " ".join(f"{x:.3f}" for x in sil) + f"  -> best ratio {ratios[int(sil.argmax())]}")
    with_gt = [r for r in results if "gt_iou" in r["rows"][0]]
    if with_gt:
        gt = np.mean([[x["gt_iou"] for x in r["rows"]] for r in with_gt], 0)
        print(f"mean ground-truth IoU ({len(with_gt)} runs) " + " ".join(f"{x:.3f}" for x in gt))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
