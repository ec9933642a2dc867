"""Config-driven ablations: a grid of variants (override sets) x prompts x seeds.

Spec (YAML)::

    base: dreamgaussian            # preset or YAML file every cell starts from
    overrides: [train.steps=200]   # applied to every cell
    prompts: ["a red cube", "a blue sphere"]
    seeds: [0]
    variants:                      # name -> list of dotted overrides
      sds: [guidance.method=sds]
      vsd: [guidance.method=vsd]

A cell's overrides are the shared ones, then its variant's, as one layer over the base: a variant that switches
``guidance.method`` starts the guidance section from that rule's defaults, and the shared guidance keys apply
to it too. Each cell runs in ``OUT/<variant>/<prompt>/seed<k>``; a cell with a metrics.json is skipped and an
interrupted one resumes. Then ``results.csv``, ``results.md`` and ``contact_sheet.png`` are written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .config import load_run_config
from .configtools import ConfigError, build_config, load_yaml
from .evaluate import evaluate_run
from .executor import Resources, RunSpec, check_failures, check_specs, run_specs, write_summary
from .gallery import write_gallery
from .images import save_png
from .io import atomic_write_text
from .world.shapes import parse_prompt


@dataclass
class AblationSpec:
    base: str = "dreamgaussian"
    overrides: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: dict = field(default_factory=dict)


def load_spec(path: str) -> AblationSpec:
    raw = load_yaml(path)
    variants = raw.pop("variants", None)
    spec = build_config(AblationSpec, [(path, raw)])
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: 'variants' must map each variant's name to a list of key=value overrides")
    for name, v in variants.items():
        if not (v is None or isinstance(v, (str, list))):
            raise ConfigError(f"{path}: variant {name!r} must be a list of key=value overrides, got {v!r}")
    spec.variants = {str(k): [str(x) for x in ([v] if isinstance(v, str) else v or [])] for k, v in variants.items()}
    if not spec.prompts or not all(p.strip() for p in spec.prompts):
        raise ConfigError(f"{path}: 'prompts' must be a non-empty list of non-empty prompts")
    return spec


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:60] or "prompt"


def cells(spec: AblationSpec) -> list[dict]:
    return [
        {"variant": v, "prompt": p, "seed": s, "overrides": spec.overrides + ov + [f"seed={s}"]}
        for v, ov in spec.variants.items()
        for p in spec.prompts
        for s in spec.seeds
    ]


def _flatten(prefix: str, d, out: dict) -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif not isinstance(d, list):
        out[prefix] = d


def cell_row(cell: dict, metrics: dict, quality: dict | None) -> dict:
    row = {
        "variant": cell["variant"],
        "prompt": cell["prompt"],
        "seed": cell["seed"],
        "total_seconds": metrics.get("total_seconds"),
        "train_seconds": metrics["train"]["train_seconds"],
        "steps_per_second": metrics["train"]["steps_per_second"],
        "final_loss": metrics["train"]["final_loss"],
        "final_grad_norm": metrics["train"]["final_grad_norm"],
        "faces": metrics.get("mesh", {}).get("faces"),
    }
    if quality:
        flat: dict = {}
        _flatten("", quality, flat)
        row.update({k: v for k, v in flat.items() if isinstance(v, (int, float, bool, str)) or v is None})
    return row


def cell_specs(spec: AblationSpec, spec_path: str, out_dir: str) -> list:
    """One RunSpec per cell, in ``variant/prompt/seed<k>``; a typo fails here naming its cell, and so do two
    cells that would share a folder and a cell whose folder holds a run with other settings (executor.check_specs)."""
    specs = []
    for c in cells(spec):
        name = f"variant {c['variant']!r}, prompt {c['prompt']!r}, seed {c['seed']}"
        try:  # the spec names the overrides in messages (an unknown key, the old guidance layout translated)
            cfg = load_run_config(spec.base, c["overrides"], {"prompt": c["prompt"]}, overrides_from=spec_path)
        except ConfigError as e:
            raise ConfigError(f"{spec_path}: {name}: {str(e).removeprefix(spec_path + ': ')}") from None
        folder = os.path.join(_slug(c["variant"]), _slug(c["prompt"]), f"seed{c['seed']}")
        labels = {
            "variant": c["variant"],
            "prompt": c["prompt"],
            "seed": c["seed"],
            "preset": os.path.splitext(os.path.basename(spec.base))[0],
        }
        specs.append(RunSpec(name=folder, cfg=cfg, labels=labels, title=f"{spec_path}: {name}"))
    check_specs(specs, out_dir)
    return specs


def run_ablation(
    spec_path: str, out_dir: str, log=print, evaluate: bool = True, resources=None, stream=None
) -> list[dict]:
    """Every cell through the executor (in series in this process unless ``resources`` says Ray), then
    results.csv, results.md, contact_sheet.png, summary.csv / summary.json and the gallery. A failed cell does
    not stop the others; it is left out of the results and named in the summary, and RunsFailed names it at the end."""
    import time

    spec = load_spec(spec_path)
    specs = cell_specs(spec, spec_path, out_dir)
    t0 = time.time()
    runs = run_specs(specs, out_dir, resources or Resources(local=True), stream)
    rows = []
    for cell, s, run in zip(cells(spec), specs, runs):
        cell_dir = os.path.join(out_dir, s.name)
        if run["status"] not in ("done", "skipped"):
            continue
        with open(os.path.join(cell_dir, "metrics.json")) as f:
            metrics = json.load(f)
        quality = judge_run(cell_dir) if evaluate else None
        run["scores"] = score_fields(quality)
        rows.append(cell_row(cell, metrics, quality) | {"dir": s.name})
    if rows:
        write_results(rows, out_dir)
    write_summary(out_dir, runs, {"spec": os.path.abspath(spec_path), "wall_seconds": round(time.time() - t0, 2)})
    write_gallery(out_dir, log=log)
    check_failures(runs, out_dir, "cells")
    return rows


def score_fields(quality: dict | None) -> dict | None:
    """The scalar scores of a judged run (evaluate_run's result without its path and timing), for summaries."""
    if not quality:
        return None
    flat: dict = {}
    _flatten("", {k: v for k, v in quality.items() if k not in ("run", "run_dir", "prompt")}, flat)
    return {k: v for k, v in flat.items() if isinstance(v, (int, float, bool, str)) or v is None}


def judge_run(cell_dir: str) -> dict | None:
    """World-ground-truth quality, when the prompt is in the shape world's vocabulary."""
    import yaml

    with open(os.path.join(cell_dir, "config.yaml")) as f:
        prompt = yaml.safe_load(f).get("prompt", "")
    try:
        parse_prompt(prompt)
    except ValueError:
        return None
    if not os.path.exists(os.path.join(cell_dir, "mesh.glb")):  # output.mesh=false: nothing to judge
        return None
    return evaluate_run(cell_dir)


def write_results(rows: list[dict], out_dir: str) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(os.path.join(out_dir, "results.csv"), buf.getvalue())
    atomic_write_text(os.path.join(out_dir, "results.md"), markdown_table(rows))
    sheet = contact_sheet(rows, out_dir)
    if sheet is not None:
        save_png(os.path.join(out_dir, "contact_sheet.png"), sheet)


def markdown_table(rows: list[dict]) -> str:
    """Per-variant means of the numeric columns."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    numeric = [
        k
        for k in dict.fromkeys(k for r in rows for k in r)
        if k not in ("seed",)
        and all(
            isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows if r.get(k) is not None
        )
        and any(r.get(k) is not None for r in rows)
    ]
    lines = ["| variant | cells | " + " | ".join(numeric) + " |", "|---|---|" + "---|" * len(numeric)]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        vals = []
        for k in numeric:
            xs = [r[k] for r in rs if r.get(k) is not None]
            vals.append(f"{np.mean(xs):.4g}" if xs else "")
        lines.append(f"| {v} | {len(rs)} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def contact_sheet(rows: list[dict], out_dir: str) -> np.ndarray | None:
    """Each cell's last validation render (front, side, back, overhead), one row per cell, labelled."""
    import imageio.v3 as iio
    from PIL import Image, ImageDraw

    tiles = []
    for r in rows:
        val = os.path.join(out_dir, r["dir"], "val")
        pngs = sorted(f for f in os.listdir(val) if f.endswith(".png")) if os.path.isdir(val) else []
        if not pngs:
            continue
        img = iio.imread(os.path.join(val, pngs[-1]))[..., :3]
        label = Image.new("RGB", (220, img.shape[0]), "white")
        ImageDraw.Draw(label).multiline_text((4, 4), f"{r['variant']}\n{r['prompt']}\nseed {r['seed']}", fill="black")
        tiles.append(np.concatenate([np.asarray(label), img], 1))
    if not tiles:
        return None
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 2), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    return np.concatenate(tiles, 0).astype(np.float32) / 255
