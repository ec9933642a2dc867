"""The procedural shape world: coloured triangle meshes for every prompt in its vocabulary.

Every object is centred, upright (+Y), faces +Z and fits inside the unit sphere. Primitives are one
colour; composite objects have a colour body and dark details that mark their front (a door, a face, a
handle on the right, a chair's open side), so view-dependent prompting and the Janus problem can be
measured on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import trimesh

from .vocabulary import COLORS, COMPOSITES, PRIMITIVES, SHAPES  # noqa: F401 (the world's words, re-exported)

DETAIL = (0.12, 0.09, 0.07)  # dark brown-black, used for front features


@dataclass
class ColoredMesh:
    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    face_colors: np.ndarray  # (F, 3) float32 albedo in [0, 1]

    def to_trimesh(self) -> trimesh.Trimesh:
        rgba = np.concatenate([self.face_colors, np.ones((len(self.faces), 1))], 1)
        return trimesh.Trimesh(
            self.vertices, self.faces, face_colors=(rgba * 255).round().astype(np.uint8), process=False
        )

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unshared vertices (3 per face) with per-vertex colours, for flat-coloured rendering."""
        v = self.vertices[self.faces].reshape(-1, 3)
        f = np.arange(len(v)).reshape(-1, 3)
        c = np.repeat(self.face_colors, 3, axis=0)
        return v.astype(np.float32), f, c.astype(np.float32)


def _part(mesh: trimesh.Trimesh, color, translate=(0, 0, 0), rotate=None) -> ColoredMesh:
    m = mesh.copy()
    if rotate is not None:
        axis, deg = rotate
        m.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(deg), axis))
    m.apply_translation(translate)
    return ColoredMesh(
        np.asarray(m.vertices, np.float32),
        np.asarray(m.faces, np.int64),
        np.tile(np.asarray(color, np.float32), (len(m.faces), 1)),
    )


def _join(parts: list[ColoredMesh]) -> ColoredMesh:
    verts, faces, cols, off = [], [], [], 0
    for p in parts:
        verts.append(p.vertices)
        faces.append(p.faces + off)
        cols.append(p.face_colors)
        off += len(p.vertices)
    return ColoredMesh(np.concatenate(verts), np.concatenate(faces), np.concatenate(cols))


def _pyramid(base: float, height: float) -> trimesh.Trimesh:
    h = base / 2
    v = np.array([[-h, 0, -h], [h, 0, -h], [h, 0, h], [-h, 0, h], [0, height, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3], [3, 2, 4], [2, 1, 4], [1, 0, 4], [0, 3, 4]])
    m = trimesh.Trimesh(v, f, process=False)
    m.fix_normals()
    return m


def _prism_roof(width: float, depth: float, height: float) -> trimesh.Trimesh:
    """A gable roof: a triangular prism whose ridge runs along X, so its slopes face front and back."""
    w, d = width / 2, depth / 2
    v = np.array([[-w, 0, -d], [w, 0, -d], [w, 0, d], [-w, 0, d], [-w, height, 0], [w, height, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3], [3, 2, 5], [3, 5, 4], [1, 0, 4], [1, 4, 5], [0, 3, 4], [2, 1, 5]])
    m = trimesh.Trimesh(v, f, process=False)
    m.fix_normals()
    return m


def _cylinder_y(radius: float, height: float, sections: int = 32) -> trimesh.Trimesh:
    return trimesh.creation.cylinder(
        radius=radius,
        height=height,
        sections=sections,
        transform=trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]),
    )


def build_shape(shape: str, color: tuple[float, float, float]) -> ColoredMesh:
    """The canonical mesh of ``shape`` with body colour ``color``."""
    c = color
    if shape == "sphere":
        return _part(trimesh.creation.icosphere(subdivisions=3, radius=0.72), c)
    if shape == "cube":
        return _part(trimesh.creation.box((1.0, 1.0, 1.0)), c)
    if shape == "cylinder":
        return _part(_cylinder_y(0.55, 1.15), c)
    if shape == "cone":
        cone = trimesh.creation.cone(
            radius=0.65,
            height=1.3,
            sections=32,
            transform=trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]),
        )
        return _part(cone, c, translate=(0, -0.55, 0))
    if shape == "torus":
        return _part(
            trimesh.creation.torus(major_radius=0.56, minor_radius=0.24, major_sections=40, minor_sections=16),
            c,
            rotate=([1, 0, 0], 90),
        )
    if shape == "pyramid":
        return _part(_pyramid(1.15, 1.0), c, translate=(0, -0.45, 0))
    if shape == "house":
        return _join(
            [
                _part(trimesh.creation.box((1.0, 0.62, 0.8)), c, translate=(0, -0.26, 0)),
                _part(_prism_roof(1.12, 0.92, 0.5), DETAIL, translate=(0, 0.05, 0)),
                _part(trimesh.creation.box((0.26, 0.42, 0.04)), DETAIL, translate=(0, -0.36, 0.41)),
            ]
        )
    if shape == "mug":
        return _join(
            [
                _part(_cylinder_y(0.42, 0.95), c),
                _part(
                    trimesh.creation.torus(major_radius=0.25, minor_radius=0.07, major_sections=24, minor_sections=10),
                    DETAIL,
                    translate=(0.44, 0.0, 0),
                ),
            ]
        )
    if shape == "chair":
        parts = [
            _part(trimesh.creation.box((0.8, 0.12, 0.75)), c, translate=(0, -0.05, 0)),
            _part(trimesh.creation.box((0.8, 0.75, 0.12)), c, translate=(0, 0.38, -0.32)),
        ]
        for x in (-0.33, 0.33):
            for z in (-0.3, 0.3):
                parts.append(_part(trimesh.creation.box((0.1, 0.55, 0.1)), DETAIL, translate=(x, -0.38, z)))
        return _join(parts)
    if shape == "snowman":
        return _join(
            [
                _part(trimesh.creation.icosphere(subdivisions=3, radius=0.42), c, translate=(0, -0.38, 0)),
                _part(trimesh.creation.icosphere(subdivisions=3, radius=0.3), c, translate=(0, 0.28, 0)),
                _part(trimesh.creation.icosphere(subdivisions=1, radius=0.055), DETAIL, translate=(-0.1, 0.36, 0.26)),
                _part(trimesh.creation.icosphere(subdivisions=1, radius=0.055), DETAIL, translate=(0.1, 0.36, 0.26)),
                _part(trimesh.creation.cone(radius=0.06, height=0.22, sections=12), DETAIL, translate=(0, 0.27, 0.27)),
            ]
        )
    raise ValueError(f"unknown shape {shape!r}; the world knows: {', '.join(SHAPES)}")


_PROMPT = re.compile(
    r"^\s*(?:(?:an?|the)\s+)?(?P<color>\w+)\s+(?P<shape>\w+)\s*(?:,\s*(?P<view>front|side|back|overhead)\s+view)?\s*\.?\s*$",
    re.I,
)


def parse_prompt(prompt: str) -> tuple[str, str, str | None]:
    """(colour, shape, view or None) of a world prompt such as "a red cube, front view"."""
    m = _PROMPT.match(prompt or "")
    if not m or m["color"].lower() not in COLORS or m["shape"].lower() not in SHAPES:
        raise ValueError(
            f"prompt {prompt!r} is outside the shape world's vocabulary; use 'a <colour> <shape>' with colour in "
            f"{{{', '.join(COLORS)}}} and shape in {{{', '.join(SHAPES)}}}, optionally followed by ', front view' "
            "(or side, back, overhead)"
        )
    return m["color"].lower(), m["shape"].lower(), (m["view"].lower() if m["view"] else None)


def scene_for_prompt(prompt: str) -> ColoredMesh:
    """The ground-truth mesh for a world prompt, e.g. ``scene_for_prompt("a red cube")``."""
    color, shape, _ = parse_prompt(prompt)
    return build_shape(shape, COLORS[color])


def all_prompts() -> list[str]:
    """Every colour x shape prompt of the world, without a view suffix."""
    return [f"a {c} {s}" for s in SHAPES for c in COLORS]
