"""Training speed per preset and prior size, with a per-phase breakdown; writes JSON.

    python benchmarks/speed.py --device cuda                        # embedded prior and SD-1.5 size, every preset
    python benchmarks/speed.py --device cuda --compile reduce-overhead --out speed_compiled.json
    python benchmarks/speed.py --device cuda --job                  # + a whole SD-size dreamgaussian job (500 steps + mesh)
    python benchmarks/speed.py --sizes sd15-small --presets dreamgaussian --steps 2 --warmup 1   # tiny, on CPU

Sizes: ``embedded`` (assets/prior, the preset as it is), ``sd15`` (SD 1.5's full architecture with random weights,
built on the device: 512-px renders, batch 1) and ``sd15-small`` (SD 1.5's layers with tiny channels, for tests).
The zero123 preset (image-to-3D from INPUT_IMAGE) takes the Zero123 of each size instead: assets/zero123, Zero123-XL's
architecture with random weights (256-px renders and reference view, batch 1, as DreamGaussian's image mode), and
its tiny twin. Random weights measure speed only, never quality.

For each case: steps/s over ``--steps`` steps after ``--warmup`` (the loop as ``Trainer.run`` drives it, reading
the step's numbers every ``train.log_every`` steps: ``Trainer.advance``); then a breakdown run with a device synchronisation at each
phase boundary (render, VAE encode, U-Net, LoRA step, backward through the VAE encoder and the renderer,
optimizer, densification; overhead is the rest); and the host-device synchronisations per step (on CUDA counted
by ``torch.cuda.set_sync_debug_mode``, on the CPU by ``dream3d.profiling.count_syncs``) and ATen operator calls
per step (on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream3d.config import load_run_config  # noqa: E402
from dream3d.guidance import RULES  # noqa: E402
from dream3d.pipeline import build_guidance_and_reference, generate  # noqa: E402
from dream3d.profiling import count_ops, count_syncs  # noqa: E402
from dream3d.random_models import (  # noqa: E402
    SD15_FULL,
    SD15_SMALL,
    ZERO123_XL_FULL,
    ZERO123_XL_SMALL,
    make_sd_folder,
    make_zero123_folder,
)
from dream3d.train import Trainer  # noqa: E402

PRESETS = ("gaussian-vsd", "dreamgaussian", "prolificdreamer", "zero123")
SIZES = {"embedded": None, "sd15": SD15_FULL, "sd15-small": SD15_SMALL}
ZERO123_SIZES = {"embedded": None, "sd15": ZERO123_XL_FULL, "sd15-small": ZERO123_XL_SMALL}
# The targets on one H100/H200, steps/s (the SD-size job: <= 45 s)
TARGETS = {
    ("gaussian-vsd", "embedded"): 50,
    ("prolificdreamer", "embedded"): 20,
    ("dreamgaussian", "sd15"): 20,
    ("gaussian-vsd", "sd15"): 10,
}


def reads_image(preset: str) -> bool:
    """Whether the preset's rule reads the input image itself (Zero123): it then needs a Zero123 folder."""
    return RULES[load_run_config(preset).guidance.method].needs_reference


def sd_folder(size: str, device: str, work: Path, zero123: bool = False) -> str | None:
    """A random-weight folder for ``size`` (SD format, or Zero123's with ``zero123``), built once under ``work``;
    None for the embedded prior."""
    arch = (ZERO123_SIZES if zero123 else SIZES)[size]
    if arch is None:
        return None
    folder = work / f"{'zero123_' if zero123 else ''}{size}_random"
    if not (folder / "model_index.json").exists():
        t0 = time.time()
        with torch.device(device):  # building the weights on the GPU takes seconds instead of minutes
            (make_zero123_folder if zero123 else make_sd_folder)(folder, **arch)
        print(f"built {folder} in {time.time() - t0:.1f}s", flush=True)
    return str(folder)


def input_image(work: Path) -> str:
    """The image of the image-to-3D cases: a red disc on transparency, 256 px."""
    path = work / "input.png"
    if not path.exists():
        import imageio.v3 as iio
        import numpy as np

        y, x = np.mgrid[:256, :256]
        inside = (x - 128) ** 2 + (y - 128) ** 2 < 80**2
        img = np.zeros((256, 256, 4), np.uint8)
        img[inside] = (200, 40, 40, 255)
        iio.imwrite(path, img)
    return str(path)


def case_overrides(
    preset: str, size: str, folder: str | None, device: str, compile_mode: str | None, extra: list[str], work: Path
) -> list[str]:
    # (random weights in fp16 may give non-finite steps: they are skipped and counted, never the end of a case)
    o = [
        "prompt=a red cube",
        f"train.device={device}",
        f"guidance.prior.device={device}",
        "train.val_every=0",
        "train.checkpoint_every=0",
        "train.max_nan_skips=1000000000",
    ]
    if folder is not None:
        o += [f"guidance.prior.model={folder}", "train.batch_size=1"]
        if reads_image(preset):  # Zero123 works at 256 px
            o += ["train.resolution=256", "reference.resolution=256"] if size == "sd15" else ["train.resolution=32"]
        else:
            o += ["train.resolution=512"] if size == "sd15" else ["train.resolution=32"]
        if preset in ("dreamfusion", "prolificdreamer"):  # lit for a real checkpoint (README, GPU)
            o += ["nerf.background=mlp", "nerf.light_direction=null", "nerf.ambient_ratio=0.1"]
    if reads_image(preset):
        o += [f"image={input_image(work)}", "prompt="]
    if compile_mode:
        o.append(f"train.compile={compile_mode}")
    return o + extra  # the user's --set last, so that it wins


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def syncs_per_step(trainer: Trainer, device: str, n: int = 2) -> dict:
    """Host-device synchronisations per step: all, and those outside the renderer's own code."""
    if device.startswith("cuda"):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(n):
                    trainer.train_step()
                    trainer.step += 1
                _sync(device)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        found = [w for w in caught if "synchroniz" in str(w.message)]
        sites = {}
        for w in found:
            key = f"{os.path.basename(w.filename)}:{w.lineno}"
            sites[key] = sites.get(key, 0) + 1
        return {"per_step": len(found) / n, "sites": sites}
    with count_syncs() as all_syncs:
        for _ in range(n):
            trainer.train_step()
            trainer.step += 1
    outside = {k: v for k, v in all_syncs.by_site.items() if " renderers/" not in k}
    return {
        "per_step": all_syncs.total / n,
        "outside_renderer_per_step": sum(outside.values()) / n,
        "sites": {k: v / n for k, v in all_syncs.by_site.most_common()},
    }


def ops_per_step(trainer: Trainer, n: int = 2) -> float:
    with count_ops() as ops:
        for _ in range(n):
            trainer.train_step()
            trainer.step += 1
    return ops.total / n


def measure(preset: str, size: str, args, work: Path) -> dict:
    folder = sd_folder(size, args.device, work, zero123=reads_image(preset))
    cfg = load_run_config(preset, case_overrides(preset, size, folder, args.device, args.compile, args.set, work))
    guidance, reference = build_guidance_and_reference(cfg, log=lambda m: None)
    trainer = Trainer(
        cfg, cfg.prompt, str(work / f"run_{preset}_{size}"), guidance=guidance, reference=reference, log=lambda m: None
    )
    t0 = time.perf_counter()
    trainer.advance(args.warmup)
    _sync(args.device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.advance(args.steps)
    _sync(args.device)
    seconds = time.perf_counter() - t0
    # the breakdown: a synchronisation at each phase boundary (slower than the run above)
    trainer.timer.enabled = True
    t0 = time.perf_counter()
    trainer.advance(args.breakdown_steps)
    _sync(args.device)
    total = time.perf_counter() - t0
    trainer.timer.enabled = False
    phases = {k: 1000 * v / args.breakdown_steps for k, v in sorted(trainer.timer.seconds.items())}
    phases["overhead"] = 1000 * total / args.breakdown_steps - sum(phases.values())
    row = {
        "preset": preset,
        "size": size,
        "device": str(trainer.device),
        "compile": args.compile,
        "batch_size": cfg.train.batch_size,
        "resolution": cfg.train.resolution,
        "prior_dtype": str(trainer.guidance.prior.dtype),
        "warmup_seconds": round(warm, 2),
        "steps": args.steps,
        "seconds": round(seconds, 3),
        "steps_per_second": round(args.steps / seconds, 2),
        "ms_per_step_phases": {k: round(v, 2) for k, v in phases.items()},
        "nan_skips": trainer.nan_skips,
        "target_steps_per_second": TARGETS.get((preset, size)),
    }
    if not args.no_counts:
        row["syncs"] = syncs_per_step(trainer, args.device)
        if not args.device.startswith("cuda"):
            row["ops_per_step"] = ops_per_step(trainer)
    graphed = trainer.guidance.prior.graphed_unet
    row["cuda_graphs"] = 0 if graphed is None else len([g for g in graphed.graphs.values() if g is not None])
    if args.device.startswith("cuda"):
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def whole_job(args, work: Path) -> dict:
    """A whole SD-size dreamgaussian job: 500 steps at batch 1 (render 128 -> 512 px as DreamGaussian), then the
    mesh stage and the files."""
    folder = sd_folder("sd15" if args.device.startswith("cuda") else "sd15-small", args.device, work)
    steps = args.job_steps
    overrides = case_overrides("dreamgaussian", "sd15", folder, args.device, args.compile, args.set, work)
    overrides = [o for o in overrides if not o.startswith("train.resolution=")] + [
        f"train.steps={steps}",
        f"train.resolution=[0,128,512,{max(steps * 4 // 5, 1)}]",
        "train.checkpoint_every=0",
    ]
    cfg = load_run_config("dreamgaussian", overrides)
    out = work / "job_dreamgaussian_sd15"
    t0 = time.perf_counter()
    m = generate(cfg, str(out), overwrite=out.exists(), log=lambda msg: None)
    wall = time.perf_counter() - t0
    return {
        "job": "dreamgaussian, SD-1.5 size",
        "steps": steps,
        "wall_seconds": round(wall, 1),
        "train_seconds": m["train"]["train_seconds"],
        "mesh_seconds": m.get("mesh", {}).get("seconds"),
        "target_seconds": 45,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| preset | size | device | compile / graphs | steps/s | target | ms/step by phase | syncs/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ph = ", ".join(f"{k} {v:.1f}" for k, v in r["ms_per_step_phases"].items())
        sy = r.get("syncs", {}).get("per_step", "")
        how = r["compile"] or (f"{r['cuda_graphs']} CUDA graphs" if r.get("cuda_graphs") else "-")
        lines.append(
            f"| {r['preset']} | {r['size']} | {r['device']} | {how} | {r['steps_per_second']} | "
            f"{r['target_steps_per_second'] or ''} | {ph} | {sy} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--sizes", default="embedded,sd15")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--breakdown-steps", type=int, default=5)
    p.add_argument("--compile", default=None, help="train.compile mode for every case (default: eager)")
    p.add_argument(
        "--job", action="store_true", help="also time a whole SD-size dreamgaussian job (500 steps + mesh stage)"
    )
    p.add_argument("--job-steps", type=int, default=500)
    p.add_argument("--no-counts", action="store_true", help="skip the sync and operator counts")
    p.add_argument(
        "--work", default=None, help="folder for the random-weight models and runs (default: a temporary one)"
    )
    p.add_argument("--out", default="speed.json")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every case")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="dream3d_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "cases": [],
        "errors": [],
    }
    for size in args.sizes.split(","):
        for preset in args.presets.split(","):
            print(f"-- {preset} at {size} size on {args.device}", flush=True)
            try:
                row = measure(preset, size, args, work)
            except Exception as e:  # one case failing (out of memory, say) does not lose the others
                result["errors"].append({"preset": preset, "size": size, "error": f"{type(e).__name__}: {e}"})
                print(f"   failed: {type(e).__name__}: {e}", flush=True)
                continue
            result["cases"].append(row)
            print(
                f"   {row['steps_per_second']} steps/s; ms/step: {row['ms_per_step_phases']}; syncs/step: {row.get('syncs', {}).get('per_step')}",
                flush=True,
            )
            Path(args.out).write_text(json.dumps(result, indent=1))
    if args.job:
        try:
            result["job"] = whole_job(args, work)
            print(f"-- whole job: {result['job']}", flush=True)
        except Exception as e:
            result["errors"].append({"job": "dreamgaussian sd15", "error": f"{type(e).__name__}: {e}"})
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(result["cases"]))
    return result


if __name__ == "__main__":
    main()
