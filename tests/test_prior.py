import json
import os

import pytest
import torch

from dream3d.assets import EMBEDDED_PRIOR
from dream3d.embedded_prior.model import PriorArchConfig, _split_words, train_tokenizer
from dream3d.embedded_prior.train import PriorTrainConfig, train_prior
from dream3d.world.render import WorldDatasetConfig
from dream3d.world.shapes import all_prompts


def test_embedded_prior_loads_offline_and_is_small():
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_PRIOR, local_files_only=True)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDPMScheduler)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(EMBEDDED_PRIOR) for f in fs)
    assert total <= 40 * 2**20
    for d, _, fs in os.walk(EMBEDDED_PRIOR):
        assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in fs), "weights ship as safetensors only"


def test_embedded_prior_samples_have_the_prompted_colour():
    from dream3d.embedded_prior.sample import load_pipeline, sample
    from dream3d.world.classifier import load_classifier, predict

    pipe = load_pipeline()
    prompts = [
        "a red cube, front view",
        "a blue sphere, side view",
        "a green cylinder",
        "a yellow cone",
        "a purple torus",
        "an orange pyramid",
    ]
    imgs = sample(pipe, prompts, per_prompt=2, steps=20, guidance_scale=7.5, seed=0)
    pred = predict(load_classifier(), torch.from_numpy(imgs))
    want = [p.split()[1] for p in prompts for _ in range(2)]
    correct = sum(a == b for a, b in zip(pred.color, want))
    assert correct >= len(want) - 1, list(zip(pred.color, want))


def test_tokenizer_keeps_each_world_word_whole(tmp_path):
    captions = [
        p + s for p in all_prompts() for s in ("", ", front view", ", side view", ", back view", ", overhead view")
    ]
    tok = train_tokenizer(captions, str(tmp_path / "tok"), 16)
    for cap in captions[:50]:
        ids = tok(cap).input_ids
        assert len(ids) == len(_split_words(cap)) + 2  # one token a word, plus start and end
    text = tok.decode(tok("a purple snowman, back view").input_ids, skip_special_tokens=True)
    assert text.replace(" ,", ",") == "a purple snowman, back view"  # CLIP's decoder spaces out punctuation


def _tiny(root):
    return PriorTrainConfig(
        out=str(root / "prior"),
        work_dir=str(root / "work"),
        arch=PriorArchConfig(
            vae_channels=(16, 16, 16),
            unet_channels=(32, 32, 32),
            unet_heads=2,
            text_width=32,
            text_layers=1,
            text_heads=2,
        ),
        data=WorldDatasetConfig(per_prompt=1, size=32),
        vae_steps=4,
        vae_batch=4,
        unet_steps=4,
        unet_batch=4,
        warmup=2,
        checkpoint_every=2,
    )


def test_an_out_folder_of_other_files_is_refused_before_training_and_a_model_folder_is_replaced(tmp_path):
    """Training replaces --out whole when it ends: a folder of someone's files is refused at the start (it was
    deleted at the end, after the training), a file too; an earlier model there is replaced."""
    from dream3d.errors import UserError

    cfg = _tiny(tmp_path)
    (tmp_path / "prior").mkdir()
    (tmp_path / "prior" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files but no model.*new or empty folder"):
        train_prior(cfg, log=lambda m: None)
    assert (tmp_path / "prior" / "notes.txt").read_text() == "mine" and not (tmp_path / "work").exists()
    (tmp_path / "prior" / "notes.txt").unlink()
    train_prior(cfg, log=lambda m: None)  # an empty folder takes the model
    assert (tmp_path / "prior" / "model_index.json").is_file()
    cfg.unet_steps, cfg.work_dir = 5, str(tmp_path / "work2")  # a model folder is replaced by the next training
    train_prior(cfg, log=lambda m: None)
    assert json.loads((tmp_path / "prior" / "training.json").read_text())["config"]["unet_steps"] == 5
    (tmp_path / "file").write_text("x")
    cfg.out = str(tmp_path / "file")
    with pytest.raises(UserError, match="is a file"):
        train_prior(cfg, log=lambda m: None)


def test_tiny_training_resumes_exactly_as_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    logs = []
    train_prior(_tiny(tmp_path / "a"), log=logs.append)
    # interrupted twice (after 3 steps of the VAE and 3 more, i.e. in the U-Net phase), then finished
    train_prior(_tiny(tmp_path / "b"), stop_after=3, log=logs.append)
    assert not os.path.exists(tmp_path / "b" / "prior"), "an interrupted run leaves no finished-looking output"
    train_prior(_tiny(tmp_path / "b"), stop_after=3, log=logs.append)
    train_prior(_tiny(tmp_path / "b"), log=logs.append)
    assert any("resumed" in line for line in logs)
    for sub in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ):
        a, b = load_file(tmp_path / "a" / "prior" / sub), load_file(tmp_path / "b" / "prior" / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    info = json.loads((tmp_path / "a" / "prior" / "training.json").read_text())
    assert info["history"][-1]["phase"] == "unet+text"
    # a different config cannot silently resume someone else's checkpoint
    other = _tiny(tmp_path / "b")
    other.unet_steps = 5
    with pytest.raises(RuntimeError, match="different training config"):
        train_prior(other)
