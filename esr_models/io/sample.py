"""The sample image shipped with the package (``esr upscale --sample``): a small synthetic
landscape made by the code below, so it is ours to redistribute (MIT, like the package) and
needs nothing beside the clone. ``esr_models/data/sample.png`` is ``make_sample()`` written as
an 8-bit PNG; tests/cli/test_sample.py checks that the two agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "sample.png"


def _value_noise(h: int, w: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1]: random values on a coarse grid, bicubic-smoothstep blended."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw))
    y, x = np.mgrid[0:h, 0:w] / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0
    sy, sx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[y0, x0] * (1 - sx) + grid[y0, x0 + 1] * sx
    bottom = grid[y0 + 1, x0] * (1 - sx) + grid[y0 + 1, x0 + 1] * sx
    return top * (1 - sy) + bottom * sy


def make_sample(h: int = 96, w: int = 128, seed: int = 2024) -> np.ndarray:
    """(h, w, 3) uint8 RGB: sky, sun, two mountain ridges, a brick wall and grass, with the
    fine texture and hard edges that super-resolution is judged on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    t = y / h
    img[:] = np.stack([0.35 + 0.4 * t, 0.55 + 0.3 * t, 0.95 - 0.1 * t], axis=-1)  # sky
    sun = (y - 0.22 * h) ** 2 + (x - 0.78 * w) ** 2 < (0.09 * h) ** 2
    img[sun] = (1.0, 0.9, 0.55)
    for base, amp, colour, cell in ((0.45, 0.18, (0.42, 0.45, 0.55), 24), (0.6, 0.12, (0.25, 0.38, 0.3), 12)):
        ridge = base * h - amp * h * _value_noise(1, w, cell, rng)[0]
        shade = 0.85 + 0.3 * _value_noise(h, w, 6, rng)
        mask = y > ridge[None, :]
        img[mask] = (np.array(colour)[None, :] * shade[mask][:, None])
    # brick wall: rows of 6-pixel bricks with 1-pixel mortar, every other row offset
    wall = (y > 0.62 * h) & (x < 0.45 * w) & (y < 0.9 * h)
    row = (y // 6).astype(int)
    mortar = (y % 6 == 0) | (((x + 5 * (row % 2)) % 10) == 0)
    brick = np.array((0.62, 0.28, 0.2)) * (0.8 + 0.4 * rng.random((h, w)))[..., None]
    img[wall] = np.where(mortar[wall][:, None], 0.8, brick[wall])
    grass = y > 0.9 * h
    blades = 0.5 + 0.5 * np.sin(x * 1.7 + 3 * _value_noise(h, w, 4, rng)) * rng.random((h, w))
    img[grass] = np.stack([0.2 * blades, 0.45 + 0.3 * blades, 0.15 * blades], axis=-1)[grass]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


if __name__ == "__main__":  # python -m esr_models.io.sample: rewrite data/sample.png
    from PIL import Image

    Image.fromarray(make_sample()).save(SAMPLE_PATH, optimize=True)
    print(SAMPLE_PATH)
