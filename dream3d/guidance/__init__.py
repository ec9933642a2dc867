"""Score distillation on any Stable-Diffusion-format diffusers model.

The backbone (:class:`DiffusionPrior`) is kept apart from the rules (:class:`SDS`, :class:`VSD`,
:class:`ISM`, :class:`CSD`), which share one interface (:class:`Guidance`)::

    prior = DiffusionPrior.load(PriorConfig())            # the embedded prior, or PriorConfig(model=...)
    sds = SDS(prior, SDSConfig(guidance_scale=50))
    out = sds(rgb, cameras, "a red cube", step)            # rgb (B,H,W,3) in [0,1]
    out.loss.backward()                                    # d loss/d latents = w(t)(...) / B

VSD trains its LoRA student inside each call (``lora_steps_per_call``) or via ``VSD.lora_step``. Every rule
has ``state_dict``/``load_state_dict`` (random stream; VSD adds the student and its optimizer) for resume.
Heavy libraries (diffusers, transformers, peft) are imported only when a model is loaded.

``zero123`` (:class:`Zero123SDS`) is image-to-3D's rule: it scores renders with a view-conditioned Zero-1-to-3
(:class:`Zero123Prior`, loaded by the rule's ``load_prior``) given the input image (``set_reference``).

``RULES`` maps each ``guidance.method`` name to its rule; the run config, the pipeline and the benchmarks read
it. A new rule is one file (a :class:`Guidance` subclass and its config, a :class:`GuidanceConfig` subclass
that sets its defaults and adds its own settings) plus one line in ``RULES``.
"""

from .base import (
    WEIGHTINGS,
    Guidance,
    GuidanceConfig,
    GuidanceOutput,
    distillation_loss,
    guided_eps,
    timestep_weight,
    view_angles,
)
from .csd import CSD, CSDConfig
from .ism import ISM, ISMConfig
from .perpneg import PerpNegConfig, perpneg_combine, perpneg_conditioning, perpendicular
from .prior import DiffusionPrior, PriorConfig, PriorNotFoundError, TextConditioning, ViewPromptConfig, view_prompts
from .schedules import TIMESTEP_SCHEDULES, TimestepConfig, sample_timesteps, scheduled
from .sds import SDS, SDSConfig
from .vsd import VSD, VSDConfig, camera_features
from .zero123 import Zero123Config, Zero123SDS
from .zero123_prior import Zero123Prior, relative_camera

RULES: dict[str, type[Guidance]] = {"sds": SDS, "vsd": VSD, "ism": ISM, "csd": CSD, "zero123": Zero123SDS}

__all__ = [
    "CSD",
    "CSDConfig",
    "DiffusionPrior",
    "Guidance",
    "GuidanceConfig",
    "GuidanceOutput",
    "ISM",
    "ISMConfig",
    "PerpNegConfig",
    "PriorConfig",
    "PriorNotFoundError",
    "RULES",
    "SDS",
    "SDSConfig",
    "TIMESTEP_SCHEDULES",
    "TextConditioning",
    "TimestepConfig",
    "VSD",
    "VSDConfig",
    "ViewPromptConfig",
    "WEIGHTINGS",
    "Zero123Config",
    "Zero123Prior",
    "Zero123SDS",
    "camera_features",
    "distillation_loss",
    "guided_eps",
    "perpendicular",
    "perpneg_combine",
    "perpneg_conditioning",
    "relative_camera",
    "sample_timesteps",
    "scheduled",
    "timestep_weight",
    "view_angles",
    "view_prompts",
]
