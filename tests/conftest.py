"""Shared fixtures: where ../shared/data is, and small synthetic image folders."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
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


# The browser fixtures of the web page's tests (test_serve.py, test_serve_volume.py).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path, medsr_cli):
    """`medsr serve` as a user starts it, with its temporary folder inside tmp_path."""
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    process = subprocess.Popen(medsr_cli + ["serve", "--port", str(port), "--model", "default", "--model", "default-gan",
                                            "--max-upload-mb", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"medsr serve did not start: {process.stdout.read()}")
            time.sleep(0.3)
    yield url, tmp_path
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt install chromium); .ci/run installs it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        browser.close()


def assert_one_line_error(result, *words):
    """A CLI run that failed as a user error should: exit 2, one line 'medsr: error: ...' holding `words`."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medsr: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
