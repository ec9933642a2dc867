"""Mesh-stage settings compared on finished runs, without training again.

    python benchmarks/remesh.py runs/q18_baseline --out runs/q18_mesh \\
        --variant base: --variant blur2:mesh.extract.blur_sigma=2 \\
        --variant "median:mesh.gaussian_color_median=16 mesh.texture.delight_direction=[0.35,0.85,0.45]"

RUNS is a benchmarks/quality.py output folder (RUNS/PRESET/PROMPT run folders). For every variant NAME:OVERRIDES
(space-separated mesh.* / output.* settings; empty for the runs' own settings) each run's checkpoint and config
are copied to OUT/NAME/PRESET/PROMPT, the mesh stage runs again there (dream3d mesh), and the copies are scored by
benchmarks/quality.py --no-generate (OUT/NAME/quality.md). The finished runs in RUNS are only read. Prints one row
per variant and preset: IoU and the reconstruction measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402

from dream3d.config import load_run_config  # noqa: E402
from dream3d.pipeline import remesh  # noqa: E402

COPIED = ("checkpoint.pt", "config.yaml", "metrics.json", "gaussians.ply", "generate.log")


def finished_runs(root: str) -> list[tuple[str, str]]:
    """(preset, prompt slug) of every run folder under ``root`` with a checkpoint and metrics."""
    out = []
    for preset in sorted(os.listdir(root)):
        pdir = os.path.join(root, preset)
        if not os.path.isdir(pdir) or preset == "gallery":
            continue
        for name in sorted(os.listdir(pdir)):
            run = os.path.join(pdir, name)
            if all(os.path.isfile(os.path.join(run, f)) for f in ("checkpoint.pt", "metrics.json", "config.yaml")):
                out.append((preset, name))
    return out


def remesh_copy(src: str, dst: str, overrides: list[str]) -> None:
    """The run in ``src`` (only read) copied to ``dst`` (checkpoint, config, metrics) and meshed there again."""
    os.makedirs(dst, exist_ok=True)
    for f in COPIED:
        if os.path.isfile(os.path.join(src, f)):
            shutil.copy2(os.path.join(src, f), dst)
    remesh(dst, overrides, log=lambda *a, **k: None)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="a benchmarks/quality.py output folder of finished runs (read only)")
    ap.add_argument("--out", required=True, help="folder for the re-meshed copies and their scores")
    ap.add_argument(
        "--variant", action="append", required=True, help="'NAME:KEY=VALUE KEY=VALUE' (mesh.* / output.* settings)"
    )
    args = ap.parse_args(argv)
    runs = finished_runs(args.runs)
    if not runs:
        ap.error(f"no finished runs (PRESET/PROMPT folders with checkpoint.pt) under {args.runs}")
    variants = {}
    for v in args.variant:
        name, _, spec = v.partition(":")
        if not name or name in variants:
            ap.error(f"variant {v!r}: give each a new NAME, as 'NAME:KEY=VALUE KEY=VALUE'")
        variants[name] = spec.split()
    presets = sorted({p for p, _ in runs})
    table = {}
    for name, overrides in variants.items():
        for preset, slug in runs:
            dst = os.path.join(args.out, name, preset, slug)
            if os.path.isfile(os.path.join(dst, "mesh.glb")):
                continue  # done by an earlier call
            t = time.perf_counter()
            remesh_copy(os.path.join(args.runs, preset, slug), dst, overrides)
            print(f"[{name}] {preset}/{slug}: re-meshed in {time.perf_counter() - t:.0f} s", flush=True)
        report = quality.main(
            ["--no-generate", "--no-baseline", "--presets", ",".join(presets), "--out", os.path.join(args.out, name)]
            + ["--prompts", ";".join(sorted({prompt_of(args.runs, p, s) for p, s in runs}))]
        )
        for preset in presets:
            table[(name, preset)] = report["summary"][preset]
    cols = [("iou", "IoU")] + [(k, h) for k, h, _ in quality.MEASURES]
    print("\n| variant | preset | " + " | ".join(h for _, h in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (name, preset), s in table.items():
        print(f"| {name} | {preset} | " + " | ".join(quality.fmt(s.get(k)) for k, _ in cols) + " |")
    out = {f"{n}/{p}": s for (n, p), s in table.items()}
    with open(os.path.join(args.out, "remesh.json"), "w") as fh:
        json.dump({"variants": variants, "summary": out}, fh, indent=1)
    return out


def prompt_of(root: str, preset: str, slug: str) -> str:
    return load_run_config(os.path.join(root, preset, slug, "config.yaml")).prompt


if __name__ == "__main__":
    main()
