"""`medsr serve`: a local web page to upscale one scan at a time, for people who don't use a terminal.

The page (web/index.html) sends the file's bytes to POST /api/upscale; the server streams them into
its own temporary folder (refusing more than `max_upload_mb`), upscales, and keeps for each job:
the input, a bicubic and an SR picture for the browser (8-bit PNG, the same display window on
both), the result in the input's own format (a derived DICOM for a DICOM), and on request the
hallucination-map overlay. Only the newest KEEP_JOBS jobs stay on disk; the whole folder is removed
when the server stops. Errors a user can cause come back as {"error": "..."} in plain words, and
the server goes on serving.
"""

from __future__ import annotations

import atexit
import errno
import functools
import logging
import math
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image as PILImage
from starlette.requests import ClientDisconnect

from medsr import api, demo, metrics, zoo
from medsr.data import degrade
from medsr.errors import MedsrError, NothingToThinError, TooLargeError
from medsr.figures import display_window, to_uint8, windowed
from medsr.inference import hallucination
from medsr.inference import volume as volume_sr
from medsr.io import (
    SUPPORTED_EXTENSIONS,
    Image,
    ImageMeta,
    file_extension,
    nifti,
    raster,
    read_image,
    write_image,
)
from medsr.io import series as series_io
from medsr.io.formats import format_of_path

log = logging.getLogger("medsr.serve")

KEEP_JOBS = 8  # older jobs' files are deleted, so a long session cannot fill the disk
MAX_INPUT_PIXELS = 16_000_000  # about 4000x4000: larger scans take minutes on a CPU; use `medsr upscale`
CHUNK = 1 << 20
AUTO = "auto"  # the menu's first choice: the model `medsr upscale` picks when none is named


@dataclass
class Job:
    id: str
    folder: Path
    name: str  # the user's file name, for messages and the download's name
    model: str
    frame: int = 0  # the frame / slice shown first for a stack (the middle one)
    lr01: np.ndarray | None = None  # (slices, h, w) float32: a 2-D image is one slice
    sr: np.ndarray | None = None  # (slices, h*s, w*s) float32 (float16 posterised a signed CT): what the slice pictures are drawn from
    scale: int = 1
    window: tuple[float, float] = (0.0, 1.0)
    thin_spacing: tuple[float, float] | None = None  # slices made thin: (mm between them, mm between the shown input's columns)
    slices_upward: bool = True  # later slices lie further toward the head (or no further from it): drawn higher across the slices
    view: tuple[bool, bool, bool] = (False, False, False)  # nifti.display_view: how lr01 and sr were turned to be shown
    done: bool = False  # finished: its results may be dropped for newer ones (KEEP_JOBS)

    @property
    def across_aspect(self) -> float:
        """Output pixels per slice in the view across the slices: mm per slice over mm per output column."""
        return self.thin_spacing[0] * self.scale / self.thin_spacing[1]
    files: dict[str, Path] = field(default_factory=dict)


class UserError(Exception):
    """A request the page should answer with a plain message and an HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _safe_name(name: str) -> str:
    """The uploaded file's base name, reduced to characters that are safe in a path (letters and digits
    of any script, '.', '-', '_', space); the download's header spells non-ASCII names as RFC 6266 asks."""
    base = re.sub(r"[^\w. -]", "_", Path(name.replace("\\", "/")).name).strip(" .") or "upload"  # \w: letters of any script
    extension = file_extension(Path(base))[:20]  # kept when the name is cut: it says how to read the file
    stem = base[: len(base) - len(extension)]
    return stem[: 120 - len(extension)] + extension


def _suffix(name: str) -> str:
    """The file name's extension when medsr reads it (".nii.gz" included; ".zip": a zipped DICOM series), else ""."""
    extension = file_extension(Path(name))
    return extension if extension in (*SUPPORTED_EXTENSIONS, ".zip") else ""


def _unzip(path: Path, folder: Path, name: str, limit_bytes: int) -> dict[Path, str]:
    """The zip's files, extracted flat into `folder` under numbered names (nothing in the archive
    chooses where it is written; more than `limit_bytes` unpacked, a zip bomb, is refused), each with
    its name in the zip, which messages use."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > limit_bytes:
                raise UserError(f"{name} unpacks to more than {limit_bytes / 2**20:g} MB; upload a smaller series or use 'medsr upscale'", 413)
            folder.mkdir()
            files = {}
            for number, member in enumerate(members):
                target = folder / f"{number:05d}"
                with archive.open(member) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
                files[target] = member.filename
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as err:
        raise UserError(f"{name} is not a readable zip file ({type(err).__name__}); zip the series' files again") from None
    return files


def _several_volumes(name: str, count: int) -> str:
    """The page's note for an upload of several volumes (a 4-D NIfTI, a zipped series of time points)."""
    return f"{name} holds {count} volumes (time points, echoes or directions): all are in the download; this page shows the first."


@contextmanager
def _thin_advice(name: str):
    """A volume whose slices are already thin, said in the page's words (the library's advice names CLI options)."""
    try:
        yield
    except NothingToThinError as err:
        raise UserError(f"{name}: its {err.slices} slices are {err.spacing:g} mm apart, already as thin as its pixels; "
                        "untick 'Thin slices' to upscale it in-plane") from None


def _stem(name: str) -> str:
    """The user's file name without its extension, for the download's name."""
    stem = Path(name).name
    return stem[: -len(_suffix(stem))] if _suffix(stem) else stem


def _save_png(path: Path, pixels01: np.ndarray, window: tuple[float, float]) -> Path:
    PILImage.fromarray(to_uint8(windowed(pixels01, window))).save(path, format="PNG", compress_level=1)
    return path


class Server:
    """The state behind the page: model choices, the temporary folder and its jobs."""

    def __init__(self, model_names: list[str], max_upload_mb: float, device: str, precision: str):
        if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
            raise MedsrError(f"--max-upload-mb {max_upload_mb:g}: give a positive size in MB")
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.device, self.precision = device, precision
        self.models = {name: zoo.model_scale(name) for name in model_names}
        if flat := [name for name, scale in self.models.items() if scale == 1]:
            raise MedsrError(f"--model {flat[0]}: it makes thick slices thin rather than upscaling images; the page runs it through "
                             "'Thin slices' on its own, so name in-plane models only (medsr models lists them)")
        self.folder = Path(tempfile.mkdtemp(prefix="medsr-serve-"))
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()  # one model run at a time: bounded memory, fair order

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        # A job still running (a second Ctrl-C stops the server mid-upscale) writes into the folder again
        # after this; Python waits for that thread before it runs atexit, so remove the folder once more then.
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    @functools.cached_property
    def demo_images(self) -> dict[str, np.ndarray]:
        """Decoded once: the chest CR is a large JPEG 2000 and the brain a whole volume."""
        try:
            return demo.demo_images()
        except MedsrError:
            return {}

    def info(self) -> dict:
        models = [{"name": n, "label": n, "scale": s} for n, s in self.models.items()]
        if {zoo.DEFAULT_MODEL, zoo.JPEG_MODEL} <= self.models.keys():
            label = f"{AUTO}: {zoo.DEFAULT_MODEL}, {zoo.JPEG_MODEL} for JPEG files and DICOM stored as JPEG"
            models.insert(0, {"name": AUTO, "label": label, "scale": self.models[zoo.DEFAULT_MODEL]})
        return {
            "models": models,
            "demos": sorted(self.demo_images),
            "max_upload_mb": self.max_upload_bytes / 1024 / 1024,
            "max_input_pixels": MAX_INPUT_PIXELS,
            "uncertainty": True,
            "uncertainty_legend": {"from_percent": 100 * hallucination.OVERLAY_THRESHOLD * hallucination.COMBINED_UNIT,
                                   "to_percent": 100 * hallucination.OVERLAY_VMAX * hallucination.COMBINED_UNIT,
                                   "text": hallucination.map_description()},
            "extensions": list(SUPPORTED_EXTENSIONS),
        }

    def choose(self, model: str, paths: list) -> str:
        """The model that runs: `model` itself, or for "auto" what `medsr upscale` would pick for
        `paths` (default-jpeg for JPEG files or DICOM stored as lossy JPEG), among the models this server offers."""
        if model != AUTO:
            return model
        picked = zoo.default_model(None, paths)
        if picked in self.models:
            return picked
        if zoo.DEFAULT_MODEL in self.models:
            return zoo.DEFAULT_MODEL
        # Neither is offered (--model default-x2 --model large): the first offered model of their scale, or the first.
        scale = zoo.model_scale(picked)
        return next((name for name, s in self.models.items() if s == scale), next(iter(self.models)))

    def upscaler_for(self, model: str):
        if model not in self.models:
            raise UserError(f"unknown model '{model}'; pick one of {', '.join(self.models)}")
        return api.load_model(model, device=self.device, precision=self.precision)

    def _new_job(self, name: str, model: str) -> Job:
        job_id = uuid.uuid4().hex
        folder = self.folder / job_id
        folder.mkdir()
        job = Job(job_id, folder, name, model)
        self.jobs[job_id] = job
        return job

    def finished(self, job: Job) -> None:
        """Mark `job` done and drop the oldest done jobs beyond KEEP_JOBS; jobs still running are never
        dropped (their files are being written), and a failed one was forgotten, so it drops nothing."""
        job.done = True
        done = [each for each in self.jobs.values() if each.done]
        for old in done[: max(0, len(done) - KEEP_JOBS)]:
            self.forget(old)

    async def receive(self, request: Request, name: str, model: str) -> tuple[Job, Path]:
        """Stream the request body into a new job's folder, refusing it past the size limit."""
        limit_mb = self.max_upload_bytes / 1024 / 1024
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_upload_bytes:
            raise UserError(f"{name} is {int(declared) / 1024 / 1024:.1f} MB; this server accepts files up to {limit_mb:g} MB "
                            "(start it with a larger --max-upload-mb, or use 'medsr upscale')", 413)
        if model != AUTO:
            self.upscaler_for(model)  # unknown model: refuse before storing anything
        job = self._new_job(name, model)
        path = job.folder / ("input" + _suffix(name))
        size = 0
        try:
            with path.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise UserError(f"{name} is larger than {limit_mb:g} MB, the limit of this server "
                                        "(start it with a larger --max-upload-mb, or use 'medsr upscale')", 413)
                    out.write(chunk)
        except ClientDisconnect:
            self.forget(job)
            raise UserError(f"the upload of {name} was cut off; send it again") from None
        except BaseException:
            self.forget(job)  # nothing of a refused upload stays on disk
            raise
        if size == 0:
            self.forget(job)
            raise UserError(f"{name} is empty (0 bytes); pick the file again")
        return job, path

    def forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def upscale_upload(self, job: Job, path: Path, model: str, through: bool = False) -> dict:
        if path.suffix == ".zip":
            return self.upscale_series(job, path, model, through)
        if not _suffix(job.name) and format_of_path(path) is None:  # stored without its unknown extension: said with it
            raise UserError(f"{job.name}: unsupported file type '{file_extension(Path(job.name)) or '(none)'}'; use one of "
                            f"{' '.join(SUPPORTED_EXTENSIONS)} .zip (a zipped DICOM series), or a DICOM file")
        try:
            image = read_image(path, max_pixels=MAX_INPUT_PIXELS)  # refused from its header, before decoding
        except TooLargeError:
            raise UserError(f"{job.name} has more pixels than this page upscales ({MAX_INPUT_PIXELS:,}, about 4000x4000); "
                            "use 'medsr upscale' for larger scans", 413) from None
        except MedsrError as err:
            raise UserError(str(err).replace(str(path), job.name)) from None
        if through and not (image.meta.format == "nifti" and image.meta.slice_axis is not None):
            raise UserError(f"{job.name} is not a volume; thin slices (through-plane) need a NIfTI volume or a zipped DICOM series")
        return self._upscale(job, image, model, truth=None, through=through)

    @staticmethod
    def _cubic(job: Job, stack: np.ndarray, slice_spacing: float, pixel_spacing, new_spacing: float) -> np.ndarray:
        """Cubic interpolation of `stack` across its slices to the thin grid medsr made: the page's "before"."""
        job.thin_spacing = (new_spacing, pixel_spacing[1])
        cubic = volume_sr.interpolate_through_plane(stack, (slice_spacing, *pixel_spacing), 0, target_spacing=new_spacing)
        return np.clip(cubic.array, 0, 1)

    def upscale_demo(self, job: Job, demo_name: str, model: str) -> dict:
        """A demo scan, downscaled by the model's scale first, so the result can be scored against it."""
        if demo_name not in self.demo_images:
            raise UserError(f"unknown demo image '{demo_name}'; pick one of {', '.join(self.demo_images) or 'none installed'}")
        lr, hr = degrade.make_pair(self.demo_images[demo_name], "native", self.models[model], native_cap=None)
        meta = ImageMeta(path=f"{demo_name}.png", format="png", bit_depth=16, value_range=(0.0, 1.0), pixel_spacing=None)
        return self._upscale(job, Image(lr, meta), model, truth=hr)

    def upscale_series(self, job: Job, path: Path, model: str, through: bool = False) -> dict:
        """A zipped DICOM study or series: every series in it that forms a volume, upscaled slice by
        slice, as `medsr upscale` does a folder; the download is a zip of the derived series
        (series_io.write_derived_series), and the page shows the first."""
        files = _unzip(path, job.folder / "series", job.name, 4 * self.max_upload_bytes)
        found = series_io.scan_series(list(files))
        volumes = [series for series in found if series.volumes]
        if not volumes:
            why = next((series.reason for series in found if series.uid), "no file in it is a DICOM image")
            why = re.sub(r"\b\d{5}\b", lambda number: files.get(job.folder / "series" / number[0], number[0]), why)  # its names in the zip
            raise UserError(f"{job.name}: holds no DICOM series that forms a volume ({why}); zip the files of one series")
        total = sum(math.prod(volume.shape) for series in volumes for volume in series.volumes)  # from the headers
        if total > MAX_INPUT_PIXELS:
            raise UserError(f"{job.name} has {total:,} pixels; this page upscales up to {MAX_INPUT_PIXELS:,}; "
                            "use 'medsr upscale' for larger series", 413)
        job.model = model = self.choose(model, [path for series in volumes for path in series.paths])  # auto: by the files
        stacks = [[volume.pixels for volume in series.volumes] for series in volumes]
        upscaler = self.upscaler_for(model)
        started = time.perf_counter()
        options = volume_sr.ThroughPlane(device=self.device, precision=self.precision) if through else None
        with self.lock, _thin_advice(job.name):
            done = [volume_sr.upscale_series(series, stack, upscaler, options) for series, stack in zip(volumes, stacks)]
        shown = stacks[0][0]
        if through:  # the new slices are as thick as their spacing
            volume = volumes[0].volumes[0]
            job.slices_upward = bool(volume.normal[2] >= 0)  # positions ascend along the normal; LPS z is toward the head
            shown = self._cubic(job, shown, volume.slice_spacing, volume.pixel_spacing, done[0][1]["slice_thickness"])
        seconds = time.perf_counter() - started
        written = [file for series, (results, grid) in zip(volumes, done)  # file names hold the series UID: no clashes
                   for file in series_io.write_derived_series(series, results, job.folder / "derived", model_name=f"medsr {model}", **grid)]
        download = job.folder / f"{_stem(job.name)}-medsr-{model}-x{upscaler.scale}.zip"
        with zipfile.ZipFile(download, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in written:
                archive.write(file, file.name)
        job.files["download"] = download
        answer = self._keep(job, shown, done[0][0][0], upscaler.scale, model, seconds, "dicom series")
        answer["volumes"] = len(volumes[0].volumes)
        if answer["volumes"] > 1:
            answer["note"] = _several_volumes(job.name, answer["volumes"])
        answer["series"] = len(volumes)
        return answer

    def _upscale(self, job: Job, image: Image, model: str, truth: np.ndarray | None, through: bool = False) -> dict:
        upscaler = self.upscaler_for(model)
        lr = image.pixels
        started = time.perf_counter()
        options = volume_sr.ThroughPlane(device=self.device, precision=self.precision) if through else None
        try:
            with self.lock, _thin_advice(job.name):
                result = volume_sr.upscale_image(image, upscaler, options)
        except MedsrError as err:  # it names the stored upload (input.nii.gz): the user knows their own file name
            raise UserError(str(err).replace(image.meta.path, job.name)) from None
        sr = result.pixels
        volumes = nifti.volume_count(image.meta)  # a 4-D file's volumes are all upscaled; the page shows the first
        lr, sr = lr[: len(lr) // volumes], sr[: len(sr) // volumes]
        if through:  # the slider's "before" is then cubic interpolation across the slices, then bicubic
            job.slices_upward = bool(image.meta.source.affine[2, image.meta.slice_axis] >= 0)  # RAS z is toward the head
            lr = self._cubic(job, lr, nifti.slice_spacing(image.meta), image.meta.pixel_spacing, nifti.slice_spacing(result.meta))
        seconds = time.perf_counter() - started
        s = upscaler.scale
        # A name without a known extension was read as DICOM (recognised by its DICM preamble).
        download_name = f"{_stem(job.name)}-medsr-{model}-x{s}{_suffix(job.name) or '.dcm'}"
        job.files["download"] = write_image(job.folder / download_name, result, scale=s, model_name=f"medsr {model}")
        job.view = nifti.display_view(image.meta)  # a NIfTI volume's slices drawn as a DICOM viewer draws them
        if through and job.view[0]:  # the shown columns are the file's rows
            job.thin_spacing = (job.thin_spacing[0], image.meta.pixel_spacing[0])
        answer = self._keep(job, lr, sr, s, model, seconds, image.meta.format)
        if image.meta.extra.get("colour"):
            answer["note"] = f"{job.name} is {raster.COLOUR_NOTE}."
        if volumes > 1:
            answer["note"] = _several_volumes(job.name, volumes)
        if truth is not None:
            score = {k: metrics.psnr(torch.from_numpy(v)[None, None], torch.from_numpy(truth)[None, None], s).item()
                     for k, v in (("bicubic", nifti.undisplayed(self._bicubic(job, 0), job.view)), ("medsr", sr))}
            answer["psnr"] = {k: round(v, 2) for k, v in score.items()}
        return answer

    @staticmethod
    def _keep(job: Job, lr: np.ndarray, sr: np.ndarray, scale: int, model: str, seconds: float, input_format: str) -> dict:
        """Keep what the slice pictures are drawn from; the answer the page shows."""
        job.scale = scale
        job.lr01 = nifti.displayed(lr if lr.ndim == 3 else lr[None], job.view)
        job.sr = nifti.displayed((sr if sr.ndim == 3 else sr[None]).astype(np.float32, copy=False), job.view)
        job.frame = len(job.lr01) // 2
        job.window = display_window(job.lr01[job.frame])
        across = {}
        if job.thin_spacing is not None:
            across = {"across": {"width": job.sr.shape[2], "height": round(len(job.sr) * job.across_aspect)}}
        return {**across,
            "name": job.name,
            "model": model,
            "scale": scale,
            "seconds": round(seconds, 3),
            "input": {"width": int(job.lr01.shape[-1]), "height": int(job.lr01.shape[-2]), "format": input_format, "frames": len(job.lr01)},
            "frame": job.frame,
            "output": {"width": int(job.sr.shape[-1]), "height": int(job.sr.shape[-2])},
            "download_name": job.files["download"].name,
        }

    def _across(self, job: Job, kind: str) -> Path:
        """A plane across the slices (through the middle row) of a volume made thin, at true proportions:
        "across-before" is cubic across the slices then bicubic, "across-after" medsr."""
        if job.thin_spacing is None:
            raise UserError("this result has no view across the slices; upscale a volume with thin slices first", 404)
        if kind not in job.files:
            row = job.lr01.shape[1] // 2
            if kind == "across-before":
                plane = torch.from_numpy(np.ascontiguousarray(job.lr01[:, row : row + 1, :]))[:, None]  # (slices, 1, 1, w)
                plane = torch.nn.functional.interpolate(plane, scale_factor=(1, job.scale), mode="bicubic", align_corners=False)[:, 0, 0]
                plane = plane.clamp(0, 1).numpy()
            else:
                plane = job.sr[:, row * job.scale + job.scale // 2, :]
            picture = PILImage.fromarray(to_uint8(windowed(plane, job.window)))
            picture = picture.resize((plane.shape[1], round(len(plane) * job.across_aspect)), PILImage.Resampling.BICUBIC)
            path = job.folder / f"{kind}.png"
            if job.slices_upward:  # head at the top
                picture = picture.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM)
            picture.save(path, format="PNG", compress_level=1)
            job.files[kind] = path
        return job.files[kind]

    @staticmethod
    def _bicubic(job: Job, k: int) -> np.ndarray:
        lr = torch.from_numpy(np.ascontiguousarray(job.lr01[k]))[None, None]
        return degrade.upscale_baseline(lr, job.scale).clamp(0, 1)[0, 0].numpy()

    def picture(self, job: Job, kind: str, k: int | None) -> Path:
        """The PNG the page shows of slice k (default: the middle one): "before" (bicubic), "after"
        (medsr) or "overlay" (the hallucination map over medsr), drawn on first request and kept."""
        k = job.frame if k is None else k
        if kind.startswith("across-"):
            return self._across(job, kind)
        if not 0 <= k < len(job.lr01):
            raise UserError(f"slice {k} does not exist; this scan has slices 0 to {len(job.lr01) - 1}", 404)
        if kind == "overlay" and job.thin_spacing is not None:  # its "input" would be cubic interpolation, not the scan
            raise UserError("the hallucination map is drawn for in-plane results; slices made thin get none "
                            "(as with 'medsr upscale --uncertainty --through-plane')", 404)
        name = f"{kind}-{k}"
        if name not in job.files:
            path = job.folder / f"{name}.png"
            if kind == "before":
                _save_png(path, self._bicubic(job, k), job.window)
            elif kind == "after":
                _save_png(path, job.sr[k], job.window)
            else:
                upscaler = self.upscaler_for(job.model)
                reference_name = hallucination.reference_model_name(job.model, upscaler.scale)
                reference = None if reference_name is None else api.load_model(reference_name, device=self.device, precision=self.precision)
                with self.lock:  # on the slice as the model saw it, then turned as the page shows it
                    maps = hallucination.hallucination_maps(nifti.undisplayed(job.lr01[k], job.view), upscaler, reference,
                                                            sr01=nifti.undisplayed(job.sr[k], job.view))
                shown = {key: nifti.displayed(maps[key], job.view) for key in ("sr", "combined")}
                picture = hallucination.overlay(windowed(shown["sr"], job.window), shown["combined"])
                PILImage.fromarray(picture).save(path, format="PNG", compress_level=1)
            job.files[name] = path
        return job.files[name]


def create_app(models: list[str] | None = None, max_upload_mb: float = 50, device: str = "auto",
               precision: str = "auto") -> FastAPI:
    """The web app; `models` are shipped names or model files (default: every shipped model)."""
    in_plane = [name for name, scale in api.list_models().items() if scale > 1]  # the through-plane model runs via "Thin slices"
    server = Server(models or in_plane, max_upload_mb, device, precision)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.close()

    app = FastAPI(title="medsr", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    page = (files("medsr") / "web" / "index.html").read_text(encoding="utf-8")

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'not valid')}; check the request"}, status_code=400)

    @app.exception_handler(MedsrError)
    async def medsr_error(request: Request, err: MedsrError):
        # Messages name files by path; the page's user knows them by their own file names.
        return JSONResponse({"error": re.sub(re.escape(str(server.folder)) + r"/[0-9a-f]+/", "", str(err))}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"medsr hit an unexpected error ({type(err).__name__}); the server is still running, "
                                      "try again or another file, and report it if it repeats"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return server.info()

    @app.post("/api/upscale")
    async def upscale(request: Request, model: str = AUTO, name: str = "upload", demo: str | None = None, through: bool = False) -> dict:
        name = _safe_name(demo or name)
        if demo:
            model = server.choose(model, [name])
            server.upscaler_for(model)
            job = server._new_job(name + ".png", model)
            work = server.upscale_demo, job, demo, model
        else:
            job, path = await server.receive(request, name, model)
            if path.suffix != ".zip":  # a zip's files are chosen for once unzipped (upscale_series)
                job.model = model = server.choose(model, [path])  # "auto" by what the file holds (a DICOM's transfer syntax)
            work = server.upscale_upload, job, path, model, through
        try:
            answer = await _in_thread(*work)
        except Exception:
            server.forget(job)  # nothing of a failed upload stays on disk
            raise
        server.finished(job)
        base = f"/api/jobs/{job.id}"
        answer.update(id=job.id, before=f"{base}/before", after=f"{base}/after", overlay=f"{base}/overlay",
                      download=f"{base}/download")
        if "across" in answer:
            answer["across"].update(before=f"{base}/across-before", after=f"{base}/across-after")
        return answer

    @app.get("/api/jobs/{job_id}/{kind}")
    async def job_file(job_id: str, kind: str, slice: int | None = None):
        job = server.jobs.get(job_id)
        if job is None:
            raise UserError("this result is no longer kept (the server keeps the newest few); upscale the file again", 404)
        if kind == "download":
            path = job.files[kind]
            return FileResponse(path, filename=path.name, media_type="application/octet-stream")
        if kind not in ("before", "after", "overlay", "across-before", "across-after"):
            raise UserError(f"unknown result file '{kind}'", 404)
        return FileResponse(await _in_thread(server.picture, job, kind, slice), media_type="image/png")

    return app


async def _in_thread(function, *args):
    """Run model work off the event loop, so the page's other requests are still answered."""
    try:
        return await run_in_threadpool(function, *args)
    except MemoryError:
        raise UserError("not enough memory to upscale this image here; try a smaller image, or 'medsr upscale' on a machine with more memory", 507) from None


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[str] | None = None, max_upload_mb: float = 50,
          device: str = "auto", precision: str = "auto") -> None:
    """Start the page at http://host:port/ and serve until Ctrl-C; the temporary folder goes with it."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"medsr: warning: listening on {host}: anyone who can reach this machine can upload files and use its CPU")
    _check_port_free(host, port)
    app = create_app(models, max_upload_mb, device, precision)
    print(f"medsr serve: open http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/ "
          f"(uploads up to {max_upload_mb:g} MB, kept in {app.state.server.folder} until the server stops); Ctrl-C stops", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.server.close()


def _check_port_free(host: str, port: int) -> None:
    """Bind host:port as uvicorn will (every address of host, SO_REUSEADDR) and let go, so a port in use
    is one line before the banner rather than uvicorn's error after it."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # an unknown host: uvicorn says so
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio's server binds: IPv6 only, so "::" is not refused over a 0.0.0.0 listener
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise MedsrError(f"port {port} is in use; pick another with --port") from None
