"""A finished training is never lost to the mesh stage: a failure there (here nvdiffrast's plugin load error,
raised from the texture bake) leaves the checkpoint, the .ply, config.yaml and metrics.json, and a message
naming ``dream3d mesh RUN``, which then finishes the run. Also: the mesh stage's tensor work on the field's device."""

import contextlib
import io
import json
import os
import shutil

import pytest
import torch

from dream3d import cli
from dream3d.config import load_run_config
from dream3d.mesh import texture as texture_mod
from dream3d.pipeline import MESH_NOT_FINISHED, MeshStageError, RunError, generate, mesh_error, remesh

from conftest import TINY_RUN

PLUGIN_ERROR = "No module named 'nvdiffrast_plugin_0_3_3_1_torch2_11_0_cu130'"


def _failing_bake(seen: list):
    """A rasterize_uv that fails as the H200's nvdiffrast did; records which files existed when the bake began."""

    def rasterize_uv(*args, **kwargs):
        run_dir = seen[0]
        seen.append(
            {
                n: os.path.exists(os.path.join(run_dir, n))
                for n in ("checkpoint.pt", "gaussians.ply", "config.yaml", "metrics.json")
            }
        )
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            seen.append(json.load(fh))
        raise ModuleNotFoundError(PLUGIN_ERROR)

    return rasterize_uv


def _cli(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def failed_run(tiny_prior, tmp_path_factory):
    """``dream3d generate`` (in process) whose texture bake raises: (run folder, exit code, stderr, bake-time record)."""
    out = str(tmp_path_factory.mktemp("mesh_failure") / "run")
    seen = [out]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(texture_mod, "rasterize_uv", _failing_bake(seen))
        rc, err = _cli(
            "generate",
            "a red cube",
            *TINY_RUN,
            f"guidance.prior.model={tiny_prior}",
            "--config",
            "dreamgaussian",
            "-o",
            out,
        )
    return out, rc, err, seen[1:]


def _copy(run_dir, tmp_path) -> str:
    dst = str(tmp_path / "run")
    shutil.copytree(run_dir, dst)
    return dst


def test_a_failed_mesh_stage_keeps_the_trained_run(failed_run):
    from dream3d.representations.gaussians import GaussianModel

    out, rc, err, seen = failed_run
    # The CLI: non-zero exit, one line naming the cause and the command that finishes the run.
    lines = [ln for ln in err.splitlines() if ln.startswith("dream3d: error:")]
    assert rc == 1 and len(lines) == 1, err[-3000:]
    assert "mesh stage failed" in lines[0] and f"ModuleNotFoundError: {PLUGIN_ERROR}" in lines[0]
    assert lines[0].endswith(f"Finish it with: dream3d mesh {out}")
    assert "Traceback" not in err and "mesh.resolution=" not in lines[0]  # no memory hint for an import error
    # Everything training made was on disk before the bake began, metrics.json with the pending marker.
    exists, metrics_then = seen[0], seen[1]
    assert all(exists.values()), exists
    assert metrics_then["mesh"] == {"error": MESH_NOT_FINISHED} and metrics_then["train"]["steps"] == 4
    # ... and is loadable now.
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ckpt["step"] == 4
    assert len(GaussianModel.load_ply(os.path.join(out, "gaussians.ply"))) == len(ckpt["model"]["means"])
    cfg = load_run_config(os.path.join(out, "config.yaml"))
    assert cfg.train.steps == 4 and cfg.prompt == "a red cube"
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["train"]["steps"] == 4 and metrics["train"]["final_loss"] is not None and metrics["history"]
    assert metrics["mesh"]["error"] == f"ModuleNotFoundError: {PLUGIN_ERROR}"
    assert metrics["files"] == {"ply": "gaussians.ply"} and not os.path.exists(os.path.join(out, "mesh.glb"))
    assert mesh_error(out) == metrics["mesh"]["error"]


def test_dream3d_mesh_finishes_the_failed_run(failed_run, tmp_path, tiny_prior):
    import trimesh

    run = _copy(failed_run[0], tmp_path)
    before = json.load(open(os.path.join(run, "metrics.json")))
    # generate into it again says how to finish it
    cfg = load_run_config("dreamgaussian", TINY_RUN + [f"guidance.prior.model={tiny_prior}", "prompt=a red cube"])
    with pytest.raises(RunError, match=f"dream3d mesh {run}"):
        generate(cfg, run, log=lambda m: None)
    rc, err = _cli("mesh", run)
    assert rc == 0, err[-3000:]
    glb = trimesh.load(os.path.join(run, "mesh.glb"), force="mesh")
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert "error" not in m["mesh"] and m["mesh"]["faces"] == len(glb.faces) > 0
    assert m["train"] == before["train"] and m["files"]["glb"] == "mesh.glb" and m["files"]["ply"] == "gaussians.ply"
    assert m["total_seconds"] > before["total_seconds"]  # the mesh stage's time joins the run's
    assert mesh_error(run) is None
    with pytest.raises(RunError, match="finished run"):
        generate(cfg, run, log=lambda m: None)


def test_resume_of_a_failed_run_meshes_without_training(failed_run, tmp_path, tiny_prior, monkeypatch):
    import dream3d.pipeline as pipeline
    from dream3d.train import Trainer

    run = _copy(failed_run[0], tmp_path)
    ckpt = open(os.path.join(run, "checkpoint.pt"), "rb").read()

    def no_training(*a, **k):
        raise AssertionError("a resumed run whose training finished must not train or load the prior")

    monkeypatch.setattr(Trainer, "train_step", no_training)
    monkeypatch.setattr(pipeline, "build_guidance", no_training)
    cfg = load_run_config("dreamgaussian", TINY_RUN + [f"guidance.prior.model={tiny_prior}", "prompt=a red cube"])
    # still failing: the same one-line error through the CLI's generate, no training
    with monkeypatch.context() as mp:
        mp.setattr(texture_mod, "rasterize_uv", _failing_bake([run]))
        rc, err = _cli(
            "generate",
            "a red cube",
            *TINY_RUN,
            f"guidance.prior.model={tiny_prior}",
            "--config",
            "dreamgaussian",
            "-o",
            run,
            "--resume",
        )
    assert rc == 1 and f"Finish it with: dream3d mesh {run}" in err, err[-3000:]
    m = generate(cfg, run, resume=True, log=lambda msg: None)
    assert m["mesh"]["faces"] > 0 and os.path.exists(os.path.join(run, "mesh.glb"))
    assert open(os.path.join(run, "checkpoint.pt"), "rb").read() == ckpt


def test_ablation_runs_the_mesh_stage_of_a_cell_whose_mesh_failed(failed_run, tmp_path, tiny_prior, monkeypatch):
    import yaml

    from dream3d.ablate import run_ablation
    from dream3d.train import Trainer

    cell = tmp_path / "abl" / "a" / "a_red_cube" / "seed0"
    shutil.copytree(failed_run[0], cell)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": "dreamgaussian",
                "overrides": TINY_RUN + [f"guidance.prior.model={tiny_prior}"],
                "prompts": ["a red cube"],
                "seeds": [0],
                "variants": {"a": []},
            }
        )
    )
    monkeypatch.setattr(Trainer, "train_step", lambda *a, **k: pytest.fail("the cell trained again"))
    rows = run_ablation(str(spec), str(tmp_path / "abl"), log=lambda m: None, evaluate=False)
    assert rows[0]["faces"] > 0 and (cell / "mesh.glb").exists() and mesh_error(str(cell)) is None


def test_ctrl_c_in_the_mesh_stage_keeps_the_run(failed_run, tmp_path, monkeypatch):
    import dream3d.pipeline as pipeline

    run = _copy(failed_run[0], tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "extract_textured_mesh", interrupted)
    logged = []
    with pytest.raises(KeyboardInterrupt):
        remesh(run, log=logged.append)
    assert any(f"dream3d mesh {run}" in m for m in logged), logged
    assert mesh_error(run) == "interrupted (Ctrl-C)"
    rc, err = _cli("mesh", run)
    assert rc == 130 and f"dream3d mesh {run}" in err, err
    assert os.path.exists(os.path.join(run, "checkpoint.pt")) and os.path.exists(os.path.join(run, "gaussians.ply"))


def test_ctrl_c_in_the_mesh_stage_of_generate_names_one_way_on(failed_run, tmp_path, tiny_prior, monkeypatch):
    """generate's last line agrees with the mesh stage's: the training is done, `dream3d mesh RUN` finishes it
    (it once said that training continues from the checkpoint with --resume)."""
    import dream3d.pipeline as pipeline

    run = _copy(failed_run[0], tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "extract_textured_mesh", interrupted)
    rc, err = _cli(
        "generate", "a red cube", *TINY_RUN, f"guidance.prior.model={tiny_prior}", "--config", "dreamgaussian",
        "-o", run, "--resume",
    )  # fmt: skip
    last = err.strip().splitlines()[-1]
    assert rc == 130 and last.startswith("dream3d: interrupted in the mesh stage"), err[-2000:]
    assert last.endswith(f"finish it with dream3d mesh {run}") and "training continues" not in err, last
    assert mesh_error(run) == "interrupted (Ctrl-C)" and os.path.exists(os.path.join(run, "checkpoint.pt"))

    # The same run resumed to train longer and stopped in training: its metrics.json still holds the old mesh
    # error, but what continues it is --resume (dream3d mesh refuses an unfinished run)
    from dream3d.train import Trainer

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    os.utime(os.path.join(run, "metrics.json"), (0, 0))  # written by an earlier command
    rc, err = _cli(
        "generate", "a red cube", *TINY_RUN, f"guidance.prior.model={tiny_prior}", "--config", "dreamgaussian",
        "-o", run, "--resume", "train.steps=8",
    )  # fmt: skip
    last = err.strip().splitlines()[-1]
    assert rc == 130 and "run the same command with --resume" in last and "dream3d mesh" not in last, last


def test_out_of_memory_in_the_mesh_stage_hints_a_smaller_grid(failed_run, tmp_path, monkeypatch):
    import dream3d.pipeline as pipeline

    run = _copy(failed_run[0], tmp_path)

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB\nmore detail")

    monkeypatch.setattr(pipeline, "extract_textured_mesh", oom)
    with pytest.raises(MeshStageError) as e:
        remesh(run, ["mesh.resolution=256"], log=lambda m: None)
    assert e.value.retry == f"dream3d mesh {run} mesh.resolution=128"
    assert "\n" not in str(e.value) and "Tried to allocate 8.00 GiB" in str(e.value)
    assert "resolution: 40" in open(os.path.join(run, "config.yaml")).read()  # a failed remesh keeps the run's settings

    def cpu_oom(*a, **k):  # what torch's CPU allocator raises
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:116] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(pipeline, "extract_textured_mesh", cpu_oom)
    with pytest.raises(MeshStageError) as e:
        remesh(run, ["mesh.resolution=256"], log=lambda m: None)
    assert e.value.retry == f"dream3d mesh {run} mesh.resolution=128"


# ------------------------------------------------------------------------------- device placement


def test_mesh_tensor_work_never_leaves_the_field_device(monkeypatch):
    """The threshold, the hidden-interior fill and the density queries make no CPU copy of their tensors (on a
    GPU run a .cpu() here would move R^3 values to the host and do the work there)."""
    from dream3d.mesh.density import function_density_grid, gaussian_density_grid, make_grid
    from dream3d.mesh.extract import ExtractConfig, choose_threshold, fill_hidden

    grid = make_grid(1.0, 32)
    g = torch.Generator().manual_seed(0)
    n = 200
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    quats, scales, opac = torch.tensor([1.0, 0, 0, 0]).repeat(n, 1), torch.full((n, 3), 0.08), torch.full((n,), 0.5)
    shell = lambda p: torch.exp(-(((p.norm(dim=-1) - 0.6) / 0.1) ** 2))  # noqa: E731  (a hollow ball: the fill has work)
    expected = fill_hidden(function_density_grid(shell, grid), grid, 0.5)

    def no_host_copy(self, *a, **k):
        raise AssertionError("a mesh-stage tensor was copied to the CPU")

    monkeypatch.setattr(torch.Tensor, "cpu", no_host_copy)
    monkeypatch.setattr(torch.Tensor, "numpy", no_host_copy)
    dev = torch.device("cpu")
    dens = gaussian_density_grid(means, quats, scales, opac, grid)
    level = choose_threshold(dens, ExtractConfig())
    assert dens.device == dev and 0 < level < float(dens.max())
    field = function_density_grid(shell, grid, device=dev)
    filled = fill_hidden(field, grid, 0.5)
    assert filled.device == dev and torch.equal(filled, expected) and not torch.equal(filled, field)
    assert grid.points(dev).device == dev


@pytest.mark.cuda
def test_mesh_tensor_work_on_cuda_matches_cpu():
    from dream3d.mesh.density import make_grid
    from dream3d.mesh.extract import ExtractConfig, choose_threshold, fill_hidden

    grid = make_grid(1.0, 48)
    p = grid.points()
    shell = torch.exp(-(((p.norm(dim=-1) - 0.6) / 0.05) ** 2))
    cuda = shell.cuda()
    assert abs(choose_threshold(cuda, ExtractConfig()) - choose_threshold(shell, ExtractConfig())) < 1e-5
    filled = fill_hidden(cuda, grid, 0.5, max_visible=2)
    assert filled.is_cuda and torch.equal(filled.cpu(), fill_hidden(shell, grid, 0.5, max_visible=2))


def test_a_remesh_that_fails_part_way_keeps_the_earlier_mesh_files_as_a_set(failed_run, tmp_path, monkeypatch):
    """Before, mesh.glb/obj/png were renamed into place one at a time, so a remesh that failed in the turntable (or
    was stopped there) left the new mesh beside the old metrics.json, config.yaml and turntable."""
    import glob

    import dream3d.mesh.export as export
    from dream3d.pipeline import STAGING_PREFIX

    run = _copy(failed_run[0], tmp_path)
    assert _cli("mesh", run)[0] == 0
    names = ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "metrics.json", "config.yaml")
    turntable = json.load(open(os.path.join(run, "metrics.json")))["files"]["turntable"]
    before = {n: open(os.path.join(run, n), "rb").read() for n in (*names, turntable)}

    for error in (RuntimeError("the turntable failed"), KeyboardInterrupt()):
        with monkeypatch.context() as mp:
            mp.setattr(export, "render_turntable", _raise(error))
            with pytest.raises(MeshStageError if isinstance(error, RuntimeError) else KeyboardInterrupt):
                remesh(run, ["mesh.resolution=24"], log=lambda m: None)
        for n in (*names[:4], "config.yaml", turntable):
            assert open(os.path.join(run, n), "rb").read() == before[n], (error, n)
        metrics = json.load(open(os.path.join(run, "metrics.json")))
        assert metrics["mesh"] == json.loads(before["metrics.json"])["mesh"] and "mesh_last_error" in metrics
        assert not glob.glob(os.path.join(run, STAGING_PREFIX + "*"))
    # and a remesh that succeeds replaces the whole set
    remesh(run, ["mesh.resolution=24"], log=lambda m: None)
    for n in ("mesh.glb", "mesh.obj", "metrics.json", "config.yaml"):
        assert open(os.path.join(run, n), "rb").read() != before[n], n
    assert "mesh_last_error" not in json.load(open(os.path.join(run, "metrics.json")))


def _raise(error):
    def raises(*a, **k):
        raise error

    return raises
