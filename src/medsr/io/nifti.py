"""NIfTI volumes via nibabel, presented as a stack of 2-D slices (N, H, W); a 4-D file (a volume per
time point or diffusion direction) as every volume's slices in turn; a 2-D file as (y, x), rows along
y, as a viewer draws it (and as medsr and dcm2niix write a single image: columns along x)."""

from __future__ import annotations

import dataclasses
import gzip
import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from medsr.errors import MedsrError, TooLargeError
from medsr.io.types import MAX_PIXELS, Image, ImageMeta, by_rows, quiet_libraries


def _in_plane_axes(ndim: int, slice_axis: int | None) -> list[int]:
    return [0, 1] if ndim == 2 else [a for a in range(3) if a != slice_axis]


# What nibabel raises on damaged files (HeaderDataError: impossible header fields; OverflowError:
# negative dimensions reaching mmap).
_DECODE_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, OverflowError, zlib.error)


_LABEL_INTENTS = ("label", "neuroname")  # NIFTI_INTENT_LABEL / NEURONAME: a segmentation's values are label indices


def _not_readable(path: Path, err: Exception) -> MedsrError:
    reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return MedsrError(f"{path}: not a readable NIfTI file (truncated or corrupt: {reason}); check the file or re-export it")


def _load(path: Path, max_pixels: int = MAX_PIXELS):
    """(image, data) with the shape checked from the header before any voxel is read."""
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
    except _DECODE_ERRORS as err:
        raise _not_readable(path, err)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):  # CIFTI-2 (.dconn.nii, .dtseries.nii) loads as its own type
        kind = "CIFTI-2" if isinstance(img, nib.Cifti2Image) else type(img).__name__
        raise MedsrError(f"{path}: a {kind} file, not a NIfTI volume; medsr upscales volumes (for CIFTI, upscale the volume "
                         f"it was made from)")
    if img.header.get_intent()[0] in _LABEL_INTENTS:
        raise MedsrError(f"{path}: a label map (NIfTI intent '{img.header.get_intent()[0]}'): its values are labels, which "
                         f"upscaling would blend into labels that do not exist; resample it with nearest-neighbour interpolation instead")
    # Trailing singleton dimensions (e.g. X*Y*Z*1 exported as 4-D) carry no data.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise MedsrError(f"{path}: {len(shape)}-D NIfTI {shape} is not supported; extract a 3-D or 4-D volume first (e.g. fslroi)")
    if math.prod(shape) > max_pixels:
        raise TooLargeError(f"{path}: volume too large ({'x'.join(map(str, shape))} voxels, limit {max_pixels} voxels); crop or downsample it first")
    try:
        data = np.asanyarray(img.dataobj)  # applies scl_slope/scl_inter; ints stay ints if unscaled
        _check_gzip_stream(path)
    except _DECODE_ERRORS as err:
        raise _not_readable(path, err)
    return img, data.reshape(shape)


def _check_gzip_stream(path: Path) -> None:
    """nibabel reads a .nii.gz only as far as its voxels go, so a damaged stream's checksum (at its
    end) is never checked and corrupt voxels pass as numbers: read a gzipped file to its end."""
    with open(path, "rb") as file:
        if file.read(2) != b"\x1f\x8b":
            return
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 24):
            pass


def read_nifti(path: Path, *, slice_axis: int | None = None, max_pixels: int = MAX_PIXELS) -> Image:
    with quiet_libraries():
        img, data = _load(path, max_pixels)
    if data.size == 0:
        raise MedsrError(f"{path}: NIfTI image has no voxels (shape {data.shape}); check the file or re-export it")
    if data.ndim < 2 or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise MedsrError(f"{path}: NIfTI data of shape {data.shape} and type {data.dtype} is not a grayscale image or volume; convert it first")

    zooms = [float(z) * mm_per_unit(img.header) for z in img.header.get_zooms()[: min(data.ndim, 3)]]
    if data.ndim >= 3:
        if slice_axis is None:
            # Slices across the coarsest axis; ties go to the last axis (the usual slice axis).
            slice_axis = max(range(3), key=lambda a: (zooms[a], a))
        elif slice_axis not in (-3, -2, -1, 0, 1, 2):
            raise MedsrError(f"{path}: slice_axis must be 0, 1 or 2, got {slice_axis}; pick a volume axis")
        slice_axis %= 3
    else:
        slice_axis = None

    values = data.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise MedsrError(f"{path}: NIfTI volume has no finite values; check the file")
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if not math.isfinite(hi - lo):
        raise MedsrError(f"{path}: NIfTI values span {lo:g} to {hi:g}, too wide to scale; check scl_slope/scl_inter in the header")
    span = hi - lo
    if span == 0:
        span = 1.0  # constant volume: any non-empty range keeps the mapping invertible
        hi = lo + span
    values[~finite] = lo  # NaN masks (common in statistics maps) become background
    pixels = (values - lo) / span
    if slice_axis is not None:
        pixels = np.moveaxis(pixels, slice_axis, 0)
    volumes = data.shape[3] if data.ndim == 4 else 1
    if volumes > 1:  # (slices, rows, columns, volumes) -> every volume's slices in turn
        pixels = np.moveaxis(pixels, 3, 0).reshape(-1, *pixels.shape[1:3])

    if data.ndim == 2:  # (x, y) as a viewer draws it, dcm2niix and medsr write one: columns along x
        pixels = pixels.T
    rows, cols = (1, 0) if data.ndim == 2 else _in_plane_axes(data.ndim, slice_axis)
    spacing = (zooms[rows], zooms[cols])
    meta = ImageMeta(
        path=str(path),
        format="nifti",
        bit_depth=32 if np.issubdtype(data.dtype, np.floating) else data.dtype.itemsize * 8,
        value_range=(lo, hi),
        pixel_spacing=spacing if all(z > 0 for z in spacing) else None,
        slice_axis=slice_axis,
        source=img,
        extra={"dtype": str(data.dtype), "volumes": volumes,
               # write_nifti puts the NaN/inf voxels back where they were, on the new grid
               **({"nonfinite": int((~finite).sum()), "read_affine": img.affine} if not finite.all() else {})},
    )
    return Image(np.ascontiguousarray(pixels, dtype=np.float32), meta)


def volume_count(meta: ImageMeta) -> int:
    """How many 3-D volumes (time points, diffusion directions) a NIfTI record from read_nifti holds:
    its pixels are their slices in turn, volume by volume."""
    return int(meta.extra.get("volumes", 1)) if meta.format == "nifti" else 1


def display_view(meta: ImageMeta) -> tuple[bool, bool, bool]:
    """(transpose, flip_rows, flip_columns), applied in that order, that draw a NIfTI volume's slices
    (read_nifti's rows and columns: its two in-plane axes in file order) as a DICOM viewer draws the
    scan: across the screen toward the patient's left (toward posterior for sagittal slices), down
    the screen toward posterior (axial slices) or inferior (coronal and sagittal). So a volume that
    dcm2niix made from a series is drawn as the series is. A 2-D file keeps its columns along x (as
    medsr writes one from a PNG or a DICOM file) and is only turned upright. Any other image: as it is."""
    if meta.format != "nifti" or meta.source is None:
        return False, False, False
    rows_axis, columns_axis = (1, 0) if meta.slice_axis is None else _in_plane_axes(3, meta.slice_axis)
    lps = np.asarray(meta.source.affine, dtype=np.float64)[:3, :3] * np.array([[-1.0], [-1.0], [1.0]])  # RAS -> DICOM's LPS
    down, across = lps[:, rows_axis], lps[:, columns_axis]
    normal = int(np.abs(np.cross(down, across)).argmax())  # 0: sagittal, 1: coronal, 2: axial slices
    if meta.slice_axis is None:
        return False, bool(down[1] < 0) if normal == 2 else bool(down[2] > 0), False
    sideways = 1 if normal == 0 else 0  # the world axis drawn across the screen: y for sagittal slices, else x
    transpose = bool(abs(down[sideways]) > abs(across[sideways]))
    if transpose:
        down, across = across, down
    flip_rows = bool(down[1] < 0) if normal == 2 else bool(down[2] > 0)  # down: +y (posterior) or -z (inferior)
    return transpose, flip_rows, bool(across[sideways] < 0)


def displayed(planes: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    """Planes (..., rows, columns) drawn as display_view's `view` says (a copy when it changes them)."""
    transpose, flip_rows, flip_columns = view
    if transpose:
        planes = np.swapaxes(planes, -1, -2)
    if flip_rows:
        planes = planes[..., ::-1, :]
    if flip_columns:
        planes = planes[..., ::-1]
    return np.ascontiguousarray(planes) if any(view) else planes


def undisplayed(planes: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    """The inverse of displayed: drawn planes back in the file's rows and columns."""
    transpose, flip_rows, flip_columns = view
    if flip_columns:
        planes = planes[..., ::-1]
    if flip_rows:
        planes = planes[..., ::-1, :]
    if transpose:
        planes = np.swapaxes(planes, -1, -2)
    return np.ascontiguousarray(planes) if any(view) else planes


def scaled_affine(affine: np.ndarray, axes: list[int], scale: float) -> np.ndarray:
    """Affine for a grid `scale` times finer along `axes`, covering the same field of view.

    New index j along an axis sits at old index (j + 0.5) / scale - 0.5 (voxel corners at -0.5
    line up), so the column shrinks by `scale` and the origin moves by column * (1/scale - 1) / 2.
    """
    new = np.array(affine, dtype=np.float64)
    for a in axes:
        new[:3, 3] += new[:3, a] * (1.0 / scale - 1.0) / 2.0
        new[:3, a] /= scale
    return new


def slice_spacing(meta: ImageMeta) -> float:
    """The distance between slice centres of a NIfTI volume read by read_nifti (its zoom along the slice axis)."""
    if meta.format == "dicom":
        raise MedsrError(f"{meta.path}: not part of a DICOM series that forms a volume (a note above says why, if it is in one); "
                         "through-plane super-resolution needs a whole series or a 3-D NIfTI volume")
    if meta.format != "nifti" or meta.slice_axis is None:
        raise MedsrError(f"{meta.path}: not a 3-D NIfTI volume; through-plane super-resolution needs one (or a DICOM series)")
    return float(meta.source.header.get_zooms()[meta.slice_axis]) * mm_per_unit(meta.source.header)


def mm_per_unit(header) -> float:
    """Millimetres per unit of the file's voxel sizes (xyzt_units; unknown is taken as mm)."""
    return {"meter": 1000.0, "micron": 0.001}.get(header.get_xyzt_units()[0], 1.0)


def resliced(meta: ImageMeta, new_spacing: float) -> ImageMeta:
    """The metadata of the same volume on a finer grid (new_spacing in mm) along its slice axis, over the same field of
    view: N slices of spacing d become N' = N*d/t' slices of spacing t', the first centre at the old
    first slice's edge + t'/2. write_nifti then writes the matching affine and zooms."""
    source, axis = meta.source, meta.slice_axis
    spacing = slice_spacing(meta)
    step = np.eye(4)  # new voxel j along the axis sits at old voxel j*t'/d + (t'-d)/(2d)
    step[axis, axis] = new_spacing / spacing
    step[axis, 3] = (new_spacing - spacing) / (2 * spacing)
    header = source.header.copy()
    if header.get_dim_info()[2] in (None, axis):  # slice timing describes the old slices: not these
        header["slice_code"], header["slice_start"], header["slice_end"], header["slice_duration"] = 0, 0, 0, 0
    zooms = list(header.get_zooms())
    zooms[axis] = new_spacing / mm_per_unit(header)  # in the file's own units
    _transform_forms(header, lambda affine: affine @ step)
    header.set_zooms(zooms)
    return dataclasses.replace(meta, source=type(source)(source.dataobj, header.get_best_affine(), header))


def _transform_forms(header: nib.Nifti1Header, transform) -> None:
    """Moves the header's sform and qform to a new voxel grid, each on its own and with its own code
    (scanner, aligned, template, MNI...), as the source file had them; a form the source left unset
    (code 0) stays unset; nibabel's image constructor would write one affine into both and call it
    'aligned'. Call it before changing the header's zooms: the qform is read through them."""
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    if sform is not None:
        header.set_sform(transform(sform), code=int(sform_code))
    if qform is not None:
        header.set_qform(transform(qform), code=int(qform_code))


def _restore_nonfinite(data: np.ndarray, affine: np.ndarray, source, read_affine: np.ndarray) -> None:
    """Put the source's NaN/inf voxels back into `data` (read_nifti read them as the lowest value):
    each voxel takes the nearest source voxel's, the grids' voxel-to-voxel map being an axis-wise
    scale and shift (in-plane upscaling, a finer slice grid)."""
    source_values = np.asanyarray(source.dataobj)
    if source_values.ndim != data.ndim:  # a stack written from a 2-D source: no voxel-to-voxel map
        return
    to_source = np.linalg.inv(read_affine) @ affine  # output voxel -> source voxel
    index = [np.arange(n) for n in data.shape]
    for axis in range(min(data.ndim, 3)):
        index[axis] = np.clip(np.rint(to_source[axis, axis] * index[axis] + to_source[axis, 3]).astype(int),
                              0, source_values.shape[axis] - 1)
    nearest = source_values[np.ix_(*index)]
    mask = ~np.isfinite(nearest)
    data[mask] = nearest[mask]


def _dicom_affine(meta: ImageMeta, row: float, col: float) -> np.ndarray | None:
    """The RAS affine of (column, row, frame) indices for a DICOM file that says where it lies
    (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), as dcm2niix places it; None otherwise."""
    if meta.format != "dicom" or meta.pixel_spacing is None:
        return None
    from medsr.io import dicom  # pydicom loads only for DICOM sources

    ds = meta.source
    position = dicom.float_vector(ds.get("ImagePositionPatient"), 3)
    orientation = dicom.float_vector(ds.get("ImageOrientationPatient"), 6)
    if position is None or orientation is None:
        return None
    if not np.linalg.norm(np.cross(orientation[:3], orientation[3:])) > 0:
        return None
    try:
        step = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    except (TypeError, ValueError):
        step = 1.0
    return dicom.index_affine(orientation[:3], orientation[3:], (row, col), step, position, "RAS")


def write_nifti(path: Path, image: Image, *, scale: float, model_name: str, target: Path | None = None) -> None:
    meta = image.meta
    pixels = image.pixels
    lo, hi = meta.value_range
    source = meta.source if meta.format == "nifti" and isinstance(meta.source, nib.Nifti1Image) else None

    def real(rows: np.ndarray, dtype=np.float64) -> np.ndarray:  # [0, 1] -> the source's values (by_rows: in blocks)
        values = lo + np.clip(rows.astype(np.float64), 0.0, 1.0) * (hi - lo)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        return values

    if source is not None:
        slice_axis = meta.slice_axis if pixels.ndim == 3 else None
        if pixels.ndim == 3 and slice_axis is None:
            slice_axis = 2  # a stack from a 2-D source: slices become the third axis
        dtype = np.dtype(meta.extra.get("dtype", "float32"))
        values = by_rows(lambda rows: real(rows, dtype), pixels, dtype)
        volumes = volume_count(meta)
        if volumes > 1:  # every volume's slices in turn -> (slices, rows, columns, volumes)
            values = np.moveaxis(values.reshape(volumes, -1, *values.shape[1:]), 0, 3)
        data = np.moveaxis(values, 0, slice_axis) if slice_axis is not None else values.T  # 2-D: columns along x
        if data.ndim < len(source.shape) and all(n == 1 for n in source.shape[data.ndim:]):
            data = data.reshape(data.shape + (1,) * (len(source.shape) - data.ndim))  # a 4-D file of one volume stays 4-D
        header = source.header.copy()
        zooms = [float(z) for z in header.get_zooms()] + [1.0, 1.0, 1.0]  # padded for a 2-D source
    else:
        # From a raster or DICOM file: real units as float32 (a DICOM's on its stored integers' grid, as
        # dcm2niix has them, MONOCHROME1's not inverted), axes (column, row[, frame]) as NIfTI and dcm2niix order an image.
        if meta.format == "dicom" and meta.source is not None:
            from medsr.io import dicom  # pydicom loads only for DICOM sources

            values = dicom.real_values(pixels, meta, np.float32)
        else:
            values = by_rows(real, 1.0 - pixels if meta.photometric == "MONOCHROME1" else pixels, np.float32)
        slice_axis = 2 if pixels.ndim == 3 else None
        data = np.ascontiguousarray(values.T if pixels.ndim == 2 else np.transpose(values, (2, 1, 0)), dtype=np.float32)
        header = nib.Nifti1Header()
        row, col = meta.pixel_spacing or (1.0, 1.0)
        affine = _dicom_affine(meta, row, col)
        scanner = affine is not None
        if affine is None:  # no place in a scanner: upright in a viewer, the first row at the top
            affine = np.diag([col, -row, 1.0, 1.0])
            affine[1, 3] = row * (round(pixels.shape[-2] / scale) - 1)
        zooms = [col, row, 1.0]

    axes = _in_plane_axes(data.ndim, slice_axis)
    new_zooms = [z / scale if a in axes else z for a, z in enumerate(zooms[: data.ndim])]
    if source is not None:
        if any(data.shape[a] != round(source.shape[a] * scale) for a in axes):  # else the affine written would be wrong
            raise MedsrError(f"{target or path}: the upscaled volume is {'x'.join(map(str, data.shape))}, not the source's "
                             f"{'x'.join(map(str, source.shape))} times the scale {scale:g} in-plane; pass the scale it was upscaled by")
        header.set_data_shape(data.shape)
        _transform_forms(header, lambda affine: scaled_affine(affine, axes, scale))
        header.set_zooms(new_zooms)
        header["pixdim"][data.ndim + 1:] = source.header["pixdim"][data.ndim + 1:]  # a 3-D file's TR (pixdim[4]) too
        if "read_affine" in meta.extra and np.issubdtype(data.dtype, np.floating):
            _restore_nonfinite(data, header.get_best_affine(), source, meta.extra["read_affine"])
        out = type(source)(data, header.get_best_affine(), header)
    else:
        new_affine = scaled_affine(affine, axes, scale)
        out = nib.Nifti1Image(data, new_affine, header)
        out.header.set_zooms(new_zooms)
        code = 1 if scanner else 2  # 1: the scanner's space (a DICOM file's position); 2: aligned to another scan
        out.set_sform(new_affine, code=code)
        out.set_qform(new_affine, code=code)
        if meta.pixel_spacing:
            out.header.set_xyzt_units("mm", "sec")  # as dcm2niix writes; a raster without a spacing has no unit
    out.header["descrip"] = (f"medsr x{scale:g} {model_name}".strip())[:79].encode()
    with quiet_libraries():  # header fixes nibabel logs for a damaged source header
        nib.save(out, path)
