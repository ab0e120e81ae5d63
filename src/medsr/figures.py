"""Figures made with Pillow: labelled image tiles laid out in rows, zoom boxes, error maps."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CAPTION = 22  # pixels of caption bar above each tile
GAP = 4


def to_uint8(array01: np.ndarray) -> np.ndarray:
    return (np.clip(array01, 0, 1) * 255).round().astype(np.uint8)


def display_window(pixels01: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile range to draw an image in: a 12-bit scan in a 16-bit range would otherwise look black."""
    low, high = np.percentile(pixels01, [0.5, 99.5])
    return (float(low), float(high)) if high > low else (0.0, 1.0)


def windowed(pixels01: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """pixels01 stretched so that `window` spans [0, 1], clipped."""
    low, high = window
    return np.clip((pixels01 - low) / (high - low), 0, 1)


def tile(array01: np.ndarray, label: str, width: int, resample=Image.Resampling.LANCZOS) -> Image.Image:
    """A gray [0, 1] array (or an RGB uint8 array) resized to `width`, under a caption bar."""
    pixels = array01 if array01.dtype == np.uint8 else to_uint8(array01)
    img = Image.fromarray(pixels).convert("RGB")
    img = img.resize((width, max(1, round(img.height * width / img.width))), resample)
    canvas = Image.new("RGB", (img.width, img.height + CAPTION), (0, 0, 0))
    canvas.paste(img, (0, CAPTION))
    ImageDraw.Draw(canvas).text((6, 5), label, fill=(255, 255, 255))
    return canvas


def grid(rows: list[list[Image.Image]], background=(255, 255, 255)) -> Image.Image:
    """Tiles laid out row by row, GAP pixels apart."""
    width = max(sum(t.width for t in row) + GAP * (len(row) - 1) for row in rows)
    height = sum(max(t.height for t in row) for row in rows) + GAP * (len(rows) - 1)
    figure = Image.new("RGB", (width, height), background)
    y = 0
    for row in rows:
        x = 0
        for t in row:
            figure.paste(t, (x, y))
            x += t.width + GAP
        y += max(t.height for t in row) + GAP
    return figure


def hot(values: np.ndarray, vmax: float) -> np.ndarray:
    """A black-red-yellow-white colour map of values in [0, vmax], as an RGB uint8 array."""
    v = np.clip(values / max(vmax, 1e-12), 0, 1)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def with_box(array01: np.ndarray, box: tuple[int, int, int, int], colour=(255, 64, 64)) -> np.ndarray:
    """The gray image as RGB with a rectangle (top, left, height, width) drawn on it."""
    img = Image.fromarray(to_uint8(array01)).convert("RGB")
    top, left, h, w = box
    ImageDraw.Draw(img).rectangle([left, top, left + w - 1, top + h - 1], outline=colour, width=max(1, array01.shape[0] // 150))
    return np.asarray(img)


def busiest_box(array01: np.ndarray, side: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    """The side x side window with the most gradient energy (where detail is): (top, left, side, side).
    `margin` (a fraction of each side) keeps the window off the borders, where collimator edges and
    burnt-in labels of radiographs would otherwise win."""
    gy, gx = np.gradient(array01.astype(np.float64))
    energy = gy**2 + gx**2
    h, w = energy.shape
    mh, mw = min(int(h * margin), (h - side) // 2), min(int(w * margin), (w - side) // 2)
    energy[:mh], energy[h - mh :], energy[:, :mw], energy[:, w - mw :] = 0, 0, 0, 0
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side, side
