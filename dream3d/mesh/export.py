"""Write a textured mesh: binary glTF (.glb) with an embedded PNG, OBJ + MTL + PNG, and a turntable video.

The GLB is written here directly (a few dozen lines of the glTF 2.0 container) rather than through a
generic exporter, so its layout is known exactly: one buffer, 4-byte aligned views, POSITION (with the
min/max glTF requires), NORMAL (unit length), TEXCOORD_0, uint32 indices, and a metallic-roughness material
(metallic 0, roughness 0.9) whose base colour is the texture. glTF puts the UV origin at the image's top
left, so v is flipped on the way out; OBJ keeps it at the bottom left, like this package.

Every file goes to a temporary name in the target folder first and is renamed into place once complete.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from renderers.cameras import orbit_cameras
from renderers.mesh import interpolate, rasterize_mesh, sample_texture, shade_lambert, vertex_normals

from ..io import atomic_path, atomic_write_bytes as _atomic_write_bytes
from .texture import TexturedMesh

_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`dream3d.io.atomic_write_bytes`, returning the path."""
    _atomic_write_bytes(str(path), data)
    return Path(path)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def texture_png(texture) -> bytes:
    """PNG bytes of a (H, W, 3|4) float texture in [0, 1] (row 0 at the top)."""
    from PIL import Image

    img = (np.clip(_np(texture).astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals; a vertex whose faces cancel gets +Y (glTF requires unit NORMALs).
    Seam vertices split by the unwrap are welded by position first, so normals stay smooth across seams."""
    _, weld = np.unique(v, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    acc = np.zeros((weld.max() + 1, 3))
    np.add.at(acc, weld[f].ravel(), np.repeat(fn, 3, axis=0))
    n = acc[weld]
    ln = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(ln > 1e-12, n / np.maximum(ln, 1e-30), np.array([0.0, 1.0, 0.0]))
    n = n.astype(np.float32)
    return n / np.linalg.norm(n, axis=1, keepdims=True)  # renormalise in float32


def _check(vertices, faces, uv, texture) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    v = _np(vertices).astype(np.float64)
    f = _np(faces).astype(np.int64)
    t = _np(uv).astype(np.float32)
    tex = _np(texture)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or t.shape != (len(v), 2):
        raise ValueError(f"expected vertices (V,3), faces (F,3), uv (V,2); got {v.shape}, {f.shape}, {t.shape}")
    if len(f) == 0:
        raise ValueError("the mesh has no faces: nothing to export")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"faces index vertices outside [0, {len(v)})")
    if tex.ndim != 3 or tex.shape[2] not in (3, 4):
        raise ValueError(f"texture must be (H, W, 3) or (H, W, 4); got {tex.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or inf")
    return v, f, t, tex


def glb_bytes(
    vertices, faces, uv, texture, roughness: float = 0.9, metallic: float = 0.0, name: str = "dream3d"
) -> bytes:
    """A complete .glb (glTF 2.0 binary) holding one textured triangle mesh."""
    v, f, t, tex = _check(vertices, faces, uv, texture)
    pos = v.astype(np.float32)
    nrm = _vertex_normals(v, f)
    tc = np.stack([t[:, 0], 1.0 - t[:, 1]], 1).astype(np.float32)  # glTF: v = 0 at the image top
    idx = f.astype(np.uint32)
    png = texture_png(tex)

    blob = bytearray()
    views = []

    def add_view(data: bytes, target: int | None) -> int:
        blob.extend(b"\x00" * (-len(blob) % 4))  # every view starts 4-byte aligned
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blob.extend(data)
        views.append(view)
        return len(views) - 1

    accessors = [
        {
            "bufferView": add_view(pos.tobytes(), _ARRAY_BUFFER),
            "componentType": _FLOAT,
            "count": len(pos),
            "type": "VEC3",
            "min": pos.min(0).tolist(),
            "max": pos.max(0).tolist(),
        },
        {
            "bufferView": add_view(nrm.tobytes(), _ARRAY_BUFFER),
            "componentType": _FLOAT,
            "count": len(nrm),
            "type": "VEC3",
        },
        {
            "bufferView": add_view(tc.tobytes(), _ARRAY_BUFFER),
            "componentType": _FLOAT,
            "count": len(tc),
            "type": "VEC2",
        },
        {
            "bufferView": add_view(idx.tobytes(), _ELEMENT_ARRAY_BUFFER),
            "componentType": _UINT32,
            "count": int(idx.size),
            "type": "SCALAR",
        },
    ]
    image_view = add_view(png, None)
    blob.extend(b"\x00" * (-len(blob) % 4))
    gltf = {
        "asset": {"version": "2.0", "generator": "dream3d"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [
            {
                "name": name,
                "primitives": [
                    {
                        "attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2},
                        "indices": 3,
                        "material": 0,
                        "mode": 4,
                    }
                ],
            }
        ],
        "materials": [
            {
                "name": "material0",
                "pbrMetallicRoughness": {
                    "baseColorTexture": {"index": 0, "texCoord": 0},
                    "metallicFactor": float(metallic),
                    "roughnessFactor": float(roughness),
                },
            }
        ],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"bufferView": image_view, "mimeType": "image/png"}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)  # the JSON chunk is padded with spaces
    total = 12 + 8 + len(js) + 8 + len(blob)
    return b"".join(
        [
            struct.pack("<III", _GLB_MAGIC, 2, total),
            struct.pack("<II", len(js), _CHUNK_JSON),
            js,
            struct.pack("<II", len(blob), _CHUNK_BIN),
            bytes(blob),
        ]
    )


def write_glb(path, vertices, faces, uv, texture, roughness: float = 0.9, metallic: float = 0.0) -> Path:
    return atomic_write_bytes(path, glb_bytes(vertices, faces, uv, texture, roughness, metallic, name=Path(path).stem))


def write_obj(path, vertices, faces, uv, texture) -> Path:
    """``name.obj`` with ``name.mtl`` and ``name.png`` beside it (material and texture first, the OBJ last,
    so a complete-looking .obj always has its companions)."""
    v, f, t, tex = _check(vertices, faces, uv, texture)
    path = Path(path)
    stem = path.stem
    atomic_write_bytes(path.with_suffix(".png"), texture_png(tex))
    mtl = f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nNs 10\nd 1\nillum 1\nmap_Kd {stem}.png\n"
    atomic_write_bytes(path.with_suffix(".mtl"), mtl.encode())
    n = _vertex_normals(v, f)
    buf = io.StringIO()
    buf.write(f"# dream3d\nmtllib {stem}.mtl\no {stem}\n")
    np.savetxt(buf, v, fmt="v %.6f %.6f %.6f")
    np.savetxt(buf, t, fmt="vt %.6f %.6f")
    np.savetxt(buf, n, fmt="vn %.6f %.6f %.6f")
    buf.write("usemtl material0\n")
    fi = np.repeat(f + 1, 3, axis=1)  # v/vt/vn share one index: uv and normals are per vertex
    np.savetxt(buf, fi, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    return atomic_write_bytes(path, buf.getvalue().encode())


# --------------------------------------------------------------------------------------------- turntable


def render_turntable(
    mesh: TexturedMesh,
    n_frames: int = 60,
    resolution: int = 256,
    elevation: float = 15.0,
    fov_y: float = 40.0,
    ambient: float = 0.35,
    background=(1.0, 1.0, 1.0),
    batch: int = 4,
) -> np.ndarray:
    """(n_frames, H, W, 3) uint8 frames of the textured mesh on a full turn, Lambert + ambient shading with a
    light above and behind each camera, so the visible side is always lit."""

    v, f = mesh.vertices, mesh.faces
    lo, hi = v.amin(0), v.amax(0)
    centre = ((lo + hi) / 2).cpu()
    radius = float((v.cpu() - centre).norm(dim=-1).max())
    dist = 1.1 * radius / math.sin(math.radians(fov_y) / 2)
    az = torch.arange(n_frames, dtype=torch.float32) * (360.0 / n_frames)
    cams = orbit_cameras(elevation, az, dist, fov_y, resolution, resolution, target=centre).to(v.device)
    vn = vertex_normals(v, f)
    bg = torch.as_tensor(background, dtype=torch.float32, device=v.device)
    frames = []
    with torch.no_grad():
        for s in range(0, n_frames, batch):
            c = cams[s : s + batch]
            raster = rasterize_mesh(v, f, c)
            albedo = sample_texture(mesh.texture, interpolate(mesh.uv, f, raster))
            normals = F.normalize(interpolate(vn, f, raster), dim=-1)
            light = c.origins - centre.to(v.device) + torch.tensor([0.0, 0.5 * dist, 0.0], device=v.device)
            rgb = shade_lambert(albedo, normals, light[:, None, None, :], ambient)
            a = raster.mask[..., None].float()
            frames.append(((rgb * a + bg * (1 - a)).clamp(0, 1) * 255 + 0.5).byte().cpu())
    return torch.cat(frames).numpy()


def write_video(path, frames: np.ndarray, fps: int = 24) -> Path:
    """mp4 (H.264 through imageio-ffmpeg); if that fails, a .gif beside it. Returns the path written."""
    import imageio.v2 as imageio

    path = Path(path)
    try:
        with atomic_path(str(path), suffix=path.suffix or ".mp4") as tmp:
            imageio.mimwrite(
                tmp, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1, format="FFMPEG"
            )
            # An ffmpeg without the encoder can exit with an error that imageio does not raise, leaving an empty
            # file: check that an MP4 container came out before it replaces anything.
            with open(tmp, "rb") as f:
                head = f.read(12)
            if head[4:8] != b"ftyp":
                raise OSError("ffmpeg wrote no MP4 (is its H.264 encoder, libx264, missing?)")
        return path
    except Exception as e:  # no ffmpeg binary, or no H.264 encoder in it
        warnings.warn(f"mp4 writing failed ({e}); writing a gif instead", stacklevel=2)
    buf = io.BytesIO()
    imageio.mimwrite(buf, list(frames), format="GIF", duration=1000 / fps, loop=0)
    return atomic_write_bytes(path.with_suffix(".gif"), buf.getvalue())


def export_mesh(
    mesh: TexturedMesh,
    out_dir,
    name: str = "mesh",
    turntable: bool = True,
    turntable_frames: int = 60,
    turntable_resolution: int = 256,
) -> dict[str, Path]:
    """``name.glb``, ``name.obj`` (+ .mtl, .png) and optionally ``turntable.mp4`` in ``out_dir``."""
    out = Path(out_dir)
    files = {
        "glb": write_glb(out / f"{name}.glb", mesh.vertices, mesh.faces, mesh.uv, mesh.texture),
        "obj": write_obj(out / f"{name}.obj", mesh.vertices, mesh.faces, mesh.uv, mesh.texture),
    }
    files["mtl"], files["png"] = out / f"{name}.mtl", out / f"{name}.png"
    if turntable:
        frames = render_turntable(mesh, turntable_frames, turntable_resolution)
        files["turntable"] = write_video(out / "turntable.mp4", frames)
    return files
