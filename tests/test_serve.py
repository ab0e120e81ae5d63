"""`medsr serve`: the web app's API (in process) and the page end to end in headless Chromium."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import DATA, ROOT, free_port, needs_data
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medsr.serve import KEEP_JOBS, create_app  # noqa: E402

DICOM = DATA / "dicom" / "head-mr-flair-implicit.dcm"  # 256x256, 16-bit MR
SCREENSHOT = ROOT / "docs" / "serve.png"


def png_bytes(height: int, width: int) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((height, width)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client():
    app = create_app(models=["default"], max_upload_mb=0.5, precision="fp32")
    with TestClient(app) as test_client:
        yield test_client


def test_png_upload_gives_a_3x_result_in_the_input_format(client):
    answer = client.post("/api/upscale?model=default&name=scan.png", content=png_bytes(40, 30)).json()
    assert answer["input"] == {"width": 30, "height": 40, "format": "png", "frames": 1}
    assert answer["output"] == {"width": 90, "height": 120}
    for kind in ("before", "after", "overlay"):
        picture = client.get(answer[kind])
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(picture.content)).size == (90, 120)
    download = client.get(answer["download"])
    assert answer["download_name"] == "scan-medsr-default-x3.png"
    assert Image.open(io.BytesIO(download.content)).size == (90, 120)


@needs_data
def test_dicom_upload_downloads_a_derived_dicom(client):
    answer = client.post("/api/upscale?model=default&name=head.dcm", content=DICOM.read_bytes()).json()
    assert answer["output"] == {"width": 768, "height": 768}
    derived = pydicom.dcmread(io.BytesIO(client.get(answer["download"]).content))
    source = pydicom.dcmread(DICOM, stop_before_pixels=True)
    assert (derived.Rows, derived.Columns) == (768, 768)
    assert "DERIVED" in derived.ImageType and derived.SOPInstanceUID != source.SOPInstanceUID


def test_bad_inputs_get_plain_errors_and_the_server_goes_on(client):
    corrupt = client.post("/api/upscale?model=default&name=broken.dcm", content=b"not a scan at all")
    assert corrupt.status_code == 400 and corrupt.json()["error"].startswith("broken.dcm: ")
    assert "/tmp" not in corrupt.json()["error"] and "medsr-serve" not in corrupt.json()["error"]
    too_big = client.post("/api/upscale?model=default&name=huge.png", content=b"\0" * (600 * 1024))
    assert too_big.status_code == 413 and "0.5 MB" in too_big.json()["error"]
    assert client.post("/api/upscale?model=nope&name=a.png", content=png_bytes(8, 8)).status_code == 400
    assert "empty" in client.post("/api/upscale?model=default&name=a.png").json()["error"]
    notes = client.post("/api/upscale?model=default&name=notes.txt", content=b"findings: none").json()["error"]
    assert notes.startswith("notes.txt: unsupported file type '.txt'; use one of .png") and ".zip" in notes
    assert client.get("/api/jobs/unknown/after").status_code == 404
    assert client.post("/api/upscale?model=default&name=ok.png", content=png_bytes(16, 16)).status_code == 200


def test_uploads_stay_in_its_temporary_folder_which_is_bounded_and_removed():
    app = create_app(models=["default"], precision="fp32")
    folder = app.state.server.folder
    with TestClient(app) as test_client:
        for i in range(KEEP_JOBS + 3):
            name = "../../escape.png" if i == 0 else f"scan{i}.png"
            assert test_client.post(f"/api/upscale?model=default&name={name}", content=png_bytes(12, 12)).status_code == 200
        jobs = [p for p in folder.iterdir()]
        assert len(jobs) == KEEP_JOBS  # older jobs' files are gone
        assert not (folder.parent / "escape.png").exists() and not any(folder.parent.parent.glob("escape.png"))
    assert not folder.exists()


def test_failed_uploads_and_running_jobs_drop_no_kept_result():
    app = create_app(models=["default"], precision="fp32")
    server = app.state.server
    with TestClient(app) as test_client:
        first = [test_client.post(f"/api/upscale?model=default&name=scan{i}.png", content=png_bytes(12, 12)).json()
                 for i in range(KEEP_JOBS)]
        for _ in range(3):
            assert test_client.post("/api/upscale?model=default&name=bad.png", content=b"not a png").status_code == 400
        assert test_client.get(first[0]["after"]).status_code == 200  # a failed upload took no kept result's place
        running = server._new_job("slow.dcm", "default")  # as a long upload is while others finish
        for i in range(KEEP_JOBS + 1):
            assert test_client.post(f"/api/upscale?model=default&name=next{i}.png", content=png_bytes(12, 12)).status_code == 200
        assert running.id in server.jobs and running.folder.is_dir()
        assert test_client.get(first[-1]["after"]).status_code == 404 and len(server.jobs) == KEEP_JOBS + 1


def test_a_scan_above_the_page_limit_is_refused_from_its_header(client, monkeypatch):
    from medsr.io import raster

    def decoded(*args):
        raise AssertionError("the pixels were decoded before the size was checked")

    monkeypatch.setattr(raster, "_page_to_gray", decoded)
    buffer = io.BytesIO()
    Image.new("L", (4001, 4000)).save(buffer, format="PNG")  # 16 M pixels in a few kB
    answer = client.post("/api/upscale?model=default&name=big.png", content=buffer.getvalue())
    assert answer.status_code == 413 and "more pixels than this page upscales" in answer.json()["error"]


def test_a_long_file_name_keeps_its_extension(client):
    answer = client.post(f"/api/upscale?model=default&name={'x' * 130}.png", content=png_bytes(12, 12))
    assert answer.status_code == 200 and answer.json()["download_name"].endswith("-medsr-default-x3.png")


def test_a_cut_off_upload_leaves_nothing_behind():
    import asyncio

    from starlette.requests import Request

    from medsr.serve import UserError

    server = create_app(models=["default"], precision="fp32").state.server
    messages = iter([{"type": "http.request", "body": b"\x89PNG partial", "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    request = Request({"type": "http", "method": "POST", "headers": [], "query_string": b""}, receive)
    with pytest.raises(UserError, match="the upload of cut.png was cut off"):
        asyncio.run(server.receive(request, "cut.png", "default"))
    assert not server.jobs and not list(server.folder.iterdir())
    server.close()
    server.close()


def jpeg_dicom_series(folder: Path, count: int = 3) -> bytes:
    """A zipped series of DICOM slices stored as JPEG baseline (lossy), as some PACS export them."""
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    series, archive = generate_uid(), io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for i in range(count):
            jpeg = io.BytesIO()
            Image.open(io.BytesIO(png_bytes(64, 64))).save(jpeg, format="JPEG", quality=70)
            ds = template.copy()
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.Rows = ds.Columns = 64
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.InstanceNumber = [0, 0, 5.0 * i], [1, 0, 0, 0, 1, 0], i + 1
            ds.PixelData = encapsulate([jpeg.getvalue()])
            ds.save_as(folder / f"s{i}.dcm", enforce_file_format=True)
            zipped.write(folder / f"s{i}.dcm", f"s{i}.dcm")
    return archive.getvalue()


def test_auto_on_a_zipped_jpeg_series_runs_the_jpeg_model(tmp_path):
    zipped = jpeg_dicom_series(tmp_path)
    from medsr import zoo

    assert zoo.default_model(None, sorted(tmp_path.glob("*.dcm"))) == "default-jpeg"  # what medsr upscale runs on them
    with TestClient(create_app(models=["default", "default-jpeg"], precision="fp32")) as test_client:
        answer = test_client.post("/api/upscale?model=auto&name=series.zip", content=zipped)
    assert answer.status_code == 200, answer.json()
    assert answer.json()["model"] == "default-jpeg" and answer.json()["series"] == 1


def test_models_of_every_scale_are_offered_and_their_maps_made():
    app = create_app(models=["default-x2", "default", "default-x4"], precision="fp32")
    with TestClient(app) as test_client:
        assert {m["scale"] for m in test_client.get("/api/info").json()["models"]} == {2, 3, 4}
        for model, scale in (("default-x2", 2), ("default-x4", 4)):
            answer = test_client.post(f"/api/upscale?model={model}&name=scan.png", content=png_bytes(20, 16)).json()
            assert answer["output"] == {"width": 16 * scale, "height": 20 * scale}
            overlay = test_client.get(answer["overlay"])
            assert Image.open(io.BytesIO(overlay.content)).size == (16 * scale, 20 * scale)


def jpeg_bytes(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(height, width))).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_auto_runs_what_medsr_upscale_picks_default_jpeg_for_jpeg_files():
    app = create_app(models=["default", "default-jpeg"], precision="fp32")
    with TestClient(app) as test_client:
        first = test_client.get("/api/info").json()["models"][0]
        assert first["name"] == "auto" and "default-jpeg for JPEG" in first["label"]
        from pydicom.data import get_testdata_file

        uploads = {"scan.jpg": jpeg_bytes(16, 16), "scan.png": png_bytes(16, 16),
                   "jpeg.dcm": open(get_testdata_file("SC_jpeg_no_color_transform.dcm"), "rb").read(),  # DICOM stored as JPEG
                   "plain.dcm": open(get_testdata_file("CT_small.dcm"), "rb").read()}
        ran = {name: test_client.post(f"/api/upscale?name={name}", content=body).json()["model"] for name, body in uploads.items()}
        assert ran == {"scan.jpg": "default-jpeg", "scan.png": "default", "jpeg.dcm": "default-jpeg", "plain.dcm": "default"}
        named = test_client.post("/api/upscale?model=default&name=scan.jpg", content=jpeg_bytes(16, 16)).json()
        assert named["model"] == "default" and named["download_name"] == "scan-medsr-default-x3.jpg"
    without = create_app(models=["default"], precision="fp32")  # auto is offered only with both models
    with TestClient(without) as test_client:
        assert [m["name"] for m in test_client.get("/api/info").json()["models"]] == ["default"]


def test_auto_without_the_default_offered_runs_an_offered_model_of_its_scale():
    """--model default-x2 --model large: "auto" runs large (x3 like default), not the unoffered default."""
    with TestClient(create_app(models=["default-x2", "large"], precision="fp32")) as test_client:
        answer = test_client.post("/api/upscale?name=scan.png", content=png_bytes(12, 12))
    assert answer.status_code == 200, answer.json()
    assert answer.json()["model"] == "large" and answer.json()["output"] == {"width": 36, "height": 36}
    from medsr import zoo

    only_file = str(zoo.shipped_models()["default-x2"])  # --model some/run/model.safetensors
    server = create_app(models=[only_file]).state.server
    assert server.choose("auto", [Path("h.dcm")]) == only_file
    server.close()


def test_a_job_that_writes_after_the_server_closed_leaves_no_folder_behind(tmp_path):
    """A second Ctrl-C closes the server while a job still writes its download: the folder it re-creates goes at exit."""
    script = ("import sys; from medsr.serve import create_app; server = create_app(models=['default']).state.server; "
              "server.close(); (server.folder / 'job').mkdir(parents=True); (server.folder / 'job' / 'x.dcm').write_bytes(b'x'); "
              "print(server.folder)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not Path(done.stdout.strip()).exists()


def test_a_port_in_use_is_one_line_before_the_banner(capsys):
    import socket

    from medsr.cli import main

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert main(["serve", "--port", str(port), "--model", "default"]) == 2
    out, err = capsys.readouterr()
    assert "open http" not in out and err.strip() == f"medsr: error: port {port} is in use; pick another with --port"


def test_a_colour_upload_is_said_to_be_upscaled_as_gray(client):
    rgb = (np.random.default_rng(0).random((12, 14, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    answer = client.post("/api/upscale?model=default&name=photo.png", content=buffer.getvalue()).json()
    assert answer["note"].startswith("photo.png is in colour; upscaled as one gray channel")
    assert "note" not in client.post("/api/upscale?model=default&name=gray.png", content=png_bytes(12, 14)).json()


def test_demo_images_are_scored_against_their_original(client):
    demos = client.get("/api/info").json()["demos"]
    if "brain-mri" not in demos:
        pytest.skip("nilearn's MNI template is not installed (pip install -e '.[demo]')")
    answer = client.post("/api/upscale?model=default&demo=brain-mri").json()
    assert answer["psnr"]["medsr"] > answer["psnr"]["bicubic"]


# ---- the page in a real browser ------------------------------------------------------------------


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.getElementById('model').options.length > 0")


def upscale_in_page(page, expect_error: bool = False) -> None:
    page.click("#go")
    page.wait_for_function("!document.getElementById('go').disabled", timeout=120_000)
    assert page.is_visible("#error") == expect_error, page.text_content("#error")


@needs_data
@pytest.mark.slow
def test_page_upscales_a_real_dicom_in_chromium(served, page, tmp_path):
    url, temp_root = served
    open_page(page, url)

    page.set_input_files("#file", str(DICOM))
    upscale_in_page(page)
    assert page.is_visible("#overlay-toggle")
    assert page.evaluate("[document.getElementById('after').naturalWidth, document.getElementById('after').naturalHeight]") == [768, 768]
    assert "256x256 dicom" in page.text_content("#facts") and "768x768" in page.text_content("#facts")

    # Drag the before/after divider from the middle to a quarter of the width.
    box = page.locator("#stage").bounding_box()
    middle_y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, middle_y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.25, middle_y, steps=5)
    page.mouse.up()
    assert abs(float(page.input_value("#slider")) - 25) < 2
    assert page.evaluate("document.getElementById('after').style.clipPath").startswith("inset(0px 0px 0px 2")

    page.fill("#zoom", "3")
    page.dispatch_event("#zoom", "input")
    assert page.locator("#stage").bounding_box()["width"] == pytest.approx(box["width"] * 3, rel=0.02)

    page.check("#overlay")
    page.wait_for_function("document.getElementById('after').src.includes('/overlay?slice=') && document.getElementById('after').complete "
                           "&& document.getElementById('after').naturalWidth === 768", timeout=120_000)

    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "downloaded.dcm"
    download_info.value.save_as(saved)
    derived = pydicom.dcmread(saved)
    assert (derived.Rows, derived.Columns) == (768, 768)

    # A broken file: a plain message on the page, and the server still answers the next upload.
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(DICOM.read_bytes()[:2000])
    page.set_input_files("#file", str(broken))
    upscale_in_page(page, expect_error=True)
    assert page.text_content("#error").startswith("broken.dcm: ")
    page.set_input_files("#file", str(DICOM))
    upscale_in_page(page)

    uploads = list(temp_root.glob("medsr-serve-*/*/input.dcm"))
    assert uploads, "uploads are kept in the server's own temporary folder"


@pytest.mark.slow
def test_page_shows_the_demo_result_as_the_readme_picture_does(served, page):
    """The view of docs/serve.png (made by benchmarks/make_serve_screenshot.py, never by the tests):
    the MNI152 demo upscaled x3, its PSNR, the divider in the middle, the map off, then on and off."""
    docs_before = SCREENSHOT.read_bytes() if SCREENSHOT.exists() else None
    url, _ = served
    open_page(page, url)
    if "brain-mri" not in page.eval_on_selector_all("#demo option", "options => options.map(o => o.value)"):
        pytest.skip("nilearn's MNI template is not installed (pip install -e '.[demo]')")
    page.select_option("#demo", "brain-mri")
    with page.expect_response(lambda response: "/api/upscale" in response.url) as response_info:
        upscale_in_page(page)
    answer = response_info.value.json()
    (w, h), (big_w, big_h) = (answer["input"]["width"], answer["input"]["height"]), (answer["output"]["width"], answer["output"]["height"])
    assert (big_w, big_h) == (3 * w, 3 * h) and answer["input"]["frames"] == 1

    # both pictures are the x3 result's size, and the facts line says what the server answered
    sizes = page.evaluate("['before', 'after'].map(id => [document.getElementById(id).naturalWidth, document.getElementById(id).naturalHeight])")
    assert sizes == [[big_w, big_h], [big_w, big_h]]
    facts = page.text_content("#facts")
    assert facts.startswith(f"brain-mri.png: {w}x{h} png -> {big_w}x{big_h} with default x3 in "), facts
    found = re.search(r"PSNR against the original: bicubic ([0-9.]+) dB, medsr ([0-9.]+) dB\.$", facts)
    assert found, facts
    bicubic, medsr = float(found[1]), float(found[2])
    assert (bicubic, medsr) == (answer["psnr"]["bicubic"], answer["psnr"]["medsr"]) and medsr > bicubic + 1

    # the divider starts in the middle: slider, the medsr picture's clip and the handle agree
    assert float(page.input_value("#slider")) == 50
    assert page.evaluate("document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 50%)"
    stage, handle = page.locator("#stage").bounding_box(), page.locator("#handle").bounding_box()
    assert abs(handle["x"] - (stage["x"] + stage["width"] / 2)) <= 2
    assert stage["width"] / stage["height"] == pytest.approx(big_w / big_h, rel=0.01)  # the image's own proportions
    assert page.text_content("#tag-before") == "bicubic"
    assert not page.is_visible("#slice-tool")  # one 2-D image: no slice slider

    # the map is off; turning it on shows the overlay, its legend and label; off again restores the view
    def after_src_ends(kind: str) -> None:
        page.wait_for_function(f"new URL(document.getElementById('after').src).pathname.endsWith('/{kind}') && "
                               f"document.getElementById('after').complete && document.getElementById('after').naturalWidth === {big_w}",
                               timeout=60_000)

    assert not page.is_checked("#overlay") and not page.is_visible("#legend")
    assert page.text_content("#tag-after") == "medsr default"
    after_src_ends("after")
    page.check("#overlay")
    after_src_ends("overlay")
    assert page.is_visible("#legend") and page.text_content("#tag-after") == "medsr + hallucination map"
    page.uncheck("#overlay")
    after_src_ends("after")
    assert not page.is_visible("#legend") and page.text_content("#tag-after") == "medsr default"
    assert not page.is_visible("#error")
    assert (SCREENSHOT.read_bytes() if SCREENSHOT.exists() else None) == docs_before  # the tests never write into docs/


def test_serve_without_fastapi_says_what_to_install(tmp_path):
    """The command names the extra to install instead of printing an ImportError traceback."""
    blocker = tmp_path / "fastapi.py"
    blocker.write_text("raise ImportError('blocked for this test', name='fastapi')\n")
    result = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from medsr.cli import main; "
                             "sys.exit(main(['serve']))", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and ".[serve]" in result.stderr and "Traceback" not in result.stderr


def test_a_name_in_any_script_is_kept_and_the_download_says_it(client):
    answer = client.post("/api/upscale", params={"model": "default", "name": "ñandú 日本語.png"}, content=png_bytes(12, 12)).json()
    assert answer["name"] == "ñandú 日本語.png" and answer["download_name"] == "ñandú 日本語-medsr-default-x3.png"
    header = client.get(answer["download"]).headers["content-disposition"]
    assert "filename*=utf-8''" in header and "%E6%97%A5" in header  # RFC 6266: the name percent-encoded
    assert client.post("/api/upscale", params={"name": "../../a/b\\c.png"}, content=png_bytes(12, 12)).json()["name"] == "c.png"


def test_a_wrongly_typed_parameter_is_one_line_not_a_validation_dump(client):
    answer = client.post("/api/upscale", params={"name": "a.png", "through": "maybe"}, content=png_bytes(12, 12))
    assert answer.status_code == 400 and answer.json() == {"error": answer.json()["error"]}
    assert answer.json()["error"].startswith("through: ") and "\n" not in answer.json()["error"]


@pytest.mark.parametrize("options, words", [
    (["--port", "99999"], "argument --port: '99999' is not a port; give a number from 1 to 65535"),
    (["--max-upload-mb", "-1"], "--max-upload-mb -1: give a positive size in MB"),
    (["--max-upload-mb", "nan"], "--max-upload-mb nan: give a positive size in MB"),  # checked before it is made bytes
    (["--model", "through-plane"], "--model through-plane: it makes thick slices thin rather than upscaling images"),
])
def test_options_the_page_cannot_use_are_refused_before_the_banner(options, words, capsys):
    from medsr.cli import main

    with pytest.raises(SystemExit) if options[0] == "--port" else contextlib.nullcontext():
        assert main(["serve", *options]) == 2
    out, err = capsys.readouterr()
    assert "open http" not in out and "Traceback" not in err and words in err
