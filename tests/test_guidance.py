"""dream3d.guidance: the prior wrapper and the distillation rules, on tiny random-weight SD-format models
built from configs and saved as a diffusers folder (no downloads, no assets).

References are computed independently: the U-Net, text encoder and tokenizer are called directly here,
with the formulas written out, and compared with what the rules' losses send back through autograd.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dream3d.guidance import (
    CSD,
    ISM,
    SDS,
    VSD,
    WEIGHTINGS,
    CSDConfig,
    DiffusionPrior,
    ISMConfig,
    PerpNegConfig,
    PriorConfig,
    PriorNotFoundError,
    SDSConfig,
    TimestepConfig,
    ViewPromptConfig,
    VSDConfig,
    perpendicular,
    perpneg_combine,
    sample_timesteps,
    scheduled,
    view_prompts,
)
from dream3d.random_models import SD15_FULL, SD15_SMALL, make_sd_folder
from renderers.cameras import orbit_cameras

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- tiny SD-format models


TINY = dict(
    # the embedded prior's shape: 64x64 images, 4x16x16 latents
    unet=dict(
        sample_size=16,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    vae=dict(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.5,
    ),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
    max_length=32,  # character tokens: "a red cube, overhead view" is 23 with BOS and EOS
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_sd_folder(tmp_path_factory.mktemp("tiny_sd"), **TINY)


@pytest.fixture
def prior(tiny_dir) -> DiffusionPrior:
    return DiffusionPrior.load(PriorConfig(model=str(tiny_dir), device="cpu"))


# ----------------------------------------------------------------------------- independent references


def ref_embed(prior: DiffusionPrior, prompts: list[str]) -> torch.Tensor:
    ids = prior.tokenizer(
        prompts, padding="max_length", max_length=TINY["max_length"], truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return prior.text_encoder(ids).last_hidden_state.float()


def ref_eps(prior: DiffusionPrior, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return prior.unet(x, t, encoder_hidden_states=emb).sample.float()


def assert_close_scaled(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5):
    """|a - b| <= tol * max|b| everywhere: the U-Net's float results differ slightly between batch sizes
    (batched CFG here vs separate calls in the references), so compare at the scale of the whole tensor."""
    err = float((a - b).abs().max())
    assert err <= tol * float(b.abs().max()) + 1e-7, f"max |a - b| = {err:.3g} vs max |b| = {float(b.abs().max()):.3g}"


def abar(prior, t):
    return prior.alphas_cumprod[t].view(-1, 1, 1, 1)


def latents_and_grad(rule, latents, views, prompt, step, noise, t):
    lat = latents.detach().clone().requires_grad_(True)
    out = rule.latent_loss(lat, views, prompt, step, noise=noise, t=t)
    out.loss.backward()
    return lat.grad, out


def frozen_state(prior) -> dict[str, torch.Tensor]:
    """Every backbone tensor except LoRA adapter weights, under its pre-adapter name."""
    sd = {}
    for name, m in (("vae", prior.vae), ("unet", prior.unet), ("text", prior.text_encoder)):
        for k, v in m.state_dict().items():
            if "lora_" not in k:  # peft moves a wrapped layer's weight to "<layer>.base_layer.weight"
                sd[f"{name}.{k.replace('.base_layer', '')}"] = v.detach().clone()
    return sd


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"frozen weight {k} changed"


# ----------------------------------------------------------------------------- schedules


def test_scheduled_scalars():
    assert scheduled(3, 100) == 3.0
    v = [100, 0.98, 0.5, 300]
    assert scheduled(v, 0) == 0.98 and scheduled(v, 100) == 0.98
    assert scheduled(v, 200) == pytest.approx(0.74)
    assert scheduled(v, 300) == 0.5 and scheduled(v, 10_000) == 0.5
    with pytest.raises(ValueError, match="start_step"):
        scheduled([1, 2, 3], 0)
    with pytest.raises(ValueError, match="before start_step"):
        scheduled([300, 1.0, 0.0, 100], 0)


@pytest.mark.parametrize("kind", ["linear", "sqrt", "dreamtime"])
def test_deterministic_schedules_are_monotone_and_in_range(kind):
    cfg = TimestepConfig(schedule=kind, t_min=0.02, t_max=0.98, total_steps=500)
    ts = torch.stack([sample_timesteps(cfg, s, 3, 1000) for s in range(0, 601)])  # runs past total_steps too
    assert (ts == ts[:, :1]).all(), "a deterministic schedule gives the batch one t"
    t = ts[:, 0]
    assert int(t[0]) == 980 and int(t[-1]) == 20
    assert (t[1:] <= t[:-1]).all(), "t must not increase"
    assert t.min() >= 20 and t.max() <= 980
    if kind == "sqrt":  # falls fastest early
        lin = torch.stack(
            [sample_timesteps(TimestepConfig(schedule="linear", total_steps=500), s, 1, 1000) for s in range(0, 501)]
        )[:, 0]
        assert (t[1:500] <= lin[1:500]).all() and (t[1:500] < lin[1:500]).any()
    if kind == "dreamtime":  # lingers where its prior weight is flat: [500, 800]
        mid = ((t[:500] >= 500) & (t[:500] <= 800)).float().mean()
        assert mid > 0.5, f"DreamTime spent only {mid:.2f} of the run in [500, 800]"


def test_random_schedules_range_and_determinism():
    cfg = TimestepConfig(schedule="random", t_min=0.2, t_max=0.6)
    a = sample_timesteps(cfg, 0, 4000, 1000, torch.Generator().manual_seed(1))
    b = sample_timesteps(cfg, 0, 4000, 1000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.min() == 200 and a.max() == 600  # both ends reachable, nothing outside
    dec = TimestepConfig(schedule="random_decreasing", t_min=0.02, t_max=0.98, total_steps=100)
    g = torch.Generator().manual_seed(0)
    prev_max = 10_000
    for step in (0, 25, 50, 75, 100):
        t = sample_timesteps(dec, step, 2000, 1000, g)
        upper = round(980 - 960 * step / 100)
        assert t.min() >= 20 and t.max() <= upper
        assert t.max() <= prev_max
        prev_max = int(t.max())
    # a scheduled t_max (ProlificDreamer's two stages) is honoured by "random"
    two = TimestepConfig(schedule="random", t_max=[500, 0.98, 0.5, 501])
    assert sample_timesteps(two, 1000, 2000, 1000, g).max() <= 500
    assert sample_timesteps(two, 0, 2000, 1000, g).max() > 900
    with pytest.raises(ValueError, match="unknown timestep schedule"):
        TimestepConfig(schedule="cosine")


# ----------------------------------------------------------------------------- prompts and loading


def test_view_prompts_suffixes_and_thresholds():
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0, 10.0])
    az = torch.tensor([0.0, 90.0, 180.0, -170.0, 0.0, -40.0])
    assert view_prompts("a red cube", el, az) == [
        "a red cube, front view",
        "a red cube, side view",
        "a red cube, back view",
        "a red cube, back view",
        "a red cube, overhead view",
        "a red cube, front view",
    ]
    narrow = ViewPromptConfig(front_deg=30.0, back_deg=20.0, overhead_deg=80.0)
    assert view_prompts("x", [70.0, 0.0, 0.0], [-40.0, -40.0, 150.0], narrow) == [
        "x, side view",
        "x, side view",
        "x, side view",
    ]
    assert view_prompts("x", [0.0], [0.0], ViewPromptConfig(enabled=False)) == ["x"]


def test_missing_model_errors_name_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(PriorNotFoundError, match="no_such_model") as e:
        DiffusionPrior.load(PriorConfig(model=str(missing)))
    assert "allow_download" in str(e.value) and "diffusers" in str(e.value)
    half = tmp_path / "half"
    (half / "unet").mkdir(parents=True)
    (half / "unet" / "config.json").write_text("{}")
    with pytest.raises(PriorNotFoundError, match="missing vae/config.json"):
        DiffusionPrior.load(PriorConfig(model=str(half)))
    with pytest.raises(PriorNotFoundError, match="dream3d-tests/no-such-model.*allow_download"):
        DiffusionPrior.load(PriorConfig(model="dream3d-tests/no-such-model"))


def test_prior_loads_frozen_and_encodes(prior, tiny_dir):
    assert (prior.image_size, prior.latent_size, prior.latent_channels) == (64, 16, 4)
    assert prior.device.type == "cpu" and prior.dtype == torch.float32
    for m in (prior.vae, prior.unet, prior.text_encoder):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    rgb = torch.rand(2, 48, 40, 3)  # any size: resized to the native 64x64
    z = prior.encode(rgb)
    assert z.shape == (2, 4, 16, 16) and z.dtype == torch.float32
    x = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = prior.vae.encode(x * 2 - 1).latent_dist.mean * 0.5
    torch.testing.assert_close(z, ref)
    assert prior.decode(z).shape == (2, 64, 64, 3)
    e = prior.text_embeddings(["a red cube", "a red cube, side view", "a red cube"])
    torch.testing.assert_close(e, ref_embed(prior, ["a red cube", "a red cube, side view", "a red cube"]))
    assert len(prior._text_cache) == 2  # each distinct prompt encoded once


# ----------------------------------------------------------------------------- SDS


def _inputs(prior, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(B, 64, 64, 3, generator=g)
    latents = prior.encode(rgb).detach()
    noise = torch.randn(latents.shape, generator=g)
    return rgb, latents, noise


def test_sds_gradient_is_weighted_cfg_residual(prior):
    _, latents, noise = _inputs(prior)
    t = torch.tensor([150, 700])
    views = (torch.tensor([0.0, 10.0]), torch.tensor([0.0, 100.0]))
    cfg = SDSConfig(guidance_scale=7.5, negative_prompt="blurry")
    g, out = latents_and_grad(SDS(prior, cfg), latents, views, "a red cube", 0, noise, t)
    a = abar(prior, t)
    x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    cond = ref_embed(prior, ["a red cube, front view", "a red cube, side view"])
    uncond = ref_embed(prior, ["blurry", "blurry"])
    e_c, e_u = ref_eps(prior, x_t, t, cond), ref_eps(prior, x_t, t, uncond)
    grad = (1 - a) * (e_u + 7.5 * (e_c - e_u) - noise)
    assert_close_scaled(g, grad / 2)  # d loss / d latents = grad / B
    assert_close_scaled(out.extra["grad"], grad)
    torch.testing.assert_close(g, out.extra["grad"] / 2, rtol=0, atol=1e-6)  # the loss trick itself is exact
    assert torch.equal(out.t, t)
    torch.testing.assert_close(out.grad_norm, grad.flatten(1).norm(dim=1).mean())
    # the negative prompt is really the unconditional branch: "" gives another gradient
    g_plain, _ = latents_and_grad(SDS(prior, SDSConfig(guidance_scale=7.5)), latents, views, "a red cube", 0, noise, t)
    e_empty = ref_eps(prior, x_t, t, ref_embed(prior, ["", ""]))
    assert_close_scaled(g_plain, (1 - a) * (e_empty + 7.5 * (e_c - e_empty) - noise) / 2)
    assert not torch.allclose(g_plain, g)


def test_sds_weightings(prior):
    _, latents, noise = _inputs(prior)
    t = torch.tensor([100, 900])
    a = abar(prior, t)
    base, _ = latents_and_grad(SDS(prior, SDSConfig(weighting="uniform")), latents, None, "a red cube", 0, noise, t)
    expected = {
        "sds": 1 - a,
        "fantasia3d": a.sqrt() * (1 - a),
        "lucid": ((1 - a) / a).sqrt(),
        "uniform": torch.ones_like(a),
    }
    assert set(expected) == set(WEIGHTINGS)
    for w in WEIGHTINGS:
        g, _ = latents_and_grad(SDS(prior, SDSConfig(weighting=w)), latents, None, "a red cube", 0, noise, t)
        assert_close_scaled(g, expected[w] * base)


def test_sds_reaches_rgb_and_leaves_the_prior_alone(prior):
    rgb, _, _ = _inputs(prior)
    before = frozen_state(prior)
    rgb = rgb.clone().requires_grad_(True)
    cams = orbit_cameras([0.0, 30.0], [0.0, 180.0], 3.0, 45.0, 64, 64)
    out = SDS(prior)(rgb, cams, "a red cube", step=5)
    out.loss.backward()
    assert rgb.grad is not None and rgb.grad.shape == rgb.shape
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    for m in (prior.vae, prior.unet, prior.text_encoder):
        assert all(p.grad is None for p in m.parameters())
    assert_same_state(before, frozen_state(prior))


def test_sds_clipping_and_nonfinite_guard(prior):
    _, latents, noise = _inputs(prior)
    t = torch.tensor([500, 500])
    _, free = latents_and_grad(SDS(prior), latents, None, "a red cube", 0, noise, t)
    v = 0.25 * float(free.extra["grad"].abs().max())
    _, clipped = latents_and_grad(SDS(prior, SDSConfig(grad_clip_value=v)), latents, None, "a red cube", 0, noise, t)
    torch.testing.assert_close(clipped.extra["grad"], free.extra["grad"].clamp(-v, v))
    m = 0.5 * float(free.extra["grad"].flatten(1).norm(dim=1).min())
    _, normed = latents_and_grad(SDS(prior, SDSConfig(grad_clip_norm=m)), latents, None, "a red cube", 0, noise, t)
    torch.testing.assert_close(normed.extra["grad"].flatten(1).norm(dim=1), torch.full((2,), m))
    bad = noise.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        SDS(prior).latent_loss(latents.clone().requires_grad_(True), None, "a red cube", 0, noise=bad, t=t)
    g, out = latents_and_grad(SDS(prior, SDSConfig(nonfinite="zero")), latents, None, "a red cube", 0, bad, t)
    assert bool(out.extra["nonfinite"]) and torch.isfinite(g).all() and torch.isfinite(out.loss)
    torch.testing.assert_close(g[0], free.extra["grad"][0] / 2)  # the clean view is untouched
    assert not bool(
        SDS(prior, SDSConfig(nonfinite="zero")).latent_loss(latents, None, "x", 0, noise=noise, t=t).extra["nonfinite"]
    )


def test_cameras_and_angles_give_the_same_prompts(prior):
    cams = orbit_cameras([0.0, 70.0, 5.0], [0.0, 20.0, 180.0], 3.0, 45.0, 64, 64)
    rule = SDS(prior)
    el, az, _ = cams.spherical()
    a = rule.conditioning("a red cube", el, az, 3).cond
    torch.testing.assert_close(
        a, ref_embed(prior, ["a red cube, front view", "a red cube, overhead view", "a red cube, back view"])
    )


def test_csd_is_the_classifier_part(prior):
    _, latents, noise = _inputs(prior)
    t = torch.tensor([300, 600])
    g, _ = latents_and_grad(CSD(prior, CSDConfig(guidance_scale=10.0)), latents, None, "a red cube", 0, noise, t)
    a = abar(prior, t)
    x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    e_c, e_u = (
        ref_eps(prior, x_t, t, ref_embed(prior, ["a red cube"] * 2)),
        ref_eps(prior, x_t, t, ref_embed(prior, ["", ""])),
    )
    assert_close_scaled(g, (1 - a) * 10.0 * (e_c - e_u) / 2)


# ----------------------------------------------------------------------------- ISM


def test_ism_gradient_matches_interval_formula(prior):
    _, latents, noise = _inputs(prior)
    t = torch.tensor([700, 130])
    cfg = ISMConfig(guidance_scale=5.0, delta_t=100, inversion_stride=200, max_inversion_steps=5)
    g, out = latents_and_grad(ISM(prior, cfg), latents, None, "a red cube", 0, noise, t)
    ac = prior.alphas_cumprod
    empty = ref_embed(prior, ["", ""])
    s = t - 100  # [600, 30]
    n = 3  # ceil(600 / 200)
    assert out.extra["inversion_steps"] == n
    x, a_prev, cur = latents.clone(), torch.ones(2), torch.zeros(2, dtype=torch.long)
    for i in range(1, n + 1):
        nxt = torch.tensor([round(int(sb) * i / n) for sb in s])
        eps = ref_eps(prior, x, cur, empty)
        x0 = (x - (1 - a_prev).sqrt().view(-1, 1, 1, 1) * eps) / a_prev.sqrt().view(-1, 1, 1, 1)
        x = ac[nxt].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ac[nxt]).sqrt().view(-1, 1, 1, 1) * eps
        a_prev, cur = ac[nxt], nxt
    eps_s = ref_eps(prior, x, s, empty)
    x0 = (x - (1 - abar(prior, s)).sqrt() * eps_s) / abar(prior, s).sqrt()
    x_t = abar(prior, t).sqrt() * x0 + (1 - abar(prior, t)).sqrt() * eps_s
    e_c, e_u = ref_eps(prior, x_t, t, ref_embed(prior, ["a red cube"] * 2)), ref_eps(prior, x_t, t, empty)
    a = abar(prior, t)
    grad = ((1 - a) / a).sqrt() * (e_u + 5.0 * (e_c - e_u) - eps_s)
    assert_close_scaled(g, grad / 2)
    # ISM is deterministic given t: the noise argument plays no part
    g2, _ = latents_and_grad(ISM(prior, cfg), latents, None, "a red cube", 0, torch.randn_like(noise), t)
    torch.testing.assert_close(g2, g)


# ----------------------------------------------------------------------------- Perp-Neg


def test_perpneg_combine_formula_and_orthogonality():
    g = torch.Generator().manual_seed(0)
    eu, ep = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    en = torch.randn(3, 2, 4, 8, 8, generator=g)
    w = torch.tensor([[0.5, 1.0], [0.0, 2.0], [1.0, 0.0]])
    out = perpneg_combine(eu, ep, en, w, 7.5)
    dp = (ep - eu).flatten(1)
    ref = []
    for b in range(3):
        corr = torch.zeros_like(dp[b])
        for k in range(2):
            dn = (en[b, k] - eu[b]).flatten()
            corr += w[b, k] * (dn - (dn @ dp[b]) / (dp[b] @ dp[b]) * dp[b])
        ref.append(eu[b].flatten() + 7.5 * (dp[b] - corr))
    torch.testing.assert_close(out.flatten(1), torch.stack(ref), rtol=1e-5, atol=1e-5)
    cfg_only = eu + 7.5 * (ep - eu)
    assert ((out - cfg_only).flatten(1) * dp).sum(1).abs().max() < 1e-3  # the correction is perpendicular
    assert perpendicular(dp, dp).abs().max() < 1e-5
    torch.testing.assert_close(perpneg_combine(eu, ep, en, torch.zeros(3, 2), 7.5), cfg_only)


def test_perpneg_with_zero_weights_is_plain_cfg(prior):
    _, latents, noise = _inputs(prior)
    t = torch.tensor([400, 800])
    views = (torch.tensor([0.0, 20.0]), torch.tensor([0.0, 180.0]))  # pure front and pure back
    zero = SDSConfig(guidance_scale=7.5, perpneg=PerpNegConfig(enabled=True, side_weight=0.0, opposite_weight=0.0))
    g_pn, _ = latents_and_grad(SDS(prior, zero), latents, views, "a red cube", 0, noise, t)
    g_cfg, _ = latents_and_grad(SDS(prior, SDSConfig(guidance_scale=7.5)), latents, views, "a red cube", 0, noise, t)
    assert_close_scaled(g_pn, g_cfg)
    on = SDSConfig(guidance_scale=7.5, perpneg=PerpNegConfig(enabled=True))
    g_on, _ = latents_and_grad(SDS(prior, on), latents, views, "a red cube", 0, noise, t)
    assert not torch.allclose(g_on, g_cfg)
    # interpolation: a 45-degree view's positive lies halfway between the front and side prompts
    text = SDS(prior, on).conditioning("a red cube", torch.zeros(1), torch.tensor([45.0]), 1)
    fr, si, ba = ref_embed(prior, ["a red cube, front view", "a red cube, side view", "a red cube, back view"])
    torch.testing.assert_close(text.cond[0], 0.5 * fr + 0.5 * si)
    torch.testing.assert_close(text.neg[0, 1], ba)  # the opposite end is the back
    with pytest.raises(ValueError, match="Perp-Neg needs the cameras"):
        SDS(prior, on).latent_loss(latents, None, "a red cube", 0)


# ----------------------------------------------------------------------------- VSD


def test_vsd_trains_only_the_student(prior):
    _, latents, noise = _inputs(prior)
    before = frozen_state(prior)
    t = torch.tensor([300, 600])
    x_t = prior.add_noise(latents, noise, t)
    emb = ref_embed(prior, ["a red cube"] * 2)
    with torch.no_grad():
        eps_before = prior.predict_noise(x_t, t, emb)
    rule = VSD(prior, VSDConfig(lora_rank=4, lora_lr=1e-2))
    student = {id(p) for p in rule.trainable_parameters()}
    targets = [n for n, m in prior.unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
    assert len(targets) > 0 and len(rule.lora_parameters) == 2 * len(targets)  # one A and one B each
    student_before = {n: p.detach().clone() for n, p in prior.unet.named_parameters() if id(p) in student}
    mlp_before = [p.detach().clone() for p in rule.camera_mlp.parameters()]
    cams = orbit_cameras([0.0, 30.0], [0.0, 120.0], 3.0, 45.0, 64, 64)
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    for step in range(3):
        out = rule(rgb, cams, "a red cube", step)
        out.loss.backward()
        assert torch.isfinite(out.extra["lora_loss"])
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert_same_state(before, frozen_state(prior))  # frozen weights bit-identical
    for m in (prior.vae, prior.unet, prior.text_encoder):
        for n, p in m.named_parameters():
            assert id(p) in student or (p.grad is None and not p.requires_grad), n
    changed = [
        n for n, p in prior.unet.named_parameters() if id(p) in student and not torch.equal(p, student_before[n])
    ]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    assert any(not torch.equal(a, b) for a, b in zip(mlp_before, rule.camera_mlp.parameters()))
    # outside the student branch the shared U-Net is still exactly the pretrained model
    assert prior.unet.class_embedding is None
    with torch.no_grad():
        torch.testing.assert_close(prior.predict_noise(x_t, t, emb), eps_before, rtol=0, atol=0)


def test_vsd_gradient_matches_formula(prior):
    _, latents, noise = _inputs(prior)
    rule = VSD(prior, VSDConfig(guidance_scale=7.5, lora_lr=1e-2))
    cams = orbit_cameras([10.0, 10.0], [30.0, -150.0], 3.0, 45.0, 64, 64)
    for step in range(3):  # move the student away from the pretrained model first
        rule.latent_loss(latents.clone().requires_grad_(True), cams, "a red cube", step)
    t = torch.tensor([250, 750])
    rule.cfg.lora_steps_per_call = 0  # freeze the student for the comparison
    g, _ = latents_and_grad(rule, latents, cams, "a red cube", 3, noise, t)
    a = abar(prior, t)
    x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    cond = ref_embed(prior, ["a red cube, front view", "a red cube, back view"])
    e_c, e_u = ref_eps(prior, x_t, t, cond), ref_eps(prior, x_t, t, ref_embed(prior, ["", ""]))
    unet = prior.unet
    unet.set_adapter(rule.adapter_name)
    unet.enable_adapters()
    unet.class_embedding = rule.camera_mlp
    try:
        with torch.no_grad():
            e_lora = unet(x_t, t, encoder_hidden_states=cond, class_labels=cams.c2w.reshape(2, 16)).sample
            other_cam = unet(x_t, t, encoder_hidden_states=cond, class_labels=cams.c2w.flip(0).reshape(2, 16)).sample
    finally:
        unet.disable_adapters()
        unet.class_embedding = None
    grad = (1 - a) * (e_u + 7.5 * (e_c - e_u) - e_lora)
    assert_close_scaled(g, grad / 2)
    assert not torch.allclose(e_lora, e_c, atol=1e-6), "the student should have moved off the pretrained model"
    assert not torch.allclose(e_lora, other_cam, atol=1e-7), "the student should depend on the camera"


def test_vsd_resumes_exactly_from_its_state(tiny_dir):
    """A checkpointed VSD (student, optimizer, random stream) continues exactly like the original."""
    _, latents, _ = _inputs(DiffusionPrior.load(PriorConfig(model=str(tiny_dir), device="cpu")))
    a = VSD(DiffusionPrior.load(PriorConfig(model=str(tiny_dir), device="cpu")), VSDConfig(lora_lr=1e-2))
    for step in range(2):
        a.latent_loss(latents, (0.0, 30.0), "a red cube", step)
    b = VSD(DiffusionPrior.load(PriorConfig(model=str(tiny_dir), device="cpu")), VSDConfig(lora_lr=1e-2))
    b.load_state_dict(a.state_dict())
    for step in range(2, 4):
        ga, oa = latents_and_grad(a, latents, (0.0, 30.0), "a red cube", step, None, None)
        gb, ob = latents_and_grad(b, latents, (0.0, 30.0), "a red cube", step, None, None)
        assert torch.equal(oa.t, ob.t)
        torch.testing.assert_close(gb, ga, rtol=0, atol=0)
        torch.testing.assert_close(ob.extra["lora_loss"], oa.extra["lora_loss"], rtol=0, atol=0)


def test_two_vsd_rules_share_one_prior(prior):
    a, b = VSD(prior), VSD(prior, VSDConfig(camera_condition=False))
    assert a.adapter_name != b.adapter_name
    _, latents, _ = _inputs(prior)
    a.latent_loss(latents, (0.0, 0.0), "a red cube", 0)
    b.latent_loss(latents, None, "a red cube", 0)
    assert {id(p) for p in a.trainable_parameters()}.isdisjoint({id(p) for p in b.trainable_parameters()})


# ----------------------------------------------------------------------------- other architectures


def test_rules_run_on_the_embedded_prior_architecture(tiny_prior):
    """The project's own prior layout (tests/conftest.py's tiny_prior: trained BPE tokenizer, default VAE
    scaling factor, 32x32 images) through every rule."""
    prior = DiffusionPrior.load(PriorConfig(model=tiny_prior, device="cpu"))
    assert prior.scaling_factor == prior.vae.config.scaling_factor and prior.image_size == 32
    cams = orbit_cameras([0.0, 20.0], [0.0, 135.0], 3.0, 45.0, 48, 48)
    for rule in (
        SDS(prior),
        CSD(prior),
        ISM(prior),
        VSD(prior),
        SDS(prior, SDSConfig(perpneg=PerpNegConfig(enabled=True))),
    ):
        rgb = torch.rand(2, 48, 48, 3, requires_grad=True)
        out = rule(rgb, cams, "a red cube", 0)
        out.loss.backward()
        assert out.extra["latents"].shape == (2, 4, 8, 8)
        assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0, type(rule).__name__


# ----------------------------------------------------------------------------- real-size architectures


def _real_size_check(folder: Path, dtype: str):
    prior = DiffusionPrior.load(PriorConfig(model=str(folder), device="cpu", dtype=dtype))
    want = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    assert prior.dtype == want and prior.image_size == 512 and prior.latent_size == 64
    for m in (prior.vae, prior.unet, prior.text_encoder):
        assert {p.dtype for p in m.parameters()} == {want}
    rgb = torch.rand(1, 512, 512, 3, requires_grad=True)
    out = SDS(prior)(rgb, (torch.tensor([15.0]), torch.tensor([30.0])), "a red cube", 0)
    assert out.extra["latents"].shape == (1, 4, 64, 64) and out.extra["latents"].dtype == torch.float32
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert rgb.grad.shape == (1, 512, 512, 3) and rgb.grad.dtype == torch.float32 and torch.isfinite(rgb.grad).all()
    small = torch.rand(1, 128, 128, 3, requires_grad=True)  # a cheaper render is upsampled to 512
    SDS(prior)(small, None, "a red cube", 0).loss.backward()
    assert small.grad.shape == small.shape and small.grad.abs().sum() > 0
    return prior


def test_sd15_architecture_scaled_down(tmp_path):
    folder = make_sd_folder(tmp_path / "sd15_small", **SD15_SMALL)
    _real_size_check(folder, "bf16")


@pytest.mark.slow  # opt-in with DREAM3D_SLOW=1 (tests/conftest.py): ~1.1 B random parameters, ~4 GB on disk
def test_sd15_full_size_random_weights(tmp_path):
    folder = make_sd_folder(tmp_path / "sd15_full", **SD15_FULL)
    prior = _real_size_check(folder, "bf16")
    assert sum(p.numel() for p in prior.unet.parameters()) > 800e6  # really SD 1.5's U-Net size


# ----------------------------------------------------------------------------- the 2D sanity benchmark runs


def test_sds_2d_benchmark_runs(tiny_dir, tmp_path):
    """benchmarks/sds_2d.py end to end (in-process: a subprocess would pay the diffusers import again)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("sds_2d", REPO / "benchmarks" / "sds_2d.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for method, param in (("vsd", "latent"), ("sds", "rgb")):
        out = tmp_path / f"{method}.png"
        summary = bench.main(
            [
                "--model",
                str(tiny_dir),
                "--prompt",
                "a red cube",
                "--method",
                method,
                "--param",
                param,
                "--steps",
                "2",
                "--batch",
                "2",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        assert summary["steps"] == 2 and Image.open(out).size == (128, 64)  # two 64x64 images side by side
