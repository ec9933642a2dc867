import numpy as np
import pytest
import torch

from dream3d.world.render import WorldDatasetConfig, make_dataset, render_colored_mesh
from dream3d.world.shapes import COLORS, COMPOSITES, DETAIL, SHAPES, all_prompts, parse_prompt, scene_for_prompt
from renderers.cameras import orbit_cameras


def test_vocabulary_covers_the_required_words():
    assert {"sphere", "cube", "cylinder", "cone", "torus", "pyramid"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "purple", "orange"} <= set(COLORS)
    assert len(COMPOSITES) >= 4
    assert len(all_prompts()) == len(SHAPES) * len(COLORS)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_object_is_canonical(shape):
    m = scene_for_prompt(f"a green {shape}")
    r = np.linalg.norm(m.vertices, axis=1)
    assert r.max() <= 1.0, "objects fit inside the unit sphere"
    assert r.max() >= 0.7, "objects are at a fixed, not tiny, scale"
    centre = (m.vertices.min(0) + m.vertices.max(0)) / 2
    assert np.abs(centre[[0, 2]]).max() < 0.2 and abs(centre[1]) < 0.2
    body = np.all(np.isclose(m.face_colors, COLORS["green"]), axis=1)
    area = m.to_trimesh().area_faces
    assert area[body].sum() / area.sum() > 0.5, "the body carries the prompt's colour"


def test_front_features_face_plus_z():
    for shape, axis, sign in (("house", 2, 1), ("snowman", 2, 1), ("mug", 0, 1), ("chair", 2, -1)):
        m = scene_for_prompt(f"a red {shape}")
        if shape == "chair":  # the backrest is body-coloured and stands at the back
            tall = m.vertices[m.faces].mean(1)[:, 1] > 0.3
            z = m.vertices[m.faces].mean(1)[tall][:, axis]
        else:
            detail = np.all(np.isclose(m.face_colors, DETAIL), axis=1)
            z = m.vertices[m.faces].mean(1)[detail][:, axis]
            if shape == "house":  # the roof is dark too; the door is the low part
                z = m.vertices[m.faces].mean(1)[detail & (m.vertices[m.faces].mean(1)[:, 1] < -0.1)][:, axis]
        assert sign * z.mean() > 0.2, shape


def test_prompt_parsing_and_errors():
    assert parse_prompt("a red cube") == ("red", "cube", None)
    assert parse_prompt("An Orange snowman, back view") == ("orange", "snowman", "back")
    assert parse_prompt("a purple torus, overhead view.") == ("purple", "torus", "overhead")
    for bad in ["a red dragon", "a pink cube", "", "cube"]:
        with pytest.raises(ValueError, match="vocabulary"):
            scene_for_prompt(bad)


def test_renders_are_lit_on_white_and_coloured():
    cams = orbit_cameras(20.0, torch.tensor([0.0, 90.0, 180.0]), 2.9, 45.0, 64, 64)
    for color, rgb_ref in COLORS.items():
        rgb, alpha = render_colored_mesh(scene_for_prompt(f"a {color} sphere"), cams)
        assert torch.allclose(rgb[:, 0, 0], torch.ones(3)), "white background"
        fg = rgb[alpha[..., 0] > 0]
        mean = fg.mean(0) / fg.mean(0).max()
        ref = torch.tensor(rgb_ref) / max(rgb_ref)
        assert (mean - ref).abs().max() < 0.12, color
    # the fixed light is in front: the front is brighter than the back
    rgb, alpha = render_colored_mesh(scene_for_prompt("a yellow cube"), cams)
    assert rgb[0][alpha[0, ..., 0] > 0].mean() > rgb[2][alpha[2, ..., 0] > 0].mean()


def test_dataset_captions_and_determinism():
    cfg = WorldDatasetConfig(per_prompt=3, size=32, seed=7)
    a, b = make_dataset(cfg), make_dataset(cfg)
    assert a["images"].shape == (3 * len(SHAPES) * len(COLORS), 32, 32, 3) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"], b["images"]) and a["captions"] == b["captions"]
    for cap, view, color, shape in zip(a["captions"], a["views"], a["colors"], a["shapes"]):
        assert cap in (f"a {color} {shape}", f"a {color} {shape}, {view} view")
    assert {"front", "side", "back"} <= set(a["views"])
