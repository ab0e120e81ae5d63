"""Write docs/serve.png, the README's picture of `medsr serve`: the MNI152 brain demo image (from
nilearn, not ../shared/data) upscaled with `default`, divider in the middle, hallucination map off.

    python benchmarks/make_serve_screenshot.py [-o docs/serve.png]

Needs `pip install -e ".[test,demo]"` (Playwright, FastAPI, nilearn) and Debian's chromium.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT
from PIL import Image

VIEWPORT = {"width": 1280, "height": 900}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, temp: str) -> subprocess.Popen:
    """`medsr serve` as a user starts it, its temporary folder inside `temp`; returns once it listens."""
    medsr = Path(sys.executable).parent / "medsr"
    process = subprocess.Popen([str(medsr), "serve", "--port", str(port), "--model", "default", "--model", "default-gan"],
                               env=dict(os.environ, TMPDIR=temp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                sys.exit(f"medsr serve did not start: {process.stdout.read()}")
            time.sleep(0.3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "serve.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as temp:
        port = free_port()
        server = start_server(port, temp)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run"])
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(f"http://127.0.0.1:{port}")
                page.wait_for_function("document.getElementById('model').options.length > 0")
                if "brain-mri" not in page.eval_on_selector_all("#demo option", "options => options.map(o => o.value)"):
                    sys.exit("nilearn's MNI template is not installed (pip install -e '.[demo]')")
                page.select_option("#demo", "brain-mri")
                page.click("#go")
                page.wait_for_function("!document.getElementById('go').disabled", timeout=120_000)
                if page.is_visible("#error"):
                    sys.exit(f"the page shows an error: {page.text_content('#error')}")
                page.wait_for_function("document.getElementById('after').complete && document.getElementById('after').naturalWidth > 0")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{args.out}: {Image.open(args.out).size[0]}x{Image.open(args.out).size[1]}")


if __name__ == "__main__":
    main()
