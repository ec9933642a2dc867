"""Writing images: PNGs written atomically, and grids of images (validation views, samples, contact sheets)."""

from __future__ import annotations

import numpy as np

from .io import atomic_path


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile (N, H, W, 3) images into one (rows*H, cols*W, 3) image with white padding."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.ones((rows * h, cols * w, c), images.dtype)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[k]
    return grid


def tile_sheet(rows: list[tuple[list, str]], heading: str, size: int, label_width: int = 190) -> np.ndarray:
    """The benchmarks' contact sheets: rows of (tiles, each (size, size, 3) in [0, 1], and their label text), the
    label on white beside the tiles, under a one-line heading."""
    from PIL import Image, ImageDraw

    out = []
    for tiles, text in rows:
        label = Image.new("RGB", (label_width, size), "white")
        ImageDraw.Draw(label).multiline_text((6, 6), text, fill="black")
        row = [(np.clip(np.asarray(t), 0, 1) * 255).astype(np.uint8) for t in tiles]
        out.append(np.concatenate(row + [np.asarray(label)], 1))
    head = Image.new("RGB", (out[0].shape[1], 18), "white")
    ImageDraw.Draw(head).text((6, 3), heading, fill="black")
    return np.concatenate([np.asarray(head)] + out, 0)


def save_png(path: str, image: np.ndarray) -> None:
    """An (H, W, 3) float image in [0, 1] as an 8-bit PNG (written to a temporary file, then renamed)."""
    import imageio.v3 as iio

    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, (np.clip(image, 0, 1) * 255).round().astype(np.uint8))
