"""Unit tests for medsr.io on small synthetic files made in tmp_path (no shared data needed)."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medsr
from medsr.errors import MedsrError
from medsr.io import (
    SUPPORTED_EXTENSIONS,
    Image,
    from_uint,
    is_supported,
    read_image,
    read_mnist,
    to_uint,
    write_image,
)
from medsr.io.nifti import scaled_affine

RNG = np.random.default_rng(7)


def upscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of the last two axes (what a perfect SR of flat pixels gives)."""
    return np.repeat(np.repeat(pixels, factor, axis=-2), factor, axis=-1)


# ---------------------------------------------------------------- helpers


def test_to_uint_from_uint_round_trip_and_clip():
    for bits, dtype in ((8, np.uint8), (12, np.uint16), (16, np.uint16)):
        stored = RNG.integers(0, 2**bits, size=(5, 7))
        back = to_uint(from_uint(stored, bits), bits)
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, stored)
    np.testing.assert_array_equal(to_uint(np.array([-0.5, 0.5, 1.7]), 8), [0, 128, 255])


def test_supported_extensions_and_sniffing(tmp_path):
    assert {".png", ".jpg", ".tif", ".dcm", ".nii", ".nii.gz"} <= set(SUPPORTED_EXTENSIONS)
    assert is_supported("a/b/scan.NII.GZ") and is_supported("x.Png")
    assert not is_supported(tmp_path / "notes.txt")
    bare = tmp_path / "1.2.840.1234"  # PACS-style name: suffix '.1234' is not an extension
    bare.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert is_supported(bare)


# ---------------------------------------------------------------- raster


def test_png_8bit_round_trip(tmp_path):
    arr = RNG.integers(0, 256, size=(20, 30), dtype=np.uint8)
    src = tmp_path / "in.png"
    PILImage.fromarray(arr).save(src)
    img = read_image(src)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (20, 30)
    assert img.meta.format == "png" and img.meta.bit_depth == 8 and img.meta.value_range == (0.0, 255.0)
    np.testing.assert_array_equal(to_uint(img.pixels, 8), arr)
    out = write_image(tmp_path / "out.png", img)
    with PILImage.open(out) as im:
        assert im.format == "PNG" and im.mode == "L"
        np.testing.assert_array_equal(np.array(im), arr)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_round_trip_stays_16bit(tmp_path, suffix):
    arr = RNG.integers(0, 65536, size=(16, 12)).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    src = tmp_path / f"in{suffix}"
    PILImage.fromarray(arr).save(src)
    img = read_image(src)
    assert img.meta.bit_depth == 16 and img.meta.value_range == (0.0, 65535.0)
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0
    out = write_image(tmp_path / f"out{suffix}", img)
    with PILImage.open(out) as im:
        assert im.mode in ("I;16", "I;16B", "I")  # 16-bit in the file, not squeezed to 8
        np.testing.assert_array_equal(np.array(im).astype(np.uint16), arr)


def test_16bit_input_written_as_jpeg_is_8bit(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    PILImage.fromarray(arr).save(tmp_path / "in.png")
    out = write_image(tmp_path / "out.jpg", read_image(tmp_path / "in.png"))
    with PILImage.open(out) as im:
        assert im.format == "JPEG" and im.mode == "L"
        assert abs(int(np.array(im)[-1, -1]) - 255) <= 3


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "1"])
def test_colour_and_odd_modes_become_grayscale(tmp_path, mode):
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[:, :6] = (255, 0, 0)  # left half pure red
    rgb[:, 6:] = (255, 255, 255)  # right half white
    src = tmp_path / f"in_{mode}.png"
    PILImage.fromarray(rgb).convert(mode).save(src)
    img = read_image(src)
    assert img.pixels.shape == (10, 12) and img.pixels.dtype == np.float32
    assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    assert img.meta.bit_depth == 8
    assert img.pixels[0, -1] == pytest.approx(1.0)
    if mode != "1":  # 1-bit dithers red to black or white
        assert img.pixels[0, 0] == pytest.approx(0.299, abs=0.01)  # luminance of pure red
    assert img.meta.extra.get("colour", False) == (mode in ("RGB", "RGBA", "P"))  # half of it is red: colour, said so


def test_multipage_tiff_stack_round_trip_and_png_stack_refused(tmp_path):
    stack = RNG.random((3, 8, 9)).astype(np.float32)
    img = Image(stack, read_image(_png(tmp_path)).meta)
    out = write_image(tmp_path / "stack.tif", img)
    back = read_image(out)
    assert back.pixels.shape == (3, 8, 9)
    np.testing.assert_array_equal(to_uint(back.pixels, 8), to_uint(stack, 8))
    with pytest.raises(MedsrError, match=r"stack\.png.*--format tiff"):
        write_image(tmp_path / "stack.png", img)


def test_target_extension_picks_format(tmp_path):
    img = read_image(_png(tmp_path))
    out = write_image(tmp_path / "out.tif", img)
    with PILImage.open(out) as im:
        assert im.format == "TIFF"
    out = write_image(tmp_path / "noext", img, format="jpeg")
    with PILImage.open(out) as im:
        assert im.format == "JPEG"
    with pytest.raises(MedsrError, match="out.gif.*unknown output format"):
        write_image(tmp_path / "out.gif", img, format="gif")


def _png(folder, name="small.png", size=(24, 32)):
    path = folder / name
    PILImage.fromarray(RNG.integers(0, 256, size=size, dtype=np.uint8)).save(path)
    return path


def _jpeg(folder):
    path = folder / "photo.jpg"
    PILImage.fromarray(RNG.integers(0, 256, size=(64, 64), dtype=np.uint8)).save(path, quality=90)
    return path


def test_truncated_png_and_jpeg(tmp_path):
    for make in (_png, _jpeg):
        good = make(tmp_path)
        data = good.read_bytes()
        bad = good.with_name("cut_" + good.name)
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(MedsrError, match=bad.name):
            read_image(bad)


def test_unreadable_raster_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "readme.png"
    text.write_text("this is not a picture\n")
    for path in (empty, text):
        with pytest.raises(MedsrError, match=path.name):
            read_image(path)
    unknown = tmp_path / "scan.xyz"
    unknown.write_text("x")
    with pytest.raises(MedsrError, match=r"scan\.xyz.*\.png"):
        read_image(unknown)
    with pytest.raises(MedsrError, match="missing.png.*not found"):
        read_image(tmp_path / "missing.png")


def test_float_and_32bit_tiff_refused(tmp_path):
    PILImage.fromarray(RNG.random((8, 8)).astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(MedsrError, match=r"float\.tif.*8- or 16-bit"):
        read_image(tmp_path / "float.tif")
    PILImage.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(MedsrError, match=r"big\.tif.*8- or 16-bit"):
        read_image(tmp_path / "big.tif")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    data = bytearray(_png(tmp_path, size=(4, 4)).read_bytes())
    # Patch the IHDR width/height to 30000x30000 and fix its CRC: a tiny file declaring 900 MP.
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    with pytest.raises(MedsrError, match=r"bomb\.png.*too large"):
        read_image(bomb)


# ---------------------------------------------------------------- DICOM


def make_dicom(path, stored, *, bits_stored=12, signed=False, photometric="MONOCHROME2",
               spacing=(0.5, 0.5), **elements):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "t1 axial"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_an_8_bit_file_of_a_signed_ct_shows_its_window(tmp_path):
    hu = np.linspace(-1000, 1000, 8 * 10).reshape(8, 10).round()  # air to bone, in a signed 16-bit range
    ct = make_dicom(tmp_path / "ct.dcm", hu, bits_stored=16, signed=True, RescaleSlope=1, RescaleIntercept=0,
                    WindowCenter=40, WindowWidth=400)
    shown = np.asarray(PILImage.open(write_image(tmp_path / "ct.bmp", read_image(ct))), dtype=float)
    expected = np.clip((hu - (40 - 200)) / 400, 0, 1) * 255  # the soft-tissue window, black below, white above
    assert np.abs(shown - expected).max() <= 1
    no_window = make_dicom(tmp_path / "plain.dcm", hu, bits_stored=16, signed=True)
    shown = np.asarray(PILImage.open(write_image(tmp_path / "plain.bmp", read_image(no_window))), dtype=float)
    assert shown.min() == 0 and shown.max() == 255  # darkest to brightest, not a sliver of the int16 range
    inverted = make_dicom(tmp_path / "m1.dcm", hu, bits_stored=16, signed=True, photometric="MONOCHROME1",
                          WindowCenter=40, WindowWidth=400)
    shown = np.asarray(PILImage.open(write_image(tmp_path / "m1.bmp", read_image(inverted))), dtype=float)
    assert np.abs(shown - (255 - expected)).max() <= 1  # MONOCHROME1: high values dark, the same window


def voi_lut_item(curve: np.ndarray, first: int = 0) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(curve), first, 16]
    item.add_new(0x00283006, "US", [int(v) for v in curve])  # LUTData
    return item


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_an_8_bit_file_of_a_dicom_with_a_voi_lut_shows_it_as_dcmtk_does(photometric, tmp_path):
    import shutil
    import subprocess

    stored = np.linspace(0, 4095, 16 * 20).reshape(16, 20).round()
    curve = np.round(np.sqrt(np.arange(3000) / 2999) * 60000)  # a display curve over the first 3000 values, then its top
    path = make_dicom(tmp_path / "cr.dcm", stored, photometric=photometric, VOILUTSequence=[voi_lut_item(curve)],
                      WindowCenter=2048, WindowWidth=400)  # the LUT wins over a window, as in pydicom's apply_voi_lut
    shown = np.asarray(PILImage.open(write_image(tmp_path / "cr.bmp", read_image(path))), dtype=float)
    expected = curve[np.minimum(stored, 2999).astype(int)] / 65535 * 255  # 16 bits per entry: 60000 is not quite white
    expected = 255 - expected if photometric == "MONOCHROME1" else expected
    assert np.abs(shown - expected).max() <= 1
    if shutil.which("dcmj2pnm"):  # dcmtk's renderer with the file's first VOI LUT: the same picture
        subprocess.run(["dcmj2pnm", "+on", "+Wl", "1", str(path), str(tmp_path / "dcmtk.png")], check=True, capture_output=True)
        assert np.abs(shown - np.asarray(PILImage.open(tmp_path / "dcmtk.png"), dtype=float)).max() <= 1


def test_a_16_bit_file_of_a_dicom_spans_its_values(tmp_path):
    hu = np.linspace(-1000, 1000, 8 * 10).reshape(8, 10).round()
    ct = make_dicom(tmp_path / "ct.dcm", hu, bits_stored=16, signed=True, WindowCenter=40, WindowWidth=400)
    shown = np.asarray(PILImage.open(write_image(tmp_path / "ct.png", read_image(ct))), dtype=float)
    assert shown.min() == 0 and shown.max() == 65535  # all of it (no window clips 16 bits), not 3 % of the int16 range
    np.testing.assert_allclose(shown, (hu + 1000) / 2000 * 65535, atol=1)


@pytest.mark.parametrize("fmt", ["jpeg", "bmp"])
def test_an_8_bit_file_of_a_12_bit_scan_in_a_16_bit_tiff_is_not_near_black(fmt, tmp_path):
    scan = np.linspace(100, 4000, 8 * 10).reshape(8, 10).astype(np.uint16)  # 12 bits used of 16
    PILImage.fromarray(scan).save(tmp_path / "mr.tif")
    shown = np.asarray(PILImage.open(write_image(tmp_path / "mr.x", read_image(tmp_path / "mr.tif"), format=fmt)), dtype=float)
    assert shown.min() <= 2 and shown.max() >= 250  # darkest to brightest, as for a DICOM or NIfTI (it was 0-16)


def test_a_derived_dicom_moves_what_is_given_in_pixels_and_keeps_its_lossy_history(tmp_path):
    from pydicom.pixels import pack_bits
    from pydicom.uid import JPEGBaseline8Bit

    path = make_dicom(tmp_path / "cr.dcm", RNG.integers(0, 4096, size=(8, 10)), NominalScannedPixelSpacing=[0.2, 0.2],
                      ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=2, ShutterRightVerticalEdge=9,
                      ShutterUpperHorizontalEdge=3, ShutterLowerHorizontalEdge=7, DerivationDescription="lossy 10:1")
    ds = pydicom.dcmread(path)
    overlay = np.zeros((8, 10), np.uint8)
    overlay[2:4, 5:9] = 1
    for element, vr, value in ((0x0010, "US", 8), (0x0011, "US", 10), (0x0015, "IS", 1), (0x0040, "CS", "G"),
                               (0x0050, "SS", [1, 1]), (0x0100, "US", 1), (0x0102, "US", 0), (0x3000, "OW", pack_bits(overlay.ravel()))):
        ds.add_new((0x6000, element), vr, value)
    ds.save_as(path)
    image = read_image(path)
    image.meta.source.file_meta.TransferSyntaxUID = JPEGBaseline8Bit  # as a JPEG file that does not say it is lossy
    out = pydicom.dcmread(write_image(tmp_path / "x3.dcm", type(image)(np.kron(image.pixels, np.ones((3, 3))), image.meta), scale=3))
    assert [float(v) for v in out.NominalScannedPixelSpacing] == pytest.approx([0.2 / 3] * 2)
    edges = [int(out.get(f"Shutter{side}")) for side in ("LeftVerticalEdge", "RightVerticalEdge", "UpperHorizontalEdge", "LowerHorizontalEdge")]
    assert edges == [4, 27, 7, 21]  # the same columns 2-9 and rows 3-7 shown, on the finer grid
    np.testing.assert_array_equal(out.overlay_array(0x6000), np.kron(overlay, np.ones((3, 3), np.uint8)))
    assert (out.LossyImageCompression, out.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    assert out.DerivationDescription.startswith("lossy 10:1; medsr super-resolution x3")


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7"])
def test_a_1_bit_dicom_is_refused_before_any_work(tmp_path, sop_class):
    from pydicom.pixels import pack_bits

    ds = pydicom.dcmread(make_dicom(tmp_path / "seg.dcm", np.zeros((8, 8))))
    ds.SOPClassUID, ds.BitsAllocated, ds.BitsStored, ds.HighBit = sop_class, 1, 1, 0
    ds.PixelData = pack_bits(np.eye(8, dtype=np.uint8).ravel())
    ds.save_as(tmp_path / "seg.dcm")
    with pytest.raises(MedsrError, match=r"seg\.dcm: a 1-bit DICOM \(a segmentation or mask\), not an image to upscale"):
        read_image(tmp_path / "seg.dcm")


def test_dicom_12bit_read(tmp_path):
    stored = RNG.integers(0, 4096, size=(6, 8))
    stored[0, 0], stored[0, 1] = 0, 4095
    img = read_image(make_dicom(tmp_path / "mr.dcm", stored))
    assert img.meta.format == "dicom" and img.meta.bit_depth == 12
    assert img.meta.value_range == (0.0, 4095.0)
    assert img.meta.pixel_spacing == (0.5, 0.5)
    assert img.meta.photometric == "MONOCHROME2"
    np.testing.assert_allclose(img.pixels, stored / 4095, atol=1e-7)


def test_dicom_derived_x3(tmp_path):
    stored = RNG.integers(0, 4096, size=(6, 8))
    src = make_dicom(tmp_path / "mr.dcm", stored, LargestImagePixelValue=4095, LossyImageCompression="01")
    img = read_image(src)
    out = write_image(tmp_path / "out" / "mr_x3.dcm", Image(upscale(img.pixels, 3), img.meta),
                      scale=3, model_name="esrgan-test")
    orig, new = pydicom.dcmread(src), pydicom.dcmread(out)
    assert new.SOPInstanceUID != orig.SOPInstanceUID
    assert new.SeriesInstanceUID != orig.SeriesInstanceUID
    assert new.StudyInstanceUID == orig.StudyInstanceUID
    assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
    assert new.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (new.Rows, new.Columns) == (18, 24)
    assert [float(v) for v in new.PixelSpacing] == pytest.approx([0.5 / 3, 0.5 / 3])
    assert list(new.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert "medsr" in new.DerivationDescription and "x3" in new.DerivationDescription
    assert "esrgan-test" in new.DerivationDescription
    assert new.SeriesDescription.endswith("medsr x3")
    assert new.BitsStored == 12 and new.BitsAllocated == 16 and new.HighBit == 11
    assert new.SourceImageSequence[0].ReferencedSOPInstanceUID == orig.SOPInstanceUID
    assert "LargestImagePixelValue" not in new  # no longer true of the new pixels
    assert new.LossyImageCompression == "01"  # the history stays lossy
    np.testing.assert_array_equal(new.pixel_array, upscale(stored, 3))


@pytest.mark.skipif(shutil.which("dcmconv") is None, reason="needs dcmtk's dcmconv (apt install dcmtk; .ci/run installs it)")
def test_a_big_endian_dicom_is_derived_as_little_endian(tmp_path):
    stored = RNG.integers(0, 4096, size=(6, 8))
    little = make_dicom(tmp_path / "little.dcm", stored, PatientName="Doe^Jane", SliceThickness=3.0)
    subprocess.run(["dcmconv", "+tb", str(little), str(tmp_path / "big.dcm")], check=True, capture_output=True)
    img = read_image(tmp_path / "big.dcm")
    new = pydicom.dcmread(write_image(tmp_path / "out.dcm", Image(upscale(img.pixels, 3), img.meta), scale=3))
    assert new.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (str(new.PatientName), float(new.SliceThickness), new.Rows) == ("Doe^Jane", 3.0, 18)  # the header's values, not their bytes
    np.testing.assert_array_equal(new.pixel_array, upscale(stored, 3))


def test_dicom_signed_ct_round_trip_exact(tmp_path):
    stored = RNG.integers(-2048, 2048, size=(5, 7))
    stored[0, 0] = -2048
    src = make_dicom(tmp_path / "ct.dcm", stored, signed=True, RescaleIntercept=-1024, RescaleSlope=1)
    img = read_image(src)
    assert img.meta.value_range == (-3072.0, 1023.0)  # stored range passed through the rescale, in HU
    assert img.pixels[0, 0] == 0.0
    out = write_image(tmp_path / "ct_x1.dcm", img, scale=1)
    np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, stored)
    # Reading the written file gives the same mapping, not one re-fitted to the content.
    np.testing.assert_array_equal(read_image(out).pixels, img.pixels)


def test_dicom_monochrome1_inverted_and_kept(tmp_path):
    stored = RNG.integers(0, 1024, size=(4, 6))
    src = make_dicom(tmp_path / "cr.dcm", stored, bits_stored=10, photometric="MONOCHROME1")
    img = read_image(src)
    assert img.meta.photometric == "MONOCHROME1"
    np.testing.assert_allclose(img.pixels, 1 - stored / 1023, atol=1e-6)
    out = write_image(tmp_path / "cr_x1.dcm", img, scale=1)
    new = pydicom.dcmread(out)
    assert new.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(new.pixel_array, stored)


def test_dicom_multiframe_and_functional_group_spacing(tmp_path):
    stored = RNG.integers(0, 256, size=(3, 4, 5))
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.6]
    group = Dataset()
    group.PixelMeasuresSequence = [measures]
    src = make_dicom(tmp_path / "mf.dcm", stored, bits_stored=8, spacing=None,
                     SharedFunctionalGroupsSequence=[group])
    img = read_image(src)
    assert img.pixels.shape == (3, 4, 5) and img.meta.pixel_spacing == (0.8, 0.6)
    out = write_image(tmp_path / "mf_x2.dcm", Image(upscale(img.pixels, 2), img.meta), scale=2)
    new = pydicom.dcmread(out)
    assert new.NumberOfFrames == 3 and (new.Rows, new.Columns) == (8, 10)
    nested = new.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in nested] == pytest.approx([0.4, 0.3])
    assert read_image(out).meta.pixel_spacing == pytest.approx((0.4, 0.3))


def test_dicom_rgb_becomes_gray_and_writes_monochrome2(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :3] = (255, 0, 0)
    rgb[:, 3:] = (255, 255, 255)
    path = make_dicom(tmp_path / "rgb.dcm", np.zeros((4, 6)), bits_stored=8, photometric="RGB")
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.BitsAllocated = 3, 0, 8
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)
    img = read_image(path)
    assert img.pixels.shape == (4, 6) and img.meta.photometric == "RGB" and img.meta.extra["colour"]
    assert img.pixels[0, 0] == pytest.approx(0.299, abs=0.01) and img.pixels[0, -1] == pytest.approx(1.0)
    new = pydicom.dcmread(write_image(tmp_path / "gray.dcm", img))
    assert new.PhotometricInterpretation == "MONOCHROME2" and new.SamplesPerPixel == 1
    assert "PlanarConfiguration" not in new
    np.testing.assert_array_equal(new.pixel_array, to_uint(img.pixels, 8))


def test_dicom_zero_spacing_is_unknown(tmp_path):
    img = read_image(make_dicom(tmp_path / "z.dcm", np.ones((4, 4)), spacing=(0, 0)))
    assert img.meta.pixel_spacing is None


def test_dicom_without_extension_is_read(tmp_path):
    stored = RNG.integers(0, 4096, size=(4, 4))
    path = make_dicom(tmp_path / "IM0001", stored)
    np.testing.assert_allclose(read_image(path).pixels, stored / 4095, atol=1e-7)


def test_dicom_without_pixel_data(tmp_path):
    path = make_dicom(tmp_path / "nopix.dcm", np.ones((4, 4)))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MedsrError, match=r"nopix\.dcm.*no pixel data"):
        read_image(path)


def test_dicom_truncated(tmp_path):
    path = make_dicom(tmp_path / "cut.dcm", RNG.integers(0, 4096, size=(64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    with pytest.raises(MedsrError, match=r"cut\.dcm"):
        read_image(path)


@pytest.mark.parametrize("bits", [8, 16])
def test_raster_to_dicom_secondary_capture(tmp_path, bits):
    arr = RNG.integers(0, 2**bits, size=(10, 12)).astype(np.uint8 if bits == 8 else np.uint16)
    PILImage.fromarray(arr).save(tmp_path / "in.png")
    img = read_image(tmp_path / "in.png")
    out = write_image(tmp_path / "in.dcm", img, format="dcm", model_name="m")
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.BitsAllocated == bits and ds.BitsStored == bits
    np.testing.assert_array_equal(ds.pixel_array, arr)
    if shutil.which("dciodvfy"):  # the DICOM validator finds no error in a file medsr made from scratch
        check = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
        assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")], check.stderr


# ---------------------------------------------------------------- NIfTI


def make_nifti(path, shape=(4, 5, 6), zooms=(1.0, 1.0, 3.0), dtype=np.int16):
    data = RNG.integers(-100, 1000, size=shape).astype(dtype)
    angle = np.deg2rad(30)  # a rotated affine, so the column arithmetic is really tested
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(zooms)
    affine[:3, 3] = (10.0, -20.0, 5.0)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, data, affine


def test_a_nifti_gz_whose_checksum_fails_is_refused_not_read_as_numbers(tmp_path):
    path, _, _ = make_nifti(tmp_path / "vol.nii.gz", shape=(16, 16, 8))
    packed = bytearray(gzip.compress(gzip.decompress(path.read_bytes())))
    packed[-8] ^= 0xFF  # the CRC at the stream's end no longer matches: its bytes were damaged on the way
    path.write_bytes(bytes(packed))
    with pytest.raises(MedsrError, match=r"vol\.nii\.gz: not a readable NIfTI file \(truncated or corrupt: CRC check failed"):
        read_image(path)


def test_nifti_read_default_slice_axis(tmp_path):
    path, data, _ = make_nifti(tmp_path / "vol.nii.gz")
    img = read_image(path)
    assert img.meta.format == "nifti" and img.meta.slice_axis == 2
    assert img.pixels.shape == (6, 4, 5)
    assert img.meta.value_range == (float(data.min()), float(data.max()))
    assert img.meta.bit_depth == 16 and img.meta.pixel_spacing == pytest.approx((1.0, 1.0))
    lo, hi = img.meta.value_range
    np.testing.assert_allclose(img.pixels[3], (data[:, :, 3] - lo) / (hi - lo), atol=1e-6)


def test_nifti_to_dicom_keeps_values_and_refuses_a_volume(tmp_path):
    path, data, _ = make_nifti(tmp_path / "one.nii.gz", shape=(4, 5, 1))
    ds = pydicom.dcmread(write_image(tmp_path / "one.dcm", read_image(path), format="dcm"))
    assert "NumberOfFrames" not in ds and ds.RescaleType == "US"
    real = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # the source's own values, to one 16-bit step of their range
    np.testing.assert_allclose(real, data[:, :, 0], atol=(data.max() - data.min()) / 65535)
    volume, _, _ = make_nifti(tmp_path / "vol.nii.gz")
    with pytest.raises(MedsrError, match=r"vol\.dcm: cannot write the 6 slices of a nifti volume as DICOM.*--format nii"):
        write_image(tmp_path / "vol.dcm", read_image(volume), format="dcm")
    assert not (tmp_path / "vol.dcm").exists()


def test_nifti_slice_axis_choice(tmp_path):
    path, data, _ = make_nifti(tmp_path / "vol.nii", zooms=(3.0, 1.0, 1.0))
    assert read_image(path).meta.slice_axis == 0  # the coarse axis
    img = read_image(path, slice_axis=1)
    assert img.pixels.shape == (5, 4, 6) and img.meta.pixel_spacing == pytest.approx((3.0, 1.0))
    tie, _, _ = make_nifti(tmp_path / "iso.nii", zooms=(1.0, 1.0, 1.0))
    assert read_image(tie).meta.slice_axis == 2
    with pytest.raises(MedsrError, match=r"vol\.nii.*slice_axis"):
        read_image(path, slice_axis=3)


def test_nifti_write_x2_affine_and_alignment(tmp_path):
    path, data, affine = make_nifti(tmp_path / "vol.nii.gz")
    source = nib.load(path)
    source.header["pixdim"][4] = 2.5  # a 3-D file's repetition time, which dcm2niix writes there
    nib.save(source, path)
    img = read_image(path)
    out = write_image(tmp_path / "vol_x2.nii.gz", Image(upscale(img.pixels, 2), img.meta), scale=2)
    new = nib.load(out)
    assert new.shape == (8, 10, 6)
    assert new.get_data_dtype() == np.int16
    np.testing.assert_allclose(new.affine[:3, :2], affine[:3, :2] / 2, atol=1e-5)
    np.testing.assert_allclose(new.affine[:3, 2], affine[:3, 2], atol=1e-5)
    for k in (0, 5):  # the outer corner of voxel (0, 0, k) stays where it was
        corner = np.array([-0.5, -0.5, k, 1.0])
        np.testing.assert_allclose(new.affine @ corner, affine @ corner, atol=1e-4)
    assert new.header.get_zooms() == pytest.approx((0.5, 0.5, 3.0))
    assert new.header["pixdim"][4] == 2.5  # the rest of the header as it was
    np.testing.assert_array_equal(np.asanyarray(new.dataobj)[::2, ::2, :], data)


def two_spaces(path, sform_code=4):
    """A NIfTI whose qform (scanner space, code 1) and sform (another space, e.g. MNI: 4) differ."""
    path, data, affine = make_nifti(path)
    image = nib.load(path)
    sform = affine.copy()
    sform[:3, 3] += (5.0, -7.0, 3.0)
    image.set_qform(affine, code=1)
    image.set_sform(sform, code=sform_code)
    nib.save(image, path)
    return path, affine, sform


def test_nifti_write_keeps_qform_and_sform_apart_with_their_codes(tmp_path):
    path, qform, sform = two_spaces(tmp_path / "vol.nii.gz")
    img = read_image(path)
    out = nib.load(write_image(tmp_path / "vol_x2.nii.gz", Image(upscale(img.pixels, 2), img.meta), scale=2))
    new_sform, sform_code = out.header.get_sform(coded=True)
    new_qform, qform_code = out.header.get_qform(coded=True)
    assert (int(sform_code), int(qform_code)) == (4, 1)
    np.testing.assert_allclose(new_sform, scaled_affine(sform, [0, 1], 2), atol=1e-4)
    np.testing.assert_allclose(new_qform, scaled_affine(qform, [0, 1], 2), atol=1e-4)
    # an unset sform stays unset rather than claiming a space the source did not
    path, qform, _ = two_spaces(tmp_path / "qonly.nii.gz", sform_code=0)
    img = read_image(path)
    out = nib.load(write_image(tmp_path / "qonly_x2.nii.gz", Image(upscale(img.pixels, 2), img.meta), scale=2))
    assert int(out.header["sform_code"]) == 0 and int(out.header["qform_code"]) == 1
    np.testing.assert_allclose(out.affine, scaled_affine(qform, [0, 1], 2), atol=1e-4)


def test_nifti_round_trip_scale1_exact_ints(tmp_path):
    path, data, affine = make_nifti(tmp_path / "vol.nii")
    out = write_image(tmp_path / "same.nii", read_image(path))
    new = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(new.dataobj), data)
    np.testing.assert_allclose(new.affine, affine, atol=1e-5)


def test_nifti_trailing_singleton_ok(tmp_path):
    vol = RNG.random((3, 4, 5, 1)).astype(np.float32)
    image = nib.Nifti1Image(vol, np.eye(4))
    image.header.set_zooms((1.0, 1.0, 1.0, 2.5))  # one time point, TR 2.5 s
    nib.save(image, tmp_path / "one.nii")
    read = read_image(tmp_path / "one.nii")
    assert read.pixels.shape == (5, 3, 4)
    out = nib.load(write_image(tmp_path / "one_x2.nii", Image(upscale(read.pixels, 2), read.meta), scale=2))
    assert out.shape == (6, 8, 5, 1) and out.header.get_zooms()[3] == 2.5  # a 4-D file stays 4-D, as the README says


def test_nifti_corrupt(tmp_path):
    path, _, _ = make_nifti(tmp_path / "bad.nii.gz", shape=(20, 20, 20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsrError, match=r"bad\.nii\.gz"):
        read_image(path)


# ---------------------------------------------------------------- MNIST


def write_idx(path, magic, array, compress=True):
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def test_mnist_read_gzip_and_plain(tmp_path):
    images = RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for compress in (True, False):
        ip = write_idx(tmp_path / f"img{compress}", 0x803, images, compress)
        lp = write_idx(tmp_path / f"lab{compress}", 0x801, labels, compress)
        got_images, got_labels = read_mnist(ip, lp)
        assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)
    assert read_mnist(ip)[1] is None


def test_mnist_bad_files(tmp_path):
    images = RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = write_idx(tmp_path / "labels.gz", 0x801, np.arange(5, dtype=np.uint8))
    with pytest.raises(MedsrError, match=r"labels\.gz.*magic"):
        read_mnist(labels)  # labels passed as images
    short = tmp_path / "short.idx"
    write_idx(short, 0x803, images, compress=False)
    short.write_bytes(short.read_bytes()[:-10])
    with pytest.raises(MedsrError, match=r"short\.idx.*truncated"):
        read_mnist(short)
    good = write_idx(tmp_path / "images.gz", 0x803, images)
    four = write_idx(tmp_path / "four.gz", 0x801, np.arange(4, dtype=np.uint8))
    with pytest.raises(MedsrError, match=r"four\.gz.*4 labels for 5 images"):
        read_mnist(good, four)


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("name", ["out.png", "out.tif", "out.dcm", "out.nii.gz"])
def test_write_leaves_only_the_target(tmp_path, name):
    img = read_image(_png(tmp_path))
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / name).write_bytes(b"old contents")
    out = write_image(folder / name, img)
    assert sorted(p.name for p in folder.iterdir()) == [name]
    assert out.read_bytes() != b"old contents"
    assert read_image(out).pixels.shape == (24, 32)


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    import medsr.io.raster as raster

    def broken(path, image, fmt, target=None):
        path.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    img = read_image(_png(tmp_path))
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "out.png").write_bytes(b"old contents")
    monkeypatch.setattr(raster, "write_raster", broken)
    with pytest.raises(MedsrError, match=r"out\.png.*No space left"):
        write_image(folder / "out.png", img)
    assert sorted(p.name for p in folder.iterdir()) == ["out.png"]
    assert (folder / "out.png").read_bytes() == b"old contents"


def test_write_rejects_bad_pixels(tmp_path):
    img = read_image(_png(tmp_path))
    bad = img.pixels.copy()
    bad[0, 0] = np.nan
    with pytest.raises(MedsrError, match=r"nan\.png.*NaN"):
        write_image(tmp_path / "nan.png", Image(bad, img.meta))
    assert not (tmp_path / "nan.png").exists()


def test_jpeg_coded_means_jpeg_files_and_dicom_stored_as_lossy_jpeg(tmp_path):
    """What default-jpeg is picked for: pixels that went through JPEG's 8x8 blocks, whatever the container."""
    from pydicom.data import get_testdata_file

    from medsr.io.formats import jpeg_coded

    assert jpeg_coded("scan.JPG") and jpeg_coded(tmp_path / "a.jpeg")  # not there to read: by its name
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "jpeg.png", format="JPEG")
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "png.jpg", format="PNG")
    assert jpeg_coded(tmp_path / "jpeg.png") and not jpeg_coded(tmp_path / "png.jpg")  # there: by its content
    lossy = ["SC_jpeg_no_color_transform.dcm", "JPGExtended.dcm"]  # JPEG baseline (8-bit), extended (12-bit)
    other = ["JPEG2000.dcm", "CT_small.dcm"]  # wavelets, no blocks; uncompressed
    for name in lossy + other:
        copy = tmp_path / name.replace(".dcm", "")  # no extension: found by its DICM preamble, as PACS exports are
        copy.write_bytes(open(get_testdata_file(name), "rb").read())
        assert jpeg_coded(copy) == (name in lossy), name
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "broken.dcm").write_bytes(b"DICM but not really")
    assert not any(map(jpeg_coded, [tmp_path / "a.png", tmp_path / "broken.dcm", tmp_path / "missing.dcm"]))


def test_a_pixel_limit_refuses_every_format_from_its_header(tmp_path):
    from medsr.errors import TooLargeError

    nifti, _, _ = make_nifti(tmp_path / "vol.nii.gz")  # 4x5x6 voxels
    dicom = make_dicom(tmp_path / "mr.dcm", RNG.integers(0, 4096, size=(6, 8)))
    png = tmp_path / "a.png"
    PILImage.fromarray(np.zeros((6, 8), np.uint8)).save(png)
    for path, pixels in ((nifti, 120), (dicom, 48), (png, 48)):
        assert read_image(path, max_pixels=pixels).pixels.size == pixels
        with pytest.raises(TooLargeError, match=f"{path.name}.*too large"):
            read_image(path, max_pixels=pixels - 1)


def test_a_scale_that_does_not_match_the_pixels_is_refused_not_written_with_wrong_spacing(tmp_path):
    from pydicom.data import get_testdata_file

    for source in (get_testdata_file("MR_small.dcm"), tmp_path / "v.nii"):
        if source == tmp_path / "v.nii":
            nib.save(nib.Nifti1Image(np.zeros((16, 12, 5), np.float32), np.diag([1.0, 1.0, 4.0, 1.0])), source)
        image = read_image(source)
        tripled = Image(np.repeat(np.repeat(image.pixels, 3, axis=-2), 3, axis=-1), image.meta)
        out = tmp_path / ("out" + str(source)[-4:])
        with pytest.raises(MedsrError, match="times the scale 2"):
            write_image(out, tripled, scale=2, model_name="m")
        assert not out.exists()
        write_image(out, tripled, scale=3, model_name="m")


def test_nan_voxels_of_a_statistics_map_are_said_in_the_runs_note(tmp_path):
    zmap = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    zmap[:2] = np.nan  # outside the brain mask
    nib.save(nib.Nifti1Image(zmap, np.eye(4)), tmp_path / "zstat.nii.gz")
    image = read_image(tmp_path / "zstat.nii.gz")
    from medsr.io import raster

    assert f"40 NaN or infinite voxel(s) read as the volume's lowest value ({np.nanmin(zmap):g})" in raster.notes(image.meta)
    assert raster.notes(read_image(make_nifti(tmp_path / "plain.nii.gz")[0]).meta) == ""


@pytest.mark.parametrize("through_plane", [False, True])
def test_nan_voxels_come_back_where_they_were_in_a_nifti_output(tmp_path, through_plane):
    """Each output voxel whose nearest source voxel (by world position) is NaN or infinite is that
    value again, in-plane and on a thinner slice grid, on an oblique affine; the rest is finite."""
    zmap = np.random.default_rng(0).normal(size=(12, 10, 4)).astype(np.float32)
    zmap[:3] = np.nan
    zmap[-1, -1, -1] = np.inf
    affine = np.array([[0.0, -1.2, 0.1, 10.0], [1.1, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(zmap, affine), tmp_path / "zstat.nii.gz")
    options = {"through_plane": True, "slice_spacing": 1.0, "scale": 2} if through_plane else {"scale": 2}
    medsr.upscale_file(tmp_path / "zstat.nii.gz", tmp_path / "out.nii.gz", **options)
    out = nib.load(tmp_path / "out.nii.gz")
    values = out.get_fdata()
    assert values.shape == ((24, 20, 12) if through_plane else (24, 20, 4))
    centres = nib.affines.apply_affine(np.linalg.inv(affine) @ out.affine, np.indices(values.shape).reshape(3, -1).T)
    nearest = zmap[tuple(np.clip(np.rint(centres).astype(int), 0, np.array(zmap.shape) - 1).T)].reshape(values.shape)
    assert np.isnan(values).sum() == np.isnan(nearest).sum() == 3 * 2 * 20 * values.shape[2]
    np.testing.assert_array_equal(np.isnan(values), np.isnan(nearest))
    np.testing.assert_array_equal(np.isposinf(values), np.isposinf(nearest))
    assert np.isposinf(values).sum() == (2 * 2 * (3 if through_plane else 1))


def test_an_enhanced_files_rescale_in_its_functional_groups_gives_its_values(tmp_path):
    """An enhanced CT keeps RescaleIntercept -1024 in its shared Pixel Value Transformation: read in
    HU (the NIfTI from it as dcm2niix has it); frames rescaled differently are one line."""
    from pydicom.data import get_testdata_file

    source = tmp_path / "ect.dcm"
    source.write_bytes(open(get_testdata_file("eCT_Supplemental.dcm"), "rb").read())
    image = read_image(source)
    assert image.meta.value_range[0] == -1024.0
    write_image(tmp_path / "ect.nii.gz", Image(np.repeat(np.repeat(image.pixels, 2, -2), 2, -1), image.meta), scale=2, model_name="m")
    values = nib.load(tmp_path / "ect.nii.gz").get_fdata()
    stored = pydicom.dcmread(source).pixel_array.astype(np.float64)
    assert values.min() == stored.min() - 1024 and values.max() == stored.max() - 1024

    ds = pydicom.dcmread(source)
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        group = Dataset()
        group.RescaleSlope, group.RescaleIntercept, group.RescaleType = 1, -1024 + k, "HU"
        item.PixelValueTransformationSequence = [group]
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.save_as(tmp_path / "varying.dcm")
    with pytest.raises(MedsrError, match=r"varying\.dcm: its frames have 2 different rescale slopes/intercepts"):
        read_image(tmp_path / "varying.dcm")


def test_a_label_map_and_a_cifti_file_are_refused_in_one_line(tmp_path):
    labels = np.zeros((12, 10, 4), np.int16)
    labels[3:9, 2:8], labels[5:7, 4:6] = 10, 20
    image = nib.Nifti1Image(labels, np.diag([2.0, 2.0, 5.0, 1.0]))
    image.header.set_intent("label", (), name="aseg")
    nib.save(image, tmp_path / "aseg.nii.gz")
    with pytest.raises(MedsrError, match=r"aseg\.nii\.gz: a label map .*nearest-neighbour"):
        read_image(tmp_path / "aseg.nii.gz")
    image.header.set_intent("t test", (10,))  # a statistics map is values: read
    nib.save(image, tmp_path / "tstat.nii.gz")
    assert read_image(tmp_path / "tstat.nii.gz").pixels.shape == (4, 12, 10)
    cifti = Path(nib.__file__).parent / "tests" / "data" / "row_major.dconn.nii"  # nibabel's own CIFTI-2 example
    shutil.copy(cifti, tmp_path / "conn.dconn.nii")
    with pytest.raises(MedsrError, match=r"conn\.dconn\.nii: a CIFTI-2 file, not a NIfTI volume"):
        read_image(tmp_path / "conn.dconn.nii")


def test_a_2d_nifti_is_drawn_upright_as_the_same_image_stored_as_one_slice(tmp_path):
    """Rows toward anterior (a positive y step) are drawn bottom-up, as a 3-D file's slice is; medsr's
    own 2-D NIfTI of a PNG comes back as the PNG was (columns stay along x)."""
    affine = np.diag([-0.5, 0.5, 1.0, 1.0])
    data = np.full((24, 20), 100, np.int16)
    data[17:, 14:] = 1000  # toward the patient's left and anterior
    for name, values in (("flat.nii", data), ("slice.nii", data[..., None])):
        nib.save(nib.Nifti1Image(values, affine), tmp_path / name)
    drawn = [np.asarray(PILImage.open(write_image(tmp_path / f"{name}.png", read_image(tmp_path / f"{name}.nii"), scale=1,
                                                  model_name="m"))) for name in ("flat", "slice")]
    np.testing.assert_array_equal(drawn[0], drawn[1])
    assert drawn[0][:6, -6:].min() > drawn[0][-6:, -6:].max()  # anterior at the top
    png = np.zeros((20, 24), np.uint8)
    png[:5, :6] = 255
    PILImage.fromarray(png).save(tmp_path / "p.png")
    write_image(tmp_path / "p.nii", read_image(tmp_path / "p.png"), scale=1, model_name="m")
    back = np.asarray(PILImage.open(write_image(tmp_path / "back.png", read_image(tmp_path / "p.nii"), scale=1, model_name="m")))
    assert back[:5, :6].min() > back[5:, 6:].max()


@pytest.mark.parametrize("units, per_mm", [("micron", 1000.0), ("meter", 0.001)])
def test_slice_spacing_is_millimetres_whatever_the_files_units(tmp_path, units, per_mm):
    image = nib.Nifti1Image(np.random.default_rng(0).random((16, 12, 4)).astype(np.float32),
                            np.diag([2.0 * per_mm, 2.0 * per_mm, 6.0 * per_mm, 1.0]))
    image.header.set_xyzt_units(units, "sec")
    nib.save(image, tmp_path / "v.nii")
    medsr.upscale_file(tmp_path / "v.nii", tmp_path / "thin.nii", through_plane=True, slice_spacing=3.0)  # 6 mm -> 3 mm
    out = nib.load(tmp_path / "thin.nii")
    assert out.shape == (16, 12, 8) and out.header.get_xyzt_units()[0] == units
    assert out.header.get_zooms()[2] == pytest.approx(3.0 * per_mm) and out.affine[2, 2] == pytest.approx(3.0 * per_mm)


def test_one_slice_is_said_along_the_files_own_axis(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((24, 20, 1), np.float32), np.diag([2.0, 2.0, 5.0, 1.0])), tmp_path / "one.nii")
    with pytest.raises(MedsrError, match=r"one\.nii: only 1 slice along its slice axis \(axis 2 of the file\)"):
        medsr.upscale_file(tmp_path / "one.nii", tmp_path / "out.nii", through_plane=True)


def test_conversions_a_block_of_rows_at_a_time_give_the_whole_arrays_numbers(monkeypatch, tmp_path):
    from medsr.io import types

    monkeypatch.setattr(types, "STRIP_VALUES", 50)  # many blocks, a last one short
    pixels = np.random.default_rng(3).random((3, 37, 41)).astype(np.float32) * 1.2 - 0.1
    np.testing.assert_array_equal(to_uint(pixels, 16), np.rint(np.clip(pixels.astype(np.float64), 0, 1) * 65535).astype(np.uint16))
    path, data, _ = make_nifti(tmp_path / "v.nii", shape=(41, 37, 3))
    image = read_image(path)
    write_image(tmp_path / "same.nii", image, scale=1, model_name="m")
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "same.nii").dataobj), data)


def test_an_ultrasound_images_calibrated_regions_measure_the_same_on_the_new_grid(tmp_path):
    """Region corners (from 0 at the top left) and the reference pixel moved, the physical size of a pixel
    divided: columns 10-29 of 0.02 cm each are columns 30-89 of 0.02/3 cm (the same 0.4 cm wide)."""
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0, region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 10, 5, 29, 14
    region.ReferencePixelX0, region.ReferencePixelY0 = 4, 0
    region.PhysicalDeltaX, region.PhysicalDeltaY, region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 0.02, 0.05, 3, 3
    path = make_dicom(tmp_path / "us.dcm", RNG.integers(0, 4096, size=(20, 40)), spacing=None, SequenceOfUltrasoundRegions=[region])
    image = read_image(path)
    out = pydicom.dcmread(write_image(tmp_path / "x3.dcm", type(image)(np.kron(image.pixels, np.ones((3, 3))), image.meta), scale=3))
    moved = out.SequenceOfUltrasoundRegions[0]
    assert (moved.RegionLocationMinX0, moved.RegionLocationMinY0, moved.RegionLocationMaxX1, moved.RegionLocationMaxY1) == (30, 15, 89, 44)
    assert (moved.ReferencePixelX0, moved.ReferencePixelY0) == (13, 1)  # the centres of the same old pixels
    assert moved.PhysicalDeltaX == pytest.approx(0.02 / 3) and moved.PhysicalDeltaY == pytest.approx(0.05 / 3)
    width = (moved.RegionLocationMaxX1 - moved.RegionLocationMinX0 + 1) * moved.PhysicalDeltaX
    assert width == pytest.approx((29 - 10 + 1) * 0.02)


def test_a_modality_lut_files_nifti_is_refused_rather_than_stored_values(tmp_path):
    from pydicom.data import get_testdata_file

    source = tmp_path / "mlut.dcm"
    source.write_bytes(open(get_testdata_file("mlut_18.dcm"), "rb").read())
    image = read_image(source)
    with pytest.raises(MedsrError, match=r"mlut\.dcm: its values are given by a Modality LUT Sequence"):
        write_image(tmp_path / "mlut.nii.gz", image, scale=1, model_name="m")
    assert not (tmp_path / "mlut.nii.gz").exists()
    write_image(tmp_path / "out.dcm", image, scale=1, model_name="m")  # the DICOM keeps the LUT and the stored values
    assert "ModalityLUTSequence" in pydicom.dcmread(tmp_path / "out.dcm")


def test_a_non_image_object_without_a_preamble_is_said_to_hold_no_image(tmp_path):
    from pydicom.data import get_testdata_file

    (tmp_path / "plan.dcm").write_bytes(open(get_testdata_file("ExplVR_LitEndNoMeta.dcm"), "rb").read())  # an RT Ion Plan
    with pytest.raises(MedsrError, match=r"plan\.dcm: holds no image \(a DICOM RT Ion Plan object\)"):
        read_image(tmp_path / "plan.dcm")
    (tmp_path / "noise.dcm").write_bytes(b"not DICOM at all")
    with pytest.raises(MedsrError, match=r"noise\.dcm: not a DICOM file \(no DICM header\)"):
        read_image(tmp_path / "noise.dcm")


def _tiff_16(path, stored, photometric, sample_format=1):
    """A one-strip 16-bit gray TIFF written tag by tag (Pillow writes neither WhiteIsZero nor signed 16-bit)."""
    data = stored.astype("<i2" if sample_format == 2 else "<u2").tobytes()
    rows, cols = stored.shape
    tags = [(256, 3, cols), (257, 3, rows), (258, 3, 16), (259, 3, 1), (262, 3, photometric), (273, 4, 8), (277, 3, 1),
            (278, 3, rows), (279, 4, len(data)), (339, 3, sample_format)]
    entries = b"".join(struct.pack("<HHII" if kind == 4 else "<HHIH2x", tag, kind, 1, value) for tag, kind, value in tags)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(data)) + data + struct.pack("<H", len(tags)) + entries + b"\0" * 4)
    return path


def test_rasters_as_a_viewer_shows_them_exif_orientation_white_is_zero_and_a_thumbnail_first(tmp_path):
    upright = np.zeros((40, 60), np.uint8)
    upright[:10, :20] = 255  # a bright block at the top left
    exif = PILImage.Exif()
    exif[0x0112] = 6  # stored turned; a viewer turns it 90 degrees clockwise
    for name in ("turned.jpg", "turned.png"):
        PILImage.fromarray(upright).transpose(PILImage.Transpose.ROTATE_90).save(tmp_path / name, exif=exif)
        read = to_uint(read_image(tmp_path / name).pixels, 8)
        assert read.shape == upright.shape and np.corrcoef(read.ravel(), upright.ravel())[0, 1] > 0.95, name

    ramp = np.tile(np.linspace(0, 60000, 30).astype(np.uint16), (8, 1))  # dark on the left as shown
    shown = to_uint(read_image(_tiff_16(tmp_path / "wiz.tif", 65535 - ramp, photometric=0)).pixels, 16)
    np.testing.assert_array_equal(shown, ramp)
    with pytest.raises(MedsrError, match=r"s16\.tif: signed samples \(as low as -1000\) are not supported"):
        read_image(_tiff_16(tmp_path / "s16.tif", ramp.astype(np.int32) // 2 - 1000, photometric=1, sample_format=2))

    thumbnail = PILImage.fromarray(upright).resize((15, 10))
    thumbnail.save(tmp_path / "pages.tif", save_all=True, append_images=[PILImage.fromarray(upright)])
    image = read_image(tmp_path / "pages.tif")
    from medsr.io import raster

    assert image.pixels.shape == upright.shape and "the largest page is upscaled" in raster.notes(image.meta)


def test_a_rasters_resolution_is_kept_times_the_scale(tmp_path):
    """300 dpi in, x3 out: 900 dpi, so the same inches across; a quarter-turned JPEG's x and y swap with it."""
    gray = (np.random.default_rng(5).random((20, 30)) * 255).astype(np.uint8)
    PILImage.fromarray(gray).save(tmp_path / "film.tif", dpi=(300, 300))
    exif = PILImage.Exif()
    exif[0x0112] = 6
    PILImage.fromarray(gray).save(tmp_path / "turned.jpg", dpi=(100, 200), exif=exif)
    PILImage.fromarray(gray).save(tmp_path / "plain.png")
    for name, out, expected in (("film.tif", "film.png", (900, 900)), ("turned.jpg", "turned.tif", (600, 300)), ("plain.png", "plain-x3.png", None)):
        image = read_image(tmp_path / name)
        tripled = Image(np.kron(image.pixels, np.ones((3, 3), np.float32)), image.meta)
        dpi = PILImage.open(write_image(tmp_path / out, tripled, scale=3, model_name="m")).info.get("dpi")
        assert (dpi is None) if expected is None else dpi == pytest.approx(expected, rel=1e-3), (name, dpi)
