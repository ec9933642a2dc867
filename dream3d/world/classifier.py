"""A small CNN that names the colour, shape and view of a shape-world image.

It is the independent judge of everything generated here: prior samples, 2D score-distillation results
and renders of text-to-3D objects. It is trained on world renders only, never on generated images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .shapes import COLORS, COMPOSITES, SHAPES

VIEWS = ("front", "side", "back", "overhead")
from ..assets import WORLD_CLASSIFIER as DEFAULT_PATH
from ..io import atomic_path, atomic_write_text


class WorldClassifier(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width

        def block(i, o):
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1),
                nn.GroupNorm(8, o),
                nn.SiLU(),
                nn.Conv2d(o, o, 3, padding=1),
                nn.GroupNorm(8, o),
                nn.SiLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w))
        self.color = nn.Linear(4 * w * 16, len(COLORS))
        self.shape = nn.Linear(4 * w * 16, len(SHAPES))
        self.view = nn.Linear(4 * w * 16, len(VIEWS))

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits for rgb (B, H, W, 3) in [0, 1]; any size is resized to 64 x 64."""
        x = rgb.permute(0, 3, 1, 2)
        if x.shape[-2:] != (64, 64):
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        h = F.adaptive_avg_pool2d(self.features(x * 2 - 1), 4).flatten(1)
        return {"color": self.color(h), "shape": self.shape(h), "view": self.view(h)}


@dataclass
class Prediction:
    color: list[str]
    shape: list[str]
    view: list[str]
    probs: dict[str, torch.Tensor]


def predict(model: WorldClassifier, rgb: torch.Tensor) -> Prediction:
    with torch.no_grad():
        logits = model(rgb.float())
    probs = {k: v.softmax(-1) for k, v in logits.items()}
    names = {"color": list(COLORS), "shape": list(SHAPES), "view": list(VIEWS)}
    return Prediction(
        *([names[k][i] for i in probs[k].argmax(-1).tolist()] for k in ("color", "shape", "view")), probs=probs
    )


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, noise and brightness jitter, so the judge is not fooled by the softness of generated images."""
    B = x.shape[0]
    x = x * (0.85 + 0.3 * torch.rand(B, 1, 1, 1, generator=g))
    blur = torch.rand(B, generator=g) < 0.5
    if blur.any():
        xc = x[blur].permute(0, 3, 1, 2)
        xc = F.avg_pool2d(F.pad(xc, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = x.clone()
        x[blur] = xc.permute(0, 2, 3, 1)
    x = x + 0.04 * torch.rand(B, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def train_classifier(
    data: dict, steps: int = 1500, batch: int = 64, seed: int = 0, log=print
) -> tuple[WorldClassifier, dict]:
    """Train on world renders; hold out every 10th image and report accuracy on it."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(data["images"])
    labels = {
        "color": torch.tensor([list(COLORS).index(c) for c in data["colors"]]),
        "shape": torch.tensor([list(SHAPES).index(s) for s in data["shapes"]]),
        "view": torch.tensor([VIEWS.index(v) for v in data["views"]]),
    }
    # Views are only well defined for the front-distinct composites (and overhead for all).
    view_known = torch.tensor([s in COMPOSITES or v == "overhead" for s, v in zip(data["shapes"], data["views"])])
    n = len(images)
    held = torch.arange(n) % 10 == 0
    train_idx = (~held).nonzero()[:, 0]
    model = WorldClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    bar = tqdm(range(steps), desc="world classifier", unit="step")
    for _ in bar:
        idx = train_idx[torch.randint(0, len(train_idx), (batch,), generator=g)]
        x = _augment(images[idx].float() / 255, g)
        out = model(x)
        loss = F.cross_entropy(out["color"], labels["color"][idx]) + F.cross_entropy(out["shape"], labels["shape"][idx])
        vk = view_known[idx]
        if vk.any():
            loss = loss + F.cross_entropy(out["view"][vk], labels["view"][idx][vk])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    hidx = held.nonzero()[:, 0]
    pred = predict(model, images[hidx].float() / 255)
    acc = {
        "color": float(np.mean([p == data["colors"][i] for p, i in zip(pred.color, hidx.tolist())])),
        "shape": float(np.mean([p == data["shapes"][i] for p, i in zip(pred.shape, hidx.tolist())])),
        "view_composites": float(
            np.mean([p == data["views"][i] for p, i in zip(pred.view, hidx.tolist()) if view_known[i]])
        ),
        "held_out": int(len(hidx)),
    }
    log(f"world classifier held-out accuracy: {acc}")
    return model, acc


def save_classifier(model: WorldClassifier, acc: dict, path: str = DEFAULT_PATH) -> None:
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with atomic_path(os.path.join(path, "model.safetensors")) as tmp:
        save_file(model.state_dict(), tmp)
    atomic_write_text(
        os.path.join(path, "info.json"),
        json.dumps(
            {"colors": list(COLORS), "shapes": list(SHAPES), "views": list(VIEWS), "held_out_accuracy": acc}, indent=1
        ),
    )


def load_classifier(path: str = DEFAULT_PATH) -> WorldClassifier:
    from safetensors.torch import load_file

    f = os.path.join(path, "model.safetensors")
    if not os.path.exists(f):
        raise FileNotFoundError(
            f"no world classifier at {os.path.abspath(f)}; train one with `dream3d prior train-classifier`"
        )
    model = WorldClassifier()
    model.load_state_dict(load_file(f))
    return model.eval()
