"""Small procedural-image helpers shared by the 2-D demo sets (noise, blobs, strokes, crops), all in numpy.

Images are float32 ``(H, W, 3)`` in [0, 1] until the writer converts them to uint8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from medood.data.demo.mri_physics import smooth_field

__all__ = [
    "blend",
    "draw_curves",
    "noise2d",
    "polar_blob",
    "random_crop",
    "resize_rgb",
    "soft_disc",
    "to_rgb",
    "unit_grid",
]


def unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in [-1, 1] of a ``size`` x ``size`` image."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return axis[:, None] + np.zeros((1, size), np.float32), axis[None, :] + np.zeros((size, 1), np.float32)


def noise2d(size: int, n_ctrl: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise with unit standard deviation; correlation length about ``size / n_ctrl`` pixels."""
    field = smooth_field((size, size), n_ctrl, rng)
    return field / max(float(field.std()), 1e-6)


def polar_blob(
    size: int,
    centre: tuple[float, float],
    radius: float,
    irregularity: float,
    rng: np.random.Generator,
    edge: float = 0.03,
    aspect: float = 1.0,
    n_harmonics: int = 6,
) -> np.ndarray:
    """Soft star-shaped region ``r < R(theta)``, ``R = radius * (1 + sum_k a_k cos(k theta + phi_k))``.

    Args:
        size: image side in pixels.
        centre: ``(y, x)`` in [-1, 1] coordinates.
        radius: mean radius in [-1, 1] units.
        irregularity: harmonic amplitude scale (0 = ellipse; 0.3 = very irregular).
        rng: random generator.
        edge: width of the soft border in [-1, 1] units. Defaults to 0.03.
        aspect: x/y axis ratio of the underlying ellipse. Defaults to 1.
        n_harmonics: number of harmonics (k = 2 .. n_harmonics + 1). Defaults to 6.

    Returns:
        float32 weight in [0, 1].
    """
    y, x = unit_grid(size)
    dy, dx = y - centre[0], (x - centre[1]) / aspect
    rho = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    boundary = np.ones_like(rho)
    for k in range(2, n_harmonics + 2):
        boundary += irregularity * rng.normal(0.0, 1.0) / k**0.7 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    boundary = radius * np.clip(boundary, 0.3, None)
    return np.clip(0.5 + (boundary - rho) / max(edge, 1e-3), 0.0, 1.0).astype(np.float32)


def soft_disc(size: int, centre: tuple[float, float], radius: float, edge: float = 0.05) -> np.ndarray:
    """Soft disc of ``radius`` (in [-1, 1] units) at ``centre``."""
    y, x = unit_grid(size)
    rho = np.sqrt((y - centre[0]) ** 2 + (x - centre[1]) ** 2)
    return np.clip(0.5 + (radius - rho) / max(edge, 1e-3), 0.0, 1.0).astype(np.float32)


def blend(image: np.ndarray, colour: np.ndarray | tuple[float, float, float], weight: np.ndarray) -> np.ndarray:
    """``image * (1 - w) + colour * w`` with ``colour`` an RGB triple or an image."""
    col = np.asarray(colour, dtype=np.float32)
    return (image * (1.0 - weight[..., None]) + col * weight[..., None]).astype(np.float32)


def draw_curves(
    size: int, rng: np.random.Generator, count: int, width: tuple[int, int] = (1, 2), wiggle: float = 0.15
) -> np.ndarray:
    """Mask (float32 in [0, 1]) of ``count`` random smooth curves (hairs, vessels), anti-aliased by 2x drawing."""
    scale = 2
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        start = rng.uniform(-0.2, 1.2, 2) * size * scale
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 1.4) * size * scale
        t = np.linspace(0.0, 1.0, 24)
        bend = wiggle * length * np.sin(np.pi * t * rng.uniform(0.5, 2.0) + rng.uniform(0, np.pi))
        xs = start[0] + np.cos(angle) * length * t - np.sin(angle) * bend
        ys = start[1] + np.sin(angle) * length * t + np.cos(angle) * bend
        line_width = int(rng.integers(width[0], width[1] + 1)) * scale
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=255, width=line_width, joint="curve")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey ``(H, W)`` or RGB(A) image -> float32 RGB ``(H, W, 3)``."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    return img[..., :3]


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased resize of a float RGB image in [0, 1] to ``size`` x ``size`` uint8."""
    u8 = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if u8.shape[0] == size and u8.shape[1] == size:
        return u8
    return np.asarray(Image.fromarray(u8).resize((size, size), Image.Resampling.LANCZOS))


def random_crop(
    image: np.ndarray, rng: np.random.Generator, frac: tuple[float, float] = (0.15, 0.4), min_std: float = 0.04
) -> np.ndarray:
    """Random square crop whose side is ``frac`` of the shorter image side; retries a few times to avoid blank crops.

    Args:
        image: float RGB image in [0, 1].
        rng: random generator.
        frac: range of the crop side as a fraction of the shorter side. Defaults to (0.15, 0.4).
        min_std: a crop with less intensity spread is redrawn (up to 8 times). Defaults to 0.04.

    Returns:
        The crop (a copy).
    """
    h, w = image.shape[:2]
    crop = image
    for _ in range(8):
        side = max(8, int(rng.uniform(*frac) * min(h, w)))
        y0 = int(rng.integers(0, h - side + 1))
        x0 = int(rng.integers(0, w - side + 1))
        crop = image[y0 : y0 + side, x0 : x0 + side]
        if float(crop.std()) >= min_std:
            break
    return np.array(crop, dtype=np.float32)
