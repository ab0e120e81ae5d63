"""DICOM series in, series out: group files into series and volumes, and write a derived series.

Read: `scan_series(folder or files)` groups DICOM files by SeriesInstanceUID, splits each series
into volumes (one per time point, echo, b-value or stack) and orders the slices of a volume along
the slice normal. Classic single-frame files and enhanced multi-frame files (functional groups)
are both read. A series that cannot form a volume (missing slice, uneven spacing, mixed sizes or
orientations, one slice, ...) gets `Series.reason`, one line saying why, and is meant to be
processed file by file instead (`medsr.io.dicom.write_dicom`): its geometry is never guessed.

Write: `write_derived_series(series, pixels_per_volume, out_dir, ...)` writes the super-resolved
volumes (each volume can be its own job) as one derived series: one file per slice for classic
input, one enhanced file holding every volume for enhanced input. UIDs are derived deterministically from the source UIDs, model and settings (a rerun
writes identical files); ImagePositionPatient and PixelSpacing follow the finer in-plane grid; a
new set of slice positions along the normal (through-plane super-resolution) is accepted too.
`write_series_nifti` writes the same results as one NIfTI volume in the series' world (RAS+).

Geometry is DICOM patient space (LPS, mm). ImageOrientationPatient holds `row_dir` (along a row:
increasing column index, step PixelSpacing[1]) then `col_dir` (down a column: increasing row
index, step PixelSpacing[0]); the slice normal is row_dir x col_dir, and a slice's position is
normal . ImagePositionPatient (the centre of its first pixel).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import DSfloat

from medsr.errors import MedsrError
from medsr.files import atomic_write
from medsr.io import dicom
from medsr.io.formats import file_extension, format_of_path
from medsr.io.types import Image, ImageMeta, printable, quiet_libraries

# Two positions closer than this (mm) are the same slice; spacings may differ by this much (or by
# 0.1 % of the spacing) before a volume counts as unevenly spaced. Scanners' rounding is ~1e-5 mm.
TOLERANCE_MM = 0.01
# Private elements holding the number of slices per volume, which converters such as dcm2niix
# trust: rewritten when through-plane super-resolution changes that number.
PRIVATE_SLICE_COUNTS = (("Philips Imaging DD 001", 0x2001, 0x18), ("GEMS_RELA_01", 0x0021, 0x4F))
PRIVATE_SLICE_NUMBERS = (("Philips Imaging DD 001", 0x2001, 0x0A),)  # SliceNumberMR: 1.. within the volume


@dataclass
class _Slice:
    """One 2D image of a series: a single-frame file, or one frame of an enhanced file."""

    path: Path
    ds: Dataset  # the file's header, no pixel data; the frames of one enhanced file share it
    frame: int | None  # frame index in an enhanced file, None for a single-frame file
    position: np.ndarray | None  # ImagePositionPatient
    orientation: np.ndarray | None  # ImageOrientationPatient (row_dir, col_dir)
    spacing: tuple[float, float] | None  # PixelSpacing (between rows, between columns)
    layout: tuple  # rows, columns and pixel format: must agree within a volume
    identity: tuple  # what tells volumes apart: echo, b-value, gradient, time point, stack
    order: tuple  # how to order several slices at one position when identity does not
    problem: str | None = None  # why this slice cannot be part of any volume
    image: bool = True  # False: the file holds no image and its class says so (a DICOMDIR, a report: dicom.non_image_class)


@dataclass
class Volume:
    """One 3D volume of a series with its exact geometry; slices sorted along the normal.

    `pixels` (N, H, W) float32 in [0, 1] is read on first use; all slices share one value range
    (`metas` says how to map back to stored values). `affine()` maps (column, row, slice) indices
    to mm: note the index order is the reverse of the array's (slice, row, column).
    """

    series_uid: str
    index: int  # position of this volume in its series (0-based)
    count: int  # volumes in the series
    label: str  # e.g. "time point 2" or "echo 1"; "" for a series of one volume
    paths: list[Path]  # per slice (enhanced: the same file for every frame)
    datasets: list[Dataset]  # per slice: the source header (no pixel data)
    frames: list[int] | None  # per slice: frame index in the enhanced file; None for classic files
    origin: np.ndarray  # centre of the first pixel of the first slice (LPS, mm)
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    positions: np.ndarray  # (N,) mm along the normal, increasing

    @property
    def normal(self) -> np.ndarray:
        normal = np.cross(self.row_dir, self.col_dir)
        return normal / np.linalg.norm(normal)

    @property
    def slice_spacing(self) -> float:
        return float((self.positions[-1] - self.positions[0]) / (len(self.positions) - 1))

    @property
    def enhanced(self) -> bool:
        return self.frames is not None

    @property
    def slice_thickness(self) -> float | None:
        """SliceThickness (mm) when every slice gives the same positive one (an enhanced file's in its
        PixelMeasuresSequence), else None."""
        values = set()
        for ds, frame in zip(self.datasets, self.frames or [None] * len(self.datasets)):
            if frame is not None:
                per_frame = ds.PerFrameFunctionalGroupsSequence[frame]
                ds = dicom.functional_group(per_frame, _item(ds, "SharedFunctionalGroupsSequence"), "PixelMeasuresSequence") or Dataset()
            try:
                values.add(float(ds.get("SliceThickness")))
            except (TypeError, ValueError):  # missing, empty or damaged
                return None
        value = values.pop() if len(values) == 1 else math.nan
        return value if math.isfinite(value) and value > 0 else None

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.positions), int(self.datasets[0].Rows), int(self.datasets[0].Columns)

    def affine(self, space: str = "LPS") -> np.ndarray:
        """4x4 from (column, row, slice) index to mm, in DICOM LPS or (space="RAS") NIfTI-style RAS."""
        return dicom.index_affine(self.row_dir, self.col_dir, self.pixel_spacing, self.slice_spacing, self.origin, space)

    @cached_property
    def _loaded(self) -> tuple[np.ndarray, list[ImageMeta]]:
        images = []
        whole_files: dict[Path, Image] = {}
        for path, frame in zip(self.paths, self.frames or [None] * len(self.paths)):
            if frame is None:
                images.append(dicom.read_dicom(path))
                continue
            if path not in whole_files:
                whole_files[path] = dicom.read_dicom(path)
            frames = whole_files[path].pixels.reshape(-1, *whole_files[path].pixels.shape[-2:])
            if frame >= len(frames):
                raise MedsrError(f"{path}: its functional groups describe frame {frame + 1} but the file holds {len(frames)} "
                                 f"frame(s) (NumberOfFrames); the file is damaged, re-export it")
            images.append(Image(frames[frame], whole_files[path].meta))
        for path, image in zip(self.paths, images):
            if image.pixels.shape != self.shape[1:]:
                raise MedsrError(f"{path}: image is {image.pixels.shape} but was {self.shape[1:]} when the series was scanned; the file changed, scan again")
        # Slices may carry different rescales (e.g. PET): bring all to one range so values compare.
        common = (min(i.meta.value_range[0] for i in images), max(i.meta.value_range[1] for i in images))
        pixels = np.stack([_to_range(image, common) for image in images]).astype(np.float32)
        return pixels, [dataclasses.replace(image.meta, value_range=common, source=None) for image in images]

    @property
    def pixels(self) -> np.ndarray:
        """(N, H, W) float32 in [0, 1], read from the files on first use (read_dicom's normalisation)."""
        return self._loaded[0]

    @property
    def metas(self) -> list[ImageMeta]:
        """Per slice: how [0, 1] maps back to stored values (one common value_range per volume)."""
        return self._loaded[1]

    def release(self) -> None:
        """Forget the pixels read so far (a batch over many volumes keeps one in memory at a time)."""
        self.__dict__.pop("_loaded", None)


@dataclass
class Series:
    """The files of one SeriesInstanceUID and its volumes, or the reason it has none."""

    uid: str
    paths: list[Path]
    volumes: list[Volume]
    reason: str | None = None  # set: process these files one by one (dicom.write_dicom)
    spatial: bool = True  # some file has ImagePositionPatient and ImageOrientationPatient: a volume was possible
    repeats: list[Path] = dataclasses.field(default_factory=list)  # copies of files already in (same SOPInstanceUID): left out
    images: bool = True  # False: none of its files holds an image (DICOMDIR, reports, presentation states)

    def message(self, then: str = "processing it slice by slice instead") -> str:
        """The one line a caller prints for a series that forms no volume: why, then what is done instead."""
        first = self.paths[0] if len(self.paths) == 1 else f"{self.paths[0].parent} (series {self.uid or '?'}, {len(self.paths)} files)"
        return f"{first}: {self.reason}; {then}"


def _to_range(image: Image, value_range: tuple[float, float]) -> np.ndarray:
    """Pixels re-normalised from the file's own value range to the volume's common one."""
    low, high = image.meta.value_range
    if (low, high) == value_range:
        return image.pixels
    pixels = image.pixels.astype(np.float64)
    inverted = image.meta.photometric == "MONOCHROME1"  # read_dicom flips these to bright = high
    pixels = 1 - pixels if inverted else pixels
    pixels = (low + pixels * (high - low) - value_range[0]) / (value_range[1] - value_range[0])
    return 1 - pixels if inverted else pixels


# ----------------------------------------------------------------------------- reading


def list_dicom_files(folder: Path) -> list[Path]:
    """DICOM files under `folder` (recursively, sorted; hidden files such as half-written
    temporaries are skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            fmt = None if name.startswith(".") else format_of_path(path)
            if fmt is not None and fmt.module == "dicom":
                found.append(path)
    return found


def _sortable(value) -> tuple:
    """A header value as a sort key that never compares a number with a string."""
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, "" if value is None else str(value))


def _item(ds: Dataset | None, sequence: str) -> Dataset:
    """First item of a sequence, or an empty dataset."""
    if ds is not None and ds.get(sequence):
        return ds[sequence].value[0]
    return Dataset()


def _frame_slices(path: Path, ds: Dataset) -> list[_Slice]:
    """The frames of an enhanced multi-frame file, from its functional groups."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    slices = []
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        content, diffusion, echo, position, orientation, measures = (
            dicom.functional_group(item, shared, name) or Dataset()
            for name in ("FrameContentSequence", "MRDiffusionSequence", "MREchoSequence",
                         "PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence")
        )
        slices.append(_slice(
            path, ds, frame, position, orientation, measures,
            identity=(
                _sortable(echo.get("EffectiveEchoTime")),
                _sortable(diffusion.get("DiffusionBValue")),
                _sortable(str(_item(diffusion, "DiffusionGradientDirectionSequence").get("DiffusionGradientOrientation"))),
                _sortable(content.get("TemporalPositionIndex")),
                _sortable(content.get("StackID")),
            ),
            order=(_sortable(content.get("FrameAcquisitionDateTime")), (0, frame)),
        ))
    return slices


def _slice(path: Path, ds: Dataset, frame: int | None, position: Dataset, orientation: Dataset, measures: Dataset,
           identity: tuple, order: tuple, problem: str | None = None) -> _Slice:
    """A slice whose geometry is read where each tag lives: the file itself, or a frame's functional groups."""
    return _Slice(path, ds, frame, dicom.float_vector(position.get("ImagePositionPatient"), 3),
                  dicom.float_vector(orientation.get("ImageOrientationPatient"), 6), dicom.spacing_pair(measures.get("PixelSpacing")),
                  _layout(ds), identity, order, problem)


def _layout(ds: Dataset) -> tuple:
    return (ds.get("Rows"), ds.get("Columns"), str(ds.get("PhotometricInterpretation", "")), ds.get("SamplesPerPixel", 1), ds.get("BitsAllocated"))


def _file_slices(path: Path) -> tuple[str, list[_Slice]]:
    """(SeriesInstanceUID, slices) of one file; an unreadable file gives one slice with a problem."""
    try:
        with quiet_libraries():
            ds = dicom.read_dataset(path)
    except MedsrError as err:
        return "", [_Slice(path, Dataset(), None, None, None, None, (), (), (), problem=str(err).split(": ", 1)[-1])]
    kind = dicom.non_image_class(ds)
    has_pixels = "PixelData" in ds
    if has_pixels:
        del ds.PixelData  # headers only; Volume.pixels reads the files again
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if ds.get("PerFrameFunctionalGroupsSequence"):
        return uid, _frame_slices(path, ds)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):  # a damaged header: the file alone fails, in read_dicom's words
        return "", [_Slice(path, Dataset(), None, None, None, None, (), (), (), problem="its NumberOfFrames is not a whole number")]
    problem = None if has_pixels else f"holds no image (a {kind})" if kind else "has no pixel data (not an image)"
    if frames > 1:
        problem = "is a multi-frame file without per-frame positions"
    return uid, [dataclasses.replace(_slice(
        path, ds, None, ds, ds, ds,
        identity=(
            _sortable(ds.get("EchoNumbers")),
            _sortable(ds.get("DiffusionBValue")),
            _sortable(str(ds.get("DiffusionGradientOrientation"))),
            _sortable(ds.get("TemporalPositionIdentifier")),
            (1, ""),
        ),
        order=(_sortable(ds.get("TriggerTime")), _sortable(ds.get("AcquisitionNumber")),
               _sortable(ds.get("AcquisitionTime")), _sortable(ds.get("InstanceNumber"))),
        problem=problem,
    ), image=kind is None)]


def scan_series(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Series]:
    """Group DICOM files (a folder, searched recursively, or a list of files and folders) into
    series and volumes. Unreadable files come back as one-file series with a reason (the caller
    then processes them one by one and reports their error); they never stop the scan."""
    if isinstance(inputs, (str, os.PathLike)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise MedsrError(f"{folder}: not a folder; pass a folder of DICOM files or a list of files")
        paths = list_dicom_files(folder)
        if not paths:
            raise MedsrError(f"{folder}: no DICOM files found; check the folder (files need a .dcm extension or the DICM preamble)")
    else:
        paths = [q for p in map(Path, inputs) for q in (list_dicom_files(p) if p.is_dir() else [p])]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MedsrError(f"{missing[0]}: file not found; check the path")
    by_uid: dict[str, list[_Slice]] = defaultdict(list)
    loose = []
    for path in paths:
        uid, slices = _file_slices(path)
        if not uid:
            reason = slices[0].problem or "has no SeriesInstanceUID"
            loose.append(Series("", [path], [], reason, spatial=False, images=slices[0].image))
        else:
            by_uid[uid].extend(slices)
    found = []
    for uid, slices in by_uid.items():
        files = list(dict.fromkeys(s.path for s in slices))
        slices, repeats = _without_copies(slices)
        groups, reason = _split_volumes(slices)
        volumes = [] if reason else _volumes(uid, groups)
        spatial = any(s.position is not None and s.orientation is not None for s in slices)
        found.append(Series(uid, files, volumes, reason, spatial, repeats, images=any(s.image for s in slices)))
    return found + loose


def _without_copies(slices: list[_Slice]) -> tuple[list[_Slice], list[Path]]:
    """The slices with copies of an image already seen (the same SOPInstanceUID, frame and file size:
    a file copied twice into the folder) left out, and the files left out; as dcm2niix drops duplicates."""
    seen, kept, repeats = set(), [], []
    for piece in slices:
        key = (str(piece.ds.get("SOPInstanceUID", "")), piece.frame, piece.path.stat().st_size)
        if key[0] and key in seen:
            repeats.append(piece.path)
        else:
            seen.add(key)
            kept.append(piece)
    return kept, list(dict.fromkeys(repeats))


def _split_volumes(slices: list[_Slice]) -> tuple[list[list[_Slice]], str | None]:
    """Slices of one series -> volumes (each sorted along the normal), or the reason there are none."""
    problems = [s for s in slices if s.problem]
    if problems:
        return [], f"{problems[0].path.name} {problems[0].problem}"
    for name, missing in (("ImagePositionPatient", [s for s in slices if s.position is None]),
                          ("ImageOrientationPatient", [s for s in slices if s.orientation is None]),
                          ("PixelSpacing", [s for s in slices if s.spacing is None])):
        if missing:
            return [], f"{missing[0].path.name} has no usable {name}"
    if len({s.frame is None for s in slices}) > 1 or len({s.path for s in slices if s.frame is not None}) > 1:
        return [], "mixes files: single-frame with multi-frame, or several multi-frame files"
    if len({s.layout for s in slices}) > 1:
        sizes = sorted({f"{s.layout[0]}x{s.layout[1]} {s.layout[2]}" for s in slices})
        return [], f"mixes image sizes or pixel formats ({', '.join(sizes[:3])})"
    if np.ptp([s.orientation for s in slices], axis=0).max() > 1e-4:
        return [], "mixes slice orientations"
    if np.ptp([s.spacing for s in slices], axis=0).max() > 1e-4:
        return [], "mixes pixel spacings"
    row, col = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        return [], "has an ImageOrientationPatient whose directions are not perpendicular unit vectors"
    normal /= np.linalg.norm(normal)
    where = {id(s): float(normal @ s.position) for s in slices}

    # Slices at the same position (within tolerance) belong to different volumes.
    ordered = sorted(slices, key=lambda s: where[id(s)])
    places, last = [], None
    for s in ordered:
        if last is None or where[id(s)] - last > TOLERANCE_MM:
            places.append([])
        places[-1].append(s)
        last = where[id(s)]
    if all(len(p) == 1 for p in places):
        groups = [ordered]
    else:
        groups = []
        by_identity = defaultdict(list)
        for s in slices:
            by_identity[s.identity].append(s)
        for identity in sorted(by_identity):  # echo, b-value, time point, stack ...
            members = {id(s) for s in by_identity[identity]}
            here = [sorted((s for s in p if id(s) in members), key=lambda s: s.order) for p in places]
            here = [p for p in here if p]
            repeats = {len(p) for p in here}
            if len(repeats) > 1:
                return [], f"has {min(repeats)} slices at some positions and {max(repeats)} at others (an incomplete time point or echo?)"
            groups += [[p[k] for p in here] for k in range(repeats.pop())]  # k-th repeat -> k-th volume
    sizes = sorted({len(g) for g in groups})
    if len(sizes) > 1 or np.ptp([[where[id(s)] for s in g] for g in groups], axis=0).max() > TOLERANCE_MM:
        return [], f"has volumes of {' and '.join(map(str, sizes))} slices or at different positions (an incomplete time point or echo?)"
    for group in groups:
        reason = _check_volume(group, where, row, col)
        if reason:
            return [], reason + (f" (in one of its {len(groups)} volumes)" if len(groups) > 1 else "")
    return groups, None


def _check_volume(group: list[_Slice], where: dict, row: np.ndarray, col: np.ndarray) -> str | None:
    """Why these slices (sorted along the normal) do not form an evenly spaced volume, or None."""
    if len(group) < 2:
        return "has a single slice, not a volume"
    positions = np.array([where[id(s)] for s in group])
    gaps = np.diff(positions)
    if gaps.min() <= TOLERANCE_MM:
        return "has two slices at the same position"
    # Each slice must sit straight above the first (no gantry tilt / shear).
    offsets = np.array([s.position - group[0].position for s in group])
    if np.abs(offsets @ np.stack([row, col], axis=1)).max() > TOLERANCE_MM:
        return "has slices shifted in-plane along the stack (gantry tilt or sheared stack)"
    step = gaps.min()
    if gaps.max() - step > max(TOLERANCE_MM, 1e-3 * step):
        multiples = gaps / step
        if np.allclose(multiples, np.rint(multiples), atol=0.01):
            k = int(np.argmax(gaps))
            return (f"is missing {round(multiples.sum()) - len(gaps)} slice(s) (gap of {gaps[k]:.4g} mm "
                    f"after {group[k].path.name}, spacing {step:.4g} mm)")
        return f"has uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm)"
    return None


def _volumes(uid: str, groups: list[list[_Slice]]) -> list[Volume]:
    """Volume records for the slice groups of one series, labelled by what tells them apart."""
    names = ("echo", "b-value", "gradient", "time point", "stack")  # the fields of _Slice.identity
    varying = [i for i in range(len(names)) if len({g[0].identity[i] for g in groups}) > 1]
    labels = []
    for n, group in enumerate(groups):
        values = [group[0].identity[i][1] for i in varying]  # _sortable keys: (kind, value)
        parts = [f"{names[i]} {v:g}" if isinstance(v, float) else f"{names[i]} {v}" for i, v in zip(varying, values)]
        labels.append(", ".join(parts) or (f"repeat {n + 1}" if len(groups) > 1 else ""))
    volumes = []
    for n, group in enumerate(groups):
        first = group[0]
        normal = np.cross(first.orientation[:3], first.orientation[3:])
        normal /= np.linalg.norm(normal)
        volumes.append(Volume(
            series_uid=uid,
            index=n,
            count=len(groups),
            label=labels[n],
            paths=[s.path for s in group],
            datasets=[s.ds for s in group],
            frames=None if first.frame is None else [s.frame for s in group],
            origin=first.position.copy(),
            row_dir=first.orientation[:3].copy(),
            col_dir=first.orientation[3:].copy(),
            pixel_spacing=first.spacing,
            positions=np.array([float(normal @ s.position) for s in group]),
        ))
    return volumes


# ----------------------------------------------------------------------------- writing


@dataclass
class _Grid:
    """Where the result's slices are, relative to the source volume."""

    scale: float  # in-plane
    positions: np.ndarray  # mm along the normal
    through: bool  # a new set of slices (through-plane)
    nearest: list[int]  # per new slice: the nearest source slice (its header is the template)
    spacing: float
    thickness: float


def _grid(volume: Volume, pixels: np.ndarray, positions, slice_thickness) -> _Grid:
    """Check the super-resolved pixels against the volume and say where their slices lie."""
    n, rows, cols = volume.shape
    where = volume.paths[0]
    if pixels.ndim != 3 or pixels.shape[1] * cols != pixels.shape[2] * rows or pixels.shape[1] < rows:
        raise MedsrError(
            f"{where}: super-resolved pixels {pixels.shape} do not fit a volume of {n}x{rows}x{cols}; "
            "pass (slices, rows*s, columns*s) with the same scale s on both axes"
        )
    if not np.all(np.isfinite(pixels)):
        raise MedsrError(f"{where}: super-resolved pixels hold NaN or infinity; check the model output")
    through = positions is not None
    if not through:
        if len(pixels) != n:
            raise MedsrError(f"{where}: {len(pixels)} slices of pixels for a volume of {n}; pass positions= for a new set of slices")
        positions = volume.positions
    positions = np.asarray(positions, dtype=np.float64).ravel()
    if len(positions) != len(pixels) or len(positions) < 2 or not np.all(np.isfinite(positions)):
        raise MedsrError(f"{where}: positions must be {len(pixels)} finite numbers, one per slice of pixels; pass one position (mm along the normal) per slice")
    gaps = np.diff(positions)
    if gaps.min() <= 0 or gaps.max() - gaps.min() > max(TOLERANCE_MM, 1e-3 * gaps.min()):
        raise MedsrError(f"{where}: positions must increase evenly (got gaps {gaps.min():.4g} to {gaps.max():.4g} mm); pass an even grid along the normal")
    spacing = float((positions[-1] - positions[0]) / (len(positions) - 1))
    return _Grid(
        scale=pixels.shape[2] / cols,
        positions=positions,
        through=through,
        nearest=[int(np.argmin(np.abs(volume.positions - p))) for p in positions],
        spacing=spacing,
        thickness=float(slice_thickness) if slice_thickness is not None else spacing,
    )


def write_derived_series(
    series: Series,
    pixels: Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    *,
    model_name: str,
    settings: str = "",
    positions: Sequence[float] | None = None,
    slice_thickness: float | None = None,
) -> list[Path]:
    """Write the super-resolved volumes of `series` as one derived series in `out_dir`.

    `pixels[v]` is volume v's result, (M, H*s, W*s) in [0, 1]; the in-plane scale s comes from
    its shape. `positions` (mm along the normal, like Volume.positions; the same for every
    volume) gives a new set of M slices for through-plane results; `slice_thickness` defaults to
    their spacing. `settings` (e.g. tiling, precision) enters the UIDs with the model name, the
    scale and the positions, so the same inputs always give the same UIDs and file names.
    Returns the files written: one per slice for classic input, one enhanced file for enhanced.
    """
    pixels, grid, series_uid = _checked_results(series, pixels, positions, slice_thickness, model_name, settings)
    source = series.volumes[0].datasets[0]
    stem = Path(out_dir) / _file_stem(series_uid)
    try:
        number = int(source.get("SeriesNumber")) + dicom.SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        number = None

    def finish(ds: Dataset, sop_uid: str) -> Dataset:
        """The changes every derived file of the series gets."""
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SeriesNumber = number
        if grid.through:
            what = f"; slices {len(series.volumes[0].positions)} -> {len(grid.positions)}, spacing {grid.spacing:.4g} mm"
            ds.DerivationDescription = (str(ds.get("DerivationDescription", "")) + what)[:1024]
        return ds

    with quiet_libraries():
        if series.volumes[0].enhanced:
            target = Path(f"{stem}.dcm")
            ds = _derived_enhanced(series.volumes, pixels, grid, model_name, target)
            return [_save(finish(ds, dicom.derived_uid("sop", series_uid, source.SOPInstanceUID)), target)]
        written = []
        for volume, result in zip(series.volumes, pixels):
            locations = _slice_locations(volume, grid.positions) if grid.through else None
            ascending = _numbered_along_normal(volume)
            refit = grid.through and len({dicom.rescale(ds) for ds in volume.datasets}) > 1
            for k, position in enumerate(grid.positions):
                i = grid.nearest[k]
                target = Path(f"{stem}_{volume.index + 1:03d}_{k + 1:04d}.dcm")
                meta = volume.metas[i]
                header = _rescaled_to_hold(volume.datasets[i], result[k], meta) if refit else volume.datasets[i]
                image = Image(result[k], dataclasses.replace(meta, source=header))
                ds = _derived(image, grid.scale, model_name, target)  # IPP, spacing, pixels, source reference
                if grid.through:
                    moved = dicom.float_vector(ds.ImagePositionPatient, 3) + (position - volume.positions[i]) * volume.normal
                    ds.ImagePositionPatient = [_ds(v) for v in moved]
                    ds.SliceThickness = _ds(grid.thickness)
                    ds.SpacingBetweenSlices = _ds(grid.spacing)
                    count = len(grid.positions)
                    in_volume = k + 1 if ascending else count - k
                    ds.InstanceNumber = volume.index * count + in_volume
                    if locations is not None:
                        ds.SliceLocation = _ds(locations[k])
                    elif "SliceLocation" in ds:
                        del ds.SliceLocation
                    _set_private(ds, PRIVATE_SLICE_COUNTS, count)
                    _set_private(ds, PRIVATE_SLICE_NUMBERS, in_volume)
                written.append(_save(finish(ds, dicom.derived_uid("sop", series_uid, volume.index, k)), target))
        return written


def _checked_results(series: Series, pixels: Sequence[np.ndarray], positions, slice_thickness, model_name: str,
                     settings: str) -> tuple[list[np.ndarray], _Grid, str]:
    """What both writers of a derived series start from: the results checked against the series,
    where their slices lie, and the derived SeriesInstanceUID (from everything that changes the
    result, so the same inputs give the same UID)."""
    if series.reason:
        raise MedsrError(f"{series.paths[0]}: cannot be written as a series ({series.reason}); write its files one by one (medsr.io.write_image)")
    if len(pixels) != len(series.volumes):
        raise MedsrError(f"{series.paths[0]}: {len(pixels)} results for a series of {len(series.volumes)} volumes; pass one result per volume")
    pixels = [np.asarray(p, dtype=np.float32) for p in pixels]
    if len({p.shape for p in pixels}) > 1:
        raise MedsrError(f"{series.paths[0]}: the volumes' results differ in shape ({', '.join(sorted({str(p.shape) for p in pixels}))}); upscale every volume the same way")
    # The volumes of a series share their slice positions (scan_series checks it), so one grid fits all.
    grid = [_grid(volume, p, positions, slice_thickness) for volume, p in zip(series.volumes, pixels)][0]  # checks each
    key = [model_name, f"x{grid.scale:g}"] + ([settings] if settings else [])
    if grid.through:
        key += ["slices", *(f"{p:.4f}" for p in grid.positions), f"thickness {grid.thickness:.4f}"]
    return pixels, grid, dicom.derived_uid("series", series.uid, *key)


def _file_stem(series_uid: str) -> str:
    """The derived series' file names start so (batch resume and temp-file clean-up look for 'medsr_')."""
    return f"medsr_{hashlib.sha1(series_uid.encode()).hexdigest()[:8]}"


def write_series_nifti(
    series: Series,
    pixels: Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    *,
    model_name: str,
    settings: str = "",
    positions: Sequence[float] | None = None,
    slice_thickness: float | None = None,
    target: str | os.PathLike | None = None,
) -> list[Path]:
    """The super-resolved volumes of `series` (write_derived_series's arguments) as one NIfTI file:
    axes (column, row, slice along the normal), a 4th axis for a series of several volumes (time
    points step by the repetition time, in seconds), values in the series' own units as dcm2niix gives
    them (float32; philips_float_factor), and the affine in RAS+ mm as nibabel and dcm2niix give the
    source series, moved to the finer grid over the same field of view (qform and sform code 1,
    scanner). Named like the derived series' files (medsr_<hash>.nii.gz in `out_dir`) unless
    `target` names the file. Returns [the path written], as write_derived_series returns its files."""
    import nibabel as nib

    from medsr.io.nifti import scaled_affine

    pixels, grid, series_uid = _checked_results(series, pixels, positions, slice_thickness, model_name, settings)
    first = series.volumes[0]
    lps = scaled_affine(first.affine("LPS"), [0, 1], grid.scale)
    lps[:3, 2] = first.normal * grid.spacing
    lps[:3, 3] += first.normal * (grid.positions[0] - first.positions[0])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    factor = philips_float_factor([ds for volume in series.volumes for ds in volume.datasets])
    volumes = []
    for volume, result in zip(series.volumes, pixels):
        low, high = volume.metas[0].value_range
        values = (low + np.clip(result, 0.0, 1.0) * (high - low)) * factor
        volumes.append(np.transpose(values, (2, 1, 0)).astype(np.float32))
    data = volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=3)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")  # as dcm2niix writes them
    repetition = float(first.datasets[0].get("RepetitionTime") or 0) / 1000  # ms -> s
    if len(volumes) > 1 and repetition > 0 and all(v.label.startswith("time point") for v in series.volumes):
        image.header.set_zooms(image.header.get_zooms()[:3] + (repetition,))  # a time series: the 4th axis steps by TR
    image.header["descrip"] = f"medsr x{grid.scale:g} {model_name}"[:79].encode()
    path = Path(target) if target is not None else Path(out_dir) / f"{_file_stem(series_uid)}.nii.gz"
    with quiet_libraries():
        return [atomic_write(path, lambda tmp: nib.save(image, tmp), suffix=file_extension(path))]


def philips_float_factor(datasets: Sequence[Dataset]) -> float:
    """What turns the series' rescaled values into Philips' precise floating-point values, as dcm2niix
    writes a Philips MR series by default (its -p y): FP = (PV * RS + RI) / (RS * SS), with SS the private
    MRScaleSlope (2005,100E); 1.0 for other series, and for one whose RS * SS varies between slices
    (which dcm2niix too only warns about)."""
    factors = []
    for ds in datasets:
        try:
            scale_slope = float(ds.private_block(0x2005, "Philips MR Imaging DD 001")[0x0E].value)
        except (KeyError, TypeError, ValueError):  # not a Philips MR file, or one without the element
            return 1.0
        if not (math.isfinite(scale_slope) and scale_slope > 0):
            return 1.0
        factors.append(1.0 / (dicom.rescale(ds)[0] * scale_slope))
    return factors[0] if factors and max(factors) <= min(factors) * (1 + 1e-6) else 1.0


def _rescaled_to_hold(ds: Dataset, pixels01: np.ndarray, meta: ImageMeta) -> Dataset:
    """A copy of a slice's header with RescaleSlope and RescaleIntercept set so that its stored range
    holds `pixels01`'s values (in the volume's real units): for a new slice between source slices of
    different rescales (PET), which would otherwise be clipped to its nearest source slice's range."""
    low, high = meta.value_range
    values = low + np.clip(pixels01, 0.0, 1.0) * (high - low)
    first, last = dicom.stored_range(ds)
    vmin, vmax = float(values.min()), float(values.max())
    slope = (vmax - vmin) / (last - first) if vmax > vmin else 1.0
    header = copy.deepcopy(ds)
    header.RescaleSlope = _ds(slope)
    header.RescaleIntercept = _ds(vmin - float(header.RescaleSlope) * first)
    return header


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _slice_locations(volume: Volume, positions: np.ndarray) -> np.ndarray | None:
    """SliceLocation for new positions, from the source's own linear relation to the position
    (its sign and offset are vendor-defined); None when the source has no consistent one."""
    try:
        known = np.array([float(ds.SliceLocation) for ds in volume.datasets])
    except (AttributeError, TypeError, ValueError):
        return None
    slope, offset = np.polyfit(volume.positions, known, 1)
    if np.abs(slope * volume.positions + offset - known).max() > TOLERANCE_MM:
        return None
    return slope * positions + offset


def _numbered_along_normal(volume: Volume) -> bool:
    """Whether the source's InstanceNumbers grow along the normal: new slices are numbered the
    same way (1..M per volume, then on across volumes), so viewers and dcm2niix keep the order."""
    try:
        numbers = np.array([float(ds.InstanceNumber) for ds in volume.datasets])
    except (AttributeError, TypeError, ValueError):
        return True
    return bool(np.corrcoef(numbers, volume.positions)[0, 1] >= 0) if np.ptp(numbers) > 0 else True


def _set_private(ds: Dataset, elements: tuple, value: int) -> None:
    """Each of the private `elements` (creator, group, offset) the file holds set to `value`."""
    for creator, group, offset in elements:
        try:
            block = ds.private_block(group, creator)
        except KeyError:  # no such private creator in this file
            continue
        if offset in block:
            block[offset].value = value


def _derived(image: Image, scale: float, model_name: str, target: Path) -> Dataset:
    """dicom.derived_dataset with its damaged-source errors turned into one MedsrError line."""
    try:
        return dicom.derived_dataset(image, scale, model_name, target)
    except MedsrError:
        raise
    except Exception as err:
        raise MedsrError(
            f"{target}: cannot write a derived DICOM from the source header {image.meta.path} ({type(err).__name__}: "
            f"{printable(err, 120)}); the source is damaged, write its files one by one or as NIfTI"
        ) from err


def _derived_enhanced(volumes: list[Volume], pixels: list[np.ndarray], grid: _Grid, model_name: str, target: Path) -> Dataset:
    """One enhanced file with every volume's frames, volume after volume; each new frame's
    functional groups start as a copy of its nearest source frame's."""
    template = copy.deepcopy(volumes[0].datasets[0])
    per_frame = template.PerFrameFunctionalGroupsSequence
    template.PerFrameFunctionalGroupsSequence = DicomSequence(
        [copy.deepcopy(per_frame[v.frames[i]]) for v in volumes for i in grid.nearest]
    )
    image = Image(np.concatenate(pixels), dataclasses.replace(volumes[0].metas[0], source=template))
    ds = _derived(image, grid.scale, model_name, target)  # IPP per frame, spacing, pixels
    if not grid.through:
        return ds
    shared = dicom.functional_group(ds, None, "SharedFunctionalGroupsSequence")
    in_stack = _in_stack_dimension(ds)
    frames = ds.PerFrameFunctionalGroupsSequence
    for v, volume in enumerate(volumes):
        for k, i in enumerate(grid.nearest):
            item = frames[v * len(grid.nearest) + k]
            plane = dicom.functional_group(item, shared, "PlanePositionSequence")
            moved = dicom.float_vector(plane.ImagePositionPatient, 3) + (grid.positions[k] - volume.positions[i]) * volume.normal
            plane.ImagePositionPatient = [_ds(v) for v in moved]
            content = dicom.functional_group(item, None, "FrameContentSequence")
            if content is not None and "InStackPositionNumber" in content:
                content.InStackPositionNumber = k + 1
            if content is not None and in_stack is not None and "DimensionIndexValues" in content:
                values = list(content.DimensionIndexValues) if content["DimensionIndexValues"].VM > 1 else [content.DimensionIndexValues]
                values[in_stack] = k + 1
                content.DimensionIndexValues = values
    for item in [shared, *ds.PerFrameFunctionalGroupsSequence]:
        measures = dicom.functional_group(item, None, "PixelMeasuresSequence")
        if measures is not None:
            measures.SliceThickness = _ds(grid.thickness)
            measures.SpacingBetweenSlices = _ds(grid.spacing)
    return ds


def _in_stack_dimension(ds: Dataset) -> int | None:
    """Which DimensionIndexValues entry counts the slices of a stack (renumbered for new slices)."""
    for n, dimension in enumerate(ds.get("DimensionIndexSequence") or []):
        if dimension.get("DimensionIndexPointer") in (0x00209057, 0x00200032):  # InStackPositionNumber, ImagePositionPatient
            return n
    return None


def _save(ds: Dataset, target: Path) -> Path:
    return atomic_write(target, lambda tmp: ds.save_as(tmp, enforce_file_format=True), suffix=".dcm")
