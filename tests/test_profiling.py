"""The step's host-device synchronisations and operators, counted on the CPU (dream3d.profiling), and the speed
benchmark at a tiny size."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dream3d.pipeline import build_guidance
from dream3d.profiling import PhaseTimer, count_ops, count_syncs
from dream3d.train import Trainer

from test_train import _cfg

REPO = Path(__file__).resolve().parents[1]


def test_count_syncs_finds_what_makes_the_host_wait_and_ignores_host_data():
    dev = torch.randn(8)  # "device" data: made from nothing the host drew
    with count_syncs() as s:
        dev.sum().item()
        bool((dev > 0).any())
        dev.nonzero()
        dev[dev > 0]
        float(dev.max())
    assert s.total == 5, s.by_site
    g = torch.Generator().manual_seed(0)
    with count_syncs() as s:
        host = torch.rand(4, generator=g)  # drawn on the host: reading it is free...
        (host * 2 + 1).tolist()
        torch.zeros(3).sum().item()  # ...and so is a factory tensor made without a device
        dev.to("cpu", non_blocking=True)
        host.to("cpu", non_blocking=True)  # a copy that does not wait
    assert s.total == 0, s.by_site
    with count_syncs() as s:
        host.to("cpu")  # a blocking host-to-device copy
        (host + dev[:4]).sum().item()  # mixed with device data: device data
        torch.tensor([1.0, 2.0], device="cpu")  # Python data put on "the device": a blocking copy too
    assert s.total == 3 and all("test_profiling.py" in k for k in s.by_site), s.by_site


def test_count_ops_counts_forward_and_backward_operators():
    x = torch.randn(4, 3, requires_grad=True)
    with count_ops() as ops:
        (x * 2).sin().sum().backward()
    assert ops.by_op["mul"] >= 2 and ops.by_op["sin"] == 1 and ops.by_op["cos"] == 1, ops.by_op


def test_phase_timer_is_free_when_off():
    t = PhaseTimer("cpu")
    with t("a"):
        pass
    assert not t.seconds
    t.enabled = True
    with t("a"):
        pass
    assert t.seconds["a"] > 0


# The step never waits for the device outside the renderer (whose torch path is replaced by gsplat / nerfacc on
# CUDA): losses, t, the NaN guard and the random draws all stay on the device or on the host.
@pytest.mark.parametrize("preset", ["dreamgaussian", "gaussian-vsd", "prolificdreamer"])
def test_a_training_step_has_no_host_sync_outside_the_renderer(tiny_prior, tmp_path, preset):
    cfg = _cfg(tiny_prior, "train.steps=20", "gaussians.densify_from_step=100", preset=preset)
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    tr.train_step()
    tr.step += 1
    # a prompt's first use runs the text encoder once (a copy of its tokens); later steps find it cached
    tr.guidance.conditioning(cfg.prompt, torch.tensor([0.0, 0.0, 0.0, 80.0]), torch.tensor([0.0, 90.0, 180.0, 0.0]), 4)
    with count_syncs() as s:
        tr.train_step()
    outside = {k: v for k, v in s.by_site.items() if " renderers/" not in k}
    assert outside == {}, outside


def test_a_nonfinite_step_changes_nothing_on_the_device(tiny_prior, tmp_path):
    """The guard skips the Gaussians' and the VSD student's updates without a host check."""
    cfg = _cfg(tiny_prior, "train.steps=20", "gaussians.densify_from_step=100", preset="gaussian-vsd")
    tr = Trainer(cfg, cfg.prompt, str(tmp_path), guidance=build_guidance(cfg), log=lambda m: None)
    tr.train_step()
    tr.step += 1

    def snapshot():
        params = {k: v.clone() for k, v in tr.model.state_dict().items() if torch.is_tensor(v)}
        adam = [{k: v.clone() for k, v in st.items()} for st in tr.opt.state.values()]
        student = [p.detach().clone() for p in tr.guidance.trainable_parameters()]
        student_adam = [{k: v.clone() for k, v in st.items()} for st in tr.guidance.optimizer.state.values()]
        return params, adam, student, student_adam

    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return torch.equal(a, b)

    good = snapshot()
    background = tr.background
    tr.background = torch.full_like(background, float("nan"))  # every render, loss and gradient non-finite
    stats = tr.train_step()
    assert stats[-1].item() == 1.0 and not torch.isfinite(stats[0])
    assert same(snapshot(), good)
    tr.background = background
    assert tr.train_step()[-1].item() == 0.0 and not same(snapshot(), good)  # a finite step does change them


def _speed_benchmark():
    spec = importlib.util.spec_from_file_location("speed", REPO / "benchmarks" / "speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_speed_benchmark_runs_at_a_tiny_size(tiny_prior, tmp_path):
    bench = _speed_benchmark()
    out = tmp_path / "speed.json"
    tiny = [
        "gaussians.num_points=300",
        "train.batch_size=2",
        "train.resolution=32",
        f"guidance.prior.model={tiny_prior}",
    ]
    result = bench.main(
        [
            "--device",
            "cpu",
            "--sizes",
            "embedded",
            "--presets",
            "dreamgaussian,gaussian-vsd",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--breakdown-steps",
            "1",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(out),
            "--set",
            *tiny,
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert not result["errors"], result["errors"]
    by = {r["preset"]: r for r in result["cases"]}
    assert set(by) == {"dreamgaussian", "gaussian-vsd"}
    for r in by.values():
        assert r["steps_per_second"] > 0 and r["syncs"]["outside_renderer_per_step"] == 0 and r["ops_per_step"] > 100
        assert {"render", "encode", "unet", "backward", "optimizer", "overhead"} <= set(r["ms_per_step_phases"])
    assert (
        "lora" in by["gaussian-vsd"]["ms_per_step_phases"] and "lora" not in by["dreamgaussian"]["ms_per_step_phases"]
    )


def test_speed_benchmark_times_image_to_3d_with_a_zero123_of_the_xl_layout(tmp_path):
    """The zero123 preset builds a random Zero123 folder of Zero123-XL's layers (tiny channels here), fits the
    benchmark's input image and scores the other views with Zero123, with no host synchronisation outside the
    renderer (the GPU check times it at full size)."""
    out = tmp_path / "speed.json"
    argv = ["--device", "cpu", "--sizes", "sd15-small", "--presets", "zero123", "--steps", "1", "--warmup", "1"]
    argv += ["--breakdown-steps", "1", "--work", str(tmp_path / "w"), "--out", str(out)]
    result = _speed_benchmark().main(argv + ["--set", "gaussians.num_points=300"])
    assert not result["errors"], result["errors"]
    (r,) = result["cases"]
    assert r["preset"] == "zero123" and r["resolution"] == 32 and r["batch_size"] == 1 and r["steps_per_second"] > 0
    assert r["syncs"]["outside_renderer_per_step"] == 0, [k for k in r["syncs"]["sites"] if " renderers/" not in k]
    assert (tmp_path / "w" / "zero123_sd15-small_random" / "image_encoder").is_dir()


# dynamo traces diffusers' U-Net slowly on a CPU: ~40 s for SDS, ~2 min more for VSD's student branch
@pytest.mark.parametrize("preset", ["dreamgaussian", pytest.param("gaussian-vsd", marks=pytest.mark.slow)])
def test_compiled_prior_trains_like_the_eager_one(tiny_prior, tmp_path, preset):
    """train.compile traces the U-Net and the VAE encoder through dynamo, VSD's student branch (peft adapters on,
    camera MLP attached) included; dynamo's "eager" backend runs the captured graphs, so the result must match."""
    torch._dynamo.reset()
    models = []
    for compile_mode in (None, "eager"):
        extra = ["train.steps=20", "gaussians.densify_from_step=100"] + (
            [f"train.compile={compile_mode}"] if compile_mode else []
        )
        cfg = _cfg(tiny_prior, *extra, preset=preset)
        tr = Trainer(
            cfg, cfg.prompt, str(tmp_path / str(compile_mode)), guidance=build_guidance(cfg), log=lambda m: None
        )
        for _ in range(2):
            tr.train_step()
            tr.step += 1
        models.append(tr)
    eager, compiled = models
    assert (
        hasattr(compiled.guidance.prior.unet, "_compiled_call_impl")
        and compiled.guidance.prior.unet._compiled_call_impl is not None
    )
    for k, v in eager.model.state_dict().items():
        if torch.is_tensor(v):
            torch.testing.assert_close(compiled.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    if preset == "gaussian-vsd":
        for a, b in zip(eager.guidance.trainable_parameters(), compiled.guidance.trainable_parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
