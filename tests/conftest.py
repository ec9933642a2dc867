import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DREAM3D_TEST_THREADS", "2")))


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` tests skip without a CUDA device (and ``pytest -m cuda`` picks all of them);
    ``@pytest.mark.slow`` ones skip unless DREAM3D_SLOW=1."""
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    slow = pytest.mark.skip(reason="slow test: set DREAM3D_SLOW=1 to run it")
    for item in items:
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if item.get_closest_marker("slow") and os.environ.get("DREAM3D_SLOW") != "1":
            item.add_marker(slow)


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory) -> str:
    """A random-weight SD-format folder with the embedded prior's layout at a tiny size (fast plumbing)."""
    from diffusers import StableDiffusionPipeline

    from dream3d.embedded_prior.model import (
        PriorArchConfig,
        build_scheduler,
        build_text_encoder,
        build_unet,
        build_vae,
        train_tokenizer,
    )
    from dream3d.world.shapes import all_prompts

    root = tmp_path_factory.mktemp("tiny_prior")
    torch.manual_seed(0)
    arch = PriorArchConfig(
        image_size=32,
        vae_channels=(16, 16, 16),
        unet_channels=(32, 32, 32),
        unet_heads=2,
        text_width=32,
        text_layers=1,
        text_heads=2,
    )
    captions = [
        p + s for p in all_prompts() for s in ("", ", front view", ", side view", ", back view", ", overhead view")
    ] + [""]
    tok = train_tokenizer(captions, str(root / "tok"), arch.max_tokens)
    pipe = StableDiffusionPipeline(
        vae=build_vae(arch),
        text_encoder=build_text_encoder(arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id),
        tokenizer=tok,
        unet=build_unet(arch),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "prior", safe_serialization=True)
    return str(root / "prior")


def tiny_zero123_config(root, vae_from: str, steps: int = 6, **kw):
    """The training config of a tiny Zero123 (32-pixel renders of three objects, one held out; ``vae_from``: a text
    prior's folder, e.g. ``tiny_prior``), writing into ``root``/zero123."""
    from dream3d.embedded_prior.zero123 import Zero123ArchConfig
    from dream3d.embedded_prior.zero123_train import MultiViewDataConfig, Zero123TrainConfig

    arch = Zero123ArchConfig(
        unet_channels=(32, 32, 32), unet_heads=2, embed_width=32, vision_width=32, vision_layers=1, vision_heads=2,
        clip_size=32, patch_size=8,
    )  # fmt: skip
    data = MultiViewDataConfig(
        views=4, size=32, objects=("red cube", "blue mug", "green cone"), holdout=("green cone",)
    )
    return Zero123TrainConfig(
        out=str(root / "zero123"),
        work_dir=str(root / "work"),
        vae_from=vae_from,
        arch=arch,
        data=data,
        steps=steps,
        batch=4,
        warmup=2,
        checkpoint_every=2,
        **kw,
    )


@pytest.fixture(scope="session")
def tiny_zero123(tmp_path_factory, tiny_prior) -> str:
    """A Zero123 folder written by a 6-step training run (the tiny text prior's VAE, 32-pixel renders), on one
    thread (a tiny U-Net gains nothing from a second one, and waits on it on a busy machine)."""
    from dream3d.embedded_prior.zero123_train import train_zero123

    root = tmp_path_factory.mktemp("zero123")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_zero123(tiny_zero123_config(root, tiny_prior), log=lambda m: None)
    finally:
        torch.set_num_threads(before)
    return str(root / "zero123")


TINY_RUN = [
    "train.steps=4",
    "train.batch_size=2",
    "train.resolution=32",
    "train.val_every=2",
    "train.checkpoint_every=2",
    "gaussians.num_points=300",
    "gaussians.densify_from_step=1",
    "gaussians.densify_interval=2",
    "mesh.resolution=40",
    "mesh.texture.texture_size=64",
    "mesh.texture.view_resolution=32",
    "output.turntable_frames=4",
    "output.turntable_resolution=32",
]
