"""The web page with volumes: a zipped DICOM series and a NIfTI volume, a slice at a time."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import DATA, needs_data
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import open_page, upscale_in_page  # noqa: E402

from medsr.serve import create_app  # noqa: E402

SIEMENS = DATA / "dicom-series" / "siemens-sag-gre-fieldmap"  # 5 sagittal slices of 64x42
DCM2NIIX = shutil.which("dcm2niix")


def zipped_series() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(SIEMENS.glob("*.dcm"), reverse=True):  # the order in the zip does not matter
            archive.write(path, f"export/{path.name}")
    return buffer.getvalue()


def nifti_volume(path, volumes: int = 1) -> None:
    rng = np.random.default_rng(0)
    volume = (rng.random((40, 32, 7) + ((volumes,) if volumes > 1 else ())) * 1000).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 4.0, 1.0])), path)


def test_thin_slices_give_a_view_across_them_and_a_download_with_the_new_grid(client, tmp_path):
    nifti_volume(tmp_path / "volume.nii.gz")
    answer = client.post("/api/upscale?model=default&name=volume.nii.gz&through=true",
                         content=(tmp_path / "volume.nii.gz").read_bytes()).json()
    assert answer["input"]["frames"] == 31  # 7 x 4 mm = 28 mm of slices at the 0.9 mm pixel spacing: 31 slices
    # the plane across the slices at true proportions: 31 slices of 28/31 mm over the shown columns, the file's
    # 40 rows (x, drawn across the screen as a viewer draws an axial slice) x 3 pixels of 0.3 mm
    assert answer["across"]["width"] == 120 and answer["across"]["height"] == round(31 * (28 / 31) / 0.3)
    for kind in ("before", "after"):
        picture = Image.open(io.BytesIO(client.get(answer["across"][kind]).content))
        assert picture.size == (120, answer["across"]["height"])
    with open(tmp_path / "out.nii.gz", "wb") as out:
        out.write(client.get(answer["download"]).content)
    derived = nib.load(tmp_path / "out.nii.gz")
    assert derived.shape == (120, 96, 31) and np.allclose(derived.header.get_zooms(), (0.3, 0.3, 28 / 31), atol=1e-5)


def test_a_4d_file_is_made_thin_volume_by_volume_and_the_page_shows_the_first(client, tmp_path):
    nifti_volume(tmp_path / "fmri.nii.gz", volumes=2)
    answer = client.post("/api/upscale?model=default&name=fmri.nii.gz&through=true",
                         content=(tmp_path / "fmri.nii.gz").read_bytes()).json()
    assert answer["input"]["frames"] == 31 and "holds 2 volumes" in answer["note"]  # one volume's thin slices, not two run together
    picture = Image.open(io.BytesIO(client.get(answer["across"]["after"]).content))
    assert picture.size == (120, answer["across"]["height"])  # x across the screen (test above)
    with open(tmp_path / "out.nii.gz", "wb") as out:
        out.write(client.get(answer["download"]).content)
    assert nib.load(tmp_path / "out.nii.gz").shape == (120, 96, 31, 2)


def test_thin_slices_of_a_2d_image_are_refused(client):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(buffer, format="PNG")
    response = client.post("/api/upscale?model=default&name=flat.png&through=true", content=buffer.getvalue())
    assert response.status_code == 400 and "is not a volume" in response.json()["error"]


@pytest.fixture
def client():
    with TestClient(create_app(models=["default"], precision="fp32")) as test_client:
        yield test_client


@needs_data
def test_a_zipped_series_is_upscaled_as_one_series(client):
    answer = client.post("/api/upscale?model=default&name=head.zip", content=zipped_series()).json()
    assert answer["input"] == {"width": 42, "height": 64, "format": "dicom series", "frames": 5}
    assert answer["volumes"] == 1 and answer["series"] == 1 and answer["frame"] == 2
    assert answer["download_name"] == "head-medsr-default-x3.zip"
    for k in range(5):
        picture = Image.open(io.BytesIO(client.get(f"{answer['after']}?slice={k}").content))
        assert picture.size == (126, 192)
    assert client.get(f"{answer['after']}?slice=5").status_code == 404
    with zipfile.ZipFile(io.BytesIO(client.get(answer["download"]).content)) as archive:
        derived = [pydicom.dcmread(archive.open(name)) for name in archive.namelist()]
    assert len(derived) == 5 and len({ds.SeriesInstanceUID for ds in derived}) == 1
    assert {(ds.Rows, ds.Columns) for ds in derived} == {(192, 126)}
    sources = [pydicom.dcmread(p) for p in SIEMENS.glob("*.dcm")]
    assert {ds.StudyInstanceUID for ds in derived} == {ds.StudyInstanceUID for ds in sources}


@needs_data
def test_a_zipped_study_of_two_series_gives_both_in_the_download(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(SIEMENS.glob("*.dcm")):
            archive.write(path, f"a/{path.name}")
            ds = pydicom.dcmread(path)  # the same slices as a second series of the study
            ds.SeriesInstanceUID += ".2"
            ds.SOPInstanceUID += ".2"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            copy = io.BytesIO()
            ds.save_as(copy)
            archive.writestr(f"b/{path.name}", copy.getvalue())
    answer = client.post("/api/upscale?model=default&name=study.zip", content=buffer.getvalue()).json()
    assert answer["series"] == 2 and answer["volumes"] == 1 and answer["input"]["frames"] == 5
    with zipfile.ZipFile(io.BytesIO(client.get(answer["download"]).content)) as archive:
        derived = [pydicom.dcmread(archive.open(name)) for name in archive.namelist()]
    assert len(derived) == 10 and len({ds.SeriesInstanceUID for ds in derived}) == 2
    assert {(ds.Rows, ds.Columns) for ds in derived} == {(192, 126)}


def test_a_zip_without_dicom_files_gets_a_plain_message(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a scan")
    response = client.post("/api/upscale?model=default&name=notes.zip", content=buffer.getvalue())
    assert response.status_code == 400
    assert response.json()["error"].startswith("notes.zip: holds no DICOM series that forms a volume")
    broken = client.post("/api/upscale?model=default&name=broken.zip", content=b"PK\x03\x04 truncated")
    assert broken.status_code == 400 and "not a readable zip file" in broken.json()["error"]


def test_a_nifti_volume_shows_every_slice(client, tmp_path):
    nifti_volume(tmp_path / "volume.nii.gz")
    answer = client.post("/api/upscale?model=default&name=volume.nii.gz", content=(tmp_path / "volume.nii.gz").read_bytes()).json()
    assert answer["input"]["frames"] == 7 and answer["frame"] == 3
    before = Image.open(io.BytesIO(client.get(f"{answer['before']}?slice=6").content))
    after = Image.open(io.BytesIO(client.get(f"{answer['after']}?slice=6").content))
    overlay = Image.open(io.BytesIO(client.get(f"{answer['overlay']}?slice=6").content))
    # (40, 32) voxels along x and y: drawn as a viewer draws an axial slice, x across the screen
    assert before.size == after.size == overlay.size == (120, 96)
    assert answer["input"]["width"] == 40 and answer["output"]["height"] == 96
    assert not np.array_equal(np.asarray(after), np.asarray(Image.open(io.BytesIO(client.get(f"{answer['after']}?slice=0").content))))


@needs_data
@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed (apt install dcm2niix); .ci/run installs it")
@pytest.mark.parametrize("series", ["siemens-sag-gre-fieldmap", "philips-epi-fmri"])
def test_a_nifti_that_dcm2niix_made_of_a_series_is_drawn_as_the_series_is(client, tmp_path, series):
    """The page draws a NIfTI volume's slices as a DICOM viewer draws the scan: the same picture for the
    series (zipped) and for dcm2niix's conversion of it, a sagittal one and an axial 4-D one."""
    source = DATA / "dicom-series" / series
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(source.iterdir()):
            archive.write(path, path.name)
    subprocess.run([DCM2NIIX, "-z", "n", "-f", "volume", "-o", str(tmp_path), str(source)], capture_output=True, check=True)
    shown = [client.post(f"/api/upscale?model=default&name={name}", content=content).json()
             for name, content in (("series.zip", buffer.getvalue()), ("volume.nii", (tmp_path / "volume.nii").read_bytes()))]
    assert shown[0]["input"] | {"format": ""} == shown[1]["input"] | {"format": ""}
    assert shown[0]["frame"] == shown[1]["frame"] and shown[0]["input"]["frames"] % 2 == 1  # the middle slice, in either order
    before = [np.asarray(Image.open(io.BytesIO(client.get(answer["before"]).content)), dtype=int) for answer in shown]
    assert before[0].shape == before[1].shape and np.abs(before[0] - before[1]).max() <= 1


@needs_data
@pytest.mark.slow
def test_page_walks_through_a_zipped_series_in_chromium(served, page, tmp_path):
    url, _ = served
    open_page(page, url)
    archive = tmp_path / "series.zip"
    archive.write_bytes(zipped_series())
    page.set_input_files("#file", str(archive))
    upscale_in_page(page)
    assert page.is_visible("#slice-tool") and page.text_content("#slice-value") == "3 of 5"
    page.wait_for_function("document.getElementById('after').src.endsWith('slice=2') && document.getElementById('after').complete")
    page.fill("#slice", "4")
    page.dispatch_event("#slice", "input")
    page.wait_for_function("document.getElementById('after').src.endsWith('slice=4') && document.getElementById('after').complete "
                           "&& document.getElementById('before').src.endsWith('slice=4') && document.getElementById('after').naturalWidth === 126")
    assert page.text_content("#slice-value") == "5 of 5"
    assert "5 slices" in page.text_content("#facts")
    assert not page.is_visible("#view-tool")  # no slices were made thin


@pytest.mark.slow
def test_page_shows_a_volume_across_its_thin_slices_in_chromium(served, page, tmp_path):
    url, _ = served
    open_page(page, url)
    nifti_volume(tmp_path / "volume.nii.gz")
    page.set_input_files("#file", str(tmp_path / "volume.nii.gz"))
    page.check("#through")
    upscale_in_page(page)
    assert page.text_content("#slice-value") == "16 of 31" and page.is_visible("#view-tool")
    page.select_option("#view", "across")
    page.wait_for_function("document.getElementById('after').src.endsWith('/across-after') && document.getElementById('after').complete "
                           "&& document.getElementById('before').src.endsWith('/across-before') && document.getElementById('after').naturalWidth === 120")
    assert not page.is_visible("#slice-tool") and not page.is_visible("#overlay-toggle")
    box = page.locator("#stage").bounding_box()
    assert box["height"] / box["width"] == pytest.approx(93 / 120, rel=0.02)  # true proportions across the slices (x across)
    page.select_option("#view", "slices")
    page.wait_for_function("document.getElementById('after').src.includes('/after?slice=15')")


def test_volume_errors_name_the_users_file(client, tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 6), np.float32), np.eye(4)), tmp_path / "iso1mm.nii.gz")  # already thin
    answer = client.post("/api/upscale?model=default&name=iso1mm.nii.gz&through=true", content=(tmp_path / "iso1mm.nii.gz").read_bytes())
    error = answer.json()["error"]
    assert answer.status_code == 400 and error.startswith("iso1mm.nii.gz: ") and "input" not in error
    assert "6 slices are 1 mm apart" in error and "untick 'Thin slices'" in error and "--" not in error  # the page's words, not the CLI's


@needs_data
def test_a_zipped_series_names_its_own_files_and_says_how_many_volumes_it_holds(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(SIEMENS.glob("*.dcm")):
            if path.name != "3.dcm":  # a slice missing: no volume
                archive.write(path, f"export/{path.name}")
    answer = client.post("/api/upscale?model=default&name=gap.zip", content=buffer.getvalue())
    assert answer.status_code == 400 and "export/" in answer.json()["error"] and not re.search(r"\b\d{5}\b", answer.json()["error"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((DATA / "dicom-series" / "philips-epi-fmri").glob("*.dcm")):
            archive.write(path, path.name)
    answer = client.post("/api/upscale?model=default&name=fmri.zip", content=buffer.getvalue()).json()
    assert answer["volumes"] == 3 and "holds 3 volumes" in answer["note"]


@pytest.mark.parametrize("upward", [True, False])
def test_across_the_slices_the_head_is_at_the_top_whichever_way_the_slices_run(client, tmp_path, upward):
    """The same head stored inferior-to-superior and superior-to-inferior: its top slice drawn at the top both times,
    and no hallucination map for thin slices (its 'input' would be the cubic interpolation, not the scan)."""
    volume = np.full((40, 32, 7), 100, np.int16)
    volume[:, :, -1 if upward else 0] = 1000  # the slice nearest the head is bright
    affine = np.diag([0.9, 0.9, 4.0 if upward else -4.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "head.nii.gz")
    answer = client.post("/api/upscale?model=default&name=head.nii.gz&through=true", content=(tmp_path / "head.nii.gz").read_bytes()).json()
    picture = np.asarray(Image.open(io.BytesIO(client.get(answer["across"]["after"]).content)), dtype=float)
    assert picture[:5].mean() > picture[-5:].mean() + 50
    refused = client.get(answer["overlay"])
    assert refused.status_code == 404 and "slices made thin get none" in refused.json()["error"]


def test_a_signed_dicoms_after_picture_keeps_its_grey_levels(client):
    """A signed CT's values sit in a sliver of [0, 1]: kept at float16 the 'after' picture had 14 grey levels."""
    from pydicom.data import get_testdata_file

    answer = client.post("/api/upscale?model=default&name=ct.dcm", content=open(get_testdata_file("CT_small.dcm"), "rb").read()).json()
    levels = {kind: len(np.unique(np.asarray(Image.open(io.BytesIO(client.get(answer[kind]).content))))) for kind in ("before", "after")}
    assert levels["after"] > 0.8 * levels["before"] > 100, levels
