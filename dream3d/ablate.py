"""Config-driven ablations: a grid of variants (override sets) x prompts x seeds.

Spec (YAML)::

    base: dreamgaussian            # preset or YAML file every cell starts from
    overrides: [train.steps=200]   # applied to every cell
    prompts: ["a red cube", "a blue sphere"]
    seeds: [0]
    variants:                      # name -> list of dotted overrides
      sds: [guidance.method=sds]
      vsd: [guidance.method=vsd]

Each cell runs in ``OUT/<variant>/<prompt>/seed<k>``; a cell with a metrics.json is skipped and an
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
from .io import atomic_write_text


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
    return [{"variant": v, "prompt": p, "seed": s, "overrides": spec.overrides + ov + [f"seed={s}"]}
            for v, ov in spec.variants.items() for p in spec.prompts for s in spec.seeds]


def _flatten(prefix: str, d, out: dict) -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif not isinstance(d, list):
        out[prefix] = d


def cell_row(cell: dict, metrics: dict, quality: dict | None) -> dict:
    row = {"variant": cell["variant"], "prompt": cell["prompt"], "seed": cell["seed"],
           "total_seconds": metrics.get("total_seconds"), "train_seconds": metrics["train"]["train_seconds"],
           "steps_per_second": metrics["train"]["steps_per_second"], "final_loss": metrics["train"]["final_loss"],
           "final_grad_norm": metrics["train"]["final_grad_norm"], "faces": metrics.get("mesh", {}).get("faces")}
    if quality:
        flat: dict = {}
        _flatten("", quality, flat)
        row.update({k: v for k, v in flat.items() if isinstance(v, (int, float, bool, str)) or v is None})
    return row


def run_ablation(spec_path: str, out_dir: str, log=print, evaluate: bool = True) -> list[dict]:
    from .pipeline import RESUME_MAY_CHANGE, RunError, config_changes, generate, mesh_error

    spec = load_spec(spec_path)
    grid = cells(spec)
    # Check every cell before running any, so a typo fails now and not at cell 7.
    cfgs, dirs = [], {}
    for c in grid:
        name = f"variant {c['variant']!r}, prompt {c['prompt']!r}, seed {c['seed']}"
        try:
            cfgs.append(load_run_config(spec.base, c["overrides"], {"prompt": c["prompt"]}))
        except ConfigError as e:
            raise ConfigError(f"{spec_path}: {name}: {e}") from None
        cell_dir = os.path.join(out_dir, _slug(c["variant"]), _slug(c["prompt"]), f"seed{c['seed']}")
        if cell_dir in dirs:
            raise ConfigError(f"{spec_path}: {dirs[cell_dir]} and {name} would share the folder {cell_dir}; "
                              "rename one (folder names keep only letters and digits)")
        dirs[cell_dir] = name
        # A cell run before with other settings (the spec was edited) must not pass for this one.
        saved = os.path.join(cell_dir, "config.yaml")
        done = os.path.exists(os.path.join(cell_dir, "metrics.json"))
        changed = config_changes(cfgs[-1], saved, () if done else RESUME_MAY_CHANGE) if os.path.exists(saved) else []
        if changed:
            raise RunError(f"{cell_dir} holds a{' finished' if done else 'n unfinished'} run with other settings than the spec "
                           f"now gives ({'; '.join(changed[:6])}); delete that folder to run the cell again, or use another -o")
    rows = []
    for k, (cell, cfg, cell_dir) in enumerate(zip(grid, cfgs, dirs)):
        # a cell whose mesh stage failed is trained: resuming it runs the mesh stage only
        done = os.path.exists(os.path.join(cell_dir, "metrics.json")) and mesh_error(cell_dir) is None
        log(f"[{k + 1}/{len(grid)}] {cell['variant']} | {cell['prompt']} | seed {cell['seed']}" + (" (done, skipped)" if done else ""))
        if not done:
            resume = os.path.exists(os.path.join(cell_dir, "checkpoint.pt"))
            generate(cfg, cell_dir, resume=resume, log=log)
        with open(os.path.join(cell_dir, "metrics.json")) as f:
            metrics = json.load(f)
        quality = _quality(cell_dir) if evaluate else None
        rows.append(cell_row(cell, metrics, quality) | {"dir": os.path.relpath(cell_dir, out_dir)})
    write_results(rows, out_dir)
    return rows


def _quality(cell_dir: str) -> dict | None:
    """World-ground-truth quality, when the prompt is in the shape world's vocabulary."""
    from .world.shapes import parse_prompt

    try:
        from .evaluate import evaluate_run
    except ImportError:
        return None
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
        from .prior.sample import save_png

        save_png(os.path.join(out_dir, "contact_sheet.png"), sheet)


def markdown_table(rows: list[dict]) -> str:
    """Per-variant means of the numeric columns."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    numeric = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k not in ("seed",) and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows if r.get(k) is not None)
               and any(r.get(k) is not None for r in rows)]
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
