"""Mesh-stage settings compared on finished runs, without training again.

    python benchmarks/remesh.py runs/q18_baseline --out runs/q18_mesh \\
        --variant base: --variant blur2:mesh.extract.blur_sigma=2 \\
        --variant "median:mesh.gaussian_color_median=16"

    python benchmarks/remesh.py runs/i3_base --out runs/i3_mesh --variant base: \
        --variant "blur3:mesh.extract.blur_sigma=3 mesh.extract.threshold_ratio=0.25"

RUNS is a benchmarks/quality.py or benchmarks/image_to_3d.py output folder (RUNS/PRESET/PROMPT run folders; the
latter has RUNS/inputs/inputs.json). For every variant NAME:OVERRIDES (space-separated mesh.* / output.* settings;
empty for the runs' own settings) each run's checkpoint and config are copied to OUT/NAME/PRESET/PROMPT, the mesh
stage runs again there (dream3d mesh), and the copies are scored as their benchmark scores them: by
benchmarks/quality.py --no-generate (OUT/NAME/quality.md), or, for image runs, by image_to_3d.score_run against the
same inputs (the far side and the reference-view fit too; OUT/NAME/image_to_3d.json and .md). The finished runs in
RUNS are only read. Prints one row per variant and preset: IoU and the reconstruction measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import image_to_3d  # noqa: E402
import quality  # noqa: E402

from dream3d.config import load_run_config  # noqa: E402
from dream3d.evaluate import EvalConfig, default_classifier  # noqa: E402
from dream3d.io import atomic_write_text  # noqa: E402
from dream3d.pipeline import remesh  # noqa: E402

COPIED = ("checkpoint.pt", "config.yaml", "metrics.json", "reference.png", "gaussians.ply", "generate.log")


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


def image_inputs(root: str) -> dict[str, dict] | None:
    """The input entries of an image_to_3d.py folder by run folder name (None for a quality.py folder)."""
    path = os.path.join(root, "inputs", "inputs.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return {e["name"]: e for e in json.load(fh)["inputs"]}


def score_image_runs(out: str, runs: list[tuple[str, str]], inputs: dict[str, dict], cfg: EvalConfig) -> dict:
    """Every re-meshed image run in ``out`` (OUT/NAME) scored as benchmarks/image_to_3d.py scores it, against the
    input it was made from; writes ``out``/image_to_3d.json and .md. Returns the summary per preset."""
    classifier = default_classifier()
    results: dict[str, list[dict]] = {}
    for preset, name in runs:
        results.setdefault(preset, []).append(
            image_to_3d.score_run(os.path.join(out, preset, name), inputs[name], classifier, cfg)
        )
    summary = {p: image_to_3d.summarize_preset(r) for p, r in results.items()}
    with open(os.path.join(out, "image_to_3d.json"), "w") as fh:
        json.dump({"results": results, "summary": summary}, fh, indent=1, default=float)
    md = [image_to_3d.summary_table(summary), ""] + [image_to_3d.object_table(p, r) + "\n" for p, r in results.items()]
    atomic_write_text(os.path.join(out, "image_to_3d.md"), "\n".join(md))
    return summary


def main(argv=None, eval_cfg: EvalConfig | None = None) -> dict:
    """The comparison; ``eval_cfg``: the image runs' evaluation sizes (default EvalConfig(); tests pass smaller)."""
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
    inputs = image_inputs(args.runs)
    if inputs is not None and (missing := sorted({n for _, n in runs} - inputs.keys())):
        ap.error(f"{args.runs}/inputs/inputs.json lists no input for the runs {', '.join(missing)}")
    table = {}
    for name, overrides in variants.items():
        for preset, slug in runs:
            dst = os.path.join(args.out, name, preset, slug)
            if os.path.isfile(os.path.join(dst, "mesh.glb")):
                continue  # done by an earlier call
            t = time.perf_counter()
            remesh_copy(os.path.join(args.runs, preset, slug), dst, overrides)
            print(f"[{name}] {preset}/{slug}: re-meshed in {time.perf_counter() - t:.0f} s", flush=True)
        if inputs is not None:
            summary = score_image_runs(os.path.join(args.out, name), runs, inputs, eval_cfg or EvalConfig())
        else:
            summary = quality.main(
                [
                    "--no-generate",
                    "--no-baseline",
                    "--presets",
                    ",".join(presets),
                    "--out",
                    os.path.join(args.out, name),
                ]
                + ["--prompts", ";".join(sorted({prompt_of(args.runs, p, s) for p, s in runs}))]
            )["summary"]
        for preset in presets:
            table[(name, preset)] = summary[preset]
    cols = [("iou", "IoU")] + [(k, h) for k, h, _ in quality.MEASURES]
    if inputs is not None:
        cols += [("far_side_rate", "far side"), ("reference_iou", "ref IoU"), ("mesh_reference_iou", "mesh ref IoU")]
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
