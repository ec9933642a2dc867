"""DreamFusion's classic 2D check on the embedded prior: optimize latents from noise with SDS or VSD for a
prompt; the world classifier (trained only on renders) must name the prompt's colour and shape."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sds_2d import optimize_2d  # noqa: E402

from dream3d.guidance import RULES  # noqa: E402
from dream3d.guidance.prior import DiffusionPrior, PriorConfig  # noqa: E402
from dream3d.guidance.schedules import TimestepConfig  # noqa: E402
from dream3d.world.classifier import load_classifier, predict  # noqa: E402


@pytest.mark.parametrize("method, scale, steps", [("sds", 20.0, 250), ("vsd", 7.5, 250)])
def test_2d_distillation_draws_the_prompt(method, scale, steps):
    prior = DiffusionPrior.load(PriorConfig())
    rule_cls = RULES[method]
    cfg = rule_cls.config_class(
        guidance_scale=scale,
        seed=0,
        timesteps=TimestepConfig(schedule="random", t_min=0.02, t_max=0.98, total_steps=steps),
    )
    images = optimize_2d(
        prior, rule_cls(prior, cfg), "a red cube, front view", steps, lr=0.03, param="latent", batch=2, seed=0
    )
    pred = predict(load_classifier(), images.cpu())
    assert pred.color == ["red", "red"] and pred.shape == ["cube", "cube"], (pred.color, pred.shape)
