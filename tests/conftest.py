"""Shared fixtures: where ../shared/data is, and small synthetic image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSR_DATA", ROOT.parent / "shared" / "data")).resolve()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}; set MEDSR_DATA")


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A scan-like 8-bit image: smooth blobs and edges, so SR has something to learn."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = 0.3 + 0.2 * np.sin(xx * rng.uniform(3, 9)) * np.cos(yy * rng.uniform(3, 9))
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        img += 0.3 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Two class folders of 24 synthetic PNGs each, 64-100 px (not square)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("alpha", "beta"):
        (root / label).mkdir()
        for i in range(24):
            h, w = rng.integers(64, 100, size=2)
            Image.fromarray(smooth_image(rng, int(h), int(w))).save(root / label / f"img_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def medsr_cli() -> list[str]:
    """The installed console script (the CLI tests go through it, as a user would)."""
    exe = Path(os.sys.executable).parent / "medsr"
    if not exe.exists():
        pytest.skip("the medsr console script is not installed; pip install -e .")
    return [str(exe)]
