"""``dream3d generate``, ``mesh``, ``ablate``, ``batch`` and ``gallery``: argument parsing, then library calls.

The command-line layer (this module and cli.py) is the one place that imports the project's own modules inside
functions: each command imports what it runs when it runs, so that ``dream3d --help`` and a mistyped option answer
in a fifth of a second instead of the seconds that importing torch and diffusers takes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING

from .errors import UserError
from .world.vocabulary import COLORS, SHAPES

if TYPE_CHECKING:
    from .executor import Resources

# A word that starts with a key and "=" is an override, even a misspelt key (train.batch-size=2 must fail as
# an unknown key, not slip into the prompt); the value may hold spaces ("guidance.negative_prompt=blurry, ugly").
_OVERRIDE = re.compile(r"^[^\s=]+=")


def _generate(args) -> None:
    from .config import CONFIG_DIR, TEXT_PRESET, fixed_run_length, image_preset, load_run_config, preset_path
    from .configtools import to_yaml
    from .pipeline import MeshStageError, RunError, generate
    from .train import NonFiniteError

    # Positional words of the form key=value are config overrides; the rest is the prompt.
    overrides = [w for w in args.prompt if _OVERRIDE.match(w)]
    prompt = " ".join(w for w in args.prompt if not _OVERRIDE.match(w)).strip()
    extra = {"prompt": prompt}
    if args.image:
        extra["image"] = args.image
    cfg = load_run_config(args.config or (image_preset() if args.image else TEXT_PRESET), overrides, extra)
    if args.config and not os.path.samefile(os.path.dirname(os.path.abspath(preset_path(args.config))), CONFIG_DIR):
        for note in fixed_run_length(cfg):  # a reused config.yaml or --print-config holds the old run's length
            print(f"note: {args.config} sets {note}; set it to null to follow train.steps", file=sys.stderr)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    if not cfg.prompt.strip() and not cfg.image:  # what to make is asked for before where to put it
        started = os.path.join(args.output or "", "config.yaml")
        if args.resume and os.path.isfile(started):
            import yaml

            with open(started) as fh:
                run = yaml.safe_load(fh) or {}
            given = [f"--image {run['image']}"] if run.get("image") else []
            given += [repr(run["prompt"])] if run.get("prompt") else []
            raise UserError(
                f"--resume continues the run in {args.output} as it was started: give {' and '.join(given) or 'its prompt'}"
                f" again (see {started})"
            )
        raise UserError('the prompt is empty: say what to make, e.g. dream3d generate "a red cube" -o out/red_cube')
    if not args.output:
        raise UserError("give an output folder with -o DIR")
    try:
        generate(
            cfg,
            args.output,
            resume=args.resume,
            overwrite=args.overwrite,
            log=lambda m: print(m, file=sys.stderr),
            stop_after=args.stop_after,
        )
    except RunError as e:
        raise UserError(str(e)) from None
    except (MeshStageError, NonFiniteError) as e:  # the message says what is saved and how to go on
        raise UserError(str(e), exit_code=1) from None


def _ablate(args) -> None:
    from .ablate import run_ablation
    from .executor import RunsFailed
    from .pipeline import RunError

    try:
        run_ablation(args.spec, args.output, log=lambda m: print(m, file=sys.stderr), resources=resources_from(args))
    except RunError as e:
        raise UserError(str(e)) from None
    except RunsFailed as e:  # the other cells finished; running the ablation again retries the failed ones
        raise UserError(str(e), exit_code=1) from None


def _batch(args) -> None:
    from .batch import run_batch
    from .executor import RunsFailed
    from .pipeline import RunError

    bad = [w for w in args.overrides if not _OVERRIDE.match(w)]
    if bad:
        raise UserError(f"after PROMPTS only key=value overrides may follow; got {' '.join(bad)}")
    try:
        run_batch(args.prompts, args.output, args.config, args.overrides, resources_from(args), judge=args.judge)
    except RunError as e:
        raise UserError(str(e)) from None
    except RunsFailed as e:
        raise UserError(str(e), exit_code=1) from None


def _gallery(args) -> None:
    from .gallery import serve, write_gallery

    if not os.path.isdir(args.dir):
        raise UserError(
            f"{args.dir} is not a folder; give the output folder of dream3d batch, ablate or benchmarks/quality.py"
        )
    write_gallery(args.dir, log=lambda m: print(m, file=sys.stderr))
    if args.serve:
        try:
            serve(args.dir, args.port)
        except KeyboardInterrupt:
            pass


def _mesh(args) -> None:
    from .pipeline import MeshStageError, RunError, remesh

    bad = [w for w in args.overrides if not _OVERRIDE.match(w)]
    if bad:
        raise UserError(f"overrides must look like key=value; got {' '.join(bad)}")
    try:
        remesh(args.run, args.overrides, log=lambda m: print(m, file=sys.stderr))
    except RunError as e:
        raise UserError(str(e)) from None
    except MeshStageError as e:
        raise UserError(str(e), exit_code=1) from None


def add_generate_and_ablate(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate",
        help="text (or image) to a textured 3D mesh",
        description="Optimize 3D Gaussians or a NeRF against a frozen diffusion prior (SDS, VSD, ISM or CSD), extract a "
        "textured mesh and write mesh.glb, mesh.obj (+mtl, png), gaussians.ply or nerf.safetensors, turntable.mp4, "
        "config.yaml and metrics.json to the output folder. With no options: the gaussian-vsd preset (3D Gaussians + "
        "VSD; with --image zero123, the shipped Zero123 given the image, or dreamgaussian where assets/zero123 is missing) "
        "and the embedded prior.",
        epilog='examples:\n  dream3d generate "a red cube" -o out/red_cube\n'
        '  dream3d generate "a blue snowman" --config dreamfusion train.steps=300 -o out/snowman\n'
        "  dream3d generate --image photo.png -o out/photo\n"
        '  dream3d generate "a red cube" guidance.prior.model=/path/to/stable-diffusion-v1-5 train.device=cuda -o out/sd',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument(
        "prompt",
        nargs="*",
        metavar="PROMPT_OR_KEY=VALUE",
        help=f'what to make, e.g. "a red cube" (the embedded prior knows the shape world\'s words: a COLOUR SHAPE '
        f"with COLOUR one of {', '.join(COLORS)} and SHAPE one of {', '.join(SHAPES)}), and dotted "
        "config overrides such as train.steps=300 guidance.method=vsd",
    )
    g.add_argument("-o", "--output", metavar="DIR", help="run folder to write (required, except with --print-config)")
    g.add_argument(
        "--config",
        help="a preset in configs/ (gaussian-vsd, dreamgaussian, dreamfusion, prolificdreamer, gaussian-ism, zero123) "
        "or a YAML file (default: gaussian-vsd for a prompt; zero123 with --image, dreamgaussian if assets/zero123 is "
        "missing)",
    )
    g.add_argument("--image", help="image-to-3D: an RGBA (or white-background) image of the object's front")
    again = g.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue the unfinished run in the output folder (same settings)"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start again even if the output folder holds a run (its files are deleted once the new run's first "
        "checkpoint is written; until then, a failure or Ctrl-C puts them back)",
    )
    g.add_argument("--stop-after", type=int, help="stop after this many steps, leaving a checkpoint for --resume")
    g.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # -o is required except with --print-config, which argparse cannot express: the usage line shows it required
    g.usage = g.format_usage().removeprefix("usage: ").rstrip().replace("[-o DIR]", "-o DIR")
    g.set_defaults(func=_generate, words="prompt")

    m = sub.add_parser(
        "mesh",
        help="extract the mesh of a finished run again with other mesh settings, without training",
        description="Re-runs the mesh stage (density grid, marching cubes, UV, colours, optional refinement) and the export "
        "on a finished run folder's checkpoint, with mesh.* / output.* overrides. Updates mesh.glb, mesh.obj, "
        "turntable.mp4, config.yaml and the mesh entry of metrics.json.",
        epilog="example:\n  dream3d mesh out/red_cube mesh.resolution=256 mesh.texture.texture_size=1024",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("run", help="a trained run folder (written by dream3d generate), also one whose mesh stage failed")
    m.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="mesh.* or output.* settings, e.g. mesh.resolution=256"
    )
    m.set_defaults(func=_mesh, words="overrides")

    a = sub.add_parser(
        "ablate",
        help="run a grid of configs x prompts x seeds; write a table and a contact sheet",
        description="Runs every (variant, prompt, seed) cell of an ablation spec resumably (finished cells are skipped), "
        "then writes results.csv, results.md and contact_sheet.png. See configs/ablations/ for specs.",
    )
    a.add_argument("spec", help="ablation YAML (e.g. configs/ablations/sds_vs_vsd.yaml)")
    a.add_argument("-o", "--output", required=True, help="folder for the cells and the results")
    add_run_options(a, ray_by_default=False)
    a.set_defaults(func=_ablate)


def add_batch_and_gallery(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "batch",
        help="many prompts, one run each, on Ray (this machine or a cluster); a summary and a gallery",
        description="Runs every prompt of PROMPTS as dream3d generate would, each in OUT/<name> with its own generate.log: as "
        "Ray tasks (pip install 'dream3d[batch]'), on this machine or with --address on a cluster, or with "
        "--local one after another in this process. Finished runs are skipped and unfinished ones resume from "
        "their checkpoint, so the same command continues an interrupted batch; a run whose worker died is retried "
        "(--retries); a failed run does not stop the others. Writes OUT/summary.csv, OUT/summary.json and "
        "OUT/index.html (the gallery). On a cluster OUT must be on a file system every node mounts at the same path.",
        epilog="PROMPTS: a text file, one prompt a line (# comments), or a YAML list whose entries are a prompt or a mapping\n"
        "with prompt, image, seed, overrides, config and name (see dream3d/batch.py).\n\nexamples:\n"
        "  dream3d batch prompts.txt -o out/batch\n"
        "  dream3d batch prompts.yaml -o out/batch --config dreamgaussian train.steps=300 --workers 2\n"
        "  dream3d batch prompts.txt -o /shared/out --address auto --gpus-per-run 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("prompts", metavar="PROMPTS", help="a text file (one prompt a line) or a YAML list")
    b.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run, e.g. train.steps=300"
    )
    b.add_argument(
        "-o", "--output", required=True, help="the batch folder: one run folder per prompt, the summary, the gallery"
    )
    b.add_argument(
        "--config", help="a preset or YAML file for every entry without its own (default: as dream3d generate)"
    )
    b.add_argument(
        "--judge",
        action="store_true",
        help="score world prompts against the shape world's ground truth (IoU, "
        "colour, Janus) for the summary and the gallery",
    )
    add_run_options(b, ray_by_default=True)
    b.set_defaults(func=_batch, words="overrides")

    v = sub.add_parser(
        "gallery",
        help="write DIR/index.html: one card per run, the mesh in a 3D viewer",
        description="Writes DIR/index.html for the runs of a batch, an ablation or benchmarks/quality.py (from DIR/summary.json, "
        "or the run folders under DIR): each run's mesh in <model-viewer>, its prompt, preset, seed, time, steps/s "
        "and scores, links to its files, a failed run's error. Opens from the folder, offline. The viewer is "
        "fetched from the npm registry once (npm pack @google/model-viewer); without it the page shows turntables.",
    )
    v.add_argument("dir", metavar="DIR", help="a batch, ablation or quality-benchmark output folder")
    v.add_argument("--serve", action="store_true", help="then serve DIR on http://127.0.0.1:PORT until Ctrl-C")
    v.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000; 0: any free one)")
    v.set_defaults(func=_gallery)


def add_run_options(p, ray_by_default: bool) -> None:
    """The command-line options that say where runs go (``dream3d batch`` and ``ablate``, benchmarks/quality.py)."""
    g = p.add_argument_group("where the runs go")
    if ray_by_default:
        g.add_argument("--local", action="store_true", help="run one after another in this process, without Ray")
    else:
        g.add_argument(
            "--ray",
            action="store_true",
            help="run as Ray tasks (pip install 'dream3d[batch]'); implied by "
            "--workers and --address (default: one after another in this process)",
        )
    g.add_argument(
        "--workers",
        type=int,
        help="Ray started on this machine: runs at a time (default: one per GPU, else one per "
        "CPU core), the cores divided between them",
    )
    g.add_argument("--address", help="join a running Ray cluster: auto, or HOST:PORT of its head (ray start --head)")
    g.add_argument(
        "--cpus-per-run",
        type=float,
        help="CPUs each run asks Ray for, also its torch threads (default: the cores "
        "divided between the runs; 1 on a cluster)",
    )
    g.add_argument(
        "--gpus-per-run", type=float, help="GPUs each run asks Ray for (default 1 where there are GPUs, else 0)"
    )
    g.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a run whose Ray worker died is tried again, from its checkpoint (default 2)",
    )


def resources_from(args) -> Resources:
    """Resources from the options of :func:`add_run_options`."""
    from .executor import Resources

    ray_asked = args.address or args.workers or args.cpus_per_run or args.gpus_per_run is not None
    local = getattr(args, "local", False) or not (getattr(args, "ray", True) or ray_asked)
    if getattr(args, "local", False) and ray_asked:
        raise UserError(
            "--local runs in this process; --workers, --address, --cpus-per-run and --gpus-per-run are for Ray"
        )
    if args.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {args.retries}")
    return Resources(
        local=local,
        address=args.address,
        workers=args.workers,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        retries=args.retries,
    )
