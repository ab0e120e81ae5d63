"""Hallucination maps: where a super-resolved image is not supported by its low-resolution input.

A radiologist's first question about a GAN output is "what did it invent?". No map can answer
that exactly (the true high-resolution image is unknown), but two cheap measures bound it:

- consistency: the SR image, degraded back onto the LR grid exactly the way medsr makes LR
  images (antialiased bicubic), should reproduce the input. |downscale(SR) - LR| is the part of
  the output that the input contradicts: a brightened blob or a moved edge lights up. Its blind
  spot: texture whose local average is zero (fine stripes, speckle, a checkerboard) averages away
  in the downscale, so an invented texture can be perfectly "consistent".
- disagreement: |SR - reference|, where the reference is another model's output for the same
  input (the PSNR-oriented `default` for a GAN, `default-gan` for `default`). Two models trained
  differently rarely invent the same fine detail, so this catches the texture the residual misses;
  where they agree it says nothing (both may be wrong in the same way).

`combined` puts both on one scale relative to the image's own intensity range, and `overlay` and
`write_maps` turn it into a picture and a float TIFF next to the output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from medsr import zoo
from medsr.data import degrade
from medsr.errors import MedsrError
from medsr.figures import display_window, hot, to_uint8, windowed
from medsr.files import atomic_write, sha256_file
from medsr.inference import onnx
from medsr.io.formats import name_without_extension

# combined = 1.0 means a difference of 10 % of the LR image's own intensity range (max - min).
COMBINED_UNIT = 0.1
# Overlay defaults, in units of `combined`: colour starts at 2 % of the range and is yellow from 5 %
# (on held-out brain MRI / chest X-ray, default vs default-gan, about 36 % / 2 % of pixels exceed 0.2).
OVERLAY_THRESHOLD = 0.2
OVERLAY_VMAX = 0.5
OVERLAY_ALPHA = 0.6
DISAGREEMENT_SMOOTH = 1.0  # Gaussian sigma in HR pixels: turns speckle-like differences into regions

PNG_SUFFIX = ".uncertainty.png"
TIFF_SUFFIX = ".uncertainty.tif"


def _check_pair(sr01: np.ndarray, lr01: np.ndarray, scale: int) -> None:
    if lr01.ndim != 2 or sr01.ndim != 2:
        raise MedsrError(f"maps need 2-D images, got SR {sr01.shape} and LR {lr01.shape}; pass one plane at a time")
    if sr01.shape != (lr01.shape[0] * scale, lr01.shape[1] * scale):
        raise MedsrError(f"SR image {sr01.shape} is not x{scale} of the LR image {lr01.shape}; pass the matching pair and scale")


def consistency_residual(sr01: np.ndarray, lr01: np.ndarray, scale: int) -> np.ndarray:
    """|downscale(SR) - LR| brought back to the HR grid by nearest neighbour, float32, SR's shape.

    The downscale is medsr's own degradation (antialiased bicubic, `degrade.resize`), so an SR
    image whose degradation is exactly the input scores 0. Nearest neighbour (each LR pixel's
    residual copied to its s x s block) is used to go back because the residual is only known at
    LR resolution: it neither invents a smooth shape nor overshoots below 0 the way bicubic would.
    """
    sr01, lr01 = np.asarray(sr01, dtype=np.float32), np.asarray(lr01, dtype=np.float32)
    _check_pair(sr01, lr01, scale)
    down = degrade.resize(torch.from_numpy(sr01)[None, None], lr01.shape)[0, 0].numpy()
    residual = np.abs(down - lr01)
    return residual.repeat(scale, axis=0).repeat(scale, axis=1).astype(np.float32)


def _gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication (edges would otherwise fade towards 0)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    t = F.conv2d(F.pad(t, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def _check_reference(sr01: np.ndarray, reference01: np.ndarray) -> None:
    if np.shape(sr01) != np.shape(reference01):
        raise MedsrError(f"SR image {np.shape(sr01)} and reference {np.shape(reference01)} differ in shape; "
                         "use a reference model of the same scale")


def disagreement(sr01: np.ndarray, reference01: np.ndarray, smooth: float = DISAGREEMENT_SMOOTH) -> np.ndarray:
    """|SR - reference| per HR pixel, float32, blurred by a Gaussian of sigma `smooth` HR pixels (0: not)."""
    sr01, reference01 = np.asarray(sr01, dtype=np.float32), np.asarray(reference01, dtype=np.float32)
    _check_reference(sr01, reference01)
    diff = np.abs(sr01 - reference01)
    return _gaussian_blur(diff, smooth) if smooth > 0 else diff


def ensemble_spread(outputs: list[np.ndarray]) -> np.ndarray:
    """Per-pixel standard deviation (population, ddof=0) of several outputs of one input, float32."""
    if len(outputs) < 2:
        raise MedsrError(f"ensemble spread needs at least 2 outputs, got {len(outputs)}; pass more models' results")
    shapes = {np.shape(o) for o in outputs}
    if len(shapes) > 1:
        raise MedsrError(f"ensemble outputs differ in shape {sorted(shapes)}; use models of one scale")
    return np.std(np.stack(outputs).astype(np.float32), axis=0).astype(np.float32)


def combine(consistency: np.ndarray, lr01: np.ndarray, disagreement_map: np.ndarray | None = None) -> np.ndarray:
    """max(consistency, disagreement) / (COMBINED_UNIT x the LR image's own range): 1.0 = 10 % of the range.

    The image's own range (not the container's) because medsr stretches each image to it before
    the model, so a 12-bit scan in a 16-bit file is judged like an 8-bit one.
    """
    return _combined(consistency, _span(lr01), disagreement_map)


def _span(lr01: np.ndarray) -> float:
    lo, hi = float(np.min(lr01)), float(np.max(lr01))
    return hi - lo if hi > lo else 1.0


def _combined(consistency: np.ndarray, span: float, disagreement_map: np.ndarray | None) -> np.ndarray:
    worst = consistency if disagreement_map is None else np.maximum(consistency, disagreement_map)
    return (worst / (COMBINED_UNIT * span)).astype(np.float32)


STRIP_LR_PIXELS = 1 << 19  # LR pixels per strip of _plane_maps: its temporaries are a few strips' worth, not the image's
STRIP_MARGIN = 4  # LR rows read beyond a strip: the downscale reaches 2 LR pixels, the blur 3 HR pixels


def _plane_maps(lr01: np.ndarray, sr01: np.ndarray, reference01: np.ndarray | None, scale: int) -> dict[str, np.ndarray]:
    """The maps of one plane, made a strip of LR rows at a time (with STRIP_MARGIN rows each side, so
    each strip's middle is what the whole image gives) into whole-size maps: a 4000 x 4000 scan's
    temporaries are not 12000 x 12000 arrays."""
    sr01 = np.asarray(sr01, dtype=np.float32)
    _check_pair(sr01, np.asarray(lr01), scale)
    if reference01 is not None:
        _check_reference(sr01, reference01)
    span, (rows, cols) = _span(lr01), lr01.shape
    keys = ["consistency", *(["disagreement"] if reference01 is not None else []), "combined"]
    maps = {"sr": sr01, **{key: np.empty_like(sr01) for key in keys}}
    step = max(1, STRIP_LR_PIXELS // max(cols, 1))
    for top in range(0, rows, step):
        bottom = min(top + step, rows)
        t0, b1 = max(top - STRIP_MARGIN, 0), min(bottom + STRIP_MARGIN, rows)
        sr = sr01[t0 * scale:b1 * scale]
        strip = {"consistency": consistency_residual(sr, lr01[t0:b1], scale)}
        if reference01 is not None:
            strip["disagreement"] = disagreement(sr, reference01[t0 * scale:b1 * scale])
        strip["combined"] = _combined(strip["consistency"], span, strip.get("disagreement"))
        inner = slice((top - t0) * scale, (bottom - t0) * scale)
        for key in keys:
            maps[key][top * scale:bottom * scale] = strip[key][inner]
    return maps


def hallucination_maps(lr01: np.ndarray, upscaler, reference_upscaler=None, *,
                       sr01: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Maps of where `upscaler`'s result for `lr01` ([0, 1], (H, W) or a stack (N, H, W)) lacks support.

    Returns float32 arrays of the SR image's shape:
    - "sr": the upscaled image (`sr01` if given, so a caller that already has it pays nothing twice);
    - "consistency": |downscale(SR) - LR| on the HR grid, in [0, 1] pixel units (see consistency_residual);
    - "disagreement" (only with a reference): |SR - reference SR|, lightly blurred, in [0, 1] pixel units;
    - "combined": max of the two divided by 10 % of the LR image's own range (see `combine`):
      0 = fully supported, 1.0 = the output departs from the input or the reference by a tenth of the range.
    Upscalers need `.scale` and `.upscale(array)` (medsr.inference.upscaler.Upscaler).
    """
    lr01 = np.asarray(lr01, dtype=np.float32)
    scale = int(upscaler.scale)
    if reference_upscaler is not None and int(reference_upscaler.scale) != scale:
        raise MedsrError(f"reference model is x{reference_upscaler.scale} but the model is x{scale}; "
                         "pick a reference of the same scale")
    if lr01.ndim not in (2, 3):
        raise MedsrError(f"maps need an (H, W) image or an (N, H, W) stack, got shape {lr01.shape}")
    sr = upscaler.upscale(lr01) if sr01 is None else np.asarray(sr01, dtype=np.float32)
    ref = None if reference_upscaler is None else reference_upscaler.upscale(lr01)
    if lr01.ndim == 2:
        return _plane_maps(lr01, sr, ref, scale)
    planes = [_plane_maps(lr01[i], sr[i], None if ref is None else ref[i], scale) for i in range(len(lr01))]
    return {key: np.stack([p[key] for p in planes]) for key in planes[0]}


def overlay(sr01: np.ndarray, combined: np.ndarray, threshold: float = OVERLAY_THRESHOLD, vmax: float = OVERLAY_VMAX) -> np.ndarray:
    """(H, W, 3) uint8: the gray SR image, tinted red (just above `threshold`) to yellow (at `vmax`
    and above) where `combined` exceeds `threshold`; elsewhere the gray pixels are left exactly as they are."""
    if np.shape(sr01) != np.shape(combined) or np.ndim(sr01) != 2:
        raise MedsrError(f"overlay needs a 2-D SR image and a map of the same shape, got {np.shape(sr01)} and {np.shape(combined)}")
    picture = np.empty((*np.shape(sr01), 3), np.uint8)
    step = max(1, STRIP_LR_PIXELS // max(np.shape(sr01)[1], 1))
    for top in range(0, len(picture), step):  # a block of rows at a time: its float temporaries stay small
        rows = slice(top, top + step)
        gray = np.repeat(to_uint8(sr01[rows])[..., None], 3, axis=-1).astype(np.float32)
        strength = np.clip((combined[rows] - threshold) / max(vmax - threshold, 1e-12), 0, 1)
        # hot() is red at 1/3 and yellow at 2/3; white (its top) would vanish on bright bone and lung.
        colour = hot(1 / 3 + strength / 3, 1.0).astype(np.float32)
        alpha = np.where(combined[rows] > threshold, OVERLAY_ALPHA, 0.0)[..., None]
        picture[rows] = np.rint(gray * (1 - alpha) + colour * alpha)
    return picture


def map_description(threshold: float = OVERLAY_THRESHOLD, vmax: float = OVERLAY_VMAX) -> str:
    """How to read the map, in one paragraph: the float TIFF's description tag and the overlay's legend."""
    return (f"medsr hallucination map: how far the upscaled image departs from what its input supports, in units of "
            f"{COMBINED_UNIT:.0%} of the input image's intensity range (1.0 = a tenth of the range); the larger of the "
            f"consistency residual and the disagreement with a second model. Overlay: no colour below {threshold:g} "
            f"({threshold * COMBINED_UNIT:.0%} of the range), red from {threshold:g}, yellow at {vmax:g} "
            f"({vmax * COMBINED_UNIT:.0%}) and above. No colour is not proof of correctness: where both models err alike, "
            "nothing lights up.")


def legend(width: int, threshold: float = OVERLAY_THRESHOLD, vmax: float = OVERLAY_VMAX) -> np.ndarray:
    """(h, width, 3) uint8 strip for under an overlay: the colour bar with its scale and what it means,
    the text wrapped to the width (a small image's legend is taller, not cut off)."""
    text = f"departure from the input, % of the image's range (no colour: below {threshold * COMBINED_UNIT:.0%})"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if lines[-1] and measure(joined) > width - 12:
            lines.append(word)
        else:
            lines[-1] = joined
    bar_top, bar_height = 8 + 12 * len(lines), 12
    strip = Image.new("RGB", (width, bar_top + bar_height + 26), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(lines):
        draw.text((6, 4 + 12 * row), line, fill=(255, 255, 255))
    left, right = 6, max(7, min(width - 6, 330))
    values = np.linspace(threshold, vmax, right - left)
    colours = overlay(np.zeros((1, len(values))), values[None], threshold - 1e-9, vmax)[0] if len(values) else []
    for x, colour in enumerate(colours):
        draw.line([(left + x, bar_top), (left + x, bar_top + bar_height)], fill=tuple(int(c) for c in colour))
    for value, x in ((threshold, left), ((threshold + vmax) / 2, (left + right) // 2), (vmax, right - 1)):
        draw.line([(x, bar_top + bar_height), (x, bar_top + bar_height + 3)], fill=(255, 255, 255))
        label = f"{value * COMBINED_UNIT:.1%}" + ("+" if value == vmax else "")
        draw.text((max(0, min(x - 10, width - measure(label) - 1)), bar_top + bar_height + 5), label, fill=(255, 255, 255))
    return np.asarray(strip)


def stem_for(output_path: Path) -> Path:
    """The stem the maps of an output file are named after: out/scan.dcm -> out/scan (also .nii.gz);
    a name without a known extension (a DICOM named by its UID, 1.2.840...5) is the stem whole."""
    path = Path(output_path)
    return path.with_name(name_without_extension(path))


def map_paths(stem_path: Path) -> tuple[Path, Path]:
    """The overlay PNG and float TIFF that `write_maps` writes for a stem."""
    stem_path = Path(stem_path)
    return stem_path.with_name(stem_path.name + PNG_SUFFIX), stem_path.with_name(stem_path.name + TIFF_SUFFIX)


def _weights_id(model: str | Path) -> str | None:
    """The sha256 of the model file `model` names (a shipped name, model file or run folder; for an .onnx
    file from `medsr export`, of the model named in its medsr_source_model metadata), or None when unknown."""
    path = Path(str(model))
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            return None
        props = onnx.require("onnx").load(str(path), load_external_data=False).metadata_props
        source = {p.key: p.value for p in props}.get("medsr_source_model")
        return None if source is None or Path(source).suffix.lower() == ".onnx" else _weights_id(source)
    try:
        path = zoo.resolve(model)
    except MedsrError:
        return None
    return sha256_file(path)


def check_reference(model: str | Path, reference: str | Path) -> None:
    """MedsrError when an explicit reference model holds the model's own weights: its disagreement would be 0."""
    weights = _weights_id(model)
    if weights is not None and weights == _weights_id(reference):
        raise MedsrError(f"--reference-model {reference} holds the same weights as the model {model}, so the maps would show no "
                         "disagreement; name another model (or leave it out for the shipped choice)")


def reference_model_name(model_name: str | Path, scale: int = 3) -> str | None:
    """The default reference for `model_name`: `default-gan` for `default`, `default` for every other
    x3 model, and None at other scales (no second shipped model there: the map is the consistency residual alone).

    Models are told apart by their weights, so a file (or exported .onnx) of the default's weights gets
    `default-gan` too, and a model is never its own reference (None then, as at other scales)."""
    if scale != 3:
        return None
    weights = _weights_id(model_name)
    reference = "default-gan" if weights is not None and weights == _weights_id("default") else "default"
    return None if weights is not None and weights == _weights_id(reference) else reference


def _save_float_tiff(path: Path, planes: np.ndarray, description: str) -> None:
    images = [Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)) for p in planes]
    images[0].save(path, format="TIFF", save_all=len(images) > 1, append_images=images[1:], tiffinfo={270: description})


def write_maps(stem_path: Path, maps: dict[str, np.ndarray], *, protect: Iterable[Path] = (),
               threshold: float = OVERLAY_THRESHOLD, vmax: float = OVERLAY_VMAX,
               view: tuple[bool, bool, bool] = (False, False, False)) -> list[Path]:
    """Write `<stem>.uncertainty.png` (the overlay, with its legend below) and `<stem>.uncertainty.tif`
    (the float32 combined map, one page per plane of a stack, its units and threshold in the TIFF's
    ImageDescription), atomically. Returns the two paths.

    For a stack the PNG shows the plane with the highest mean `combined` (the most suspicious one),
    turned as `view` says (medsr.io.nifti.display_view: a NIfTI volume's slice as a viewer draws it) and
    stretched from its 0.5th to its 99.5th percentile (figures.display_window: a 12-bit scan in a
    16-bit range is not black, a CT's air and bone not one flat gray);
    the TIFF keeps the planes as the output file holds them.
    A target that is one of the `protect` paths (the inputs) is refused, so inputs are never overwritten.
    """
    from medsr.io.nifti import displayed  # nibabel loads on first use, not at start-up

    png, tif = map_paths(stem_path)
    protected = {Path(p).resolve() for p in protect}
    for target in (png, tif):
        if target.resolve() in protected:
            raise MedsrError(f"{target}: the uncertainty map would overwrite this input; choose another -o folder")
    sr, combined = maps["sr"], maps["combined"]
    planes = combined[None] if combined.ndim == 2 else combined
    pick = int(np.argmax(planes.reshape(len(planes), -1).mean(1)))
    shown = displayed(sr if sr.ndim == 2 else sr[pick], view)
    picture = overlay(windowed(shown, display_window(shown)), displayed(planes[pick], view), threshold, vmax)
    picture = np.concatenate([picture, legend(picture.shape[1], threshold, vmax)])
    atomic_write(png, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))
    atomic_write(tif, lambda tmp: _save_float_tiff(tmp, planes, map_description(threshold, vmax)))
    return [png, tif]
