"""The ``dream3d`` command: parse arguments, then call library functions."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time

from . import __version__
from .commands import UserError, add_batch_and_gallery, add_generate_and_ablate
from .configtools import ConfigError, build_config, parse_overrides, to_yaml


def _prior_train(args) -> None:
    if args.kind == "zero123":
        from .embedded_prior.zero123_train import Zero123TrainConfig as Config, train_zero123 as train
    else:
        from .embedded_prior.train import PriorTrainConfig as Config, train_prior as train

    layers = [("command line", parse_overrides(args.overrides))]
    if args.out:
        layers.append(("--out", {"out": args.out}))
    if args.work_dir:
        layers.append(("--work-dir", {"work_dir": args.work_dir}))
    cfg = build_config(Config, layers)
    if args.print_config:
        print(to_yaml(cfg))
        return
    train(cfg, stop_after=args.stop_after)


def _cfg(args, default: float) -> float:
    """--cfg, or the default of the kind of model: 7.5 for text (SD's), 3 for Zero123 (its sampling scale)."""
    return default if args.cfg is None else args.cfg


def _zero123_sample(args) -> None:
    from .embedded_prior.zero123_sample import camera_offsets, sample_from_image
    from .guidance.prior import PriorConfig
    from .guidance.zero123_prior import Zero123Prior
    from .pipeline import RunError, load_reference_image

    if args.prompts:
        raise UserError("--image samples novel views of the image: give no prompts with it")
    if args.n < 1 or not 1 <= args.steps <= 1000:
        raise UserError(f"--n must be at least 1 and --steps between 1 and 1000; got {args.n} and {args.steps}")
    az = args.azimuth or [90.0]
    el, r = args.elevation or [0.0], args.radius or [0.0]
    if any(len(v) not in (1, len(az)) for v in (el, r)):
        raise UserError(f"give one --elevation and --radius, or one per --azimuth ({len(az)})")
    prior = Zero123Prior.load(PriorConfig(model=args.model, allow_download=args.allow_download))
    try:
        rgb, _ = load_reference_image(args.image, prior.image_size)
    except RunError as e:
        raise UserError(str(e)) from None
    n = len(az)
    el, r = (v * n if len(v) == 1 else v for v in (el, r))
    names = [f"az{a:g}_el{e:g}" + (f"_r{d:g}" if d else "") for a, e, d in zip(az, el, r)]
    grid = sample_from_image(
        prior, rgb, camera_offsets(el, az, r), names, args.output, args.n, args.steps, _cfg(args, 3.0), args.seed
    )
    print(f"wrote {n * args.n} novel views and {grid}")


def _prior_sample(args) -> None:
    if args.image:
        return _zero123_sample(args)
    if args.azimuth or args.elevation or args.radius:
        raise UserError("--azimuth, --elevation and --radius ask for novel views of an --image")
    from .embedded_prior.sample import load_pipeline, sample, save_samples
    from .guidance.prior import PriorConfig, caption_for, read_vocabulary, resolve_model

    prompts = [p for p in args.prompts if p.strip()]
    if not prompts:
        raise UserError(
            'give at least one non-empty prompt, e.g. dream3d prior sample "a red cube, front view" -o samples/'
        )
    if args.n < 1 or not 1 <= args.steps <= 1000:
        raise UserError(
            f"--n must be at least 1 and --steps between 1 and 1000 (the training timesteps); got {args.n} and {args.steps}"
        )
    pipe = load_pipeline(args.model, allow_download=args.allow_download)
    vocabulary = read_vocabulary(resolve_model(PriorConfig(model=args.model, allow_download=args.allow_download))[0])
    captions = [caption_for(vocabulary, p) for p in prompts]  # "an orange torus" -> "a orange torus", as trained
    images = sample(pipe, captions, per_prompt=args.n, steps=args.steps, guidance_scale=_cfg(args, 7.5), seed=args.seed)
    grid = save_samples(images, prompts, args.n, args.output)
    print(f"wrote {len(images)} samples and {grid}")


def _zero123_eval(args) -> None:
    from .embedded_prior.zero123_eval import evaluate_zero123
    from .guidance.prior import PriorConfig
    from .guidance.zero123_prior import Zero123Prior
    from .embedded_prior.zero123_train import MultiViewDataConfig, world_objects
    from .images import image_grid, save_png

    objects = None
    if args.objects:
        try:
            objects = world_objects(MultiViewDataConfig(objects=tuple(o.strip() for o in args.objects.split(","))))
        except ValueError as e:
            raise UserError(f"--objects: {e}") from None
    prior = Zero123Prior.load(PriorConfig(model=args.model, allow_download=args.allow_download))
    seed = 12345 if args.seed is None else args.seed  # (cameras no training render used)
    res = evaluate_zero123(
        prior, views=args.views, objects=objects, steps=args.steps, guidance_scale=_cfg(args, 3.0), seed=seed
    )
    sheet = res.pop("_sheet")
    if args.output:
        from .io import atomic_write_text

        os.makedirs(args.output, exist_ok=True)
        atomic_write_text(os.path.join(args.output, "zero123_eval.json"), json.dumps(res, indent=1))
        # input, the generated views, then (next row) the true views: the first 8 objects
        save_png(
            os.path.join(args.output, "novel_views.png"),
            image_grid(sheet[:16].reshape(-1, *sheet.shape[2:]), sheet.shape[1]),
        )
        print(f"wrote {args.output}/zero123_eval.json and novel_views.png")
    print(json.dumps({k: v for k, v in res.items() if k != "per_object"}, indent=1))


def _prior_eval(args) -> None:
    if args.kind != "zero123" and (args.views is not None or args.objects):
        raise UserError("--views and --objects choose zero123's novel views: add --kind zero123")
    if args.kind == "zero123" and args.per_prompt is not None:
        raise UserError("--per-prompt counts the text prior's samples; zero123 draws --views per object instead")
    args.views = 8 if args.views is None else args.views
    args.per_prompt = 4 if args.per_prompt is None else args.per_prompt
    if args.views < 1 or args.per_prompt < 1 or not 1 <= args.steps <= 1000:
        raise UserError(
            "--views and --per-prompt must be at least 1 and --steps between 1 and 1000 (the training timesteps); "
            f"got {args.views}, {args.per_prompt} and {args.steps}"
        )
    if args.kind == "zero123":
        return _zero123_eval(args)
    from .embedded_prior.evaluate import evaluate_prior, vae_psnr
    from .images import image_grid, save_png
    from .embedded_prior.sample import load_pipeline

    pipe = load_pipeline(args.model, allow_download=args.allow_download)
    res = evaluate_prior(
        pipe, per_prompt=args.per_prompt, steps=args.steps, guidance_scale=_cfg(args, 7.5), seed=args.seed or 0
    )
    images = res.pop("_images")
    res.pop("_prompts")
    res["vae_psnr_db"] = vae_psnr(pipe)
    print(f"VAE reconstruction PSNR on held-out renders: {res['vae_psnr_db']:.2f} dB")
    if args.output:
        from .io import atomic_write_text

        os.makedirs(args.output, exist_ok=True)
        atomic_write_text(os.path.join(args.output, "prior_eval.json"), json.dumps(res, indent=1))
        save_png(
            os.path.join(args.output, "samples.png"), image_grid(images[: 60 * args.per_prompt : args.per_prompt], 6)
        )
        print(f"wrote {args.output}/prior_eval.json and samples.png")
    print(json.dumps(res, indent=1))


def _prior_train_classifier(args) -> None:

    from .world.classifier import save_classifier, train_classifier
    from .world.render import WorldDatasetConfig, make_dataset

    data = make_dataset(WorldDatasetConfig(per_prompt=args.per_prompt, seed=args.seed))
    model, acc = train_classifier(data, steps=args.steps, seed=args.seed)
    save_classifier(model, acc)
    print(json.dumps(acc))


def _env(args) -> None:
    from .env import collect, format_report

    info = collect(args.device, build=args.build, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(info, indent=1) if args.json else format_report(info))
    failed = [row["library"] for row in info.get("build", []) if row["status"] == "fail"]
    if failed:
        raise UserError(
            f"{', '.join(failed)} failed to build, load or match its torch reference (see above)", exit_code=1
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dream3d", description="Text or image to textured 3D mesh by score distillation.")
    p.add_argument("--version", action="version", version=f"dream3d {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    prior = sub.add_parser(
        "prior",
        help="train, sample and evaluate the embedded diffusion prior",
        description="The embedded prior: a tiny Stable-Diffusion-format model trained on the shape world.",
    )
    psub = prior.add_subparsers(dest="prior_command", required=True)

    t = psub.add_parser(
        "train",
        help="train the prior on shape-world renders (resumable)",
        description="Render the shape world, train the VAE, then the U-Net and text encoder. "
        "Checkpoints atomically to --work-dir and resumes from there when run again.",
    )
    t.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides of the training config, e.g. unet_steps=3000 arch.unet_channels=[64,128,128] "
        "(--kind zero123: steps=4000 batch=32 data.views=96; see --print-config)",
    )
    t.add_argument(
        "--kind",
        choices=("text", "zero123"),
        default="text",
        help="text: the text-to-image prior (assets/prior); zero123: the view-conditioned prior for image-to-3D "
        "(assets/zero123, in the public zero123-xl-diffusers layout; reuses the text prior's VAE)",
    )
    t.add_argument("--out", help="diffusers folder to write (default assets/prior; assets/zero123 with --kind zero123)")
    t.add_argument("--work-dir", help="dataset cache and checkpoint folder (default runs/prior, runs/zero123)")
    t.add_argument("--stop-after", type=int, help="stop after this many steps (the checkpoint lets a later run resume)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=_prior_train, words="overrides")

    s = psub.add_parser(
        "sample",
        help="DDIM samples with CFG as PNGs and a grid",
        description="Sample prompts with DDIM and classifier-free guidance; writes one PNG per sample and grid.png.",
    )
    s.add_argument("prompts", nargs="*", help='prompts, e.g. "a red cube, front view" (none with --image)')
    s.add_argument("-o", "--output", required=True, help="output folder")
    z = s.add_argument_group("novel views of an image (Zero123: the embedded one, or --model)")
    z.add_argument("--image", help="an RGBA (or white-background) image: sample it from other cameras")
    z.add_argument("--azimuth", type=float, nargs="+", help="degrees around the object from the image's camera (90)")
    z.add_argument("--elevation", type=float, nargs="+", help="degrees up from the image's camera (0)")
    z.add_argument("--radius", type=float, nargs="+", help="change of the camera's distance, world units (0)")
    s.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    s.add_argument(
        "--cfg", type=float, default=None, help="classifier-free guidance scale (default 7.5; 3 with --image)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--model", help="a diffusers SD (or, with --image, Zero123) folder or hub id (default: embedded)")
    s.add_argument("--allow-download", action="store_true", help="let a hub id download (off: local files only)")
    s.set_defaults(func=_prior_sample, words="prompts")

    e = psub.add_parser(
        "eval",
        help="judge samples of every world prompt with the world classifier; VAE PSNR",
        description="Samples every colour x shape prompt and view prompts of the front-distinct objects, "
        "reports colour / shape / view accuracy and the VAE's held-out PSNR.",
    )
    e.add_argument(
        "-o",
        "--output",
        help="folder for prior_eval.json and samples.png (zero123: zero123_eval.json, novel_views.png)",
    )
    e.add_argument(
        "--kind",
        choices=("text", "zero123"),
        default="text",
        help="zero123: novel views of every world object from a front-ish camera against the true renders (PSNR, "
        "mask IoU, the classifier's colour and shape), held-out objects reported apart",
    )
    e.add_argument("--per-prompt", type=int, help="text: samples per prompt (default 4)")
    e.add_argument("--views", type=int, help="zero123: views per object, evenly around it (default 8)")
    e.add_argument(
        "--objects",
        help='zero123: only these world objects, e.g. "yellow mug,green house" (default: every one; the cameras are '
        "drawn object by object, so a subset sees other cameras than the whole run)",
    )
    e.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    e.add_argument("--cfg", type=float, default=None, help="CFG scale (default 7.5; 3 for zero123)")
    e.add_argument("--seed", type=int, default=None, help="default 0 (zero123: 12345)")
    e.add_argument("--model", help="a diffusers SD (or Zero123) folder or hub id (default: the embedded one)")
    e.add_argument("--allow-download", action="store_true")
    e.set_defaults(func=_prior_eval)

    c = psub.add_parser(
        "train-classifier",
        help="train the world classifier that judges generated images",
        description="Train the small CNN that names colour, shape and view of world images (assets/world_classifier).",
    )
    c.add_argument("--steps", type=int, default=1500)
    c.add_argument("--per-prompt", type=int, default=400)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_prior_train_classifier)

    add_generate_and_ablate(sub)
    add_batch_and_gallery(sub)

    v = sub.add_parser(
        "env",
        help="versions, the device, and the backend each renderer uses; --build checks the CUDA libraries",
        description="Print dream3d's environment for a bug report: versions of Python, torch, CUDA and the libraries "
        "dream3d uses, the device and its memory, and which backend each renderer (gaussians, volume, "
        "mesh) takes on it and why. --build also builds and loads gsplat, nerfacc and nvdiffrast and "
        "checks each against its torch reference; it exits 1 when one fails.",
    )
    v.add_argument(
        "--build",
        action="store_true",
        help="build and load each CUDA library and check it against torch (minutes the first time)",
    )
    v.add_argument(
        "--device", default="auto", help="the device to report on, as train.device: auto (default), cpu, cuda or cuda:N"
    )
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    v.set_defaults(func=_env)
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse fills a ``nargs="*"`` positional from one run of words only, so ``generate "a cube" --config
    dreamfusion train.steps=9`` would reject ``train.steps=9``. Words after an option join the command's word
    list (named by its ``words`` default) in command-line order; unknown options stay an error."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "words", None)
    if extra and (dest is None or any(w.startswith("-") for w in extra)):
        parser.error("unrecognized arguments: " + " ".join(extra))
    if extra:
        setattr(args, dest, list(getattr(args, dest) or []) + extra)
    return args


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings meant for the user (no alpha channel, a truncated prompt) without Python's source line."""
    return f"{category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parse_args(parser, argv)
    args.started = time.time()  # a checkpoint older than this is an earlier run's
    try:
        args.func(args)
    except (UserError, ConfigError, FileNotFoundError) as e:
        print(f"dream3d: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:  # a folder that is a file, no permission, a full disk: the system's words, in one line
        if e.errno not in _USER_OS_ERRORS:
            raise
        print(f"dream3d: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dream3d: interrupted{_how_to_continue(args)}", file=sys.stderr)
        return 130
    return 0


_USER_OS_ERRORS = {
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
}


def _how_to_continue(args) -> str:
    """What continues an interrupted command: only advice that the command will accept."""
    if args.command in ("ablate", "mesh", "batch") or getattr(args, "prior_command", None) == "train":
        return "; run the same command to continue"
    if args.command != "generate":
        return ""
    from .pipeline import mesh_command, mesh_error

    out = args.output or ""
    if not os.path.exists(os.path.join(out, "checkpoint.pt")):
        return " before the first checkpoint: there is nothing to resume; run the same command again to start over"
    if os.path.exists(os.path.join(out, "metrics.json")) and mesh_error(out) is None:  # --overwrite put it back
        return (
            f" before the first checkpoint: the finished run in {out} is as it was; run the same command to start over"
        )
    if args.overwrite and os.path.getmtime(os.path.join(out, "checkpoint.pt")) < args.started:  # the earlier run's
        return (
            f" before the first checkpoint: the earlier run in {out} is back as it was; run the same command to start "
            "over, or --resume with that run's own settings to continue it"
        )
    # stopped in this command's mesh stage (an older run's failed stage, trained on now, left its error behind)
    if mesh_error(out) and os.path.getmtime(os.path.join(out, "metrics.json")) >= args.started:
        return f" in the mesh stage; the trained run in {out} is kept: finish it with {mesh_command(out)}"
    return f"; the checkpoint in {args.output} is where training continues: run the same command with --resume" + (
        " in place of --overwrite" if args.overwrite else ""
    )


if __name__ == "__main__":
    sys.exit(main())
