"""What a new user hit in the first hour: output folders inside or equal to the input, scale
errors and defaults, --version and --help. Run through the installed console script."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medsr import __version__


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medsr: error:"), result.stderr
    return lines[0]


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((24, 30)) * 255).astype(np.uint8)).save(folder / name)
    return folder


def test_an_output_folder_inside_the_input_folder_is_never_read_back(scans, medsr_cli):
    out = scans / "out"
    for _ in range(2):
        result = run(medsr_cli + ["upscale", str(scans), "-o", str(out), "--tile", "0"])
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert not (out / "out").exists()
    assert "2 skipped (complete)" in result.stdout  # the rerun saw the two real inputs only
    assert Image.open(out / "a.png").size == (90, 72)


def test_an_earlier_runs_output_folder_inside_the_inputs_is_left_out_with_a_note(scans, medsr_cli):
    assert run(medsr_cli + ["upscale", str(scans), "-o", str(scans / "out"), "--tile", "0"]).returncode == 0
    result = run(medsr_cli + ["upscale", str(scans), "-o", str(scans / "out2"), "--tile", "0"])
    assert result.returncode == 0, result.stderr
    assert "upscaled 2 of 2" in result.stdout and not (scans / "out2" / "out").exists()
    assert "out: medsr's outputs there are left out" in result.stderr


def test_an_output_folder_around_the_input_folder_still_upscales_it(scans, medsr_cli, tmp_path):
    result = subprocess.run(medsr_cli + ["upscale", "scans", "-o", ".", "--tile", "0"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "upscaled 2 of 2" in result.stdout and Image.open(tmp_path / "a.png").size == (90, 72)


def test_the_output_folder_may_not_be_the_input_folder(scans, medsr_cli):
    before = sorted(p.name for p in scans.iterdir())
    for extra in ([], ["--format", "png"]):
        line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(scans), *extra]))
        assert "-o is this input folder" in line
    assert sorted(p.name for p in scans.iterdir()) == before  # no outputs, ledger or summary among the inputs


def test_a_scale_without_a_model_picks_the_shipped_default_of_that_scale(scans, medsr_cli, tmp_path):
    result = run(medsr_cli + ["upscale", str(scans / "a.png"), "-o", str(tmp_path / "x2"), "--scale", "2", "--tile", "0"])
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "x2" / "a.png").size == (60, 48)


def test_a_scale_nothing_ships_names_the_scales_that_exist(scans, medsr_cli, tmp_path):
    line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(tmp_path / "o"), "--scale", "5"]))
    assert "no shipped model upscales x5" in line and "x2, x3, x4" in line
    assert "safetensors" not in line and "zoo" not in line  # no internal file names


def test_a_model_of_another_scale_is_named_as_the_user_gave_it(scans, medsr_cli, tmp_path):
    line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(tmp_path / "o"), "--model", "default", "--scale", "2"]))
    assert "model default upscales x3, not x2" in line and "default-x2" in line
    assert "safetensors" not in line


def test_version_and_help_show_defaults_and_examples(medsr_cli):
    result = run(medsr_cli + ["--version"])
    assert result.returncode == 0 and result.stdout.strip() == f"medsr {__version__}"
    help_text = " ".join(run(medsr_cli + ["upscale", "--help"]).stdout.split())  # as one line, whatever the wrapping
    for shown in ("auto = 512, or 256 for bf16 on CPUs with AMX", "(default: 20)", "(default: 2)", "(default: auto)", "examples:",
                  "medsr upscale scans/ -o out/"):
        assert shown in help_text, shown


def test_tile_takes_pixels_or_auto_and_says_so_otherwise(medsr_cli, tmp_path):
    result = run(medsr_cli + ["upscale", str(tmp_path / "scan.png"), "-o", str(tmp_path / "out"), "--tile", "big"])
    assert result.returncode == 2 and "--tile: 'big' is not a tile size; give LR pixels (0 = whole image at once) or auto" in result.stderr
    from medsr.cli import _tile_size
    assert (_tile_size("auto"), _tile_size("0"), _tile_size("256")) == (None, 0, 256)


def test_the_demo_figure_has_a_zoomed_row_of_the_busiest_region(medsr_cli, tmp_path):
    pytest.importorskip("data_store", reason="pydicom-data not installed; pip install -e '.[demo]'")
    result = run(medsr_cli + ["demo", "-o", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    figure = np.asarray(Image.open(tmp_path / "chest-cr-comparison.png").convert("RGB"))
    panel_width = 512
    top_height = round(1953 * panel_width / 1839) + 22  # the chest image (1955x1841) cropped to a multiple of 3, plus the caption
    assert figure.shape[0] == top_height + 4 + panel_width + 22  # a second row of square zoomed insets
    original = figure[22:top_height, 2 * (panel_width + 4) :]
    assert (np.abs(original.astype(int) - original[..., :1]) > 60).any(), "the zoom box is drawn in red on the original"
    zoom = figure[top_height + 4 + 22 :, 2 * (panel_width + 4) :, 0].astype(float)
    assert zoom.std() > 5  # the inset shows detail, not a flat corner


@pytest.mark.parametrize("name", ["default", "default-gan", "default-x2"])
def test_the_demo_brain_gets_no_rim_inside_its_edge(name):
    """Issue 14: the shipped default drew a bright line a few pixels inside the demo brain's edge (a mean
    error 4.0 % of the range 2 px in, where bicubic's largest, 4 px in, is 2.7 %); default-gan, fine-tuned
    from it, 4.8 %; default-x2 3.2 % at x2 (bicubic 2.2 %). None may exceed bicubic's (default-x4, at 3.2 % against
    2.6 %, still does: docs/SCALES.md)."""
    pytest.importorskip("nilearn", reason="nilearn not installed; pip install -e '.[demo]'")
    import torch

    from medsr import demo, metrics
    from medsr.data import degrade
    from medsr.inference.upscaler import load_upscaler

    upscaler, _ = load_upscaler(name, precision="fp32", tile=0)
    scale = upscaler.scale
    lr, hr = degrade.make_pair(demo.demo_images()["brain-mri"], "native", scale, native_cap=None)
    bicubic = degrade.upscale_baseline(torch.from_numpy(lr)[None, None], scale).clamp(0, 1)
    rims = {method: metrics.zero_edge_profile(torch.as_tensor(out), torch.from_numpy(hr))[1:].max().item()
            for method, out in ((name, upscaler.upscale_plane(lr)), ("bicubic", bicubic))}
    assert rims[name] <= rims["bicubic"], rims


def test_the_page_names_every_format_it_accepts():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medsr.serve import create_app

    with TestClient(create_app(models=["default"])) as client:
        page = client.get("/").text
        extensions = client.get("/api/info").json()["extensions"]
    assert "Scan (PNG, JPEG, TIFF, BMP, DICOM, NIfTI, or a zipped DICOM series)" in page
    assert {".nii", ".nii.gz", ".dcm", ".bmp", ".png"} <= set(extensions)
    assert "$(\"file\").accept = [...info.extensions" in page  # the file picker offers the server's own table


def test_the_page_explains_the_hallucination_colours():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medsr.serve import create_app

    with TestClient(create_app(models=["default"])) as client:
        legend = client.get("/api/info").json()["uncertainty_legend"]
        page = client.get("/").text
    assert (legend["from_percent"], legend["to_percent"]) == (2.0, 5.0)
    assert "10% of the input image's intensity range" in legend["text"]
    assert 'id="legend"' in page and '$("legend").hidden = !$("overlay").checked' in page


def test_upscaling_an_image_does_not_load_the_volume_libraries():
    """Start-up: `medsr upscale` of a PNG imports what it needs; nibabel, scipy and pydicom load on first use."""
    code = ("import sys, medsr.cli, medsr.inference.batch, medsr.inference.upscaler; "
            "print(sorted(m for m in ('nibabel', 'scipy', 'pydicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_library_medsr_imports_is_named_in_pyproject():
    """A fresh `pip install` gets what the code imports: through-plane resampling imported scipy,
    which only nilearn (an extra) happened to bring along."""
    import ast
    import importlib.metadata
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    named = {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    modules = set()
    for path in (root / "src" / "medsr").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    imported = {dist.lower().replace("_", "-") for module in modules - set(sys.stdlib_module_names) - {"medsr"}
                for dist in distributions.get(module, [module])}
    assert imported - named == set()


@pytest.mark.parametrize("option", [["--tile", "-5"], ["--tile", "16", "--tile-overlap", "-1"]])
def test_a_negative_tile_or_overlap_is_one_line(scans, medsr_cli, tmp_path, option):
    line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(tmp_path / "o"), *option]))
    assert "give 0" in line and not (tmp_path / "o").exists()


def test_a_file_name_that_is_not_utf8_is_upscaled_and_reported(scans, medsr_cli, tmp_path):
    name = os.fsencode(scans) + b"/bad\xffname.png"  # Linux allows any bytes in a name
    with open(name, "wb") as fh:
        fh.write((scans / "a.png").read_bytes())
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # a strict stdout, as many terminals and pipes have
    result = subprocess.run(medsr_cli + ["upscale", str(scans), "-o", str(tmp_path / "o"), "--tile", "0"],
                            capture_output=True, text=True, timeout=600, env=env, errors="replace")
    assert result.returncode == 0, result.stderr
    assert "upscaled 3 of 3" in result.stdout
    assert os.path.exists(os.fsencode(tmp_path / "o") + b"/bad\xffname.png")
    assert "bad\\udcffname.png" in (tmp_path / "o" / "medsr-summary.csv").read_text(encoding="utf-8")


@pytest.mark.parametrize("scale", ["1", "0", "-2"])
def test_a_scale_below_two_is_refused_without_listing_x1(scans, medsr_cli, tmp_path, scale):
    line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(tmp_path / "o"), "--scale", scale]))
    assert "upscales by 2 or more (shipped scales: x2, x3, x4)" in line


def test_an_unwritable_output_or_a_summary_folder_is_refused_before_any_upscaling(scans, medsr_cli, tmp_path):
    line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(scans / "a.png" / "out")]))
    assert "cannot write into this folder (Not a directory)" in line
    line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(tmp_path / "o"), "--summary", str(tmp_path)]))
    assert "--summary names a folder" in line and not list((tmp_path / "o").glob("*.png"))


@pytest.mark.parametrize("option", ["--slice-spacing=0.5", "--slice-thickness=0.5"])  # (0 is no length: a usage error of its own)
def test_through_plane_options_without_it_are_refused(scans, medsr_cli, tmp_path, option):
    line = one_error_line(run(medsr_cli + ["upscale", str(scans), "-o", str(tmp_path / "o"), option]))
    assert "go with --through-plane" in line
