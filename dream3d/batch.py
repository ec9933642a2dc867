"""``dream3d batch``: a file of prompts becomes one run each, through :mod:`dream3d.executor`.

PROMPTS is a text file, one prompt a line (blank lines and ``#`` comments are skipped), or a YAML list
(``.yaml`` / ``.yml``) whose entries are a prompt or a mapping::

    - a red cube
    - prompt: a blue house
      seed: 3
      overrides: [train.steps=600]       # after the command line's
    - image: photos/mug.png             # relative to the file
      prompt: a green mug
      config: dreamgaussian             # a preset or YAML file for this entry alone
      name: mug_photo                   # the run folder (default: from the prompt, or the image's name)

Each entry runs in ``OUT/<name>``; a folder name comes from the prompt (``a_red_cube``), with ``_seed<k>`` when the
entry gives a seed.
"""

from __future__ import annotations

import os
import re
import sys

from .ablate import judge_run, score_fields
from .config import TEXT_PRESET, image_preset, load_run_config
from .configtools import ConfigError
from .executor import Resources, RunSpec, check_failures, run_specs, write_summary
from .gallery import write_gallery
from .guidance import RULES

ENTRY_KEYS = ("prompt", "image", "seed", "overrides", "config", "name")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def read_prompts(path: str) -> list[dict]:
    """The entries of a PROMPTS file as dicts with the keys of ENTRY_KEYS that the entry gives, plus
    ``where`` (file and line or item number, for messages). Image paths are made relative to the file's folder."""
    if not os.path.isfile(path):
        raise ConfigError(f"no prompts file {path!r}")
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            with open(path, encoding="utf-8-sig") as fh:  # -sig: a BOM (Windows editors) is not prompt text
                raw = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(raw, list):
            raise ConfigError(
                f"{path}: a YAML prompts file is a list of prompts or of mappings with the keys {', '.join(ENTRY_KEYS)}"
            )
        entries = []
        for k, item in enumerate(raw, 1):
            where = f"{path}, item {k}"
            if isinstance(item, str):
                item = {"prompt": item}
            if not isinstance(item, dict):
                raise ConfigError(
                    f"{where}: give a prompt or a mapping with the keys {', '.join(ENTRY_KEYS)}, got {item!r}"
                )
            unknown = sorted(set(item) - set(ENTRY_KEYS))
            if unknown:
                raise ConfigError(
                    f"{where}: unknown key {', '.join(map(repr, unknown))}; an entry may have {', '.join(ENTRY_KEYS)}"
                )
            entry = {"where": where, **item}
            if entry.get("seed") is not None and not isinstance(entry["seed"], int):
                raise ConfigError(f"{where}: seed must be a whole number, got {entry['seed']!r}")
            ov = entry.get("overrides") or []
            entry["overrides"] = [str(x) for x in ([ov] if isinstance(ov, str) else ov)]
            if entry.get("image") and not os.path.isabs(str(entry["image"])):
                entry["image"] = os.path.join(os.path.dirname(os.path.abspath(path)), str(entry["image"]))
            if not str(entry.get("prompt") or "").strip() and not entry.get("image"):
                raise ConfigError(f"{where}: the entry has neither a prompt nor an image")
            entries.append(entry)
    else:
        with open(path, encoding="utf-8-sig") as fh:
            entries = [
                {"where": f"{path}, line {n}", "prompt": line.strip()}
                for n, line in enumerate(fh, 1)
                if line.strip() and not line.strip().startswith("#")
            ]
    if not entries:
        raise ConfigError(f"{path} holds no prompts")
    return entries


def build_specs(entries: list[dict], config: str | None, overrides: list[str]) -> list[RunSpec]:
    """One RunSpec per entry: its config (the entry's, else ``config``, else the preset ``dream3d generate``
    would take), the prompt and image, then ``overrides``, then the entry's own overrides and seed."""
    specs = []
    for e in entries:
        prompt = str(e.get("prompt") or "").strip()
        preset = e.get("config") or config or (image_preset() if e.get("image") else TEXT_PRESET)
        extra = {"prompt": prompt} | ({"image": str(e["image"])} if e.get("image") else {})
        seed = [f"seed={e['seed']}"] if e.get("seed") is not None else []
        try:
            cfg = load_run_config(preset, list(overrides) + e.get("overrides", []) + seed, extra)
        except ConfigError as err:
            raise ConfigError(f"{e['where']}: {err}") from None
        if RULES[cfg.guidance.method].needs_reference and not cfg.image:  # refused before any run starts
            raise ConfigError(
                f"{e['where']}: guidance.method={cfg.guidance.method} draws the views from an image: give the entry "
                "an image (- {image: photo.png, prompt: ...}), or a text config such as gaussian-vsd"
            )
        if e.get("name") is not None:
            name = str(e["name"])
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
                raise ConfigError(
                    f"{e['where']}: name {name!r} must be a folder name of letters, digits, '_', '-' and '.'"
                )
        else:
            name = slug(prompt) or slug(os.path.splitext(os.path.basename(str(e["image"])))[0]) or "run"
            name += f"_seed{e['seed']}" if e.get("seed") is not None else ""
        labels = {
            "prompt": prompt,
            "image": cfg.image,
            "preset": os.path.splitext(os.path.basename(preset))[0],
            "seed": cfg.seed,
        }
        specs.append(RunSpec(name=name, cfg=cfg, labels=labels, title=f"{e['where']} ({prompt or e.get('image')})"))
    return specs


def run_batch(
    prompts_path: str,
    out_dir: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    resources: Resources | None = None,
    judge: bool = False,
    gallery: bool = True,
    stream=None,
) -> list[dict]:
    """Read PROMPTS, run every entry into ``out_dir``, write summary.csv, summary.json and the gallery (with
    ``judge``, world prompts are scored against the shape world's ground truth). Returns the summary rows;
    raises executor.RunsFailed after writing them when a run failed."""
    import time

    specs = build_specs(read_prompts(prompts_path), config, overrides or [])
    resources = resources or Resources()
    t0 = time.time()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    info = {
        "prompts": os.path.abspath(prompts_path),
        "out": os.path.abspath(out_dir),
        "started": started,
        "mode": "series" if resources.local else f"ray ({resources.address or 'local'})",
    }
    rows = run_specs(specs, out_dir, resources, stream)
    if judge:
        for r in rows:
            if r["status"] in ("done", "skipped"):
                r["scores"] = score_fields(judge_run(os.path.join(out_dir, r["name"])))
    write_summary(out_dir, rows, info | {"wall_seconds": round(time.time() - t0, 2)})
    if gallery:
        write_gallery(out_dir, log=lambda m: print(m, file=stream or sys.stderr))
    check_failures(rows, out_dir)
    return rows
