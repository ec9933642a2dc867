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


def save_png(path: str, image: np.ndarray) -> None:
    """An (H, W, 3) float image in [0, 1] as an 8-bit PNG (written to a temporary file, then renamed)."""
    import imageio.v3 as iio

    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, (np.clip(image, 0, 1) * 255).round().astype(np.uint8))
