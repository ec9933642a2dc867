"""The embedded Zero-1-to-3 (issue 20): its folder in the public zero123-xl-diffusers layout, the loader (also for
the other public layout and for Zero123-XL's architecture), the camera numbers and the unconditional branch as the
public code has them, training (loss, exact resume), sampling and evaluation, the zero123 SDS rule and
`dream3d generate --image` with it. Everything on tiny random or briefly trained models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dream3d.embedded_prior.zero123_train import _Trainer, train_zero123
from dream3d.guidance import (
    RULES,
    DiffusionPrior,
    PriorConfig,
    PriorNotFoundError,
    Zero123Config,
    Zero123Prior,
    Zero123SDS,
)
from dream3d.guidance.zero123_prior import relative_camera
from dream3d.random_models import ZERO123_XL_FULL, ZERO123_XL_SMALL, make_zero123_folder
from renderers.cameras import orbit_cameras

from conftest import TINY_RUN, tiny_zero123_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second torch thread gains nothing, and on a shared machine its waits cost ten times
    the work (a tiny U-Net step: 0.14 s on one thread, 1.3 s on two, at a load average of 6 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(folder) -> Zero123Prior:
    return Zero123Prior.load(PriorConfig(model=str(folder), device="cpu"))


# ----------------------------------------------------------------------------- the folder and the loader


def test_saved_folder_has_the_public_layout_and_loads_back(tiny_zero123):
    from safetensors.torch import load_file

    root = Path(tiny_zero123)
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "Zero123Pipeline"
    assert index["clip_camera_projection"] == ["zero123", "CLIPCameraProjection"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    for f in (
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "image_encoder/config.json",
        "image_encoder/model.safetensors",
        "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
        "training.json",
    ):
        assert (root / f).is_file(), f
    unet = json.loads((root / "unet/config.json").read_text())
    assert (unet["in_channels"], unet["out_channels"], unet["cross_attention_dim"]) == (8, 4, 32)
    proj_cfg = json.loads((root / "clip_camera_projection/config.json").read_text())
    assert proj_cfg["_class_name"] == "CLIPCameraProjection"
    assert (proj_cfg["embedding_dim"], proj_cfg["additional_embeddings"]) == (32, 4)
    proj = load_file(root / "clip_camera_projection/diffusion_pytorch_model.safetensors")
    assert proj.keys() == {"proj.weight", "proj.bias"} and proj["proj.weight"].shape == (32, 36)
    vision = json.loads((root / "image_encoder/config.json").read_text())
    assert vision["projection_dim"] == 32 and vision["image_size"] == 32
    assert json.loads((root / "scheduler/scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"

    prior = _load(root)
    assert torch.equal(prior.projection.weight, proj["proj.weight"])
    assert (prior.image_size, prior.latent_size, prior.latent_channels, prior.clip_size) == (32, 8, 4, 32)
    from transformers import CLIPImageProcessor

    fe = CLIPImageProcessor.from_pretrained(root / "feature_extractor")  # what the public pipelines read
    assert fe.crop_size["height"] == 32 and np.allclose(fe.image_mean, prior.clip_mean.tolist())


def test_the_community_layout_cc_projection_loads_and_predicts_the_same(tiny_zero123, tmp_path):
    """The other public conversion (diffusers' community Zero1to3 pipeline) names the projection cc_projection
    with a Linear called `projection`; it loads through the same loader and predicts exactly the same."""
    from safetensors.torch import load_file, save_file

    other = tmp_path / "cc"
    shutil.copytree(tiny_zero123, other)
    state = load_file(other / "clip_camera_projection/diffusion_pytorch_model.safetensors")
    shutil.rmtree(other / "clip_camera_projection")
    (other / "cc_projection").mkdir()
    (other / "cc_projection/config.json").write_text(json.dumps({"_class_name": "CCProjection"}))
    save_file(
        {k.replace("proj.", "projection."): v for k, v in state.items()},
        other / "cc_projection/diffusion_pytorch_model.safetensors",
    )
    a, b = _load(tiny_zero123), _load(other)
    rgb = torch.rand(1, 32, 32, 3)
    cam = relative_camera([10.0, 0.0], [90.0, -45.0], [2.8, 3.0], 0.0, 0.0, 2.8)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 100])
    ea = a.guided_eps(x, t, a.image_conditioning(rgb), cam, 3.0)[0]
    eb = b.guided_eps(x, t, b.image_conditioning(rgb), cam, 3.0)[0]
    assert torch.equal(ea, eb)


def test_missing_parts_are_named_and_a_hub_id_is_not_fetched_without_leave(tiny_zero123, tmp_path, monkeypatch):
    half = tmp_path / "half"
    shutil.copytree(tiny_zero123, half)
    shutil.rmtree(half / "clip_camera_projection")
    (half / "image_encoder/config.json").unlink()
    with pytest.raises(PriorNotFoundError, match=r"image_encoder/config.json.*clip_camera_projection"):
        _load(half)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PriorNotFoundError, match="not in the local Hugging Face cache and downloads are off"):
        Zero123Prior.load(PriorConfig(model="dream3d-tests/no-such-zero123"))
    import dream3d.guidance.zero123_prior as zp

    monkeypatch.setattr(zp, "EMBEDDED_ZERO123", str(tmp_path / "absent"))
    with pytest.raises(PriorNotFoundError, match="dream3d prior train --kind zero123"):
        Zero123Prior.load(PriorConfig())


def test_a_random_folder_of_zero123_xl_layers_loads_through_the_same_loader(tmp_path):
    """Zero123-XL's layers (SD's 4-level U-Net with 8 input channels, 8x VAE, 256-pixel images, a 224-pixel ViT
    with 14-pixel patches) at tiny widths; the full sizes are the slow test below."""
    prior = _load(make_zero123_folder(tmp_path / "xl", **ZERO123_XL_SMALL))
    assert (prior.image_size, prior.latent_size, prior.clip_size) == (256, 32, 224)
    cond = prior.image_conditioning(torch.rand(1, 64, 64, 3))  # any size: resized as the public pipelines do
    assert cond.embedding.shape == (1, 1, 32) and cond.latents.shape == (1, 4, 32, 32)
    eps = prior.guided_eps(
        torch.randn(2, 4, 32, 32), torch.tensor([900, 20]), cond, relative_camera(0, [90, 180], 2.8, 0, 0, 2.8), 3.0
    )[0]
    assert eps.shape == (2, 4, 32, 32) and torch.isfinite(eps).all()


@pytest.mark.slow
def test_a_random_folder_of_zero123_xl_full_size_loads(tmp_path):
    torch.set_default_device("cpu")
    prior = _load(make_zero123_folder(tmp_path / "xl", **ZERO123_XL_FULL))
    assert prior.projection.weight.shape == (768, 772) and prior.unet.config.in_channels == 8
    assert sum(p.numel() for p in prior.unet.parameters()) > 8e8
    cond = prior.image_conditioning(torch.rand(1, 256, 256, 3))
    eps = prior.guided_eps(
        torch.randn(1, 4, 32, 32), torch.tensor([500]), cond, relative_camera(0, 90, 2.8, 0, 0, 2.8), 3.0
    )[0]
    assert torch.isfinite(eps).all()


# ----------------------------------------------------------------------------- the public conventions


def test_the_input_view_is_preprocessed_as_the_clip_feature_extractor_does():
    """DreamGaussian feeds the input image through the CLIPImageProcessor of the folder; dream3d's torch version
    of it (bicubic, antialiased, CLIP's mean and std) gives the same pixel values but for resampling noise."""
    from transformers import CLIPImageProcessor

    from dream3d.embedded_prior.zero123 import preprocessor_config
    from dream3d.guidance.zero123_prior import clip_preprocess

    rgb = (_cubes(1, 256)[0][0].numpy() * 255).round().astype(np.uint8)
    fe = CLIPImageProcessor(**preprocessor_config(224))
    want = torch.from_numpy(np.asarray(fe(images=rgb, return_tensors="np").pixel_values))
    got = clip_preprocess(
        torch.from_numpy(rgb)[None].float() / 255, 224, torch.tensor(fe.image_mean), torch.tensor(fe.image_std)
    )
    assert got.shape == want.shape == (1, 3, 224, 224)
    assert (got - want).abs().mean() < 0.005 and (got - want).abs().max() < 0.5


def test_camera_numbers_follow_the_public_convention():
    same = relative_camera(20.0, 30.0, 2.8, 20.0, 30.0, 2.8)
    assert torch.allclose(same, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    right = relative_camera(0.0, 90.0, 2.8, 0.0, 0.0, 2.8)  # 90° around: sin 1, cos 0
    assert torch.allclose(right, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), atol=1e-6)
    left = relative_camera(0.0, -90.0, 2.8, 0.0, 0.0, 2.8)
    assert torch.allclose(left[0, 1:3], torch.tensor([-1.0, 0.0]), atol=1e-6)
    up = relative_camera(30.0, 0.0, 3.3, 0.0, 0.0, 2.8)  # polar = 90 - elevation: up is a negative Δpolar, radians
    assert torch.allclose(up, torch.tensor([[-math.pi / 6, 0.0, 1.0, 0.5]]), atol=1e-6)
    behind = relative_camera(0.0, 170.0, 2.8, 0.0, -170.0, 2.8)  # 340° = -20°: wraps through sin/cos
    assert torch.allclose(
        behind[0, 1:3], torch.tensor([math.sin(math.radians(-20)), math.cos(math.radians(-20))]), atol=1e-6
    )


def test_the_rule_reads_the_camera_numbers_from_render_cameras(tiny_zero123):
    rule = Zero123SDS(_load(tiny_zero123), Zero123Config())
    rule.set_reference(torch.rand(1, 32, 32, 3), 0.0, 0.0, 2.8)
    cams = orbit_cameras([0.0, 0.0, 30.0], [0.0, 90.0, 180.0], [2.8, 2.8, 3.0], 45.0, 32, 32)
    got = rule.relative_cameras(cams, 3)
    want = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0], [-math.pi / 6, 0, -1, 0.2]], dtype=torch.float32)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(rule.relative_cameras((0.0, 90.0), 2), torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 2), atol=1e-6)


def test_cfg_unconditional_branch_zeroes_the_projected_embedding_and_the_input_latents(tiny_zero123):
    prior = _load(tiny_zero123)
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 32, 32, 3, generator=g)
    cond = prior.image_conditioning(rgb)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([700, 50])
    cam = relative_camera([0.0, 20.0], [90.0, 200.0], [2.8, 3.1], 0.0, 0.0, 2.8)
    eps_hat, eps_c, eps_u = prior.guided_eps(x, t, cond, cam, 4.0)
    # written out: the conditional branch gets proj([image_embeds, camera]) and the unscaled posterior mode ...
    from transformers import CLIPVisionModelWithProjection

    states = prior.projection(torch.cat([cond.embedding.expand(2, 1, -1), cam[:, None]], -1))
    mode = prior.vae.encode(rgb.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert torch.allclose(cond.latents, mode) and isinstance(prior.image_encoder, CLIPVisionModelWithProjection)
    unet = lambda lat, st: prior.unet(torch.cat([x, lat.expand(2, -1, -1, -1)], 1), t, encoder_hidden_states=st).sample  # noqa: E731
    with torch.no_grad():
        want_c, want_u = unet(mode, states), unet(torch.zeros_like(mode), torch.zeros_like(states))
    assert torch.allclose(eps_c, want_c, atol=1e-5) and torch.allclose(eps_u, want_u, atol=1e-5)
    assert torch.allclose(eps_hat, want_u + 4.0 * (want_c - want_u), atol=1e-4)
    # ... and the unconditional branch knows nothing of the image or the camera
    other = prior.image_conditioning(torch.rand(1, 32, 32, 3, generator=g))
    _, eps_c2, eps_u2 = prior.guided_eps(x, t, other, cam.flip(0), 4.0)
    assert torch.equal(eps_u2, eps_u) and not torch.allclose(eps_c2, eps_c)


# ----------------------------------------------------------------------------- training


def test_training_lowers_the_loss_and_resumes_bit_exactly(tiny_prior, tmp_path):
    from safetensors.torch import load_file

    losses = []
    trainer = _Trainer(tiny_zero123_config(tmp_path / "loss", tiny_prior, steps=30, lr=2e-3), log=lambda m: None)
    for _ in range(30):
        losses.append(trainer._step())
        trainer.step += 1
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.7 * first, (first, last)

    logs = []
    train_zero123(tiny_zero123_config(tmp_path / "a", tiny_prior), log=logs.append)
    train_zero123(tiny_zero123_config(tmp_path / "b", tiny_prior), stop_after=3, log=logs.append)
    assert not (tmp_path / "b/zero123").exists(), "an interrupted run leaves no finished-looking output"
    train_zero123(tiny_zero123_config(tmp_path / "b", tiny_prior), log=logs.append)
    assert any("resumed" in line for line in logs)
    for sub in (
        "unet/diffusion_pytorch_model.safetensors",
        "image_encoder/model.safetensors",
        "clip_camera_projection/diffusion_pytorch_model.safetensors",
    ):
        a, b = load_file(tmp_path / "a/zero123" / sub), load_file(tmp_path / "b/zero123" / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    info = json.loads((tmp_path / "a/zero123/training.json").read_text())
    assert info["config"]["data"]["holdout"] == ["green cone"] and info["history"][-1]["step"] == 6
    resumed = json.loads((tmp_path / "b/zero123/training.json").read_text())
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in info["history"]]  # the smoothing too
    other = tiny_zero123_config(tmp_path / "b", tiny_prior, steps=7)
    with pytest.raises(RuntimeError, match="different training config"):
        train_zero123(other)


# ----------------------------------------------------------------------------- sampling and evaluation


def test_sampling_is_deterministic_and_eval_scores_a_perfect_model_perfectly(tiny_zero123, monkeypatch):
    from dream3d.embedded_prior import zero123_eval
    from dream3d.embedded_prior.zero123_sample import camera_offsets, novel_views
    from dream3d.world.render import render_colored_mesh
    from dream3d.world.shapes import COLORS, build_shape

    prior = _load(tiny_zero123)
    cond = prior.image_conditioning(torch.rand(1, 32, 32, 3))
    cams = camera_offsets([0.0], [0.0, 90.0, 180.0], [0.0])
    a, b = novel_views(prior, cond, cams, steps=3, seed=1), novel_views(prior, cond, cams, steps=3, seed=1)
    assert a.shape == (3, 32, 32, 3) and torch.equal(a, b)

    # An oracle that draws the true object from the camera the numbers describe scores PSNR 100 (capped), IoU 1 and
    # the classifier's verdicts; a blank one scores IoU 0. So the eval's cameras, renders and masks line up.
    mesh = build_shape("cube", COLORS["red"])
    seen = {}

    def oracle(prior, cond, cam, steps, scale, seed):
        ref = seen["ref"]
        el, az = ref[0] - torch.rad2deg(cam[:, 0]), ref[1] + torch.rad2deg(torch.atan2(cam[:, 1], cam[:, 2]))
        return render_colored_mesh(mesh, orbit_cameras(el, az, ref[2] + cam[:, 3], 45.0, 32, 32))[0].clamp(0, 1)

    real_cameras = zero123_eval.eval_cameras

    def cameras(g, views):
        ref, c = real_cameras(g, views)
        seen["ref"] = ref[0]
        return ref, c

    monkeypatch.setattr(zero123_eval, "eval_cameras", cameras)
    monkeypatch.setattr(zero123_eval, "novel_views", oracle)
    res = zero123_eval.evaluate_zero123(prior, views=4, objects=[("red", "cube")], log=lambda m: None)
    assert res["all"]["psnr_db"] > 40 and res["all"]["mask_iou"] > 0.99
    assert res["all"]["color_accuracy"] == 1.0 and res["all"]["shape_accuracy"] == 1.0
    assert res["_sheet"].shape == (2, 5, 32, 32, 3)
    monkeypatch.setattr(zero123_eval, "novel_views", lambda *a, **k: torch.ones(4, 32, 32, 3))
    blank = zero123_eval.evaluate_zero123(prior, views=4, objects=[("red", "cube")], log=lambda m: None)
    assert blank["all"]["mask_iou"] == 0.0 and blank["all"]["psnr_db"] < 20
    # A model that ignores the camera and returns the input view scores what the "copy" baseline says, which a
    # perfect model beats by far.
    same = torch.tensor([0.0, 0.0, 1.0, 0.0])  # the camera numbers of the input view itself
    monkeypatch.setattr(
        zero123_eval, "novel_views", lambda p, c, cam, *a, **k: oracle(p, c, same.expand_as(cam), *a, **k)
    )
    copy = zero123_eval.evaluate_zero123(prior, views=4, objects=[("red", "cube")], log=lambda m: None)["all"]
    assert abs(copy["psnr_db"] - copy["copy_psnr_db"]) < 1e-3 and abs(copy["mask_iou"] - copy["copy_mask_iou"]) < 1e-6
    assert res["all"]["copy_psnr_db"] == copy["copy_psnr_db"] and copy["copy_psnr_db"] < 30


def test_prior_sample_with_an_image_writes_novel_views(tiny_zero123, tmp_path):
    import imageio.v3 as iio

    from dream3d.cli import main

    img = np.zeros((32, 32, 4), np.uint8)
    img[8:24, 8:24] = (200, 30, 30, 255)
    iio.imwrite(tmp_path / "in.png", img)
    out = tmp_path / "views"
    argv = ["prior", "sample", "--image", str(tmp_path / "in.png"), "--azimuth", "90", "180", "--elevation", "20"]
    assert main(argv + ["--model", tiny_zero123, "--steps", "2", "--n", "1", "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "input.png", "view_az180_el20_0.png", "view_az90_el20_0.png"]
    assert iio.imread(out / "grid.png").shape == (32, 96, 3)


def test_prior_eval_of_chosen_objects_writes_their_scores_and_sheet(tiny_zero123, tmp_path, capsys):
    import imageio.v3 as iio

    from dream3d.cli import main

    argv = ["prior", "eval", "--kind", "zero123", "--model", tiny_zero123, "--views", "2", "--steps", "1"]
    assert main(argv + ["--objects", "blue mug, red cube", "-o", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "zero123_eval.json").read_text())
    assert list(res["per_object"]) == ["blue mug", "red cube"] and res["all"]["views"] == 4
    assert iio.imread(tmp_path / "novel_views.png").shape == (4 * 32, 3 * 32, 3)  # input + 2 views; truth below
    capsys.readouterr()
    assert main(argv + ["--objects", "red teapot"]) == 2
    err = capsys.readouterr().err
    assert "--objects" in err and "red teapot" in err, err
    # counts that cannot work, and zero123's options without --kind zero123, are refused before the model loads
    for bad, words in (
        (["--views", "0"], "--views and --per-prompt must be at least 1"),
        (["--views", "-1"], "got -1"),
        (["--steps", "0"], "--steps between 1 and 1000"),
        (["--per-prompt", "0"], "zero123 draws --views per object instead"),  # not zero123's: named as such
    ):
        assert main(argv + bad) == 2 and words in capsys.readouterr().err, bad
    assert main(["prior", "eval", "--objects", "blue mug"]) == 2
    assert "add --kind zero123" in capsys.readouterr().err


# ----------------------------------------------------------------------------- guidance and generate


def _cubes(n: int = 2, size: int = 32):
    from dream3d.world.render import render_colored_mesh
    from dream3d.world.shapes import scene_for_prompt

    cams = orbit_cameras([10.0, 30.0][:n], [60.0, -120.0][:n], [2.8, 3.0][:n], 45.0, size, size)
    rgb, _ = render_colored_mesh(scene_for_prompt("a red cube"), cams)
    return rgb.clamp(0, 1), cams


def test_zero123_sds_gradient_reaches_the_render_finite_and_nonzero(tiny_zero123):
    rule = Zero123SDS(_load(tiny_zero123), Zero123Config(guidance_scale=5.0))
    rule.set_reference(_cubes(1)[0], 10.0, 60.0, 2.8)
    base, cams = _cubes()
    rgb = base.clone().requires_grad_(True)
    out = rule(rgb, cams, "", step=0)
    out.loss.backward()
    g = rgb.grad
    assert torch.isfinite(g).all() and (g != 0).float().mean() > 0.9  # every view's pixels move
    assert out.extra["camera"].shape == (2, 4)
    # the gradient is the rule's: d loss / d latents = w(t) (eps_hat - eps) / B, with eps_hat from guided_eps
    lat = out.extra["latents"].detach().requires_grad_(True)
    rule.generator.manual_seed(3)
    out2 = rule.latent_loss(lat, cams, "", 0)
    rule.generator.manual_seed(3)
    t = rule.sample_t(0, 2)
    noise = rule.sample_noise(lat.shape)
    p = rule.prior
    eps_hat = p.guided_eps(
        p.add_noise(lat.detach(), noise, t), t, rule.reference[0], rule.relative_cameras(cams, 2), 5.0
    )[0]
    out2.loss.backward()
    want = (1 - p.alphas_cumprod[t]).view(-1, 1, 1, 1) * (eps_hat - noise) / 2
    assert torch.allclose(lat.grad, want, atol=1e-5)


def test_magic123_adds_the_text_prior_sds(tiny_zero123, tiny_prior, monkeypatch):
    cfg = Zero123Config(text_weight=0.5, text_prior=PriorConfig(model=tiny_prior, device="cpu"))
    rule = Zero123SDS(_load(tiny_zero123), cfg, generator=torch.Generator().manual_seed(1))
    rule.set_reference(_cubes(1)[0], 0.0, 0.0, 2.8)
    rgb, cams = _cubes()
    with_text = rule(rgb, cams, "a red cube", 0)
    text = with_text.extra["text"]
    rule2 = Zero123SDS(_load(tiny_zero123), cfg, generator=torch.Generator().manual_seed(1))
    rule2.set_reference(_cubes(1)[0], 0.0, 0.0, 2.8)
    with monkeypatch.context() as m:  # no prompt: Zero123 only, and the text prior is never loaded
        m.setattr(DiffusionPrior, "load", lambda *a, **k: pytest.fail("the text prior loaded without a prompt"))
        alone = rule2(rgb, cams, "", 0)
        assert "text" not in alone.extra and "text" not in rule2.state_dict()
    assert torch.allclose(with_text.loss, alone.loss + 0.5 * text.loss)
    # a checkpoint of a run with a prompt carries the text half's stream, and a resumed rule continues it
    state = rule.state_dict()
    resumed = Zero123SDS(_load(tiny_zero123), cfg, generator=torch.Generator().manual_seed(99))
    resumed.set_reference(_cubes(1)[0], 0.0, 0.0, 2.8)
    resumed.load_state_dict(state)
    a, b = rule(rgb, cams, "a red cube", 1), resumed(rgb, cams, "a red cube", 1)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.extra["text"].t, b.extra["text"].t)


def test_magic123_encodes_once_for_both_priors_when_they_share_the_vae(tiny_zero123, tiny_prior, monkeypatch):
    from dream3d.guidance.prior import LatentBackbone

    encodes = []
    real_encode = LatentBackbone.encode
    monkeypatch.setattr(LatentBackbone, "encode", lambda self, *a, **k: encodes.append(1) or real_encode(self, *a, **k))
    cfg = Zero123Config(text_weight=0.5, text_prior=PriorConfig(model=tiny_prior, device="cpu"))
    rgb0, cams = _cubes()
    results = {}
    for shared in (True, False):
        rule = Zero123SDS(_load(tiny_zero123), cfg, generator=torch.Generator().manual_seed(1))
        rule.set_reference(_cubes(1)[0], 0.0, 0.0, 2.8)
        assert rule.text.prior.encodes_like(rule.prior) and rule._shared_latents  # the tiny Zero123 took its VAE
        rule._shared_latents = shared
        rgb = rgb0.clone().requires_grad_(True)
        encodes.clear()
        out = rule(rgb, cams, "a red cube", 0)
        out.loss.backward()
        results[shared] = (out.loss.detach(), rgb.grad, len(encodes))
    (loss_a, grad_a, enc_a), (loss_b, grad_b, enc_b) = results[True], results[False]
    assert (enc_a, enc_b) == (1, 2)  # one VAE pass instead of two
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-5 * float(grad_b.abs().max()))  # sums reordered
    # a VAE that differs in one weight does not encode alike
    other = DiffusionPrior.load(PriorConfig(model=tiny_prior, device="cpu"))
    with torch.no_grad():
        next(other.vae.encoder.parameters()).view(-1)[0] += 1e-3
    assert not other.encodes_like(rule.prior) and rule.text.prior.encodes_like(rule.prior)


def test_the_trainer_compiles_both_priors_of_magic123(tiny_zero123, tiny_prior, tmp_path):
    import imageio.v3 as iio

    from dream3d.config import load_run_config
    from dream3d.pipeline import build_guidance_and_reference
    from dream3d.train import Trainer

    rgb, _ = _cubes(1, 64)
    iio.imwrite(tmp_path / "cube.png", (rgb[0].numpy() * 255).astype(np.uint8))
    overrides = TINY_RUN + [
        f"guidance.prior.model={tiny_zero123}",
        f"guidance.text_prior.model={tiny_prior}",
        "guidance.prior.device=cpu",
        "guidance.text_prior.device=cpu",
        "train.device=cpu",
        "train.compile=eager",  # dynamo's tracing-only backend: nothing compiles until a call
    ]
    cfg = load_run_config("zero123", overrides, {"image": str(tmp_path / "cube.png"), "prompt": "a red cube"})
    guidance, reference = build_guidance_and_reference(cfg, log=lambda m: None)
    guidance.prompt_readers()  # the pipeline asks which priors read the prompt: the text half loads
    Trainer(cfg, cfg.prompt, str(tmp_path / "run"), guidance=guidance, reference=reference, log=lambda m: None)
    unets = [p.unet for p in guidance.priors()]
    assert len(unets) == 2 and unets[0] is not unets[1]
    assert all(u._compiled_call_impl is not None for u in unets)


def test_generate_with_an_image_and_a_tiny_zero123_runs_end_to_end(tiny_zero123, tmp_path):
    import imageio.v3 as iio

    from dream3d.config import image_preset, load_run_config
    from dream3d.pipeline import RunError, generate

    rgb, _ = _cubes(1, 64)
    img = np.concatenate([rgb[0].numpy(), (rgb[0].min(-1, keepdim=True).values < 0.99).numpy()], -1)
    iio.imwrite(tmp_path / "cube.png", (img * 255).astype(np.uint8))
    overrides = TINY_RUN + [f"guidance.prior.model={tiny_zero123}", "guidance.prior.device=cpu", "train.device=cpu"]
    cfg = load_run_config("zero123", overrides, {"image": str(tmp_path / "cube.png")})
    metrics = generate(cfg, str(tmp_path / "run"), log=lambda m: None)
    assert metrics["guidance"] == "zero123" and metrics["prior"]["model"] == tiny_zero123
    assert metrics["train"]["steps"] == 4 and np.isfinite(metrics["train"]["final_loss"])
    assert set(metrics["reference_view"]) == {"silhouette_iou", "psnr_db"}
    assert (tmp_path / "run/mesh.glb").is_file()
    # the preset's text half (the embedded text prior) reads the prompt: one it does not know is named
    logs: list[str] = []
    corgi = load_run_config(
        "zero123",
        overrides + ["train.steps=1", "output.mesh=false"],
        {"image": str(tmp_path / "cube.png"), "prompt": "a photo of a corgi"},
    )
    generate(corgi, str(tmp_path / "corgi"), log=logs.append)
    assert any("outside the prompts" in m and "guidance.text_prior.model" in m for m in logs), logs
    with pytest.raises(RunError, match="give --image"):
        generate(load_run_config("zero123", overrides, {"prompt": "a red cube"}), str(tmp_path / "no_image"))
    assert not (tmp_path / "no_image").exists()
    assert image_preset() == "zero123"  # the embedded Zero123 is shipped in assets/zero123
    assert RULES["zero123"] is Zero123SDS


def test_an_image_run_keeps_the_input_it_read_and_resumes_exactly_from_it(tiny_zero123, tmp_path):
    """A fresh image run saves the input as it read it (RUN/reference.png); a resume trains on that file, so an
    input image replaced in between changes nothing: the resumed run ends bit for bit as one run straight through.
    The input is larger than the 512 px kept, with soft edges, so the first sitting must train on the
    resized, 8-bit square that the file holds. A spoiled file stops the resume and names itself."""
    import imageio.v3 as iio

    from dream3d.config import load_run_config
    from dream3d.pipeline import REFERENCE_FILE, RunError, generate, read_reference, run_reference

    rgb, _ = _cubes(1, 200)
    alpha = torch.nn.functional.avg_pool2d((rgb[0].min(-1).values < 0.99).float()[None], 5, 1, 2)[0, ..., None]
    img = torch.nn.functional.interpolate(
        torch.cat([rgb[0], alpha], -1).permute(2, 0, 1)[None], size=(700, 700), mode="bilinear"
    )[0].permute(1, 2, 0)
    img = img.clamp(0, 1).numpy()
    image = tmp_path / "cube.png"
    iio.imwrite(image, (img * 255).round().astype(np.uint8))
    overrides = TINY_RUN + [
        f"guidance.prior.model={tiny_zero123}",
        "guidance.prior.device=cpu",
        "train.device=cpu",
        "output.mesh=false",
    ]
    cfg = lambda: load_run_config("zero123", overrides, {"image": str(image)})  # noqa: E731
    quiet = dict(log=lambda m: None)
    generate(cfg(), str(tmp_path / "whole"), **quiet)
    generate(cfg(), str(tmp_path / "parts"), stop_after=2, **quiet)
    saved = tmp_path / "parts" / REFERENCE_FILE
    kept = run_reference(cfg(), str(tmp_path / "parts"), resume=True)
    torch.testing.assert_close(kept, run_reference(cfg()), rtol=0, atol=0)
    assert kept.shape[-1] == 512 and iio.imread(saved).shape == (512, 512, 4)  # the mask as alpha
    raw = read_reference(str(image), 512, object_fraction=cfg().reference.object_fraction)
    resized = torch.nn.functional.interpolate(raw, size=(512, 512), mode="bilinear", antialias=True)
    assert raw.shape[-1] > 512 and 0 < float((kept - resized).abs().amax()) <= 1 / 255 + 1e-6  # rounded to 8 bits
    # the file is RGBA as PNGs mean it (colour not blended with white): given as --image, it reads as the run read it
    assert torch.equal(read_reference(str(saved), 512), kept)

    iio.imwrite(image, (img[:, ::-1] * 255).astype(np.uint8))  # replaced between the sittings
    generate(cfg(), str(tmp_path / "parts"), resume=True, **quiet)
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["model"] for r in ("whole", "parts"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (tmp_path / "whole" / REFERENCE_FILE).read_bytes() == saved.read_bytes()

    # the image moved since the run started: resumed with its new path; another image under a new path is refused
    first = tmp_path / "first.png"
    iio.imwrite(first, (img * 255).round().astype(np.uint8))
    moving = lambda path: load_run_config("zero123", overrides, {"image": str(path)})  # noqa: E731
    generate(moving(first), str(tmp_path / "moved"), stop_after=2, **quiet)
    (tmp_path / "elsewhere").mkdir()
    first.rename(tmp_path / "elsewhere" / "first.png")
    with pytest.raises(RunError, match=r"image: .*first\.png.* -> .*cube\.png"):  # cube.png is the flipped one
        generate(moving(image), str(tmp_path / "moved"), resume=True, **quiet)
    generate(moving(tmp_path / "elsewhere" / "first.png"), str(tmp_path / "moved"), resume=True, **quiet)
    assert load_run_config(str(tmp_path / "moved" / "config.yaml")).image == str(tmp_path / "elsewhere" / "first.png")
    a = torch.load(tmp_path / "moved" / "checkpoint.pt", weights_only=True)["model"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    # killed just after saving the file (config.yaml is written first, so the folder is still known as a run's)
    import dream3d.pipeline as pipeline

    def save_then_die(*a, save=pipeline.save_reference):
        save(*a)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "save_reference", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            generate(cfg(), str(tmp_path / "spoiled"), **quiet)
    generate(cfg(), str(tmp_path / "spoiled"), overwrite=True, stop_after=2, **quiet)
    (tmp_path / "spoiled" / REFERENCE_FILE).write_bytes(b"spoiled")
    with pytest.raises(RunError, match=r"cannot read .*spoiled/reference\.png.*delete it"):
        generate(cfg(), str(tmp_path / "spoiled"), resume=True, **quiet)


def test_image_preset_is_zero123_once_the_embedded_one_is_shipped(tiny_zero123, monkeypatch):
    import dream3d.config as config

    monkeypatch.setattr(config, "EMBEDDED_ZERO123", tiny_zero123)
    assert config.image_preset() == "zero123"
    monkeypatch.setattr(config, "EMBEDDED_ZERO123", tiny_zero123 + "-absent")
    assert config.image_preset() == "dreamgaussian"
