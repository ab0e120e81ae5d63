"""PNG / JPEG / TIFF / BMP via Pillow, always as one grayscale channel."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageSequence

from medsr.errors import MedsrError, TooLargeError
from medsr.io.types import (
    MAX_PIXELS,
    Image,
    ImageMeta,
    from_uint,
    quiet_libraries,
    to_uint,
)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# PNG: zlib level 1 with run-length matching. Lossless like every setting; several times faster to
# write than Pillow's default (level 6), and RLE makes the files smaller than plain level 1 (13 %
# on bench_batch's synthetic scans) and no slower (benchmarks/bench_batch.py measures all three).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# Everything Pillow can raise on a malformed file; the decoders are not consistent about it.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  IndexError, TypeError, PILImage.DecompressionBombError)


def _sample_bits(page: PILImage.Image, path: Path) -> int:
    """Bits per sample the file itself declares (8 when it does not say)."""
    if page.format == "TIFF":
        bits = page.tag_v2.get(258, 8)  # BitsPerSample, one value per channel
        return max(bits) if isinstance(bits, tuple) else int(bits)
    if page.format == "PNG":
        with open(path, "rb") as fh:
            head = fh.read(26)  # signature + IHDR, which the PNG spec puts first
        return head[24] if len(head) == 26 else 8
    return 8


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel, by IHDR colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))  # x0, y0, dx, dy


def _check_png_rows(path: Path) -> None:
    """A MedsrError if the PNG's image data (its IDAT chunks, inflated) holds fewer rows than its
    header declares: Pillow fills the missing rows with zeros without a word, so a file cut short
    inside the stream, then closed properly, would be upscaled as a black image."""
    data = Path(path).read_bytes()
    pos, expected, inflate, got = 8, None, zlib.decompressobj(), 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
            bits = depth * _PNG_CHANNELS.get(colour, 1)
            passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
            sizes = [(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in passes]
            expected = sum(h * (1 + (w * bits + 7) // 8) for w, h in sizes if w > 0 and h > 0)  # a filter byte per row
        elif kind == b"IDAT" and expected is not None:
            while body and got < expected:  # inflate no more than the declared rows need
                got += len(inflate.decompress(body, 1 << 20))
                body = inflate.unconsumed_tail
        elif kind == b"IEND":
            break
    if expected is not None and got < expected:
        raise MedsrError(f"{path}: PNG image data ends early ({got} of {expected} bytes of rows; the rest would read as "
                         f"black); re-export the image")


COLOUR_NOTE = "in colour; upscaled as one gray channel (its luminance), as medsr does every scan"  # said where one was read


def notes(meta: ImageMeta) -> str:
    """What a batch says about a file it upscaled: colour made gray, NaN voxels, TIFF pages left out ("" for none)."""
    said = [COLOUR_NOTE] if meta.extra.get("colour") else []
    if meta.extra.get("nonfinite"):  # a statistics map's NaN mask
        said.append(f"{meta.extra['nonfinite']} NaN or infinite voxel(s) read as the volume's lowest value ({meta.value_range[0]:g}) "
                    "to upscale; a NIfTI output has them again where they were, other formats that value")
    if meta.extra.get("pages_left_out"):
        said.append(f"{meta.extra['pages_left_out']} more page(s) of another size or depth left out (thumbnails or other "
                    "images); the largest page is upscaled")
    return "; ".join(said)


def has_colour(rgb: np.ndarray, tolerance: int = 8, share: float = 0.001) -> bool:
    """Whether a (..., 3) array on a 0-255 scale holds real colour: more than `share` of its pixels have
    channels more than `tolerance` apart. A gray scan saved as RGB (common for exported X-rays) has
    R = G = B up to JPEG's rounding, and is not colour."""
    rgb = np.asarray(rgb, dtype=np.float32)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return bool(np.mean(spread > tolerance) > share)


def _page_to_gray(page: PILImage.Image, path: Path) -> tuple[np.ndarray, int, bool]:
    """One Pillow page -> (grayscale integer array, bit depth 8 or 16, whether it held colour)."""
    mode = page.mode
    if mode not in ("1", "L", "P", "I", "F") and not mode.startswith("I;"):
        bits = _sample_bits(page, path)
        if bits > 8:
            # Pillow decodes colour and gray+alpha images to 8 bits per sample, silently.
            raise MedsrError(
                f"{path}: {bits}-bit colour or gray+alpha samples would be cut to 8 bits; "
                "save it as 16-bit grayscale (one channel, no alpha) first"
            )
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.array(page).astype(np.uint16)
        # TIFF WhiteIsZero (PhotometricInterpretation 0): Pillow inverts it at 8 bits, not at 16
        return (65535 - arr if _tag(page, 262) == 0 else arr), 16, False
    if mode == "I":
        # 32-bit integer mode: also how some Pillow versions hand over 16-bit PNGs, and signed 16-bit TIFFs.
        arr = np.array(page)
        if arr.size and arr.min() < 0:
            raise MedsrError(f"{path}: signed samples (as low as {arr.min()}) are not supported; shift them to unsigned 16-bit "
                             "(or save the scan as DICOM or NIfTI, which keep signed values)")
        if arr.size and arr.max() > 65535:
            raise MedsrError(f"{path}: unsupported bit depth (32-bit integer values beyond 0..65535); convert to 8- or 16-bit")
        return arr.astype(np.uint16), 16, False
    if mode == "F" or mode.startswith("I;"):
        raise MedsrError(f"{path}: unsupported bit depth (Pillow mode {mode}, float or signed samples); convert to 8- or 16-bit")
    if mode in ("P", "PA"):
        page = page.convert("RGB")  # palette indices mean nothing as intensities
    colour = page.mode not in ("1", "L", "LA", "La") and has_colour(np.asarray(page.convert("RGB")))
    if page.mode != "L":
        page = page.convert("L")  # RGB by luminance; alpha channels dropped
    return np.array(page), 8, colour


# EXIF Orientation (tag 0x0112) -> what turns the stored rows upright (as PIL.ImageOps.exif_transpose does).
_EXIF_UPRIGHT = {
    2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: np.transpose,
    6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T, 8: lambda a: np.rot90(a, 1),
}


def _positive_pair(value) -> tuple[float, float] | None:
    """Two positive finite numbers (a resolution; TIFF gives them as fractions), else None."""
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None
    return pair if all(0 < v < float("inf") for v in pair) else None


def _tag(page: PILImage.Image, tag: int):
    """A TIFF page's tag value (None where it has none, or the page is not a TIFF)."""
    return getattr(page, "tag_v2", {}).get(tag)


def read_raster(path: Path, max_pixels: int = MAX_PIXELS) -> Image:
    """Read a raster file; a multi-page TIFF whose pages all match in size and depth becomes a stack."""
    try:
        # quiet_libraries also mutes DecompressionBombWarning: max_pixels is enforced below,
        # before any pixels are decoded.
        with quiet_libraries():
            with PILImage.open(path) as im:
                # Multi-picture JPEGs open as 'MPO'; rarer formats (GIF...) are treated like PNG.
                fmt = {"mpo": "jpeg"}.get((im.format or "").lower(), (im.format or "").lower())
                dpi = im.info.get("dpi")  # PNG pHYs, JPEG JFIF density, TIFF X/YResolution in inches
                pages = []
                total = 0
                for page in ImageSequence.Iterator(im):
                    total += page.size[0] * page.size[1]
                    if total > max_pixels:
                        raise TooLargeError(
                            f"{path}: image too large ({page.size[0]}x{page.size[1]}, limit {max_pixels} pixels); "
                            "downscale or crop it first"
                        )
                    page.load()  # decode now, inside the try, so truncation is caught here
                    arr, bits, colour = _page_to_gray(page, path)
                    if fmt in ("jpeg", "png", "webp"):  # upright as a viewer shows it (Pillow turns only TIFFs on load)
                        orientation = page.getexif().get(0x0112, 1)
                        arr = _EXIF_UPRIGHT.get(orientation, np.asarray)(arr)
                        if dpi and orientation in (5, 6, 7, 8):  # turned a quarter: across is what was down
                            dpi = dpi[::-1]
                    pages.append((np.ascontiguousarray(arr), bits, colour))
                    if getattr(im, "n_frames", 1) > 1 and fmt != "tiff":
                        break  # animated GIF/PNG-style sequences: the first frame is the image
                if fmt == "png":
                    _check_png_rows(path)
    except MedsrError:
        raise
    except PILImage.DecompressionBombError:
        # Pillow's own check, in open(), fires only above 2x its MAX_IMAGE_PIXELS, beyond ours.
        raise TooLargeError(f"{path}: image too large (declares over {2 * (PILImage.MAX_IMAGE_PIXELS or 0)} pixels, limit {max_pixels} pixels); downscale or crop it first")
    except _DECODE_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MedsrError(f"{path}: not a readable image file (truncated, corrupt or wrong extension: {reason}); check the file or re-export it")

    # Pages of another size or depth are thumbnails or unrelated images: keep the largest (the first of
    # those), and say so; a reduced-resolution thumbnail may come first.
    arr, bits, colour = pages[max(range(len(pages)), key=lambda i: (pages[i][0].size, -i))]
    same = all(a.shape == arr.shape and b == bits for a, b, _ in pages)
    if len(pages) > 1 and same:
        arr = np.stack([a for a, _, _ in pages])
        colour = any(c for _, _, c in pages)
    pixels = from_uint(arr, bits)
    extra = {"colour": True} if colour else {}
    dpi = _positive_pair(dpi)
    if dpi:  # kept, times the scale, in a raster output
        extra["dpi"], extra["columns"] = dpi, arr.shape[-1]
    if not same:
        extra["pages_left_out"] = len(pages) - 1
    meta = ImageMeta(
        path=str(path),
        format=fmt if fmt in _PIL_FORMATS else "png",
        bit_depth=bits,
        value_range=(0.0, float(2**bits - 1)),
        pixel_spacing=None,
        extra=extra,
    )
    return Image(pixels, meta)


def _displayed(pixels: np.ndarray, meta, windowed: bool) -> np.ndarray:
    """What a PNG, TIFF, JPEG or BMP made from a DICOM or NIfTI shows. The pixels' own [0, 1] scale
    spans the whole stored range, where a 12-bit MR or a signed CT sits in a sliver: written as they
    are, the file would show a flat gray. So an 8-bit file (`windowed`) shows the window the DICOM
    names, and a 16-bit one, or one without a window, the image stretched from its darkest to its
    brightest value (16 bits hold all of it, so nothing is clipped). An 8-bit file of a DICOM with a
    VOI LUT shows it through that LUT, as pydicom's apply_voi_lut prefers it to the window."""
    from medsr.io.dicom import voi_lut01, window01

    if windowed and meta.format == "dicom" and (shown := voi_lut01(pixels, meta)) is not None:
        return shown
    window = window01(meta) if windowed and meta.format == "dicom" else None
    low, high = window or (float(pixels.min()), float(pixels.max()))
    return np.clip((pixels - low) / (high - low), 0.0, 1.0) if high > low else pixels


def check_stack(pixels: np.ndarray, fmt: str, meta: ImageMeta, name) -> None:
    """A MedsrError for a stack of slices (a volume, frames, pages) to a format that holds one image."""
    if pixels.ndim == 3 and len(pixels) > 1 and fmt != "tiff":
        choices = "tiff, dcm or nii" if meta.format == "dicom" else "tiff or nii"  # a DICOM volume needs a DICOM source
        raise MedsrError(f"{name}: cannot write a stack of {pixels.shape[0]} slices as {fmt.upper()}; use --format {choices}")


def write_raster(path: Path, image: Image, fmt: str, *, target: Path | None = None) -> None:
    """Write to `path` as 8-bit, or 16-bit where the input had more than 8 bits and the format can hold it.

    `target` is the final file name, used in messages (path may be a temp file).
    """
    name = target or path
    pixels = image.pixels
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    check_stack(pixels, fmt, image.meta, name)
    if fmt == "jpeg" and max(pixels.shape[-2:]) > 65500:  # libjpeg's limit; it fails mid-write otherwise
        raise MedsrError(f"{name}: JPEG cannot hold an image of {pixels.shape[-2]}x{pixels.shape[-1]} (limit 65500 a side); use --format png or tiff")
    # JPEG and BMP cannot hold 16-bit grayscale, so they always get 8 bits.
    bits = 16 if image.meta.bit_depth > 8 and fmt in ("png", "tiff") else 8
    if image.meta.format in ("dicom", "nifti") or image.meta.bit_depth > bits:  # (a 12-bit scan in a 16-bit PNG, to JPEG: not dark)
        pixels = _displayed(pixels, image.meta, windowed=bits == 8)
    frames = [pixels] if pixels.ndim == 2 else list(pixels)
    pages = [PILImage.fromarray(to_uint(f, bits)) for f in frames]
    options = {"quality": 95} if fmt == "jpeg" else dict(PNG_OPTIONS) if fmt == "png" else {}
    if "dpi" in image.meta.extra:  # the same inches across: the resolution grows with the scale
        factor = pixels.shape[-1] / image.meta.extra["columns"]
        options["dpi"] = tuple(d * factor for d in image.meta.extra["dpi"])
    if len(pages) > 1:
        options.update(save_all=True, append_images=pages[1:])
    pages[0].save(path, format=_PIL_FORMATS[fmt], **options)
