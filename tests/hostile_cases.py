"""Hostile-input case generators and the pass/fail judge, shared by tests/test_hostile.py and
benchmarks/fuzz_report.py.

A case is a file's bytes plus a file name. The judge reads it with `medsr.io.read_image` and
accepts exactly two outcomes: a well-formed image (float32 pixels in [0, 1], finite, 2-D or 3-D)
or a `MedsrError` whose message is one line and names the file. Anything else (another exception,
a multi-line message, NaN pixels, more than a few seconds) is a failure, so the suite and the
report count the same thing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import signal
import struct
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError

# Format name -> file suffix of the synthetic good files the fuzzers start from.
SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm", "nii": ".nii", "nii.gz": ".nii.gz"}
FORMATS = tuple(SUFFIX)
TIME_LIMIT_S = 5.0  # per read; a hang shows up as a failure, not a stuck test run


def _pattern(height: int, width: int, top: int) -> np.ndarray:
    """A deterministic gradient with a bright square: cheap, and not constant."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = (xx * 7 + yy * 3) % (top + 1)
    img[height // 4 : height // 2, width // 4 : width // 2] = top
    return img


def dicom_dataset(stored: np.ndarray, bits_allocated: int = 16, bits_stored: int = 12):
    """A small, valid MR-style DICOM dataset (unsigned, uncompressed) with rescale and spacing."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"  # fixed UIDs: the same bytes every run
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.Modality = "MR"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.RescaleSlope = "1.0"
    ds.RescaleIntercept = "0.0"
    ds.PixelData = stored.astype(f"<u{bits_allocated // 8}").tobytes()
    return ds


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nifti_bytes(data: np.ndarray, zooms=(1.0, 1.0, 3.0), compress: bool = False) -> bytes:
    """A single-file NIfTI-1 image; gzip with mtime 0 so the bytes are the same every run."""
    import nibabel as nib

    img = nib.Nifti1Image(data, np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms((*zooms, 1.0, 1.0, 1.0, 1.0)[: data.ndim])  # 1.0 for any time axis
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.nii"
        nib.save(img, path)
        raw = path.read_bytes()
    return gzip.compress(raw, mtime=0) if compress else raw


def raster_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **options) -> bytes:
    from PIL import Image as PILImage

    im = PILImage.fromarray(array) if mode is None else PILImage.fromarray(array).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


@lru_cache(maxsize=None)
def good_bytes(fmt: str) -> bytes:
    """A small valid file of the format: 8-bit 12x16 rasters, 12-bit DICOM, 6x5x4 int16 NIfTI."""
    if fmt in ("png", "jpeg", "tiff"):
        return raster_bytes(_pattern(12, 16, 255).astype(np.uint8), fmt)
    if fmt == "dicom":
        return dicom_bytes(dicom_dataset(_pattern(12, 16, 4095)))
    volume = np.stack([_pattern(6, 5, 1000) + 50 * k for k in range(4)], axis=-1).astype(np.int16)
    return nifti_bytes(volume, compress=fmt == "nii.gz")


@lru_cache(maxsize=None)
def good_shape(fmt: str) -> tuple[int, ...]:
    """Pixel shape read_image gives for good_bytes(fmt)."""
    return {"dicom": (12, 16), "nii": (4, 6, 5), "nii.gz": (4, 6, 5)}.get(fmt, (12, 16))


def truncated(fmt: str, cut: int) -> bytes:
    """The good file cut to its first `cut` bytes (cut is taken modulo the file length)."""
    data = good_bytes(fmt)
    return data[: cut % len(data)]


def corrupted(fmt: str, edits: list[tuple[int, int]]) -> bytes:
    """The good file with byte `pos % length` set to `value` for each (pos, value) edit."""
    data = bytearray(good_bytes(fmt))
    for pos, value in edits:
        data[pos % len(data)] = value
    return bytes(data)


def png_raw(array: np.ndarray, color_type: int, bit_depth: int, interlace: bool = False, cut: int = 0) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour, gray+alpha or interlaced); array is
    (H, W) or (H, W, channels); color_type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA; Adam7 passes if
    `interlace`; the last `cut` rows (of the last pass) left out of the image data: a stream that ends early, closed properly."""
    height, width = array.shape[:2]
    sample = ">u2" if bit_depth == 16 else "u1"
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)) if interlace else ((0, 0, 1, 1),)
    rows = [b"\x00" + np.ascontiguousarray(row).astype(sample).tobytes()
            for x0, y0, dx, dy in passes for row in array[y0::dy, x0::dx] if row.size]
    rows = b"".join(rows[: len(rows) - cut])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlace))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def tiff_raw(array: np.ndarray, bits: int = 16) -> bytes:
    """An uncompressed little-endian TIFF by hand: (H, W) gray or (H, W, 3) RGB samples of `bits`."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    pixels = array.astype(f"<u{bits // 8}").tobytes()
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, channels, None), (259, 3, 1, 1),
               (262, 3, 1, 2 if channels == 3 else 1), (273, 4, 1, None), (277, 3, 1, channels),
               (278, 4, 1, height), (279, 4, 1, len(pixels))]
    bps_at = 8 + 2 + 12 * len(entries) + 4  # BitsPerSample values sit right after the IFD
    data_at = bps_at + (2 * channels if channels > 1 else 0)  # one channel: the value sits in the entry
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits if channels == 1 else bps_at
        elif tag == 273:
            value = data_at
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0)
    if channels > 1:
        out += struct.pack(f"<{channels}H", *([bits] * channels))
    return out + pixels


def tiny_bytes(fmt: str, height: int, width: int, value: int = 100) -> bytes:
    """A constant height x width image of `value` in the format (NIfTI: one slice)."""
    plane = np.full((height, width), value)
    if fmt in ("png", "jpeg", "tiff"):
        return raster_bytes(plane.astype(np.uint8), fmt)
    if fmt == "dicom":
        return dicom_bytes(dicom_dataset(plane))
    return nifti_bytes(plane[..., None].astype(np.int16), compress=fmt == "nii.gz")


# NIfTI-1 header fields by byte offset and struct format (the standard's layout).
NIFTI_FIELDS = {"dim": (40, "<8h"), "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f")}


def nifti_patched(**fields) -> bytes:
    """The good .nii with header fields overwritten, e.g. nifti_patched(vox_offset=209.0)."""
    data = bytearray(good_bytes("nii"))
    for name, value in fields.items():
        offset, fmt = NIFTI_FIELDS[name]
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *(value if isinstance(value, tuple) else (value,)))
    return bytes(data)


def dicom_bad_vr() -> bytes:
    """The good DICOM with RescaleSlope's VR bytes replaced by an unknown VR."""
    data = good_bytes("dicom")
    tag = struct.pack("<HH", 0x0028, 0x1053) + b"DS"
    assert data.count(tag) == 1
    return data.replace(tag, tag[:4] + b"D\xc2")


# ------------------------------------------------------------------------- decompression bombs


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~70-byte PNG whose (CRC-correct) header declares width x height 8-bit pixels."""
    data = bytearray(raster_bytes(np.zeros((4, 4), np.uint8), "png"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def tiff_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny little-endian TIFF declaring width x height 8-bit pixels in one 4-byte strip."""
    entries = [  # (tag, type, count, value); types: 3 SHORT, 4 LONG
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 4),
    ]
    ifd_offset = 12
    out = b"II*\x00" + struct.pack("<I", ifd_offset) + b"\x00" * 4  # header, then 4 bytes of "pixels"
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + struct.pack("<I", 0)


def dicom_bomb(rows: int = 65535, columns: int = 65535, frames: int = 1, syntax: str | None = None) -> bytes:
    """A DICOM whose Rows/Columns (and NumberOfFrames) are huge but whose PixelData is 4 bytes."""
    ds = dicom_dataset(np.zeros((2, 1), np.uint16))
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    if syntax is not None:
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\x00" * 16])
        ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def nifti_bomb(shape=(4000, 4000, 4000)) -> bytes:
    """A 352-byte-header .nii whose dims declare `shape` voxels of int16 but hold almost no data."""
    data = bytearray(nifti_bytes(np.zeros((2, 2, 2), np.int16)))
    data[40:56] = struct.pack("<8h", len(shape), *shape, *([1] * (7 - len(shape))))
    return bytes(data)


def gzip_bomb_nifti(side: int = 480) -> bytes:
    """A genuine .nii.gz of side^3 uint8 zeros (480: 110 M voxels) that is ~100 kB on disk.

    Built as one gzip member per slice of zeros, all the same bytes, so making it is instant."""
    head = bytearray(nifti_bytes(np.zeros((2, 2, 2), np.uint8))[:352])
    head[40:56] = struct.pack("<8h", 3, side, side, side, 1, 1, 1, 1)
    zeros = gzip.compress(b"\x00" * (side * side), mtime=0)
    return gzip.compress(bytes(head), mtime=0) + zeros * side


def bombs() -> dict[str, bytes]:
    """File name -> bytes of each decompression bomb (all declare far more than MAX_PIXELS)."""
    return {
        "bomb.png": png_bomb(),
        "bomb.tif": tiff_bomb(),
        "bomb-11k.tif": tiff_bomb(11_000, 10_000),  # below Pillow's own limit, above medsr's
        "bomb.dcm": dicom_bomb(),
        "bomb-frames.dcm": dicom_bomb(2000, 2000, frames=100),
        "bomb-rle.dcm": dicom_bomb(syntax="1.2.840.10008.1.2.5"),  # RLE: the decoder would allocate
        "bomb.nii": nifti_bomb(),
        "bomb-4d.nii": nifti_bomb((4000, 4000, 40, 40)),
        "bomb.nii.gz": gzip_bomb_nifti(),
    }


# Run by `python -c` in a fresh process so ru_maxrss measures the bombs alone. Prints one JSON
# object: per file [outcome, seconds], and how much the peak resident memory grew meanwhile.
BOMB_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import hostile_cases as hc
from medsr.errors import MedsrError
from medsr.io import read_image
folder = Path(sys.argv[1])
for fmt in hc.FORMATS:  # warm up: lazy imports and decoders load before the baseline
    read_image(hc.write(folder, "warm" + hc.SUFFIX[fmt], hc.good_bytes(fmt)))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = {}
for name, data in hc.bombs().items():
    path = hc.write(folder, name, data)
    start = time.perf_counter()
    try:
        read_image(path)
        outcome = "read"
    except MedsrError as err:
        outcome = str(err)
    result[name] = [outcome, time.perf_counter() - start]
growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"files": result, "rss_growth_mib": growth_kib / 1024}))
"""


# --------------------------------------------------------------------------------- the judge


class CaseFailure(AssertionError):
    """A hostile input produced something other than a good image or a clean one-line error."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError if the block runs longer than `seconds` (main thread, Unix only)."""

    def _expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_error(err: MedsrError, path: Path) -> str:
    """The error's message, after checking it is one line and names the file."""
    message = str(err)
    if "\n" in message or "\r" in message:
        raise CaseFailure(f"{path.name}: error message is not one line: {message!r}")
    if str(path) not in message:
        raise CaseFailure(f"{path.name}: error message does not name the file: {message!r}")
    return message


def check_image(image, path: Path, shape: tuple[int, ...] | None = None) -> None:
    pixels = image.pixels
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
        raise CaseFailure(f"{path.name}: pixels are {type(pixels).__name__} {getattr(pixels, 'dtype', '')}, not float32")
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise CaseFailure(f"{path.name}: pixels have shape {pixels.shape}")
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 1:
        raise CaseFailure(f"{path.name}: pixels are not finite values in [0, 1]")
    if shape is not None and pixels.shape != shape:
        raise CaseFailure(f"{path.name}: read as shape {pixels.shape}, expected {shape}")


def _write_back(image, path: Path, out: Path) -> None:
    """What `medsr upscale` does after reading: write a x3 result in the input's format."""
    from medsr.io import write_image

    image.pixels = np.repeat(np.repeat(image.pixels, 3, axis=-1), 3, axis=-2)
    try:
        write_image(out, image, scale=3, model_name="fuzz")
    except MedsrError as err:
        check_error(err, out)
    except Exception as err:
        raise CaseFailure(f"{path.name}: read, then {type(err).__name__} escaped write_image: {str(err)[:300]}") from err


def judge(path: Path, shape: tuple[int, ...] | None = None, write_to: Path | None = None,
          seconds: float = TIME_LIMIT_S) -> str:
    """'read' or 'refused' for a hostile file; raises CaseFailure for anything else.

    `shape`, if given, is the only shape a successful read may have (for truncations, where a
    file that still reads must be the whole image). With `write_to`, an image that reads is
    also written there x3, as `medsr upscale` would, and must write or fail cleanly."""
    from medsr.io import read_image

    try:
        with time_limit(seconds):
            image = read_image(path)
    except MedsrError as err:
        check_error(err, path)
        return "refused"
    except Exception as err:  # the point of the suite: nothing else may escape
        raise CaseFailure(f"{path.name}: {type(err).__name__} escaped read_image: {str(err)[:300]}") from err
    check_image(image, path, shape)
    if write_to is not None:
        _write_back(image, path, write_to)
    return "read"


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def judge_bytes(folder: Path, name: str, data: bytes, shape: tuple[int, ...] | None = None,
                write_back: bool = False) -> str:
    """Write `data` to folder/name and judge it (written back to folder/out/name if asked)."""
    return judge(write(folder, name, data), shape, folder / "out" / name if write_back else None)
