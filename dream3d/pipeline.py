"""The whole job: prompt (or image) -> optimized Gaussians or NeRF -> textured mesh -> files.

A run folder holds ``config.yaml`` (written first), ``checkpoint.pt`` (while training), ``gaussians.ply``
or ``nerf.safetensors``, ``mesh.glb``, ``mesh.obj`` (+ ``.mtl``, ``.png``), ``turntable.mp4``, ``val/`` and
``metrics.json``: its presence marks a trained run. It is written once training ends, before the mesh stage,
with ``mesh: {"error": ...}`` until that stage succeeds, so a failed or killed mesh stage never costs the
training: ``dream3d mesh RUN`` (or ``--resume``) finishes such a run without training again.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import torch

from renderers.cameras import orbit_cameras

from . import __version__
from .config import RunConfig, load_run_config
from .configtools import dotted_keys, schema_at, to_plain, to_yaml
from .devices import resolve_device
from .guidance import RULES
from .io import atomic_path, atomic_write_text
from .mesh.export import export_mesh
from .mesh.texture import project_image
from .representations import REPRESENTATIONS
from .train import Trainer


class RunError(ValueError):
    """A run that cannot start as asked; the message says what to do."""


class MeshStageError(RuntimeError):
    """The mesh stage or the export failed after training; the trained run is saved and ``retry`` (a
    ``dream3d mesh RUN`` command) finishes it."""

    def __init__(self, message: str, run_dir: str, retry: str):
        super().__init__(message)
        self.run_dir, self.retry = run_dir, retry


# metrics.json's mesh entry while the mesh stage runs: what a later reader sees if the process died in it.
MESH_NOT_FINISHED = "the mesh stage did not finish (the process ended during it)"


def build_guidance(cfg: RunConfig, generator_seed: int | None = None):
    rule = RULES[cfg.guidance.method]  # cfg.guidance is the rule's config (with method and prior beside it)
    prior = rule.load_prior(cfg.guidance.prior)  # a text prior, or Zero123 for the zero123 rule
    seed = cfg.seed + 2 if generator_seed is None else generator_seed
    # VSD's LoRA and camera MLP start from torch's global RNG (peft initialises them so): seed it here, so the
    # student starts the same for the same seed whatever ran before in this process, and leave it as it was
    # (the CUDA generators too: manual_seed seeds them, and peft may initialise on the prior's device).
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        return rule(prior, cfg.guidance, generator=torch.Generator().manual_seed(seed))


def build_guidance_and_reference(cfg: RunConfig, log=print, square: torch.Tensor | None = None) -> tuple:
    """The guidance rule and, for image-to-3D, the reference view the trainer fits: the input image as (rgb, mask)
    at ``reference.resolution``. A rule that reads the image itself (Zero123) gets it at the prior's own size, with
    the reference camera. ``square`` is the input as :func:`run_reference` gives it (read from ``cfg.image`` if
    not given)."""
    image_rule = RULES[cfg.guidance.method].needs_reference
    if image_rule and not cfg.image:  # before the prior loads, which takes minutes at a real model's size
        raise RunError(f"guidance.method={cfg.guidance.method} needs the input image: set image=IMG (--image)")
    reference, r = None, cfg.reference
    if cfg.image:  # read once, resized for each reader
        if square is None:
            square = run_reference(cfg)
        reference = resize_reference(square, r.resolution)
        if not cfg.prompt.strip() and not image_rule:
            log("no prompt with the image: the other views get unconditional SDS")
    guidance = build_guidance(cfg)
    if image_rule:
        size = guidance.prior.image_size
        rgb = reference[0] if size == r.resolution else resize_reference(square, size)[0]
        guidance.set_reference(rgb, r.elevation, r.azimuth, r.radius)
    return guidance, reference


# The input image as a run reads it, saved in its folder: the square, 8-bit RGBA with the colour not blended with
# the background (as PNGs are meant, so it shows right on any background, and given as --image without
# reference.object_fraction it reads as the same input). A resume and the mesh stage read this file, so an image
# replaced or moved since changes nothing.
REFERENCE_FILE = "reference.png"


def run_reference(cfg: RunConfig, out_dir: str | None = None, resume: bool = False, log=print) -> torch.Tensor:
    """The (1, 4, S, S) input square a run trains on (RGB on white, mask). A resume reads the run's REFERENCE_FILE.
    A fresh run reads ``cfg.image`` at no less than twice the largest size a prior takes (S at most
    max(reference.resolution, 512)), through the 8 bits that :func:`save_reference` keeps, so its first sitting
    sees exactly what a resume reads."""
    saved = os.path.join(out_dir, REFERENCE_FILE) if out_dir else None
    if resume and saved and os.path.exists(saved):
        return read_saved_reference(saved)
    if resume:  # a run from before REFERENCE_FILE was saved, or one whose file was deleted
        log(f"{saved} is missing: reading {cfg.image} again (the resume is exact only if it is unchanged)")
    size = max(cfg.reference.resolution, 512)
    square = read_reference(cfg.image, size, object_fraction=cfg.reference.object_fraction)
    if square.shape[-1] > size:
        square = _resize_square(square, size)
    return _square_from_file(_file_pixels(square))


def _file_pixels(square: torch.Tensor) -> np.ndarray:
    """(S, S, 4) uint8 RGBA of a square of RGB on white: the colour un-blended from the white (white where the
    alpha is 0)."""
    rgb, alpha = square[0, :3], square[0, 3:]
    colour = torch.where(alpha > 0, (rgb - (1 - alpha)) / alpha.clamp_min(1e-12), 1.0)
    rgba = torch.cat([colour.clamp(0, 1), alpha.clamp(0, 1)])
    return (rgba * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _square_from_file(pixels: np.ndarray) -> torch.Tensor:
    """The inverse of :func:`_file_pixels`, blended on white as :func:`read_reference` blends an input."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255)
    rgb, alpha = x[..., :3], x[..., 3:]
    return torch.cat([rgb * alpha + (1 - alpha), alpha], -1).permute(2, 0, 1)[None]


# A text chunk that marks REFERENCE_FILE's colour as straight. Runs from before 2026-12-06 saved it blended on
# white, without the mark, and are read that way, so that they resume on what they trained on.
_STRAIGHT = ("dream3d-alpha", "straight")


def save_reference(path: str, square: torch.Tensor) -> None:
    """:func:`run_reference`'s square as an RGBA PNG (written to a temporary file, then renamed)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(*_STRAIGHT)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(_file_pixels(square), "RGBA").save(tmp, format="PNG", pnginfo=info)


def read_saved_reference(path: str) -> torch.Tensor:
    """The square that :func:`save_reference` wrote, as the run read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            straight = im.info.get(_STRAIGHT[0]) == _STRAIGHT[1]
            pixels = np.array(im.convert("RGBA"))  # (a writable copy, for torch.from_numpy)
        if pixels.shape[0] != pixels.shape[1] or pixels[..., 3].min() == 255:
            raise ValueError("not a square with a transparent background")
    except Exception:
        raise RunError(
            f"cannot read {path}, the input image as this run read it (a square RGBA PNG with a transparent "
            "background); delete it to read the run's image again"
        ) from None
    if not straight:  # saved blended on white, before the mark
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255
    return _square_from_file(pixels)


def describe_prior(prior) -> dict:
    """Which diffusion model scored the run, and at what size and precision (for metrics.json)."""
    return {
        "model": prior.source,
        "image_size": prior.image_size,
        "latent_size": prior.latent_size,
        "dtype": str(prior.dtype).removeprefix("torch."),
        "device": str(prior.device),
    }


# What load_reference_image reads (through imageio's Pillow plugin; tests/test_inputs.py reads each one).
IMAGE_FORMATS = ("PNG", "JPEG", "WebP", "BMP", "TIFF")


def load_reference_image(
    path: str, size: int, background_threshold: float = 0.95, object_fraction: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input image as (1, size, size, 3) RGB on white and its (1, size, size, 1) foreground mask.

    The mask comes from the alpha channel; without one, pixels brighter than ``background_threshold`` in
    every channel count as a white background (with a warning). With ``object_fraction`` the image is
    cropped to the object and padded so that the object's larger side fills that fraction, centred."""
    return resize_reference(read_reference(path, size, background_threshold, object_fraction), size)


def read_reference(
    path: str, size: int, background_threshold: float = 0.95, object_fraction: float | None = None
) -> torch.Tensor:
    """The input image as a (1, 4, S, S) square of RGB on white and mask (see :func:`load_reference_image`), at
    its own resolution, or box-filtered to no less than ``2 * size`` where it is larger than that: a phone photo
    (4000 x 3000) is cropped before it becomes float and is never held at full size more than once."""
    if not os.path.exists(path):
        raise RunError(f"input image {path!r} does not exist")
    if os.path.isdir(path):
        raise RunError(f"input image {path!r} is a folder: give one image file in it")
    try:
        img = _read_pixels(path)
    # (imageio raises many types for unreadable files, with advice to install plugins we do not use)
    except Exception as e:
        if "truncated" in str(e):  # Pillow knew the format, and the data ended early
            raise RunError(f"cannot read image {path!r}: the file is cut short ({e}); copy or save it again") from None
        raise RunError(
            f"cannot read image {path!r}: it is not a still image in a format dream3d reads "
            f"({', '.join(IMAGE_FORMATS)})"
        ) from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    elif img.ndim == 3 and img.shape[-1] == 2:  # grey + alpha
        img = np.concatenate([np.repeat(img[..., :1], 3, -1), img[..., 1:]], -1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4) or min(img.shape[:2]) < 8:
        raise RunError(f"image {path!r} has shape {img.shape}; need an RGB or RGBA image of at least 8x8 pixels")
    scale = _full_scale(img, path)
    if img.shape[-1] == 4:
        foreground = img[..., 3] > scale / 2
    else:
        warnings.warn(
            f"{path} has no alpha channel: taking pixels brighter than {background_threshold} as background",
            stacklevel=2,
        )
        foreground = img.min(-1) < background_threshold * scale
    if foreground.sum() < 4:
        raise RunError(
            f"image {path!r} has no foreground: give an RGBA image with the object opaque, or a white background"
        )
    if object_fraction is None and (coverage := float(foreground.mean())) < 0.01:
        warnings.warn(
            f"the object in {path} covers {coverage:.2%} of the image: at the training resolution it is a few "
            "pixels. Pass reference.object_fraction=0.6 to crop the image to the object (it then fills 60 % of it)",
            stacklevel=2,
        )
    border = np.concatenate([foreground[0], foreground[-1], foreground[:, 0], foreground[:, -1]])
    if border.mean() > 0.5:  # the object would be the whole frame: a photo's background, an opaque alpha
        why = (
            "its alpha channel is opaque along most of the border"
            if img.shape[-1] == 4
            else f"it has no alpha channel and most of its border is not white (brighter than {background_threshold})"
        )
        raise RunError(
            f"image {path!r}: {why}, so the object would fill the frame. Cut the object out (an RGBA image with a "
            "transparent background, e.g. from a background-removal tool) or put it on a white background"
        )
    if object_fraction is not None:  # crop to the object while the image is still integers
        ys, xs = np.nonzero(foreground)
        img = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        foreground = foreground[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(scale)
    if x.shape[-1] == 4:
        rgb, mask = x[..., :3], x[..., 3:]
    else:
        rgb, mask = x, torch.from_numpy(np.ascontiguousarray(foreground))[..., None].float()
    rgb.mul_(mask).add_(1 - mask)  # on white
    chw = torch.cat([rgb, mask], -1).permute(2, 0, 1)[None]
    del x, rgb, mask
    side = max(chw.shape[-2:]) / (object_fraction or 1.0)  # the square's side once padded
    if (k := int(side // (2 * size))) >= 2:  # box-filter by k: what the antialiased resize would average anyway
        chw = _pad_centred(chw, -chw.shape[-2] % k, -chw.shape[-1] % k)  # whole blocks: the object does not move
        chw = torch.nn.functional.avg_pool2d(chw, k)
    if object_fraction is not None:
        side = max(chw.shape[-2:]) / object_fraction
        ph, pw = (max(int(round(side)) - n, 0) for n in chw.shape[-2:])
        chw = _pad_centred(chw, ph, pw)
    # A non-square image is padded with background to a centred square (stretching would distort the object).
    h, w = chw.shape[-2:]
    return _pad_centred(chw, max(w - h, 0), max(h - w, 0))


def _full_scale(img: np.ndarray, path: str) -> float:
    """The pixel value of full white: 255 for 8 bits, 65535 for 16; a 32-bit integer image (Pillow's "I", as some
    16-bit files open) by its largest value; floating point must lie in 0-1."""
    top = float(img.max())
    if img.dtype == np.uint8:
        return 255.0
    if img.dtype == np.uint16:
        return 65535.0
    if img.dtype.kind in "iu" and img.min() >= 0 and top <= 65535:
        return 255.0 if top <= 255 else 65535.0
    if img.dtype.kind == "f" and np.isfinite(img).all() and img.min() >= 0 and top <= 1:
        return 1.0
    raise RunError(
        f"image {path!r} holds {img.dtype} pixels from {img.min()} to {top:g}: dream3d reads 8- and 16-bit images "
        "and floating point in 0-1. Save it as an 8-bit PNG"
    )


# Pillow modes read as another: a palette keeps its transparency, CMYK's K is not alpha, 1-bit is not boolean.
_READ_AS = {"P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "1": "L"}


def _read_pixels(path: str) -> np.ndarray:
    """The first frame, turned upright as its EXIF orientation says (a phone photo's), in a mode this module reads."""
    import imageio.v3 as iio

    meta = iio.immeta(path, index=0, plugin="pillow")
    mode = _READ_AS.get(meta.get("mode"))
    if meta.get("mode") == "P" and "transparency" in meta:
        mode = "RGBA"
    with warnings.catch_warnings():  # Pillow suggests the RGBA conversion asked for here
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        return np.asarray(iio.imread(path, index=0, plugin="pillow", rotate=True, mode=mode))


def resize_reference(chw: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb, mask) of :func:`read_reference`'s square at ``size`` pixels (antialiased)."""
    out = _resize_square(chw, size)[0].permute(1, 2, 0)
    return out[None, ..., :3].clamp(0, 1), out[None, ..., 3:].clamp(0, 1)


def _resize_square(chw: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _pad_centred(chw: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(1, 4, H, W) RGB + mask with ``ph`` rows and ``pw`` columns of background (white, mask 0) split around it."""
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    pad = torch.nn.functional.pad
    return torch.cat([pad(chw[:, :3], pads, value=1.0), pad(chw[:, 3:], pads, value=0.0)], 1)


# What a run writes into its folder. --overwrite removes these and val/, nothing else.
REPRESENTATION_FILES = tuple(
    f for rep in REPRESENTATIONS.values() for f in rep.files
)  # gaussians.ply, nerf.safetensors, ...
RUN_FILES = (
    "metrics.json",
    "checkpoint.pt",
    "config.yaml",
    REFERENCE_FILE,
    *REPRESENTATION_FILES,
    "mesh.glb",
    "mesh.obj",
    "mesh.mtl",
    "mesh.png",
    "turntable.mp4",
    "turntable.gif",
)


def check_output_dir(out_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start where a run would be lost or could not continue; changes nothing."""
    if resume and overwrite:
        raise RunError("--resume continues the run in the folder and --overwrite deletes it; give one of them")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunError(f"{out_dir} is a file; give -o a folder")
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):  # before the prior loads, not at the first write
        raise RunError(f"-o {out_dir}: {parent} is a file, so the folder cannot be made; give -o a folder elsewhere")
    finished = os.path.exists(os.path.join(out_dir, "metrics.json"))
    started = os.path.exists(os.path.join(out_dir, "checkpoint.pt"))
    if finished and not overwrite and mesh_error(out_dir) is not None:
        if not resume:
            raise RunError(
                f"{out_dir} holds a trained run whose mesh stage did not finish; finish it with "
                f"{mesh_command(out_dir)} (or --resume), or pass --overwrite to start again"
            )
    elif finished and not overwrite:
        raise RunError(f"{out_dir} holds a finished run; choose another -o folder or pass --overwrite")
    if started and not (resume or overwrite):
        raise RunError(f"{out_dir} holds an unfinished run; pass --resume to continue it or --overwrite to start again")
    if resume and not started:
        raise RunError(f"--resume: {out_dir} has no checkpoint.pt to resume from")
    if os.path.isdir(out_dir) and not holds_run(out_dir):
        # A folder of the user's own files is not a run folder: the run's files would mix with theirs (and replace
        # any of the same name). Hidden files (.DS_Store) and logs (a wrapper's generate.log) do not count.
        others = sorted(n for n in os.listdir(out_dir) if not n.startswith(".") and not n.endswith(".log"))
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise RunError(
                f"{out_dir} holds other files but no dream3d run ({listed}); give -o a new or empty folder, "
                f"e.g. {os.path.join(out_dir, 'run')}"
            )


def holds_run(folder: str) -> bool:
    """Whether ``folder`` holds a run (finished or not): a run writes config.yaml before anything else."""
    return any(os.path.exists(os.path.join(folder, n)) for n in ("config.yaml", "checkpoint.pt", "metrics.json"))


def mesh_error(run_dir: str) -> str | None:
    """The error recorded for the mesh stage of the run in ``run_dir`` (None: no run, or no failed mesh stage)."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            mesh = json.load(fh).get("mesh")
    except (OSError, ValueError):
        return None
    return str(mesh["error"]) if isinstance(mesh, dict) and "error" in mesh else None


def mesh_command(run_dir: str, overrides: list[str] | None = None) -> str:
    import shlex

    return " ".join(["dream3d", "mesh", shlex.quote(run_dir), *(overrides or [])])


def clear_run(out_dir: str) -> None:
    """Delete a run's files from its folder: only the names a run writes (val/step_*.png in val/), and the mesh
    stage's staging folders."""
    import glob

    for path in [os.path.join(out_dir, n) for n in RUN_FILES] + glob.glob(os.path.join(out_dir, "val", "step_*.png")):
        if os.path.isfile(path):
            os.remove(path)
    remove_staging(out_dir)
    try:
        os.rmdir(os.path.join(out_dir, "val"))
    except OSError:  # absent, or holds something that is not ours
        pass


# The hidden folder of a run folder that holds the earlier run while an --overwrite run starts: .previous-run-PID-*.
# Markers in it say how far a move went, so that a process killed at any point loses nothing: COMPLETE once every
# file is aside, RESTORING once a put-back has begun (the files in the run folder are then the earlier run's).
PREVIOUS_PREFIX = ".previous-run-"
_COMPLETE, _RESTORING = ".complete", ".restoring"


def set_aside_run(out_dir: str) -> str | None:
    """--overwrite: move the earlier run's files (the names a run writes, and val/step_*.png) into a hidden folder
    of ``out_dir``; :func:`settle_previous_run` deletes it or puts it back. None when there is no earlier run."""
    import glob
    import tempfile

    if not holds_run(out_dir):
        return None
    aside = tempfile.mkdtemp(prefix=f"{PREVIOUS_PREFIX}{os.getpid()}-", dir=out_dir)
    os.makedirs(os.path.join(aside, "val"))
    names = [n for n in RUN_FILES if os.path.isfile(os.path.join(out_dir, n))]
    names += [os.path.relpath(p, out_dir) for p in glob.glob(os.path.join(out_dir, "val", "step_*.png"))]
    try:
        for name in names:
            os.replace(os.path.join(out_dir, name), os.path.join(aside, name))
        open(os.path.join(aside, _COMPLETE), "w").close()
    except BaseException:  # a move that fails (or Ctrl-C) part-way: put back what moved, touch nothing else
        _move_back(aside, out_dir)
        raise
    clear_run(out_dir)  # what is left: staging folders, an empty val/
    return aside


def settle_previous_run(out_dir: str, aside: str, log=print) -> bool:
    """Delete the earlier run set aside in ``aside`` once the new run has a checkpoint; otherwise (the new run failed
    or was stopped before its first one) remove what the new run wrote and put the earlier run back. Returns whether
    the earlier run was put back."""
    import shutil

    complete, restoring = (os.path.exists(os.path.join(aside, m)) for m in (_COMPLETE, _RESTORING))
    if not complete:  # the set-aside itself was cut short: no new run has written anything
        _move_back(aside, out_dir)
        return True
    if not restoring and os.path.exists(os.path.join(out_dir, "checkpoint.pt")):
        shutil.rmtree(aside, ignore_errors=True)
        return False
    if not restoring:  # (a put-back cut short must not clear the files it already put back)
        open(os.path.join(aside, _RESTORING), "w").close()
        clear_run(out_dir)
    _move_back(aside, out_dir)
    log(f"the new run stopped before its first checkpoint: the earlier run in {out_dir} is back as it was")
    return True


def _move_back(aside: str, out_dir: str) -> None:
    import shutil

    for folder, _, files in os.walk(aside):
        for name in files:
            if folder == aside and name in (_COMPLETE, _RESTORING):
                continue
            rel = os.path.relpath(os.path.join(folder, name), aside)
            os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
            os.replace(os.path.join(folder, name), os.path.join(out_dir, rel))
    shutil.rmtree(aside, ignore_errors=True)


def recover_set_aside_runs(out_dir: str, log=print) -> None:
    """Settle what a killed --overwrite left: its earlier run is put back unless the new run reached a checkpoint.
    An aside whose process still runs (an --overwrite training in this folder now) is left alone."""
    import glob

    for aside in sorted(glob.glob(os.path.join(out_dir, PREVIOUS_PREFIX + "*"))):
        pid = os.path.basename(aside)[len(PREVIOUS_PREFIX) :].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        settle_previous_run(out_dir, aside, log)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def config_changes(cfg: RunConfig, path: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """'key: before -> now' for each setting where ``cfg`` differs from the run config saved at ``path`` (in
    the layout before issue 17 too: it is translated). When train.steps may change (a resume), so may the
    settings of ``cfg`` that follow it: the resumed run keeps the saved values (keep_run_length)."""
    saved = load_run_config(path)
    if "train.steps" in ignore:
        ignore = (*ignore, *cfg.follows_run_length)
    before = {k: schema_at(saved, k) for k in dotted_keys(saved)}
    now = {k: schema_at(cfg, k) for k in dotted_keys(cfg)}
    for d in (before, now):  # the same file spelt another way (./a.png, an absolute path) is the same input
        for k in ("image", "guidance.prior.model", "guidance.text_prior.model"):
            if isinstance(d.get(k), str) and os.path.exists(d[k]):
                d[k] = os.path.realpath(d[k])
    if before.get("image") != now.get("image") and is_runs_input(cfg, os.path.dirname(path)):
        now["image"] = before["image"]  # the run's input moved or copied: the run reads its own copy anyway
    keys = [k for k in sorted(before.keys() | now.keys()) if before.get(k) != now.get(k) and not k.startswith(ignore)]
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys]


def is_runs_input(cfg: RunConfig, run_dir: str) -> bool:
    """Whether ``cfg.image`` reads as the square the run in ``run_dir`` saved (its REFERENCE_FILE): the same input
    under another path. A run whose image was moved is then resumed with the new path, not refused."""
    saved = os.path.join(run_dir, REFERENCE_FILE)
    if not (cfg.image and os.path.isfile(cfg.image) and os.path.exists(saved)):
        return False
    try:
        with warnings.catch_warnings():  # (read again only to compare: its warnings were given when the run started)
            warnings.simplefilter("ignore")
            return torch.equal(run_reference(cfg), read_saved_reference(saved))
    except RunError:
        return False


# Settings a resumed run may change: they do not touch what each step does (schedules that follow train.steps
# keep the values the run started with, keep_run_length, so a run can be resumed to train longer).
RESUME_MAY_CHANGE = (
    "mesh.",
    "output.",
    "train.steps",
    "train.checkpoint_every",
    "train.val_every",
    "train.log_every",
    "train.compile",
    "train.cuda_graphs",
    "train.nan_policy",  # what a non-finite step does: a finite step reads neither
    "train.max_nan_skips",
    "guidance.prior.allow_download",
    "guidance.prior.channels_last",
)  # (compile, cuda_graphs, channels_last: speed only)


def check_resume_config(cfg: RunConfig, out_dir: str) -> None:
    """A resumed run must train with the settings it started with (RESUME_MAY_CHANGE aside)."""
    path = os.path.join(out_dir, "config.yaml")
    changed = config_changes(cfg, path, ignore=RESUME_MAY_CHANGE) if os.path.exists(path) else []
    changed.sort(key=lambda c: not c.startswith(("image:", "prompt:")))  # what the run makes first, never cut off
    if changed:
        hint = "--image, " if changed[0].startswith("image:") else ""
        raise RunError(
            f"--resume: this command's settings differ from those the run in {out_dir} started with "
            f"({'; '.join(changed[:6])}{'; ...' if len(changed) > 6 else ''}). "
            f"Resume with the same {hint}prompt, --config and overrides, or start again with --overwrite"
        )


def keep_run_length(cfg: RunConfig, out_dir: str) -> None:
    """A resumed run trains on with the schedules it started with: the settings that follow train.steps
    (config.resolve_run_length) take the values saved in the run's config.yaml, whatever train.steps is now."""
    path = os.path.join(out_dir, "config.yaml")
    if cfg.follows_run_length and os.path.exists(path):
        started = load_run_config(path)
        for key in cfg.follows_run_length:
            section, name = key.rsplit(".", 1)
            setattr(schema_at(cfg, section), name, schema_at(started, key))


def generate(
    cfg: RunConfig,
    out_dir: str,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
    stop_after: int | None = None,
) -> dict:
    """Run the whole pipeline into ``out_dir``; returns the metrics (also written to metrics.json).
    ``stop_after`` stops training early (as an interruption would), leaving a resumable checkpoint.

    Everything that can fail on the input (the folder, the settings of a resumed run, the device, the image,
    the model) is checked before the folder changes, so a failed start never costs an earlier run."""
    if not cfg.prompt.strip() and not cfg.image:
        raise RunError('the prompt is empty: say what to make, e.g. dream3d generate "a red cube"')
    if stop_after is not None and stop_after < 1:
        raise RunError(f"--stop-after must be at least 1 step, got {stop_after}")
    # Local paths are saved absolute: a resume or `dream3d mesh` from another folder reads the same files (a hub id,
    # which is no local path, stays as it is).
    if cfg.image:
        cfg.image = os.path.abspath(cfg.image)
    for prior in (cfg.guidance.prior, getattr(cfg.guidance, "text_prior", None)):
        if prior is not None and prior.model and os.path.exists(prior.model):
            prior.model = os.path.abspath(prior.model)
    if os.path.isdir(out_dir):  # before the folder is judged: a killed --overwrite may have left its earlier run aside
        recover_set_aside_runs(out_dir, log)
    check_output_dir(out_dir, resume, overwrite)
    if resume:
        check_resume_config(cfg, out_dir)
        keep_run_length(cfg, out_dir)
        step = torch.load(os.path.join(out_dir, "checkpoint.pt"), map_location="cpu", weights_only=True, mmap=True)[
            "step"
        ]
        if step > cfg.train.steps:
            raise RunError(
                f"--resume: the checkpoint in {out_dir} is at step {step}, past train.steps={cfg.train.steps}; "
                f"resume with train.steps={step} or more"
            )
    resolve_device(cfg.train.device, "train.device")
    image_rule = RULES[cfg.guidance.method].needs_reference
    if image_rule and not cfg.image:
        raise RunError(
            f"guidance.method={cfg.guidance.method} draws the other views from the input image: give --image IMG "
            "(or choose a text rule, e.g. guidance.method=sds)"
        )
    if resume and mesh_error(out_dir) is not None:
        with open(os.path.join(out_dir, "metrics.json")) as fh:
            metrics = json.load(fh)
        if metrics["train"]["steps"] >= cfg.train.steps:  # trained: what is left is the mesh stage
            if not cfg.output.mesh:
                metrics.pop("mesh")
                write_metrics(out_dir, metrics)
                atomic_write_text(os.path.join(out_dir, "config.yaml"), to_yaml(cfg))
                return metrics
            log(f"{out_dir} finished training; running its mesh stage (no training)")
            return finish_mesh(cfg, out_dir, log)
    t_start = time.time()
    square = run_reference(cfg, out_dir, resume, log) if cfg.image else None
    guidance, reference = build_guidance_and_reference(cfg, log, square)
    for reader, key in guidance.prompt_readers() if cfg.prompt else []:
        if why := reader.outside_vocabulary(cfg.prompt):  # the embedded prior knows its world's words only
            log(f"warning: {why}; for other prompts give a real checkpoint with {key}=...")
        elif (read := reader.caption(cfg.prompt)) != cfg.prompt:
            log(f"the prior reads {cfg.prompt!r} as {read!r}, the form of the captions it was trained on")
    # --overwrite sets the earlier run aside and deletes it only once the new run has a checkpoint: a setting that
    # fails at the first step (or Ctrl-C before the first checkpoint) puts the earlier run back as it was.
    previous = set_aside_run(out_dir) if overwrite else None
    try:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(os.path.join(out_dir, "config.yaml"), to_yaml(cfg))  # first: it marks a run's folder
        if square is not None and (not resume or not os.path.exists(os.path.join(out_dir, REFERENCE_FILE))):
            save_reference(os.path.join(out_dir, REFERENCE_FILE), square)
        trainer = Trainer(cfg, cfg.prompt, out_dir, guidance=guidance, reference=reference, log=log)
        earlier = 0.0  # training time of earlier sittings, so total_seconds of a resumed run covers them too
        if resume:
            trainer.load_checkpoint()
            earlier = trainer.train_seconds
            log(f"resumed {trainer.ckpt_path} at step {trainer.step}")
        train_info = trainer.run(stop_after=stop_after)
        # Everything training made is on disk before the mesh stage starts: the final checkpoint (a last step
        # skipped as non-finite left it one step behind), the representation and metrics.json.
        if trainer.step >= cfg.train.steps and trainer.checkpoint_step != trainer.step:
            trainer.save_checkpoint()
    finally:
        restored = previous is not None and settle_previous_run(out_dir, previous, log)
    if trainer.step < cfg.train.steps:
        if restored:  # stopped before a checkpoint: nothing of the new run is kept
            return {"stopped_at": trainer.step}
        log(f"stopped at step {trainer.step}/{cfg.train.steps}; continue with --resume")
        return {"stopped_at": trainer.step}
    files = save_representation(trainer, out_dir)
    metrics = {
        "prompt": cfg.prompt,
        "image": cfg.image,
        "representation": cfg.representation,
        "guidance": cfg.guidance.method,
        "prior": describe_prior(guidance.prior),
        "dream3d_version": __version__,
        "train": train_info,
        "history": trainer.history,
    }
    if reference is not None:
        metrics["reference_view"] = reference_view_scores(trainer, reference)
    metrics["files"] = {k: os.path.basename(v) for k, v in files.items()}
    metrics["total_seconds"] = round(time.time() - t_start + earlier, 2)
    if cfg.output.mesh:
        metrics["mesh"] = {"error": MESH_NOT_FINISHED}
    write_metrics(out_dir, metrics)
    if cfg.output.mesh:
        mesh_stage(trainer, cfg, out_dir, metrics, log)
        metrics["total_seconds"] = round(time.time() - t_start + earlier, 2)
        write_metrics(out_dir, metrics)
    log(f"done in {metrics['total_seconds']:.0f}s: {', '.join(sorted(metrics['files'].values()))} in {out_dir}")
    return metrics


def write_metrics(run_dir: str, metrics: dict) -> None:
    atomic_write_text(os.path.join(run_dir, "metrics.json"), json.dumps(to_plain(metrics), indent=1, default=float))


def _retry_hints(error: BaseException, cfg: RunConfig) -> list[str]:
    """Overrides that make a retry likelier to succeed; only for out-of-memory errors, where they help."""
    said = str(error).lower()
    oom = isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or any(
        words in said for words in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )  # (CUDA's words, then torch's CPU allocator's)
    if not oom:
        return []
    hints = []
    if cfg.mesh.resolution > 64:
        hints.append(f"mesh.resolution={max(64, cfg.mesh.resolution // 2)}")
    if cfg.mesh.texture.view_resolution > 256:
        hints.append(f"mesh.texture.view_resolution={cfg.mesh.texture.view_resolution // 2}")
    return hints


def mesh_stage(trainer, cfg: RunConfig, run_dir: str, metrics: dict, log=print) -> dict:
    """The mesh stage and export into ``run_dir``; sets the ``mesh`` and ``files`` entries of ``metrics``.

    Any failure, Ctrl-C included, leaves the trained run as it was and records ``mesh: {"error": ...}`` in
    metrics.json, so ``dream3d mesh RUN`` can finish the run. Ctrl-C is raised again (after a message);
    any other exception becomes a :class:`MeshStageError` whose message names the cause and that command."""
    files: dict = {}
    try:
        mesh_info = mesh_and_export(trainer, cfg, run_dir, files)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        lines = str(e).strip().splitlines()
        cause = (
            "interrupted (Ctrl-C)"
            if interrupted
            else f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
        )
        if isinstance(metrics.get("mesh"), dict) and "error" not in metrics["mesh"]:
            metrics["mesh_last_error"] = cause  # a finished run meshed again: its mesh files and figures stand
        else:
            metrics["mesh"] = {"error": cause}
        write_metrics(run_dir, metrics)
        retry = mesh_command(run_dir, _retry_hints(e, cfg))
        saved = ", ".join(
            n
            for n in ("checkpoint.pt", *REPRESENTATION_FILES, "config.yaml", "metrics.json")
            if os.path.exists(os.path.join(run_dir, n))
        )
        if interrupted:
            log(
                f"interrupted in the mesh stage; the trained run is kept in {run_dir} ({saved}): finish it with {retry}"
            )
            raise
        if not isinstance(e, Exception):  # SystemExit and the like go on as they are
            raise
        raise MeshStageError(
            f"the mesh stage failed ({cause}); the trained run is kept in {run_dir} ({saved}). Finish it with: {retry}",
            run_dir,
            retry,
        ) from e
    metrics["mesh"] = to_plain(mesh_info)
    metrics.pop("mesh_last_error", None)
    metrics["files"] = metrics.get("files", {}) | {k: os.path.basename(v) for k, v in files.items()}
    write_metrics(run_dir, metrics)
    return metrics


def mesh_and_export(trainer, cfg: RunConfig, out_dir: str, files: dict) -> dict:
    """The mesh stage on the trained representation, then mesh.glb, mesh.obj (+mtl, png) and turntable.mp4;
    adds the written files to ``files`` and returns the stage's figures.

    The files are written into a hidden folder in ``out_dir`` and moved into place only once all of them exist,
    so a stage that fails or is stopped part-way (in the turntable, say) leaves the run's earlier mesh files as
    a complete set, matching its metrics.json."""
    import shutil
    import tempfile

    t0 = time.time()
    remove_staging(out_dir)  # left by a process killed in the stage
    mesh, mesh_info = extract_textured_mesh(trainer, cfg, out_dir)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    try:
        staged = export_mesh(
            mesh,
            staging,
            turntable=True,
            turntable_frames=cfg.output.turntable_frames,
            turntable_resolution=cfg.output.turntable_resolution,
        )
        for name in ("turntable.mp4", "turntable.gif"):  # an earlier turntable in the other format is stale
            if name != staged["turntable"].name and os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
        for key, path in staged.items():
            files[key] = os.path.join(out_dir, path.name)
            os.replace(path, files[key])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return mesh_info | {"seconds": round(time.time() - t0, 2)}


# The hidden folder in a run folder where the mesh stage writes its files before moving them into place.
STAGING_PREFIX = ".mesh-stage-"


def remove_staging(out_dir: str) -> None:
    """Delete the mesh stage's hidden folders in ``out_dir`` (only a stage that is not running leaves one)."""
    import glob
    import shutil

    for staging in glob.glob(os.path.join(out_dir, STAGING_PREFIX + "*")):
        shutil.rmtree(staging, ignore_errors=True)


def remesh(run_dir: str, overrides: list[str] | None = None, log=print) -> dict:
    """Extract and export the mesh of a trained run again, with other ``mesh.*`` / ``output.*`` settings
    (``key=value`` overrides), without training: the representation comes from the run's checkpoint.
    Also finishes a run whose mesh stage failed. Updates the run's config.yaml and the ``mesh`` and ``files``
    entries of its metrics.json."""
    overrides = list(overrides or [])
    recover_set_aside_runs(run_dir, log)  # a killed --overwrite's earlier run, put back
    for name in ("config.yaml", "checkpoint.pt", "metrics.json"):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise RunError(f"{run_dir} has no {name}: only a finished dream3d run folder can be meshed again")
    bad = [
        o for o in overrides if not o.split("=", 1)[0].startswith(("mesh.", "output.")) or o.startswith("output.mesh=")
    ]
    if bad:
        raise RunError(
            f"only mesh.* and output.* settings (not output.mesh: this command makes the mesh) can change "
            f"after training; got {', '.join(bad)}"
        )
    return finish_mesh(load_run_config(os.path.join(run_dir, "config.yaml"), overrides), run_dir, log)


def finish_mesh(cfg: RunConfig, run_dir: str, log=print) -> dict:
    """The mesh stage of the trained run in ``run_dir`` with ``cfg``'s mesh and output settings, from its checkpoint."""
    trainer = Trainer(cfg, cfg.prompt, run_dir, log=log)
    trainer.load_checkpoint()
    if trainer.step < cfg.train.steps:
        raise RunError(
            f"the checkpoint in {run_dir} is at step {trainer.step} of {cfg.train.steps}; finish the run with --resume first"
        )
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        metrics = json.load(fh)
    failed_before = mesh_error(run_dir) is not None
    mesh_stage(trainer, cfg, run_dir, metrics, log)
    if failed_before and isinstance(metrics.get("total_seconds"), (int, float)):
        metrics["total_seconds"] = round(
            metrics["total_seconds"] + metrics["mesh"]["seconds"], 2
        )  # the run's whole job
        write_metrics(run_dir, metrics)
    cfg.output.mesh = True  # the run has its mesh now (a batch list asking for it is satisfied)
    atomic_write_text(os.path.join(run_dir, "config.yaml"), to_yaml(cfg))
    log(f"meshed in {metrics['mesh']['seconds']:.0f}s: {', '.join(sorted(metrics['files'].values()))} in {run_dir}")
    return metrics


def save_representation(trainer, out_dir: str) -> dict:
    return trainer.model.save(out_dir)


def extract_textured_mesh(trainer, cfg: RunConfig, run_dir: str):
    """The mesh stage on the trained representation (each knows its own: a density grid, renders for colour);
    for image-to-3D, then the input image painted where its camera sees the mesh (mesh.reference_projection)."""
    mesh, info = trainer.model.extract_mesh(cfg.mesh)
    if not cfg.mesh.reference_projection.enabled:
        return mesh, info
    if not cfg.image:
        info["reference_projected"] = "skipped: a text run has no input image"
    elif not len(mesh.faces):
        info["reference_projected"] = "skipped: the mesh is empty"
    else:
        try:
            mesh, info["reference_projected"] = paint_input_image(mesh, cfg, run_dir)
        except RunError as e:  # moved or spoiled since training: the bake from the renders stands on its own
            info["reference_projected"] = f"skipped: {e}"
            warnings.warn(
                f"the input image cannot be painted onto the mesh ({e}), so its texture comes from the renders "
                f"alone; to paint it, fix that and run {mesh_command(run_dir)} (or pass "
                "mesh.reference_projection.enabled=false)",
                stacklevel=2,
            )
    return mesh, info


def paint_input_image(mesh, cfg: RunConfig, run_dir: str):
    """(mesh, fraction of its texels painted): the input image projected from the reference camera. The image is
    the one the run trained on (its REFERENCE_FILE; a run from before that file reads ``cfg.image``)."""
    r, rp = cfg.reference, cfg.mesh.reference_projection
    saved = os.path.join(run_dir, REFERENCE_FILE)
    if os.path.exists(saved):
        square = read_saved_reference(saved)
    else:  # an older run, or the file deleted: the image as it is now, kept for later meshes
        square = run_reference(cfg)
        warnings.warn(
            f"{saved} is missing: painting {cfg.image} as it is now (saved as {REFERENCE_FILE}); if that image "
            "changed since training, the paint is misaligned: pass mesh.reference_projection.enabled=false",
            stacklevel=2,
        )
        save_reference(saved, square)
    rgb, mask = resize_reference(square, rp.resolution)
    camera = orbit_cameras(r.elevation, r.azimuth, r.radius, r.fov_y, rp.resolution, rp.resolution)
    return project_image(mesh, rgb, mask, camera, rp, cfg.mesh.texture.depth_tolerance)


@torch.no_grad()
def reference_view_scores(trainer, reference) -> dict:
    """Silhouette IoU and PSNR of the final render at the reference camera against the input."""
    ref_rgb, ref_mask = reference
    cams = trainer._reference_cameras(ref_rgb.shape[1])
    rgb, alpha, _ = trainer.render(cams, shading="albedo")
    rgb, alpha = rgb.cpu(), alpha.cpu()
    a, b = alpha > 0.5, ref_mask > 0.5
    iou = float((a & b).sum() / (a | b).sum().clamp_min(1))
    mse = float(((rgb - ref_rgb) ** 2).mean())
    return {"silhouette_iou": iou, "psnr_db": float(-10 * np.log10(max(mse, 1e-10)))}
