"""DICOM via pydicom (compressed syntaxes decode through the pylibjpeg plugins).

Pixels are normalised with a range fixed by the file's declared stored bits (not by the image
content), so reading and writing back round-trips the stored integers exactly.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pack_bits
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from medsr.errors import MedsrError, TooLargeError
from medsr.io.raster import has_colour
from medsr.io.types import (
    MAX_PIXELS,
    Image,
    ImageMeta,
    by_rows,
    printable,
    quiet_libraries,
    to_uint,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Transfer syntaxes that are lossy whatever the file says, and their LossyImageCompressionMethod.
LOSSY_METHODS = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1", JPEGLSNearLossless: "ISO_14495_1"}
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage: labels, not intensities
SERIES_NUMBER_OFFSET = 1000  # a derived series is numbered its source's SeriesNumber + 1000
# The enhanced MR Pulse Sequence (and Bulk Motion Synchronization) elements that only an ORIGINAL or MIXED image may hold
# (dciodvfy: "present when condition unsatisfied" once ImageType says DERIVED).
_ORIGINAL_ONLY_PULSE_SEQUENCE = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho", "MultiPlanarExcitation",
    "PhaseContrast", "TimeOfFlightContrast", "ArterialSpinLabelingContrast", "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence", "SaturationRecovery", "SpectrallySelectedSuppression", "OversamplingPhase",
    "GeometryOfKSpaceTraversal", "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal", "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories", "BulkMotionCompensationTechnique",
)
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
# Elements that describe the old pixels and would be wrong for the new ones.
_STALE = (
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "IconImageSequence", "PlanarConfiguration",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "PixelDataProviderURL",
)


def _decoder_fix(syntax, reason: str) -> str:
    """Why pydicom could not decode a compressed transfer syntax, and the fix: none decodes it (a retired
    syntax: re-export it), the plugins that would are not installed, or they are and the data is damaged."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return "no decoder medsr uses (pydicom's) reads it; re-export the file uncompressed, e.g. dcmdjpeg in.dcm out.dcm"
    if not decoder.is_available:
        return "its decoder is not installed; install the pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg) or re-export uncompressed"
    said = reason[:120].rstrip(" :")  # pydicom's first line may end where its list of plugins' errors begins
    return f"{said}; the compressed data is damaged, re-export the file"


def stored_range(ds: Dataset) -> tuple[int, int]:
    """Integer range the declared BitsStored / PixelRepresentation can hold."""
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def rescale(ds: Dataset, path: Path | None = None) -> tuple[float, float]:
    """Linear modality rescale (slope, intercept); a missing or zero slope means identity. An
    enhanced multi-frame file keeps it in its functional groups (Pixel Value Transformation), shared
    or per frame; frames rescaled differently are a MedsrError (medsr reads one rescale per file)."""
    holders = [ds] if "RescaleSlope" in ds or "RescaleIntercept" in ds else _rescale_groups(ds) or [ds]
    pairs = {_rescale_pair(holder, path) for holder in holders}
    if len(pairs) > 1:
        raise MedsrError(f"{path}: its frames have {len(pairs)} different rescale slopes/intercepts, and medsr reads one per "
                         f"file; convert it with dcm2niix, or split it into files of one rescale each")
    return pairs.pop()


def _rescale_groups(ds: Dataset) -> list[Dataset]:
    """The Pixel Value Transformation items an enhanced file's frames use (shared, else each frame's)."""
    shared = functional_group(ds, None, "SharedFunctionalGroupsSequence")
    frames = ds.get("PerFrameFunctionalGroupsSequence") or [None]
    groups = [functional_group(item, shared, "PixelValueTransformationSequence") for item in frames]
    return [group for group in groups if group is not None]


def _rescale_pair(holder: Dataset, path: Path | None) -> tuple[float, float]:
    try:
        slope = float(holder.get("RescaleSlope", 1) or 1)
        intercept = float(holder.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):  # multi-valued or non-numeric in a damaged header
        slope = intercept = math.nan
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise MedsrError(
            f"{path}: DICOM RescaleSlope/RescaleIntercept ({printable(holder.get('RescaleSlope'))}, "
            f"{printable(holder.get('RescaleIntercept'))}) are not finite numbers; fix or remove them and re-export"
        )
    return slope, intercept


def _declared_pixels(ds: Dataset, path: Path) -> int:
    """Rows x Columns x frames x samples, from the header alone (nothing is decoded)."""
    try:
        dims = [int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)]
    except (TypeError, ValueError):
        raise MedsrError(f"{path}: DICOM Rows/Columns/NumberOfFrames/SamplesPerPixel are not whole numbers; the header is damaged, re-export the file")
    return math.prod(dims)


def spacing_pair(value) -> tuple[float, float] | None:
    """A (row, column) spacing in mm from a two-valued element, or None where it is missing, malformed or 0."""
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None  # 0 is written by some modalities for "unknown"


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds:
            return spacing_pair(ds.get(keyword))
    # Enhanced multi-frame objects keep it inside the functional group sequences.
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            return spacing_pair(ds[groups][0].PixelMeasuresSequence[0].PixelSpacing)
        except (KeyError, IndexError, AttributeError):
            continue
    return None


def _parse(path: Path, force: bool = False) -> Dataset:
    """dcmread, then convert every element now: pydicom parses values lazily, so a damaged
    element would otherwise raise (of any type) wherever it is first touched."""
    ds = pydicom.dcmread(path, force=force)
    for _ in ds.iterall():
        pass
    for _ in ds.file_meta:
        pass
    return ds


def read_dataset(path: Path) -> Dataset:
    """The file's dataset, fully parsed; a one-line MedsrError for damaged or non-DICOM files."""
    try:
        return _parse(path)
    except InvalidDicomError:
        pass
    except Exception as err:  # pydicom raises many types on damaged files
        raise MedsrError(f"{path}: not a readable DICOM file (truncated or corrupt: {type(err).__name__}); check the file or re-export it")
    # Some older files lack the 128-byte preamble; try once more without requiring it.
    try:
        ds = _parse(path, force=True)
    except Exception:
        ds = None
    is_image = ds is not None and "PixelData" in ds and "Rows" in ds
    if not is_image and (ds is None or non_image_class(ds) is None):  # (a report or plan without a preamble: said as such)
        raise MedsrError(f"{path}: not a DICOM file (no DICM header); check the file or export it as DICOM")
    if "TransferSyntaxUID" not in ds.file_meta:
        # Without file meta pydicom cannot pick a decoder; use the encoding it detected while reading.
        implicit, _little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def lossy_jpeg(path: Path) -> bool:
    """Whether the file's pixel data is stored as lossy JPEG (baseline or extended: 8x8 blocks of
    DCT coefficients, as in a JPEG file), by its file meta; False for any other transfer syntax,
    JPEG lossless and JPEG 2000 included, and for a file without readable file meta."""
    try:
        syntax = pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # not DICOM, or damaged: reading it will say so
        return False
    return syntax in (JPEGBaseline8Bit, JPEGExtended12Bit)


def check_stack(pixels: np.ndarray, meta: ImageMeta, name) -> None:
    """A MedsrError for several slices from a source that is not DICOM: a Secondary Capture holds one
    frame and no slice position or orientation, and only a DICOM source gives the scanner's tags."""
    if meta.format != "dicom" and pixels.ndim == 3 and len(pixels) > 1:
        raise MedsrError(f"{name}: cannot write the {len(pixels)} slices of a {meta.format} volume as DICOM (only a DICOM "
                         f"source gives the scanner's tags and slice geometry a DICOM series needs); use --format nii or tiff")


def non_image_class(ds: Dataset) -> str | None:
    """What `ds` is, by its storage class, where the file holds no image and its class says so: "DICOMDIR",
    "DICOM Basic Text SR object" (a report), a presentation state, a PDF... None for an image, and for
    a file without pixel data whose class does not say (a truncated image)."""
    if any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return None
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    name = UID(str(uid)).name if uid else ""
    if not name.endswith(" Storage") or "Image" in name:
        return None
    return "DICOMDIR" if name == "Media Storage Directory Storage" else f"DICOM {name.removesuffix(' Storage')} object"


def read_dicom(path: Path, max_pixels: int = MAX_PIXELS) -> Image:
    with quiet_libraries():
        return _read_dicom(path, max_pixels)


def _read_dicom(path: Path, max_pixels: int) -> Image:
    ds = read_dataset(path)
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise MedsrError(f"{path}: DICOM float pixel data is not supported; export it with integer pixel data")
    kind = non_image_class(ds)
    if kind:
        raise MedsrError(f"{path}: holds no image (a {kind}); pick an image file (in a folder, medsr leaves such files out)")
    if "PixelData" not in ds:
        raise MedsrError(f"{path}: DICOM file has no pixel data (not an image, e.g. a report or DICOMDIR, or truncated); pick an image file or re-export it")
    if str(ds.get("SOPClassUID", "")) == SEGMENTATION or int(ds.get("BitsAllocated", 8) or 8) == 1:
        raise MedsrError(f"{path}: a 1-bit DICOM (a segmentation or mask), not an image to upscale; upscale the image it "
                         f"was drawn on, or resample the mask with nearest neighbour")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "BitsStored") if k not in ds]
    if missing:
        raise MedsrError(f"{path}: DICOM image lacks required element(s) {', '.join(missing)}; re-export the file")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in _GRAY + _COLOR:
        raise MedsrError(f"{path}: DICOM PhotometricInterpretation '{printable(photometric)}' is not supported; convert it to grayscale first")
    declared = _declared_pixels(ds, path)
    if declared > max_pixels:
        raise TooLargeError(
            f"{path}: image too large ({ds.Rows}x{ds.Columns}, {declared} pixels with frames and samples, "
            f"limit {max_pixels} pixels); downscale or crop it first"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    try:
        compressed = syntax.is_compressed
    except ValueError:  # pydicom raises it for UIDs that are not a transfer syntax
        raise MedsrError(f"{path}: DICOM transfer syntax '{printable(syntax)}' is not a known transfer syntax; the header is damaged, re-export the file")
    try:
        stored = ds.pixel_array
    except MemoryError:
        raise  # not a damaged file: the batch says so
    except Exception as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        if compressed:
            raise MedsrError(f"{path}: cannot decode pixel data with transfer syntax {syntax.name} ({syntax}): "
                             f"{_decoder_fix(syntax, reason)}")
        raise MedsrError(f"{path}: not a readable DICOM file (pixel data truncated or corrupt: {reason}); check the file or re-export it")

    lo, hi = stored_range(ds)
    colour = photometric in _COLOR and has_colour(stored * (255 / max(hi, 1)))
    if photometric in _COLOR:
        # pydicom already converted YBR to RGB; colour carries no modality rescale.
        stored = stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        slope, intercept = 1.0, 0.0
    else:
        slope, intercept = rescale(ds, path)
    stored = np.clip(stored.astype(np.float64), lo, hi)  # stray bits above BitsStored
    # Normalise through the modality rescale so value_range is in real units (e.g. HU);
    # a negative slope reverses the ends, which the min/max ordering handles.
    ends = sorted((slope * lo + intercept, slope * hi + intercept))
    if not (math.isfinite(ends[1] - ends[0]) and ends[1] > ends[0]):
        raise MedsrError(f"{path}: DICOM RescaleSlope {slope:g} and RescaleIntercept {intercept:g} give an empty or infinite value range; fix them and re-export")
    pixels = (slope * stored + intercept - ends[0]) / (ends[1] - ends[0])
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels  # always bright = high signal, like MONOCHROME2

    spacing = _pixel_spacing(ds)
    del ds.PixelData  # meta.source only needs the header; don't keep the compressed bytes alive
    meta = ImageMeta(
        path=str(path),
        format="dicom",
        bit_depth=int(ds.BitsStored),
        value_range=(float(ends[0]), float(ends[1])),
        pixel_spacing=spacing,
        photometric=photometric,
        source=ds,
        extra={"transfer_syntax": str(syntax), "modality": str(ds.get("Modality", "")), **({"colour": True} if colour else {})},
    )
    return Image(pixels.astype(np.float32), meta)


def window01(meta: ImageMeta) -> tuple[float, float] | None:
    """The display window the file names (its first WindowCenter / WindowWidth, in real units) on
    read_dicom's [0, 1] scale, low end first; None without a usable one."""
    ds = meta.source
    try:
        centre, width = (float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
                         for v in (ds.WindowCenter, ds.WindowWidth))
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    lo, hi = meta.value_range
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0 and hi > lo):
        return None
    low, high = (centre - width / 2 - lo) / (hi - lo), (centre + width / 2 - lo) / (hi - lo)
    return (1.0 - high, 1.0 - low) if meta.photometric == "MONOCHROME1" else (low, high)


def voi_lut01(pixels: np.ndarray, meta: ImageMeta) -> np.ndarray | None:
    """`pixels` (read_dicom's [0, 1] scale) through the file's first VOI LUT (VOI LUT Sequence), as
    dcmtk shows them: on [0, 1] by the LUT's bits per entry (LUTDescriptor), bright = high; None without
    a usable one. X-rays (CR, DX) often carry their display curve so rather than as a window."""
    from pydicom.pixels.processing import apply_voi

    ds = meta.source
    if ds is None or not ds.get("VOILUTSequence"):
        return None
    inverted = meta.photometric == "MONOCHROME1"
    lo, hi = meta.value_range
    values = np.rint(lo + (1.0 - pixels if inverted else pixels).astype(np.float64) * (hi - lo)).astype(np.int64)
    try:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        shown = apply_voi(values, ds).astype(np.float64)
    except (AttributeError, IndexError, TypeError, ValueError):  # a damaged or partial LUT: the window is used instead
        return None
    if not 8 <= bits <= 16:  # outside the standard's range: likewise
        return None
    shown = np.clip(shown / (2.0 ** bits - 1), 0.0, 1.0)
    return (1.0 - shown if inverted else shown).astype(np.float32)


def _to_stored(pixels: np.ndarray, ds: Dataset, meta: ImageMeta) -> np.ndarray:
    """Inverse of read_dicom's normalisation: [0,1] -> stored integers of the source file."""
    lo, hi = stored_range(ds)
    slope, intercept = (1.0, 0.0) if meta.photometric in _COLOR else rescale(ds)
    vlo, vhi = meta.value_range
    inverted = meta.photometric == "MONOCHROME1"  # back to the file's inverted convention

    def stored(rows: np.ndarray) -> np.ndarray:
        unit = np.clip(rows.astype(np.float64), 0.0, 1.0)
        values = vlo + (1.0 - unit if inverted else unit) * (vhi - vlo)
        return np.clip(np.rint((values - intercept) / slope), lo, hi)

    signed = lo < 0
    dtype = {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16}.get(
        int(ds.BitsAllocated), np.int32 if signed else np.uint32
    )
    return by_rows(stored, pixels, dtype)


def real_values(pixels: np.ndarray, meta: ImageMeta, dtype=np.float64) -> np.ndarray:
    """read_dicom's [0, 1] pixels as the real values (after the rescale) that the file can hold: its
    stored integers' grid, in its own convention (MONOCHROME1 not inverted), as `dtype`."""
    ds = meta.source
    if "ModalityLUTSequence" in ds:  # its real values are a lookup table of the stored ones, which medsr does not apply
        raise MedsrError(f"{meta.path}: its values are given by a Modality LUT Sequence, which medsr does not apply, so its NIfTI "
                         f"would hold stored values; upscale it to DICOM (which keeps the LUT) or convert it with dcm2niix")
    slope, intercept = (1.0, 0.0) if meta.photometric in _COLOR else rescale(ds)
    return by_rows(lambda rows: rows.astype(np.float64) * slope + intercept, _to_stored(pixels, ds, meta), dtype)


def _secondary_capture(meta: ImageMeta) -> Dataset:
    """Minimal Secondary Capture dataset for pixels that did not come from a DICOM file."""
    bits = 8 if meta.bit_depth <= 8 else 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"  # workstation: produced by software, not a scanner
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                    "SeriesNumber", "InstanceNumber", "PatientOrientation", "Laterality"):
        setattr(ds, keyword, None)  # type-2 elements: present, may be empty
    ds.SeriesDescription = Path(meta.path).name[:64] if meta.path else ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if meta.pixel_spacing:
        ds.PixelSpacing = list(meta.pixel_spacing)
    return ds


def _divide_spacing(ds: Dataset, scale: float) -> None:
    """PixelSpacing / ImagerPixelSpacing divided by scale everywhere, sequences included."""
    damaged = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _divide_spacing(item, scale)
        elif elem.keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing") and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            try:
                elem.value = [DSfloat(float(v) / scale, auto_format=True) for v in values]
            except (TypeError, ValueError, OverflowError):
                damaged.append(elem.tag)
    for tag in damaged:
        del ds[tag]  # a spacing that cannot be read cannot be scaled, and the old one would be wrong


_SHUTTER_EDGES = {  # 1-based: the first (left, upper) or the last (right, lower) column or row shown
    "ShutterLeftVerticalEdge": "first", "ShutterUpperHorizontalEdge": "first",
    "ShutterRightVerticalEdge": "last", "ShutterLowerHorizontalEdge": "last",
}


def _scale_shutters(ds: Dataset, scale: float) -> None:
    """Display shutters, given in pixels of the old grid, on the new one (the same region shown)."""
    for keyword, end in _SHUTTER_EDGES.items():
        if ds.get(keyword) not in (None, ""):
            edge = int(ds.get(keyword))
            setattr(ds, keyword, round((edge - 1) * scale) + 1 if end == "first" else round(edge * scale))
    if ds.get("RadiusOfCircularShutter") not in (None, ""):
        ds.RadiusOfCircularShutter = round(int(ds.RadiusOfCircularShutter) * scale)
    for keyword in ("CenterOfCircularShutter", "VerticesOfThePolygonalShutter"):  # pixel centres: (row, column) pairs
        if ds.get(keyword):
            setattr(ds, keyword, [round((int(v) - 0.5) * scale + 0.5) for v in ds[keyword].value])


def _scale_ultrasound_regions(ds: Dataset, scale: float) -> None:
    """An ultrasound image's calibrated regions (PS3.3 C.8.5.5) on the new grid: their corners (pixel
    coordinates from 0 at the top left) and reference pixel moved, their physical size per pixel
    divided, so that a measurement on the upscaled image gives the same millimetres or seconds."""
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        for keyword, end in (("RegionLocationMinX0", "first"), ("RegionLocationMinY0", "first"),
                             ("RegionLocationMaxX1", "last"), ("RegionLocationMaxY1", "last")):
            if region.get(keyword) is not None:
                edge = int(region.get(keyword))
                setattr(region, keyword, round(edge * scale) if end == "first" else round((edge + 1) * scale) - 1)
        for keyword in ("ReferencePixelX0", "ReferencePixelY0"):  # a pixel centre, from the region's first pixel
            if region.get(keyword) is not None:
                setattr(region, keyword, round((int(region.get(keyword)) + 0.5) * scale - 0.5))
        for keyword in ("PhysicalDeltaX", "PhysicalDeltaY"):
            if region.get(keyword) is not None:
                setattr(region, keyword, float(region.get(keyword)) / scale)


def _scale_overlays(ds: Dataset, scale: float) -> None:
    """Overlay planes (groups 60xx) on the new grid: their bits repeated scale x scale, the origin
    moved. One that cannot be redrawn so (a fractional scale, several frames, bits kept in the
    pixel data) is dropped rather than left where it no longer belongs."""
    for group in sorted({elem.tag.group for elem in ds if 0x6000 <= elem.tag.group <= 0x601E and elem.tag.group % 2 == 0}):
        try:
            frames = ds[group, 0x0015].value if (group, 0x0015) in ds else 1  # NumberOfFramesInOverlay
            if scale != int(scale) or int(frames or 1) != 1:
                raise ValueError("no integer scale of one frame")
            factor, bits = int(scale), ds.overlay_array(group)
            ds[group, 0x0010].value, ds[group, 0x0011].value = bits.shape[0] * factor, bits.shape[1] * factor  # rows, columns
            ds[group, 0x0050].value = [(int(v) - 1) * factor + 1 for v in ds[group, 0x0050].value]  # origin, 1-based
            ds[group, 0x3000].value = pack_bits(np.kron(bits, np.ones((factor, factor), dtype=bits.dtype)).ravel())
        except Exception:  # noqa: BLE001 - an overlay pydicom cannot read is one this cannot move
            for tag in [elem.tag for elem in ds if elem.tag.group == group]:
                del ds[tag]


def derived_uid(kind: str, *parts) -> str:
    """A UID fixed by what a result derives from (source UID, model, settings): a rerun or a
    resumed run writes the same UIDs, and different models or settings never share one."""
    return generate_uid(entropy_srcs=["medsr", kind, *(str(p) for p in parts)])


def index_affine(row_dir: np.ndarray, col_dir: np.ndarray, pixel_spacing: tuple[float, float], slice_step: float,
                 origin: np.ndarray, space: str = "LPS") -> np.ndarray:
    """4x4 from (column, row, slice) index to mm, in DICOM LPS or (space="RAS") NIfTI-style RAS: columns
    step along row_dir by the column spacing, rows along col_dir by the row spacing (pixel_spacing is
    (between rows, between columns)), slices along the unit normal by `slice_step`."""
    normal = np.cross(row_dir, col_dir)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * pixel_spacing[1]
    affine[:3, 1] = col_dir * pixel_spacing[0]
    affine[:3, 2] = normal / np.linalg.norm(normal) * slice_step
    affine[:3, 3] = origin
    if space.upper() == "RAS":
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    if space.upper() != "LPS":
        raise ValueError(f"space must be 'LPS' or 'RAS', got {space!r}")
    return affine


def float_vector(value, size: int) -> np.ndarray | None:
    """`size` finite floats from a multi-valued element (a position, an orientation), else None."""
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (size,) and np.all(np.isfinite(vector)) else None


def functional_group(item: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    """An enhanced frame's functional group macro: the frame's own, else the shared one."""
    for where in (item, shared):
        if where is not None and where.get(sequence):
            return where[sequence].value[0]
    return None


def _shift_to_finer_grid(ds: Dataset, scale: float) -> None:
    """Move ImagePositionPatient (top level and every enhanced frame) to the new first pixel's centre.

    The field of view stays, so on a grid `scale` times finer the first centre moves in by
    (1 - 1/scale)/2 of an old pixel along both in-plane axes. ImageOrientationPatient's first
    triplet runs along a row (increasing column index, step PixelSpacing[1]), the second down a
    column (step PixelSpacing[0]). Call before _divide_spacing: this needs the old spacing.
    """
    shared = functional_group(ds, None, "SharedFunctionalGroupsSequence")
    places = {id(ds): (ds, ds, ds)}  # (holds the position, the orientation, the spacing)
    for item in ds.get("PerFrameFunctionalGroupsSequence") or [None]:
        where = tuple(functional_group(item, shared, name) for name in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"))
        if where[0] is not None:
            places.setdefault(id(where[0]), where)  # a shared position is moved once, not once per frame
    for position, orientation, measures in places.values():
        if orientation is None or measures is None:
            continue
        ipp = float_vector(position.get("ImagePositionPatient"), 3)
        iop = float_vector(orientation.get("ImageOrientationPatient"), 6)
        spacing = spacing_pair(measures.get("PixelSpacing"))
        if ipp is None or iop is None or spacing is None:
            continue
        step = (1 - 1 / scale) / 2
        moved = ipp - step * (iop[:3] * spacing[1] + iop[3:] * spacing[0])
        position.ImagePositionPatient = [DSfloat(float(v), auto_format=True) for v in moved]


def write_dicom(path: Path, image: Image, *, scale: float, model_name: str, target: Path | None = None) -> None:
    """Write a derived DICOM (uncompressed Explicit VR Little Endian) to `path`."""
    name = target or path
    try:
        with quiet_libraries():
            _write_dicom(path, image, scale, model_name, name)
    except (MedsrError, OSError, MemoryError):
        raise  # atomic_write turns OSError into a MedsrError naming the target; the batch says what MemoryError is
    except Exception as err:
        # The derived header is a copy of the source's, and a damaged source header (a file that
        # still read) can fail here in as many ways as pydicom has exceptions.
        raise MedsrError(
            f"{name}: cannot write a derived DICOM from this source header ({type(err).__name__}: "
            f"{printable(err, 120)}); the source is damaged, use --format png, tiff or nii"
        ) from err


def _write_dicom(path: Path, image: Image, scale: float, model_name: str, name: Path) -> None:
    derived_dataset(image, scale, model_name, name).save_as(path, enforce_file_format=True)


def derived_dataset(image: Image, scale: float, model_name: str, name: Path) -> Dataset:
    """The derived header with pixel data that write_dicom saves (series.py adjusts it for a series).
    `name` is the target named in error messages."""
    meta = image.meta
    pixels = image.pixels
    if pixels.shape[-1] > 65535 or pixels.shape[-2] > 65535:
        raise MedsrError(f"{name}: image {pixels.shape[-2]}x{pixels.shape[-1]} exceeds DICOM's 65535 rows/columns; use a smaller scale")
    if meta.format == "dicom" and isinstance(meta.source, Dataset):
        rows, cols = int(meta.source.Rows), int(meta.source.Columns)
        if tuple(pixels.shape[-2:]) != (round(rows * scale), round(cols * scale)):  # else every spacing written would be wrong
            raise MedsrError(f"{name}: the pixels are {pixels.shape[-2]}x{pixels.shape[-1]}, not the source's {rows}x{cols} "
                             f"times the scale {scale:g}; pass the scale they were upscaled by")
        ds = copy.deepcopy(meta.source)
        if "PixelData" in ds:
            del ds.PixelData
        if int(ds.BitsAllocated) not in (8, 16, 32):
            raise MedsrError(f"{name}: cannot write BitsAllocated {ds.BitsAllocated} DICOM; use --format png or tiff")
        stored = _to_stored(pixels, ds, meta)
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
            ref = Dataset()  # point back at the image this one derives from
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            ds.SourceImageSequence = [ref]
        if "SOPClassUID" not in ds:
            ds.SOPClassUID = SECONDARY_CAPTURE  # the file meta needs one; software-made is honest
        if meta.photometric not in _GRAY:
            ds.PhotometricInterpretation = "MONOCHROME2"  # colour reduced to luminance on read
        # Same source, model and scale -> same UIDs (slices of one series share one derived series).
        settings = (model_name, f"x{scale:g}")
        ds.SeriesInstanceUID = derived_uid("series", ds.SeriesInstanceUID, *settings) if ds.get("SeriesInstanceUID") else generate_uid()
        ds.SOPInstanceUID = derived_uid("sop", ds.SOPInstanceUID, *settings) if ds.get("SOPInstanceUID") else generate_uid()
        try:  # a new series: not the source's number
            ds.SeriesNumber = int(ds.SeriesNumber) + SERIES_NUMBER_OFFSET
        except (AttributeError, TypeError, ValueError):
            pass  # none, or damaged: left as it was
        _shift_to_finer_grid(ds, scale)
        _divide_spacing(ds, scale)
        _scale_shutters(ds, scale)
        _scale_ultrasound_regions(ds, scale)
        _scale_overlays(ds, scale)
        method = LOSSY_METHODS.get(str(getattr(getattr(meta.source, "file_meta", None), "TransferSyntaxUID", "")))
        if method and str(ds.get("LossyImageCompression", "")) != "01":  # once lossy, always said (PS3.3 C.7.6.1.1.5)
            ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", method
        kept = list(ds.get("ImageType", []))
        kept = [kept] if isinstance(kept, str) else kept
        # Enhanced (functional group) objects allow only PRIMARY or MIXED as the second value.
        sop_class = UID(str(ds.get("SOPClassUID", ""))).name  # an enhanced class, even where its functional groups are missing
        enhanced = "PerFrameFunctionalGroupsSequence" in ds or sop_class.startswith(("Enhanced", "Legacy Converted Enhanced"))
        ds.ImageType = ["DERIVED", "PRIMARY" if enhanced else "SECONDARY", *kept[2:]]
        for keyword in _ORIGINAL_ONLY_PULSE_SEQUENCE if enhanced else ():
            if keyword in ds:
                delattr(ds, keyword)
    else:
        check_stack(pixels, meta, name)
        ds = _secondary_capture(meta)
        stored = to_uint(pixels.reshape(pixels.shape[-2:]), int(ds.BitsStored))
        top, (low, high) = 2 ** int(ds.BitsStored) - 1, meta.value_range
        if high > low and (low, high) != (0, top):  # stored 0..top stand for the source's own values (a NIfTI's, an array's)
            ds.RescaleSlope = DSfloat((high - low) / top, auto_format=True)
            ds.RescaleIntercept = DSfloat(low, auto_format=True)
            ds.RescaleType = "US"  # unspecified units
        if "PixelSpacing" in ds:
            _divide_spacing(ds, scale)

    for keyword in _STALE:
        if keyword in ds:
            delattr(ds, keyword)
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = (int(n) for n in stored.shape[-2:])
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    elif "NumberOfFrames" in ds:
        ds.NumberOfFrames = 1
    what = f"medsr super-resolution x{scale:g}" + (f" ({model_name})" if model_name else "")
    earlier = str(ds.get("DerivationDescription", "") or "").strip()  # e.g. how the source was compressed
    ds.DerivationDescription = (f"{earlier}; {what}" if earlier else what)[-1024:]
    ds.SeriesDescription = f"{ds.get('SeriesDescription', '') or ''} medsr x{scale:g}".strip()[-64:]

    data = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    data += b"\0" * (len(data) % 2)  # DICOM values have even length
    ds.add_new(0x7FE00010, "OB" if int(ds.BitsAllocated) == 8 else "OW", data)

    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if "ImplementationVersionName" in ds.file_meta:
        del ds.file_meta.ImplementationVersionName
    if ds.original_encoding[1] is False:  # a big-endian source (retired, still exported): its values decoded, then re-encoded
        for _ in ds.iterall():  # (reading each element decodes it from the source's bytes)
            pass
        ds.set_original_encoding(False, True, ds.original_character_set)
    return ds
