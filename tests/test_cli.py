"""The CLI driven as a user would: subprocesses, exit codes, messages, files."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_RUN

ENV = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONWARNINGS="ignore")


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dream3d.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=900
    )


def test_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0 and all(w in r.stdout for w in ("generate", "mesh", "ablate", "prior"))
    from importlib.metadata import version

    v = run("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"dream3d {version('dream3d')}"
    for sub in (
        ["generate"],
        ["mesh"],
        ["ablate"],
        ["prior"],
        ["prior", "train"],
        ["prior", "sample"],
        ["prior", "eval"],
    ):
        h = run(*sub, "--help")
        assert h.returncode == 0 and "usage:" in h.stdout, sub


def test_generate_writes_loadable_files(tiny_prior, tmp_path):
    import trimesh

    out = tmp_path / "run"
    r = run("generate", "a red cube", *TINY_RUN, f"guidance.prior.model={tiny_prior}", "-o", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.material is not None
    obj = trimesh.load(out / "mesh.obj", force="mesh")
    assert len(obj.faces) == len(mesh.faces)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["prompt"] == "a red cube"
        and metrics["train"]["steps"] == 4
        and metrics["dream3d_version"] == run("--version").stdout.split()[1]
    )
    assert "a red cube" in (out / "config.yaml").read_text()
    import imageio.v3 as iio

    assert iio.imread(out / "turntable.mp4").shape[0] == 4
    # a finished run is not overwritten by accident
    again = run("generate", "a red cube", *TINY_RUN, f"guidance.prior.model={tiny_prior}", "-o", str(out))
    assert again.returncode != 0 and "--overwrite" in again.stderr
    # the mesh of a finished run can be extracted again with other mesh settings, and only those
    bad = run("mesh", str(out), "train.steps=9")
    assert bad.returncode == 2 and "train.steps" in bad.stderr and "mesh.*" in bad.stderr
    r = run("mesh", str(out), "mesh.texture.texture_size=32")
    assert r.returncode == 0, r.stderr[-3000:]
    assert trimesh.load(out / "mesh.obj", force="mesh").visual.material.image.size == (32, 32)
    assert "texture_size: 32" in (out / "config.yaml").read_text()
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 4  # the training record stays
    assert run("mesh", str(tmp_path / "nothing")).returncode == 2


def test_default_preset_is_vsd_for_text_and_zero123_for_an_image():
    text = run("generate", "a red cube", "--print-config")
    image = run("generate", "--image", "photo.png", "--print-config")
    assert text.returncode == 0 and image.returncode == 0, text.stderr + image.stderr
    assert "method: vsd" in text.stdout and "method: zero123" in image.stdout  # the shipped assets/zero123
    assert "method: sds" in run("generate", "a red cube", "--config", "dreamgaussian", "--print-config").stdout


def test_overrides_may_follow_options():
    """The issue's and README's order: PROMPT, then --config, then key=value words."""
    r = run("generate", "a red", "--config", "dreamfusion", "train.steps=3", "--print-config", "cube", "train.steps=5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "prompt: a red cube" in r.stdout and "\n  steps: 5\n" in r.stdout and "representation: nerf" in r.stdout
    r = run("generate", "a red cube", "--config", "dreamfusion", "--confg", "x")
    assert r.returncode == 2 and "--confg" in r.stderr
    r = run("generate", "a red cube", "train.batch-size=2", "--print-config")  # a misspelt override is not prompt text
    assert r.returncode == 2 and "'train.batch-size'" in r.stderr and "train.batch_size" in r.stderr
    r = run("generate", "a red cube", "--resume", "--overwrite", "-o", "x")
    assert r.returncode == 2 and "not allowed with" in r.stderr


TINY_NERF = [
    "nerf.levels=4",
    "nerf.log2_table_size=10",
    "nerf.max_resolution=32",
    "nerf.hidden_dim=16",
    "nerf.num_samples=16",
]


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    from dream3d.random_models import SD15_SMALL, make_sd_folder

    return make_sd_folder(tmp_path_factory.mktemp("sd15") / "sd15_small", **SD15_SMALL)


# The README's real-checkpoint commands on a Stable Diffusion 1.5-format folder (SD 1.5's layers, 512-pixel
# images, 64x64 latents, CLIP tokenizer with 77 tokens; tiny channel counts and random weights): the path a user
# with a real checkpoint takes, minus the GPU.
@pytest.mark.parametrize(
    "preset, extra",
    [
        (None, ["train.resolution=32"]),
        (
            "prolificdreamer",
            [
                "nerf.background=mlp",
                "nerf.light_direction=null",
                "nerf.ambient_ratio=0.1",
                "train.resolution=24",
                *TINY_NERF,
            ],
        ),
    ],
)
def test_generate_with_a_stable_diffusion_format_checkpoint(sd15_folder, tmp_path, preset, extra):
    import trimesh

    out = tmp_path / "corgi"
    config = ["--config", preset] if preset else []
    r = run(
        "generate",
        "a DSLR photo of a corgi",
        f"guidance.prior.model={sd15_folder}",
        *config,
        *TINY_RUN,
        "train.steps=2",
        *extra,
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prior"] == {
        "model": str(sd15_folder),
        "image_size": 512,
        "latent_size": 64,
        "dtype": "float32",
        "device": "cpu",
    }
    assert metrics["representation"] == ("nerf" if preset else "gaussians") and metrics["guidance"] == "vsd"
    assert metrics["train"]["steps"] == 2 and np.isfinite(metrics["train"]["final_grad_norm"])
    assert len(trimesh.load(out / "mesh.glb", force="mesh").faces) > 0
    assert (out / ("nerf.safetensors" if preset else "gaussians.ply")).exists()


def test_bad_override_fails_with_the_key_named(tmp_path):
    r = run("generate", "a red cube", "train.stepz=3", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "train.stepz" in r.stderr and "train.steps" in r.stderr
    assert not (tmp_path / "x").exists()


def test_ablation_cells_that_would_share_a_folder_are_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "base: dreamgaussian\nprompts: ['a red cube']\nvariants:\n  'cfg 50': guidance.guidance_scale=50\n"
        "  cfg-50: [guidance.guidance_scale=50]\n"
    )
    r = run("ablate", str(spec), "-o", str(tmp_path / "abl"))
    assert r.returncode == 2 and "would share the folder" in r.stderr and not (tmp_path / "abl").exists()
    spec.write_text("base: dreamgaussian\nprompts: ['a red cube']\nvariants:\n  a: [guidance.guidance_scael=50]\n")
    r = run("ablate", str(spec), "-o", str(tmp_path / "abl"))
    assert r.returncode == 2 and "variant 'a'" in r.stderr and "'guidance.guidance_scale'" in r.stderr
    # a key of a rule the cell does not select names the rule it selects and the switch
    spec.write_text("base: dreamgaussian\nprompts: ['a red cube']\nvariants:\n  a: [guidance.lora_rank=8]\n")
    r = run("ablate", str(spec), "-o", str(tmp_path / "abl"))
    assert r.returncode == 2 and "variant 'a'" in r.stderr and "selects guidance.method=sds" in r.stderr, r.stderr
    assert "set guidance.method=vsd" in r.stderr and not (tmp_path / "abl").exists()


def test_missing_model_names_the_key_that_sets_it(tmp_path):
    r = run("generate", "a red cube", f"guidance.prior.model={tmp_path / 'no_such_model'}", "-o", str(tmp_path / "m"))
    assert r.returncode == 2 and "No diffusion model folder" in r.stderr and "guidance.prior.model=<folder>" in r.stderr
    assert not (tmp_path / "m" / "metrics.json").exists()


def test_empty_prompt_and_unreadable_image_fail_cleanly(tmp_path):
    r = run("generate", "", "-o", str(tmp_path / "e"))
    assert r.returncode == 2 and "prompt is empty" in r.stderr
    assert not (tmp_path / "e" / "metrics.json").exists()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = run("generate", "--image", str(bad), "-o", str(tmp_path / "i"))
    assert r.returncode == 2 and "cannot read image" in r.stderr
    assert not (tmp_path / "i" / "metrics.json").exists() and not (tmp_path / "i" / "checkpoint.pt").exists()


def test_interrupted_run_resumes(tiny_prior, tmp_path):
    out = tmp_path / "run"
    args = ["generate", "a blue sphere", *TINY_RUN, f"guidance.prior.model={tiny_prior}", "-o", str(out)]
    r = run(*args, "--stop-after", "2")
    assert r.returncode == 0 and (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    r = run(*args)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = run(*args, "train.steps=1", "--resume")  # before, it "finished" at step 2 with train.steps=1 saved
    assert r.returncode == 2 and "at step 2, past train.steps=1" in r.stderr, r.stderr[-2000:]
    r = run(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 4


def test_ctrl_c_ends_the_step_and_leaves_a_checkpoint_to_resume(tiny_prior, tmp_path):
    import signal
    import time

    import torch

    out = tmp_path / "run"
    args = [
        "generate",
        "a red cube",
        *TINY_RUN,
        f"guidance.prior.model={tiny_prior}",
        "train.steps=400",
        "train.checkpoint_every=0",
        "train.val_every=1",
        "-o",
        str(out),
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "dream3d.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        # Ctrl-C as in a terminal: a test run in the background (nohup, `cmd &` in a script) has SIGINT ignored,
        # and the child would inherit that and rightly ignore the signal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (out / "val" / "step_00002.png").exists():
        assert p.poll() is None and time.time() < deadline, (
            p.stderr.read()[-2000:] if p.poll() is not None else "timed out"
        )
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()  # a child that missed the signal must not train on beside the next tests
    assert p.returncode == 130 and "--resume" in err, err[-2000:]
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]  # no periodic checkpoint: Ctrl-C wrote it
    assert 2 <= step < 400
    r = run(*args, "--resume", "--stop-after", "1")
    assert r.returncode == 0 and f"at step {step}" in r.stderr, r.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step + 1


def test_ablate_two_by_two_grid(tiny_prior, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "base: dreamgaussian\n"
        f"overrides: {json.dumps(TINY_RUN + ['guidance.prior.model=' + tiny_prior, 'output.mesh=false'])}\n"
        "prompts: ['a red cube', 'a green cone']\nseeds: [0]\n"
        "variants:\n  cfg10: [guidance.guidance_scale=10]\n  cfg50: [guidance.guidance_scale=50]\n"
    )
    r = run("ablate", str(spec), "-o", str(tmp_path / "abl"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "abl" / "results.csv")))
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"cfg10", "cfg50"}
    assert (tmp_path / "abl" / "contact_sheet.png").exists() and "| cfg10 |" in (
        tmp_path / "abl" / "results.md"
    ).read_text()
    # a second run skips the finished cells
    r = run("ablate", str(spec), "-o", str(tmp_path / "abl"))
    assert r.returncode == 0 and r.stderr.count("skipped") == 4
    # an edited spec does not pass off the old results as the new settings'
    spec.write_text(spec.read_text().replace("guidance_scale=50", "guidance_scale=30"))
    r = run("ablate", str(spec), "-o", str(tmp_path / "abl"))
    assert r.returncode == 2 and "guidance.guidance_scale: 50.0 -> 30.0" in r.stderr, r.stderr[-2000:]
    # the same spec in the layout before issue 17 (a section per rule) is translated, with a notice naming it,
    # and its cells are the finished ones
    spec.write_text(
        spec.read_text()
        .replace("guidance.guidance_scale=30", "guidance.sds.guidance_scale=50")
        .replace("guidance.guidance_scale=10", "guidance.sds.guidance_scale=10")
    )
    r = subprocess.run(
        [sys.executable, "-m", "dream3d.cli", "ablate", str(spec), "-o", str(tmp_path / "abl")],
        capture_output=True,
        text=True,
        env=dict(ENV, PYTHONWARNINGS="default::FutureWarning"),
        timeout=900,
    )
    assert r.returncode == 0 and r.stderr.count("skipped") == 4, r.stderr[-2000:]
    assert f"FutureWarning: {spec}: translated from the old guidance layout" in r.stderr


def test_image_to_3d_fits_the_reference_view(tiny_prior, tmp_path):
    import imageio.v3 as iio
    import torch

    from dream3d.world.render import render_colored_mesh
    from dream3d.world.shapes import scene_for_prompt
    from renderers.cameras import orbit_cameras

    rgb, alpha = render_colored_mesh(scene_for_prompt("a yellow cube"), orbit_cameras(0.0, 0.0, 2.8, 45.0, 64, 64))
    rgba = torch.cat([rgb, alpha], -1)[0].numpy()
    iio.imwrite(tmp_path / "cube.png", (rgba * 255).round().astype(np.uint8))
    out = tmp_path / "img"
    r = run(
        "generate",
        "--image",
        str(tmp_path / "cube.png"),
        "a yellow cube",
        "--config",
        "dreamgaussian",  # reference view + text SDS, with the tiny text prior
        *TINY_RUN,
        "train.steps=60",
        "train.checkpoint_every=0",
        "train.val_every=0",
        "gaussians.num_points=1000",
        "gaussians.densify_from_step=1000",
        f"guidance.prior.model={tiny_prior}",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads((out / "metrics.json").read_text())["reference_view"]
    assert ref["silhouette_iou"] > 0.8 and ref["psnr_db"] > 18, ref


def _env_lines(stdout: str) -> dict[str, str]:
    """``- key: value`` lines of ``dream3d env`` as a dict (the renderer lines are indented under their header)."""
    return dict(
        line.strip()[2:].split(": ", 1)
        for line in stdout.splitlines()
        if line.strip().startswith("- ") and ": " in line
    )


def test_env_reports_versions_and_the_backends_each_renderer_takes():
    from importlib.metadata import PackageNotFoundError, version

    import torch

    r = run("env", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    got = _env_lines(r.stdout)
    assert got["dream3d"] == version("dream3d") and got["Python"] == ".".join(map(str, sys.version_info[:3]))
    assert got["torch"].startswith(torch.__version__ + " (CUDA ") and got["device"] == "cpu"
    assert got["CUDA available"] == ("yes" if torch.cuda.is_available() else "no")
    for name in ("diffusers", "transformers", "peft", "gsplat", "nerfacc"):
        assert got[name] == version(name), name
    try:
        assert got["nvdiffrast"] == f"{version('diffrp-nvdiffrast')} (diffrp-nvdiffrast)"
    except PackageNotFoundError:
        assert got["nvdiffrast"] == "not installed"
    for renderer, lib in (("gaussians", "gsplat"), ("volume", "nerfacc"), ("mesh", "nvdiffrast")):
        assert got[renderer].startswith(f"torch (cpu device: {lib} runs on CUDA only"), got[renderer]

    j = run("env", "--device", "cpu", "--build", "--json")
    assert j.returncode == 0, j.stderr
    info = json.loads(j.stdout)
    assert info["packages"]["gsplat"] == version("gsplat") and info["renderers"]["mesh"]["backend"] == "torch"
    assert [(b["library"], b["status"]) for b in info["build"]] == [
        (lib, "skipped") for lib in ("gsplat", "nerfacc", "nvdiffrast")
    ]
    if not torch.cuda.is_available():
        b = run("env", "--build")
        assert b.returncode == 0 and b.stdout.count("skipped (no CUDA device)") == 3, b.stdout
        bad = run("env", "--device", "cuda")
        assert bad.returncode == 2 and "no CUDA device" in bad.stderr


def test_env_names_a_broken_library_and_why(tmp_path):
    # a gsplat whose import fails as a wheel built for another CUDA would
    (tmp_path / "gsplat").mkdir()
    (tmp_path / "gsplat" / "__init__.py").write_text(
        'raise ImportError("libcudart.so.13: cannot open shared object file")\n'
    )
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(tmp_path), ENV.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-m", "dream3d.cli", "env", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    got = _env_lines(r.stdout)
    assert "does not import here: ImportError: libcudart.so.13: cannot open shared object file" in got["gaussians"]
    assert "does not import" not in got["volume"] and "does not import" not in got["mesh"]


def test_generate_asks_for_the_prompt_before_the_folder_and_shows_o_as_required():
    r = run("generate")
    assert r.returncode == 2 and "prompt is empty" in r.stderr and "output folder" not in r.stderr, r.stderr
    usage = run("generate", "--help").stdout.split("\n\n")[0]
    assert " -o DIR " in " ".join(usage.split()) and "[-o" not in usage, usage


def test_resume_without_the_runs_image_names_what_to_give(tmp_path):
    """An image run resumed without --image is told to give it (and its prompt), not that the prompt is empty."""
    (tmp_path / "config.yaml").write_text("prompt: a green mug\nimage: /photos/mug.png\n")
    r = run("generate", "-o", str(tmp_path), "--resume")
    assert r.returncode == 2 and "--image /photos/mug.png and 'a green mug' again" in r.stderr, r.stderr


def test_generate_help_lists_the_shape_worlds_words():
    from dream3d.world.shapes import COLORS, SHAPES

    text = " ".join(run("generate", "--help").stdout.split())  # argparse wraps lines
    assert ", ".join(COLORS) in text and ", ".join(SHAPES) in text, text


def test_ctrl_c_advice_is_one_the_cli_accepts(tiny_prior, tmp_path, monkeypatch, capsys):
    """Ctrl-C before the first checkpoint (loading the prior, say) advised --resume, which is then refused."""
    import dream3d.pipeline as pipeline
    from dream3d import cli

    out = str(tmp_path / "run")
    args = ["generate", "a red cube", *TINY_RUN, f"guidance.prior.model={tiny_prior}", "-o", out]

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(pipeline, "build_guidance_and_reference", ctrl_c)
        assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "nothing to resume; run the same command again" in err and "--resume" not in err, err
    assert cli.main([*args, "--stop-after", "2"]) == 0  # the same command again is accepted ...
    capsys.readouterr()
    with monkeypatch.context() as mp:  # ... and once a checkpoint exists, Ctrl-C points to --resume
        mp.setattr(pipeline.Trainer, "run", ctrl_c)
        assert cli.main([*args, "--resume"]) == 130
        err = capsys.readouterr().err
        assert "is where training continues: run the same command with --resume" in err, err
        # --overwrite stopped before its first checkpoint puts the earlier (unfinished) run back: that checkpoint is
        # the earlier run's, which --resume continues with its own settings, not this command's
        assert cli.main([*args, "seed=5", "--overwrite"]) == 130
        err = capsys.readouterr().err
        assert "the earlier run in" in err and "--resume with that run's own settings" in err, err
    assert cli.main([*args, "--resume"]) == 0, capsys.readouterr().err
    with monkeypatch.context() as mp:  # a finished run that --overwrite put back is not to be resumed
        mp.setattr(pipeline.Trainer, "run", ctrl_c)
        assert cli.main([*args, "--overwrite"]) == 130
        assert "the finished run in" in capsys.readouterr().err and os.path.exists(os.path.join(out, "mesh.glb"))


def test_a_relative_image_path_is_saved_absolute_and_a_resume_elsewhere_reads_the_same_file(
    tiny_prior, tmp_path, monkeypatch
):
    """Before, config.yaml kept --image (and guidance.prior.model) as typed: a resume from another folder was refused,
    or read another file."""
    import imageio.v3 as iio

    from dream3d.config import load_run_config
    from dream3d.pipeline import RunError, generate

    img = np.zeros((32, 32, 4), np.uint8)
    img[8:24, 8:24, 3] = 255  # an opaque square: red in folder a, blue in folder b
    for folder, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (tmp_path / folder).mkdir()
        img[8:24, 8:24, :3] = colour
        iio.imwrite(tmp_path / folder / "ref.png", img)
    out = str(tmp_path / "run")
    model = os.path.relpath(tiny_prior, tmp_path / "a")  # a relative model folder is saved absolute too
    over = [*TINY_RUN, f"guidance.prior.model={model}", "output.mesh=false"]
    cfg = lambda: load_run_config("dreamgaussian", over, {"prompt": "a red cube", "image": "ref.png"})  # noqa: E731
    monkeypatch.chdir(tmp_path / "a")
    generate(cfg(), out, stop_after=1, log=lambda m: None)
    saved = load_run_config(os.path.join(out, "config.yaml"))
    assert saved.image == str(tmp_path / "a" / "ref.png")
    assert os.path.isabs(saved.guidance.prior.model) and os.path.samefile(saved.guidance.prior.model, tiny_prior)
    monkeypatch.chdir(tmp_path / "b")  # the same relative path names another image here: refused, naming it
    with pytest.raises(RunError, match="image: .*a/ref.png.* -> .*b/ref.png"):
        generate(cfg(), out, resume=True, log=lambda m: None)
    # a resume that forgets --image is told so first, however many other settings differ (the list stops at 6)
    others = [
        "cameras.radius=[2,3]",
        "gaussians.num_points=301",
        "gaussians.init_opacity=0.2",
        "guidance.guidance_scale=50",
    ]
    forgot = load_run_config(
        "dreamgaussian", [*over, *others, "seed=3", "train.batch_size=3"], {"prompt": "a red cube"}
    )
    with pytest.raises(RunError, match=r"started with \(image: '.*ref.png' -> None; .*the same --image, prompt"):
        generate(forgot, out, resume=True, log=lambda m: None)
    # the saved (absolute) path resumes from anywhere, and so does dream3d mesh
    generate(load_run_config(os.path.join(out, "config.yaml")), out, resume=True, log=lambda m: None)
    assert os.path.exists(os.path.join(out, "metrics.json"))


def test_folders_that_cannot_be_made_and_malformed_summaries_are_one_line_errors(tmp_path, capsys, monkeypatch):
    """Before: NotADirectoryError after the prior had loaded, a KeyError from the gallery, torch's
    '[enforce fail at inline_container.cc] unexpected pos' for a full disk."""
    import torch

    from dream3d import cli
    from dream3d.io import atomic_save_torch

    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert cli.main(["generate", "a red cube", "-o", str(afile / "sub")]) == 2
    assert f"{afile} is a file, so the folder cannot be made" in capsys.readouterr().err
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "summary.json").write_text('{"rows": []}')
    assert cli.main(["gallery", str(tmp_path / "gallery")]) == 2
    assert "is not a summary dream3d wrote" in capsys.readouterr().err
    assert afile.read_text() == "mine"

    def full_disk(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="is the disk full"):
        atomic_save_torch({"a": 1}, str(tmp_path / "ckpt.pt"))

    def other_error(obj, f):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(torch, "save", other_error)  # not a failed write (with room on the disk): left as it is
    with pytest.raises(RuntimeError, match="illegal memory access"):
        atomic_save_torch({"a": 1}, str(tmp_path / "ckpt.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "gallery"]  # no temporary left


def test_a_reused_config_that_fixes_the_old_run_length_is_noted(tmp_path, capsys):
    """A --print-config output (or a run's config.yaml) reused with another train.steps kept the old run's schedule
    lengths without a word: densification stopped at 300 of 2000 steps."""
    from dream3d import cli

    assert cli.main(["generate", "a red cube", "--print-config"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "x.yaml").write_text(text.replace("  steps: 400\n", "  steps: 2000\n"))
    assert cli.main(["generate", "a red cube", "--config", str(tmp_path / "x.yaml"), "--print-config"]) == 0
    err = capsys.readouterr().err
    assert "sets gaussians.densify_until_step=300 (following train.steps=2000: 1500)" in err, err
    assert "set it to null to follow train.steps" in err
    assert cli.main(["generate", "a red cube", "--config", "gaussian-vsd", "train.steps=2000", "--print-config"]) == 0
    assert "note:" not in capsys.readouterr().err  # a preset's keys follow train.steps


def test_a_config_file_named_without_a_folder_is_read(tmp_path, monkeypatch, capsys):
    """`--config mine.yaml` in the working folder (a regression of the run-length note, found in review)."""
    from dream3d import cli

    (tmp_path / "mine.yaml").write_text("base: dreamgaussian\ntrain: {steps: 7}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "a red cube", "--config", "mine.yaml", "--print-config"]) == 0
    assert "steps: 7" in capsys.readouterr().out
