"""`medsr upscale --engine ray` on a real two-node Ray cluster on 127.0.0.1 (issue 16).

A head and a second node are started with `ray start`, each with one CPU, and always stopped at
the end (`ray stop --force`), also when a test fails. The archive mixes PNGs, DICOM files and one
corrupt file; the local engine's outputs are the reference.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from PIL import Image

pytest.importorskip("ray")
pydicom_data = pytest.importorskip("pydicom.data")

pytestmark = pytest.mark.slow
RAY = shutil.which("ray")
# Ray 2.59+ authenticates every process of a cluster with one token: the nodes and medsr's driver share it.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex(), "RAY_USAGE_STATS_ENABLED": "0"}
ENV = dict(os.environ, **AUTH)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, worker node's node-manager port) of a head + one worker node, torn down whatever happens."""
    if RAY is None:
        pytest.skip("the ray command is not installed (pip install -e '.[ray]')")
    port, worker_port = free_port(), free_port()
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    nodes = tmp_path_factory.mktemp("nodes")  # the nodes' working folder, not the CLI's (test_relative_paths_...)
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                        *common], check=True, capture_output=True, env=ENV, timeout=120, cwd=nodes)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                        f"--node-manager-port={worker_port}", *common], check=True, capture_output=True, env=ENV, timeout=120, cwd=nodes)
        yield f"127.0.0.1:{port}", worker_port
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV, timeout=120)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """40 files: 36 PNGs (two folders), 3 DICOM files (pydicom's own test data), one corrupt PNG."""
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    for i in range(36):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        yy, xx = np.mgrid[0:160, 0:192] / 192  # big enough that a run lasts while a node is killed
        image = 0.5 + 0.3 * np.sin(xx * rng.uniform(3, 12)) * np.cos(yy * rng.uniform(3, 12)) + rng.normal(0, 0.02, xx.shape)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / f"scan_{i:02d}.png")
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
        shutil.copy(pydicom_data.get_testdata_file(name), root / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def upscale(medsr_cli, archive: Path, out: Path, *extra: str, wait: bool = True):
    """`medsr upscale` as a user runs it (the local engine with torch's own thread count; Ray's
    workers get one thread each, as their one CPU: the outputs must not depend on it)."""
    command = medsr_cli + ["upscale", str(archive), "-o", str(out), "--model", "default", *extra]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=ENV)


def outputs(out: Path) -> dict[str, bytes]:
    """The output images: not the ledger, summary or the folder's .medsr-output marker."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(("medsr-", ".medsr-"))}


def check_ledger(out: Path) -> None:
    """One record per output file, each naming a file with exactly the recorded size and sha256."""
    records = [json.loads(line) for line in (out / "medsr-ledger.jsonl").read_text().splitlines()]
    assert len({r["output"] for r in records}) == len(records)
    files = [f for r in records for f in r["files"]]
    assert sorted(f["path"] for f in files) == sorted(outputs(out))
    for f in files:
        data = (out / f["path"]).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]


def statuses(out: Path) -> dict[str, str]:
    with open(out / "medsr-summary.csv", newline="") as fh:
        return {Path(row["input"]).name: row["status"] for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def local(medsr_cli, archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    result = upscale(medsr_cli, archive, out)
    assert result.returncode == 1 and "broken.png" in result.stderr, result.stderr
    return out


def test_ray_engine_gives_the_local_engines_bytes_ledger_and_summary(medsr_cli, archive, local, cluster, tmp_path):
    address, _ = cluster
    out = tmp_path / "ray"
    result = upscale(medsr_cli, archive, out, "--engine", "ray", "--ray-address", address)
    assert result.returncode == 1, result.stderr  # the corrupt file fails its job, not the run
    failures = [line for line in result.stderr.splitlines() if line.startswith("medsr: skipped:")]
    assert len(failures) == 1 and "broken.png" in failures[0] and "check the file" in failures[0]
    reference = outputs(local)
    assert len(reference) == 39
    assert outputs(out) == reference  # byte for byte
    assert statuses(out) == statuses(local)
    check_ledger(out)
    again = upscale(medsr_cli, archive, out, "--engine", "ray", "--ray-address", address)
    assert again.returncode == 1 and "39 skipped (complete)" in again.stdout, again.stdout
    assert outputs(out) == reference


def test_losing_a_node_mid_run_loses_nothing(medsr_cli, archive, local, cluster, tmp_path):
    """The worker node's raylet is killed while jobs run; Ray retries its work on the head node."""
    import psutil

    address, worker_port = cluster
    out = tmp_path / "ray"
    run = upscale(medsr_cli, archive, out, "--engine", "ray", "--ray-address", address, wait=False)
    raylet = next(p for p in psutil.process_iter(["name", "cmdline"])
                  if "raylet" in (p.info["name"] or "") and f"--node_manager_port={worker_port}" in " ".join(p.info["cmdline"] or []))
    deadline = time.monotonic() + 300
    while len(list(out.rglob("*.png"))) < 4 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before the node could be killed; make the archive bigger"
    raylet.kill()
    stdout, stderr = run.communicate(timeout=900)
    assert run.returncode == 1, stderr
    assert outputs(out) == outputs(local)  # nothing lost, nothing half-written or doubled
    assert statuses(out) == statuses(local)
    check_ledger(out)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_jpeg_files_get_their_model_on_ray_workers_too(medsr_cli, cluster, tmp_path):
    """Without --model a mixed run gives JPEG files default-jpeg and the rest default, on either engine."""
    from medsr import zoo

    address, _ = cluster
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        pixels = (rng.random((48, 64)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(src / f"scan_{i}.jpg", quality=85)
        Image.fromarray(pixels).save(src / f"scan_{i}.png")
    runs = {}
    for engine in ("local", "ray"):
        extra = ["--engine", "ray", "--ray-address", address] if engine == "ray" else []
        result = subprocess.run(medsr_cli + ["upscale", str(src), "-o", str(tmp_path / engine), *extra],
                                capture_output=True, text=True, timeout=900, env=ENV)
        assert result.returncode == 0, result.stderr[-2000:]
        records = [json.loads(line) for line in (tmp_path / engine / "medsr-ledger.jsonl").read_text().splitlines()]
        runs[engine] = {r["output"]: r["settings"]["model"]["sha256"] for r in records}
    sha = {name: hashlib.sha256(zoo.shipped_models()[name].read_bytes()).hexdigest() for name in ("default", "default-jpeg")}
    assert runs["ray"] == runs["local"] == {f"scan_{i}.{ext}": sha["default-jpeg" if ext == "jpg" else "default"]
                                            for i in range(2) for ext in ("jpg", "png")}
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def test_relative_paths_mean_the_callers_folders_on_every_node(medsr_cli, cluster, tmp_path):
    """Ray's workers run in a folder of their own: inputs, outputs and a model file given relative to
    the folder `medsr upscale` runs in must still mean that folder's (they wrote to the workers' own)."""
    from medsr import zoo

    address, _ = cluster
    (tmp_path / "in").mkdir()
    Image.fromarray((np.random.default_rng(2).random((40, 48)) * 255).astype(np.uint8)).save(tmp_path / "in" / "scan.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    shutil.copy(zoo.shipped_models()["default"], tmp_path / "mine.safetensors")
    result = subprocess.run(medsr_cli + ["upscale", "in", "-o", "out", "--model", "mine.safetensors", "--engine", "ray",
                                         "--ray-address", address], capture_output=True, text=True, timeout=900, env=ENV, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert list(outputs(tmp_path / "out")) == ["scan.png"]
    check_ledger(tmp_path / "out")
    # told in the caller's own paths, as the local engine tells them (the workers saw absolute ones)
    assert "in/scan.png -> out/scan.png" in result.stdout and "medsr: skipped: in/broken.png: " in result.stderr
    assert str(tmp_path) not in result.stdout + result.stderr


def test_a_ray_client_address_is_left_to_ray():
    from medsr.inference.ray_engine import _check_reachable

    _check_reachable("ray://127.0.0.1:1")  # Ray's client protocol: not a HOST:PORT to probe (it was refused as unknown host)
    _check_reachable("auto")
