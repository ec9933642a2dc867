"""CUDA graphs of the prior's no-grad U-Net calls (dream3d/guidance/cuda_graphs.py): on CPU a pass-through, and
the key that picks a graph follows the U-Net's peft state; on CUDA, every replay equals the eager call."""

from __future__ import annotations

import pytest
import torch

from dream3d.guidance import VSD, VSDConfig
from dream3d.guidance.cuda_graphs import adapter_state
from dream3d.guidance.prior import DiffusionPrior, PriorConfig


def _inputs(prior, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, prior.latent_channels, prior.latent_size, prior.latent_size, generator=g)
    t = torch.randint(20, 980, (B,), generator=g)
    emb = prior.text_embeddings(["a red cube", "a blue mug"][:B] * (B // 2 or 1))[:B]
    return x.to(prior.device), t.to(prior.device), emb


def test_on_cpu_the_graphed_unet_is_the_unet(tiny_prior):
    prior = DiffusionPrior.load(PriorConfig(model=tiny_prior, device="cpu"))
    x, t, emb = _inputs(prior)
    with torch.no_grad():
        eager = prior.predict_noise(x, t, emb)
        prior.use_cuda_graphs()
        graphed = prior.predict_noise(x, t, emb)
    assert torch.equal(eager, graphed)
    assert prior.graphed_unet.replays == 0 and not prior.graphed_unet.graphs  # nothing captured off CUDA


def test_the_graph_key_follows_the_adapters_a_vsd_student_switches(tiny_prior):
    # A replay runs the kernels recorded at capture: the teacher's and the student's calls must get different
    # graphs, or the student would silently be the teacher (or the reverse).
    prior = DiffusionPrior.load(PriorConfig(model=tiny_prior, device="cpu"))
    cache: dict = {}
    assert adapter_state(prior.unet, cache) == ()
    rule = VSD(prior, VSDConfig())
    teacher = adapter_state(prior.unet, cache)
    with rule.student():
        student = adapter_state(prior.unet, cache)
        class_embedding = prior.unet.class_embedding
    assert teacher != student and teacher == adapter_state(prior.unet, cache)
    assert class_embedding is rule.camera_mlp and prior.unet.class_embedding is None  # (also in the key, by id)
    second = VSD(prior, VSDConfig())  # another adapter on the same U-Net: the lookup is redone
    with second.student():
        assert adapter_state(prior.unet, cache) not in (teacher, student)


@pytest.mark.cuda
def test_graph_replays_equal_eager_calls_for_teacher_and_student(tiny_prior):
    from dream3d.guidance.vsd import camera_features
    from renderers.cameras import orbit_cameras

    prior = DiffusionPrior.load(PriorConfig(model=tiny_prior, device="cuda", dtype="float32"))
    rule = VSD(prior, VSDConfig(lora_lr=1e-2))
    prior.use_cuda_graphs()
    graphed = prior.graphed_unet
    cams = orbit_cameras([0.0, 30.0], [0.0, 120.0], 3.0, 45.0, 64, 64).to("cuda")

    def check(x, t, emb, cam=None):
        with torch.no_grad():
            a, b = prior.unet_output(x, t, emb, cam), graphed._eager(x, t, emb, cam)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        return a

    for step in range(3):  # new inputs each time: a replay reads them, not the captured ones
        x, t, emb = _inputs(prior, seed=step)
        teacher = check(x, t, emb)
        with rule.student():
            cam = camera_features(cams, 2, prior.device) if prior.unet.class_embedding is not None else None
            student = check(x, t, emb, cam)
        if step:  # after LoRA steps (in place) the student is not the teacher, and check() saw its graph follow
            assert not torch.allclose(student, teacher, atol=1e-4)
        rgb = torch.rand(2, 64, 64, 3, device="cuda", requires_grad=True)
        rule(rgb, cams, "a red cube", step).loss.backward()  # the rule's own calls replay too; one LoRA step
    assert graphed.replays >= 6 and len(graphed.graphs) >= 2 and all(graphed.graphs.values())
    n = len(graphed.graphs)
    check(*_inputs(prior, B=6))  # a batch size no call had (the rule's CFG call was batch 4): another graph
    assert len(graphed.graphs) == n + 1
    with torch.enable_grad():  # a call with gradient never replays
        r = graphed.replays
        graphed(x, t, emb)
        assert graphed.replays == r
