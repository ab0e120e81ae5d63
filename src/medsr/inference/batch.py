"""Batch runs over whole archives: a read-ahead / write-behind thread pool around one model (or
two: one for JPEG files and DICOM stored as JPEG, one for the rest), a resume ledger, progress
reporting and a CSV summary.

The model runs on the calling thread, one image at a time; a small pool of threads decodes the
next files ahead of it (bounded, so memory stays bounded for any number of files) and writes the
finished ones behind it. Only I/O moves to threads, so the outputs are the same bytes as a serial
run (`workers=0`).

With `streams` > 1, that many jobs are upscaled (and written) at once, each on its own thread
with an equal share of torch's CPU threads. On a 2-core CPU two single-threaded images at once
beat one image on both cores: no core waits for the other at the end of every layer, and a file
being encoded costs one stream a little time instead of stalling both (benchmarks/bench_batch.py).

Resume: every finished output is recorded in a JSON-lines ledger in the output folder (appended
and flushed at once). A rerun skips a job only when its record matches the input (path, size,
mtime), the settings (model and its hash, scale, format, ...) and every file it wrote still has
the recorded size and sha256. Anything else is redone, and temp files a killed run left behind
are removed first.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import re
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from medsr.errors import MedsrError
from medsr.files import LEDGER_NAME, NAME_MAX, atomic_write, marked_at, sha256_file, temp_stem  # noqa: F401 - LEDGER_NAME, sha256_file: callers'
from medsr.inference import hallucination
from medsr.inference import volume as volume_sr
from medsr.io import Image, raster, read_image, write_image
from medsr.io.dispatch import check_writable
from medsr.io.formats import file_extension, format_named, jpeg_coded
from medsr.io.types import quiet_libraries

if TYPE_CHECKING:  # pydicom loads only when a series is written
    from medsr.io.series import Series

log = logging.getLogger(__name__)

SUMMARY_NAME = "medsr-summary.csv"
# atomic_write's temp files: ".<name or its hash (temp_stem)>.<8 hex>.tmp[suffix]" next to the target.
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


@dataclass
class Job:
    """One unit of work: an input file and the output file it becomes, or, with `series` set, every
    volume of a DICOM series (its files below `input`) becoming one derived series in the folder `output`."""

    input: Path
    output: Path
    series: Series | None = None
    kind: str = ""  # a series written as one NIfTI file: ".nii" (series_kind); as a derived DICOM series: ""

    @property
    def record_path(self) -> Path:
        """What the ledger and the duplicate check know this job by (a folder may hold several derived
        series). A series' DICOM and NIfTI outputs are two records, as a file's are two outputs: each
        replaces only its own kind's earlier output (_remove_replaced)."""
        return self.output if self.series is None else self.output / f"series-{self.series.uid}{self.kind}"


def series_kind(format: str | None) -> str:
    """Job.kind of a series written with --format `format`: ".nii" for one NIfTI file, "" for a derived DICOM series."""
    return ".nii" if format is not None and format_named(format).name == "nifti" else ""


@dataclass
class JobResult:
    """What happened to one job: status is "done", "skipped" (already complete), "failed" or "not done" (Ctrl-C)."""

    job: Job
    status: str
    reason: str = ""
    seconds: float = 0.0
    files: list[dict[str, Any]] = field(default_factory=list)  # {"path", "size", "sha256"} of each file written
    state: dict[str, Any] = field(default_factory=dict)  # the input as it was read (_input_state), for the ledger
    model: str = ""  # the model that upscales this input (JobRunner.model_name), for the summary


@dataclass
class BatchSummary:
    """The results of a batch, in job order."""

    results: list[JobResult]
    temp_files_removed: int = 0
    interrupted: bool = False  # stopped by Ctrl-C; the jobs it did not finish have status "not done"

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    def describe(self, out_dir: Path, scale: int, show_failures: int = 10, thin: bool = False) -> str:
        """The end-of-run summary: counts on one line, then the first failures with their reasons.
        `scale` 1 with `thin`: slices made thin alone (--through-plane without in-plane SR)."""
        failed = self.failed
        series = sum(r.job.series is not None for r in self.results)
        counted = "file(s)" if not series else "file(s) and series" if series < len(self.results) else "series"
        how = " and ".join(([f"x{scale}"] if scale != 1 or not thin else []) + (["made thin across the slices"] if thin else []))
        text = f"upscaled {self.done} of {len(self.results)} {counted} {how} into {out_dir}"
        if self.skipped:
            text += f"; {self.skipped} skipped (complete)"
        if failed:
            text += f"; {len(failed)} failed"
        if self.interrupted:
            text += f"; interrupted, {self.count('not done')} not done (rerun the same command to resume)"
        for result in failed[:show_failures]:
            text += f"\n  failed: {result.reason}"
        if len(failed) > show_failures:
            text += f"\n  ... and {len(failed) - show_failures} more failed (all are in the summary CSV)"
        return text

    def write_csv(self, path: Path) -> Path:
        """One row per job (input, output, status, reason, seconds, model, and for a DICOM series its
        SeriesInstanceUID: a folder's series share input and output), written atomically."""
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:  # names not in UTF-8
                rows = csv.writer(fh)
                rows.writerow(["input", "output", "status", "reason", "seconds", "model", "series"])
                for r in self.results:
                    series = r.job.series.uid if r.job.series is not None else ""
                    rows.writerow([r.job.input, r.job.output, r.status, r.reason, f"{r.seconds:.3f}", r.model, series])

        return atomic_write(Path(path), write)


def model_identity(name: str | Path | None, meta: dict[str, str]) -> dict[str, str]:
    """What identifies a loaded model in the ledger: its file's sha256 (the same weights under
    another name or path still match), or its name when there is no file."""
    path = Path(meta.get("path", ""))
    return {"sha256": sha256_file(path)} if meta.get("path") and path.is_file() else {"name": str(name)}


def _file_record(path: Path) -> dict[str, Any]:
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


class Ledger:
    """The JSON-lines record of finished outputs in one output folder, keyed by output path."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._file = None
        lines, text = 0, ""
        if self.path.exists() and not self.path.is_file():
            raise MedsrError(f"{self.path}: the resume ledger's name is taken by a folder; move it, or choose another -o")
        if self.path.is_file():
            text = self.path.read_text(errors="replace")
            for line in text.splitlines():
                lines += 1
                try:
                    record = json.loads(line)
                    self.records[record["output"]] = record
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a killed run, or junk: that output is redone
        # rewrite without stale or broken lines so reruns stay small, and with its last line ended, so the next record starts a line
        if lines > len(self.records) or (text and not text.endswith("\n")):
            text = "".join(json.dumps(r) + "\n" for r in self.records.values())
            atomic_write(self.path, lambda tmp: tmp.write_text(text))

    def key(self, output: Path) -> str:
        """The output's path relative to the ledger's folder (moving the whole folder keeps it valid)."""
        try:
            return Path(os.path.relpath(Path(output).resolve(), self.path.parent.resolve())).as_posix()
        except ValueError:  # another drive on Windows
            return str(Path(output).resolve())

    def get(self, output: Path) -> dict[str, Any] | None:
        return self.records.get(self.key(output))

    def is_complete(self, job: Job, settings: dict[str, Any]) -> bool:
        """True when the record of `job`'s output says it was finished with these settings from this
        very input (path, size, mtime), and every file it wrote still has its recorded size and sha256."""
        record = self.get(job.record_path)
        if record is None or record.get("settings") != settings:
            return False
        try:
            if any(record.get(k) != v for k, v in _input_state(job).items()):
                return False
            for item in record["files"]:
                path = self.path.parent / item["path"]
                if path.stat().st_size != item["size"] or sha256_file(path) != item["sha256"]:
                    return False
        except (OSError, KeyError, TypeError):
            return False
        return True

    def record(self, job: Job, input_state: dict[str, Any], settings: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
        """The record of a finished job; paths relative to the ledger's folder."""
        files = [dict(item, path=self.key(Path(item["path"]))) for item in files]
        return {"output": self.key(job.record_path), **input_state, "settings": settings, "files": files}

    def append(self, record: dict[str, Any]) -> None:
        """Add a record and flush it to disk at once, so a killed run keeps every finished output."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.records[record["output"]] = record

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk: the jobs whose records failed said so already
                self._file.close()
            self._file = None


def settled_result(job: Job, refusal: str | None, book: Ledger | None, settings: dict[str, Any], force: bool) -> JobResult | None:
    """A job's result without running it: failed when refused (refused_jobs), skipped when the ledger
    says its output is complete (unless `force`); None when it must run."""
    if refusal is not None:
        return JobResult(job, "failed", refusal)
    started = time.perf_counter()
    try:
        if book is not None and not force and book.is_complete(job, settings):
            return JobResult(job, "skipped", "already complete", time.perf_counter() - started)
    except (MedsrError, OSError) as err:
        return _failure(job, err, time.perf_counter() - started)
    return None


def book_result(result: JobResult, book: Ledger | None, settings: dict[str, Any]) -> None:
    """A done job's record appended to the ledger, unless the ledger holds that very record already."""
    if book is None or result.status != "done":
        return
    record = book.record(result.job, result.state, settings, result.files)
    old = book.get(result.job.record_path)
    if old != record:
        book.append(record)
    _remove_replaced(book, old if old != record else None, record)  # (a file redone as it was may replace a series)


def _remove_replaced(book: Ledger, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Earlier outputs that the `new` record replaces: a derived series redone with other settings
    (`old`, its record; its names hold the settings), and the outputs of the same source files made
    the other way (a series done file by file, then as one series once it forms a volume, or the
    reverse). Their files of the same kind (.dcm, .nii.gz) that this run did not write are removed,
    each only while it is still the very file that run wrote and no other record lists it: one
    derived output of a source stays, not one per setting or way. Another kind (DICOM then --format
    nii) is kept, as a single file's is."""
    series = "input_files" in new
    replaced = [old] if old is not None and series else []
    sources = _sources(new)
    replaced += [record for key, record in book.records.items()
                 if key != new["output"] and ("input_files" in record) != series and _sources(record) & sources]
    written = {item["path"] for item in new["files"]}
    kinds = {file_extension(Path(path)) for path in written}
    listed = {item.get("path") for key, record in book.records.items() if key != new["output"] and all(record is not r for r in replaced)
              for item in record.get("files", [])}
    for item in (item for record in replaced for item in record.get("files", [])):
        try:
            path = book.path.parent / item["path"]
            if (item["path"] not in written and item["path"] not in listed and file_extension(Path(item["path"])) in kinds and path.is_file()
                    and path.stat().st_size == item["size"] and sha256_file(path) == item["sha256"]):
                path.unlink()
        except (OSError, KeyError, TypeError):
            continue  # gone already, or a record from another version: leave it


def _sources(record: dict[str, Any]) -> set[str]:
    """The source files (resolved paths) a ledger record's output was made from."""
    try:
        return {str(item[0]) for item in record["input_files"]} if "input_files" in record else {str(record["input"])}
    except (KeyError, TypeError, IndexError):
        return set()


def report_result(result: JobResult, book: Ledger | None, settings: dict[str, Any], on_result: Callable | None) -> None:
    """A finished job: booked in the ledger when done (at once, so a killed run keeps it), then handed to
    on_result. A ledger that cannot be written (a full disk) fails that job, which a rerun then redoes."""
    try:
        book_result(result, book, settings)
    except OSError as err:
        result.status, result.reason = "failed", (f"{result.job.input}: its output is written but the resume ledger {book.path} "
                                                  f"is not ({err.strerror or err}); free space and rerun to have it recorded")
    if on_result is not None:
        on_result(result)


def _input_state(job: Job) -> dict[str, Any]:
    """What must not have changed for an output to count as complete: the input file(s) (path, size, mtime)."""
    if job.series is not None:
        files = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in job.series.paths]
        return {"input": str(job.input.resolve()), "input_files": files}
    stat = job.input.stat()
    return {"input": str(job.input.resolve()), "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}


def _map_names(output: Path) -> list[str]:
    return [path.name for path in hallucination.map_paths(hallucination.stem_for(output))]


def remove_temp_files(jobs: Iterable[Job]) -> int:
    """Remove temp files that a killed run left next to these jobs' outputs (theirs only); returns how many."""
    names: dict[Path, set[str]] = {}
    series_folders = set()
    for job in jobs:
        if job.series is not None:
            series_folders.add(job.output)  # derived series files are all named medsr_<uid hash>_...
        else:
            names.setdefault(job.output.parent, set()).update(map(temp_stem, [job.output.name, *_map_names(job.output)]))
    removed = 0
    for folder in set(names) | series_folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = _TEMP_FILE.match(entry.name)
            wanted = match and (match["name"] in names.get(folder, ()) or (folder in series_folders and match["name"].startswith("medsr_")))
            if wanted and entry.is_file():
                os.unlink(entry.path)
                removed += 1
    return removed


def _failure(job: Job, err: Exception, seconds: float) -> JobResult:
    if isinstance(err, MemoryError):
        err = MedsrError(f"{job.input}: not enough memory for this image and its output; run it with --streams 1 (one file at a "
                         "time), a smaller --scale, or on a machine with more memory (--tile bounds only the model's own part)")
    elif not isinstance(err, (MedsrError, OSError)):  # a bug of medsr's: this job fails, the batch goes on
        log.debug("%s failed", job.input, exc_info=err)
        err = MedsrError(f"{job.input}: unexpected {type(err).__name__} ({err}); this is a medsr bug: please report it "
                         "with the file (-v shows where it happened)")
    message = str(err) if str(job.input) in str(err) else f"{job.input}: {err}"
    return JobResult(job, "failed", message, seconds)


def _finished(result: JobResult) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


@dataclass
class JobRunner:
    """The work of one job in three steps, read -> upscale -> write, so the local engine can run them
    on different threads and a distributed one (medsr.inference.ray_engine) can run all three on a
    worker. The steps never touch the ledger: the caller records what `write` returns.

    `upscaler` needs `.scale` and `.upscale(pixels01)`; None skips the in-plane step (then
    `through_plane` must be set). `protect`: input files that no output may overwrite."""

    upscaler: Any
    settings: dict[str, Any]
    model_name: str = ""
    format: str | None = None
    uncertainty: bool = False
    reference: Any = None
    through_plane: volume_sr.ThroughPlane | None = None
    protect: set[Path] = field(default_factory=set)

    @property
    def scale(self) -> int:
        return self.upscaler.scale if self.upscaler is not None else 1

    def read(self, job: Job) -> JobResult | tuple[Image | list[np.ndarray], dict, float]:
        """Decode the input (a series: each volume's pixels); a JobResult if that failed."""
        started = time.perf_counter()
        try:
            state = _input_state(job) if job.series or job.input.is_file() else {}
            data = [volume.pixels for volume in job.series.volumes] if job.series else read_image(job.input)
            return data, state, time.perf_counter() - started
        except Exception as err:  # noqa: BLE001 - _failure says what it was
            if job.series is not None and isinstance(err, MedsrError):  # one file of it named: say what that cost
                err = MedsrError(f"{err} (so its series, {len(job.series.paths)} files in {job.input}, was not upscaled)")
            return _failure(job, err, time.perf_counter() - started)

    def upscale(self, job: Job, data) -> tuple[Any, dict | None]:
        """The model's part: (result, hallucination maps or None). Raises MedsrError or MemoryError."""
        if job.series is not None:  # the maps are drawn for single files only
            return volume_sr.upscale_series(job.series, data, self.upscaler, self.through_plane), None
        check_writable(job.output, data, format=self.format, name=job.input)  # a volume to PNG: said before its minutes of work, not after
        sr = volume_sr.upscale_image(data, self.upscaler, self.through_plane)
        maps = None if not self.uncertainty else hallucination.hallucination_maps(data.pixels, self.upscaler, self.reference,
                                                                                  sr01=sr.pixels)
        return sr, maps

    def write(self, job: Job, image, maps: dict | None, state: dict, spent: float) -> JobResult:
        """Write the output (and maps), then hash what was written. `spent`: seconds already taken."""
        started = time.perf_counter() - spent  # seconds = reading + model + writing, not time queued
        try:
            if job.series is not None:
                from medsr.io import series as series_io

                stacks, grid = image
                write_series = series_io.write_series_nifti if series_kind(self.format) else series_io.write_derived_series
                written = write_series(job.series, stacks, job.output, model_name=self.model_name,
                                       settings=json.dumps(self.settings, sort_keys=True), **grid)
            else:
                written = [write_image(job.output, image, scale=self.scale, model_name=self.model_name, format=self.format)]
            if maps is not None:
                from medsr.io.nifti import display_view

                written += hallucination.write_maps(hallucination.stem_for(written[0]), maps, protect=self.protect,
                                                    view=display_view(image.meta))
            files = [_file_record(path) for path in written]
        except Exception as err:  # noqa: BLE001 - _failure says what it was
            return _failure(job, err, time.perf_counter() - started)
        note = raster.notes(image.meta) if job.series is None else ""
        return JobResult(job, "done", note, time.perf_counter() - started, files, state)

    def finish(self, job: Job, data, state: dict, spent: float) -> JobResult:
        """Upscale and write a job `read` decoded (`spent`: seconds that took)."""
        started = time.perf_counter() - spent
        try:
            sr, maps = self.upscale(job, data)
        except Exception as err:  # noqa: BLE001 - _failure says what it was
            return _failure(job, err, time.perf_counter() - started)
        return self.write(job, sr, maps, state, time.perf_counter() - started)

    def run(self, job: Job) -> JobResult:
        """All three steps on this thread."""
        prepared = self.read(job)
        return prepared if isinstance(prepared, JobResult) else self.finish(job, *prepared)


@dataclass
class BatchModel:
    """A model as a batch runs it (run_batch's arguments of those names): its upscaler, the name output
    headers give it, its settings for the ledger and its uncertainty reference."""

    upscaler: Any
    model_name: str
    settings: dict[str, Any]
    reference: Any = None


def takes_jpeg_model(job: Job) -> bool:
    """Whether run_batch's `jpeg` model upscales this job: a JPEG file, or DICOM stored as lossy JPEG
    (medsr.io.formats.jpeg_coded; a series by its first file)."""
    return jpeg_coded(job.input if job.series is None else job.series.paths[0])


def batch_settings(settings: dict[str, Any] | None, scale: int, format: str | None, uncertainty: bool,
                   through_plane: volume_sr.ThroughPlane | None) -> dict[str, Any]:
    """What makes an earlier output reusable on a rerun: the caller's settings plus how this batch runs."""
    return dict(settings or {}, scale=int(scale), format=format, uncertainty=uncertainty,
                through_plane=None if through_plane is None else dataclasses.asdict(through_plane))


def auto_streams(upscaler, through_plane: volume_sr.ThroughPlane | None = None) -> int:
    """Jobs to upscale at once: 2 for a PyTorch model on a CPU with 2 or more threads (two images
    with half the threads each outdo one with all, benchmarks/bench_batch.py), else 1. Also 1 with
    `through_plane`: volumes are big jobs, and --adapt-minutes should have the whole CPU for its minutes."""
    device = getattr(upscaler, "device", None)
    cpu = isinstance(device, torch.device) and device.type == "cpu"
    return 2 if cpu and through_plane is None and torch.get_num_threads() >= 2 else 1


def input_paths(jobs: list[Job]) -> set[Path]:
    return {path.resolve() for job in jobs for path in (job.series.paths if job.series else [job.input])}


def replaced_outputs(jobs: list[Job], ledger: Path) -> list[tuple[Job, str]]:
    """(job, the other input) for each job whose output the ledger says an earlier run made from
    another input (`medsr upscale a/ -o out` then `medsr upscale b/ -o out`): the run replaces it."""
    if not ledger.is_file():
        return []
    book = Ledger(ledger)
    records = [(job, book.get(job.record_path)) for job in jobs]
    return [(job, record["input"]) for job, record in records
            if record and record.get("input") and record["input"] != str(job.input.resolve())]


def refused_jobs(jobs: list[Job], inputs: set[Path], uncertainty: bool = False, format: str | None = None,
                 book: Ledger | None = None, force: bool = False) -> dict[int, str]:
    """Jobs that must not run at all, by index: their output (with `uncertainty`, or its maps) would
    overwrite an input or another job's output or maps (scan.png and scan.tif have the same maps), or,
    with a ledger `book` and not `force`, the user's own file already there (_users_file)."""
    refused, claimed = {}, {}
    medsr_since = marked_at(book.path.parent) if book is not None and not force else None
    for index, job in enumerate(jobs):
        targets = [job.record_path]
        if uncertainty and job.series is None:
            targets += hallucination.map_paths(hallucination.stem_for(job.output))
        targets = [target.resolve() for target in targets]
        if long := next((target for target in targets if len(os.fsencode(target.name)) > NAME_MAX), None):
            refused[index] = (f"{job.input}: its output's name {long.name[:24]}... would be {len(os.fsencode(long.name))} bytes, "
                              f"over the {NAME_MAX} that file systems allow; rename the input shorter")
        elif any(target in inputs for target in targets):
            refused[index] = f"{job.input}: the output would overwrite this input; choose another -o folder"
        elif book is not None and not force and job.series is None and _users_file(job.output, book, medsr_since):
            refused[index] = (f"{job.input}: {job.output} is already there and no run of medsr wrote it; move that file, "
                              "choose another -o folder, or pass --force to replace it")
        elif clash := next((target for target in targets if target in claimed), None):
            hint = "rename one of them" + (" or drop --format" if format and clash == targets[0] else "")
            refused[index] = f"{job.input}: its output {clash} was already written from {claimed[clash]}; {hint}"
        else:
            claimed.update(dict.fromkeys(targets, job.input))
    return refused


def _users_file(output: Path, book: Ledger, medsr_since: float) -> bool:
    """A file at `output` that no run of medsr wrote: the ledger has no record of it, and it is older
    than the folder's use as medsr's output (`medsr_since`, files.marked_at), so not one a killed run left unrecorded."""
    try:
        written = output.stat()
    except OSError:
        return False
    return stat.S_ISREG(written.st_mode) and book.get(output) is None and written.st_mtime < medsr_since


def open_ledger(ledger: Path | None, inputs: set[Path]) -> Ledger | None:
    if ledger is not None and Path(ledger).resolve() in inputs:
        raise MedsrError(f"{ledger}: the resume ledger would overwrite this input; choose another -o folder")
    return Ledger(ledger) if ledger is not None else None


def _result(future: Future) -> Any:
    """future.result(), waking twice a second: a Ctrl-C that lands just as the wait begins would
    otherwise be seen only when the wait ends (the signal comes before the wait it should break)."""
    while not future.done():
        wait([future], timeout=0.5)
    return future.result()


def _exit_at_shutdown_if_running(futures: list[Future]) -> None:
    """Jobs a second Ctrl-C left running on worker threads (a model step cannot be stopped) would hold
    the process at exit: Python joins the pools' threads first (and a daemon thread still in torch
    aborts it). So when the interpreter exits while one of `futures` still runs, exit at once, with
    130 (Ctrl-C), after flushing stdout and stderr. What those jobs were writing is a temp file (every
    output is written under a temp name, then renamed), which the next run removes."""
    register = getattr(threading, "_register_atexit", None)  # called before the threads are joined (concurrent.futures uses it)
    if register is None or not futures:
        return

    def exit_now() -> None:
        if any(not future.done() for future in futures):
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(130)

    try:
        register(exit_now)
    except RuntimeError:  # the interpreter is exiting already
        pass


def run_batch(jobs: list[Job], upscaler, *, model_name: str = "", format: str | None = None,
              uncertainty: bool = False, reference=None, through_plane: volume_sr.ThroughPlane | None = None,
              workers: int = 2, streams: int | None = None, settings: dict[str, Any] | None = None, ledger: Path | None = None,
              force: bool = False, on_result: Callable[[JobResult], None] | None = None,
              jpeg: BatchModel | None = None) -> BatchSummary:
    """Upscale every job's input into its output; returns the results in job order.

    `upscaler` needs `.scale` and `.upscale(pixels01)` (medsr.inference.upscaler.Upscaler or any runtime with
    that interface); `uncertainty` adds hallucination maps (medsr.inference.hallucination) next to each output, with the
    disagreement with `reference` when one is given (medsr.inference.hallucination.hallucination_maps).
    `through_plane` first makes the thick slices of NIfTI volumes and DICOM series thin
    (medsr.inference.volume); `upscaler` None then skips the in-plane step. `workers` threads decode
    ahead and write behind (0: everything on this thread). `streams` jobs are upscaled at once, each
    with its share of torch's threads (None: `auto_streams`). With a
    `ledger` path, finished outputs are recorded there and jobs already complete with the same
    `settings` are skipped (`force` redoes them). `on_result` is called on this thread, in job
    order, as each job finishes. A bad file fails its job only; inputs are never overwritten.
    Ctrl-C (KeyboardInterrupt) stops it after the jobs under way (a line on stderr says so); Ctrl-C
    again stops it at once, leaving those to the next run. Either way it returns with `interrupted`
    set, every finished job reported and recorded, the rest "not done".
    With `jpeg`, that model upscales the JPEG files and DICOM stored as lossy JPEG instead
    (takes_jpeg_model; `medsr upscale`'s default runs default-jpeg on those, default on the rest);
    it must have `upscaler`'s scale.
    """
    if workers < 0:
        raise MedsrError(f"--workers must be 0 (no threads) or more, got {workers}")
    if streams is not None and streams < 1:
        raise MedsrError(f"--streams must be 1 or more, got {streams}")
    streams = min(auto_streams(upscaler, through_plane) if streams is None else streams, max(1, len(jobs)))
    scale = upscaler.scale if upscaler is not None else 1
    settings = batch_settings(settings, scale, format, uncertainty, through_plane)
    inputs = input_paths(jobs)
    book = open_ledger(ledger, inputs)
    refused = refused_jobs(jobs, inputs, uncertainty, format, book, force)
    temp_removed = remove_temp_files(job for i, job in enumerate(jobs) if i not in refused)
    runner = JobRunner(upscaler, settings, model_name, format, uncertainty, reference, through_plane, inputs)
    jpeg_runner = runner
    if jpeg is not None:
        if jpeg.upscaler.scale != scale:
            raise MedsrError(f"the model for JPEG files upscales x{jpeg.upscaler.scale}, the other x{scale}; both must have one scale")
        jpeg_runner = dataclasses.replace(runner, upscaler=jpeg.upscaler, model_name=jpeg.model_name, reference=jpeg.reference,
                                          settings=batch_settings(jpeg.settings, scale, format, uncertainty, through_plane))

    chosen: dict[int, JobRunner] = {}  # by id(job): takes_jpeg_model may read a DICOM file's meta, so once per job

    def runner_for(job: Job) -> JobRunner:
        if jpeg is None:
            return runner
        if id(job) not in chosen:
            chosen[id(job)] = jpeg_runner if takes_jpeg_model(job) else runner
        return chosen[id(job)]

    def prepare(index: int, job: Job) -> JobResult | tuple[Image | list[np.ndarray], dict, float]:
        """Off the model's thread: skip a complete job, or decode its input."""
        settled = settled_result(job, refused.get(index), book, runner_for(job).settings, force)
        return settled if settled is not None else runner.read(job)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="medsr-io") if workers else None
    threads = torch.get_num_threads()
    model_pool = None
    if streams > 1:  # before the streams' threads start, so each runs with its share
        torch.set_num_threads(max(1, threads // streams))
        model_pool = ThreadPoolExecutor(streams, thread_name_prefix="medsr-model")

    def submit(fn, *args) -> Future:
        return pool.submit(fn, *args) if pool else _finished(fn(*args))

    results: list[JobResult] = []
    interrupted = stopped_now = False  # stopped_now: a second Ctrl-C
    reading: deque[tuple[Job, Future]] = deque()  # inputs being decoded ahead of the model, in job order
    writing: deque[Future] = deque()  # results in job order; those still writing hold an SR image
    pending = iter(enumerate(jobs))
    read_ahead, write_behind = 2 * workers + streams - 1, workers + streams

    def read_next() -> None:
        if (nxt := next(pending, None)) is not None:
            reading.append((nxt[1], submit(prepare, *nxt)))

    def report(result: JobResult) -> None:
        result.model = runner_for(result.job).model_name
        results.append(result)
        report_result(result, book, runner_for(result.job).settings, on_result)

    def drain(keep: int) -> None:
        """Report finished results from the front, in job order, waiting until at most `keep` are unreported."""
        while writing and (writing[0].done() or len(writing) > keep):
            future = writing[0]
            # a job Ctrl-C kept from starting is listed as not done below; a Ctrl-C while waiting
            # here leaves the job in `writing`, for the drain after it
            result = None if future.cancelled() else _result(future)
            writing.popleft()
            if result is not None:
                report(result)

    def stop_now() -> None:
        """The second Ctrl-C: cancel what has not started, report what has finished (in job order,
        without waiting), and leave the jobs still running to the next run; `writing` keeps them."""
        for future in writing:
            future.cancel()
        reported = {id(r.job) for r in results}
        for future in list(writing):
            if future.done() and not future.cancelled() and id(future.result().job) not in reported:
                report(future.result())

    try:
        with quiet_libraries():  # entered once here: the readers' own per-file enter/exit is not thread-safe
            for _ in range(read_ahead + 1):
                read_next()
            while reading:
                job, future = reading[0]
                prepared = _result(future)
                reading.popleft()  # after its result: a Ctrl-C while waiting leaves it to be cancelled
                read_next()
                if isinstance(prepared, JobResult):
                    writing.append(_finished(prepared))
                elif model_pool is not None:
                    writing.append(model_pool.submit(runner_for(job).finish, job, *prepared))
                else:
                    data, state, spent = prepared
                    started = time.perf_counter() - spent
                    try:
                        sr, maps = runner_for(job).upscale(job, data)
                        writing.append(submit(runner_for(job).write, job, sr, maps, state, time.perf_counter() - started))
                    except Exception as err:  # noqa: BLE001 - _failure says what it was
                        writing.append(_finished(_failure(job, err, time.perf_counter() - started)))
                drain(keep=write_behind)
            drain(keep=0)
    except KeyboardInterrupt:
        # Ctrl-C: finish the jobs under way (so they are recorded), list the rest as not done.
        # Ctrl-C again (anywhere in here): stop waiting for them too (stop_now).
        interrupted = True
        try:
            for _, future in reading:
                future.cancel()
            for future in writing if model_pool is not None else ():
                future.cancel()  # jobs still waiting for a stream (those on one finish)
            under_way = sum(not future.done() for future in writing)
            tqdm.write(f"medsr: stopping after the {under_way} file(s) under way (Ctrl-C again to stop now); rerun to resume"
                       if under_way else "medsr: stopping; rerun to resume", file=sys.stderr)
            drain(keep=0)
        except KeyboardInterrupt:
            stopped_now = True
            stop_now()
        for result in results:  # a Ctrl-C between a result and its ledger line
            book_result(result, book, runner_for(result.job).settings)
        finished = {id(r.job): r for r in results}
        results = [finished.get(id(job)) or JobResult(job, "not done", "interrupted (Ctrl-C); rerun to resume") for job in jobs]
    finally:
        # After a second Ctrl-C, wait for no thread: jobs it left (stop_now) still run, and the process
        # must not wait for them to exit either. (After one Ctrl-C only reads can still run: waited for.)
        for executor in (model_pool, pool):
            if executor is not None:
                executor.shutdown(wait=not stopped_now, cancel_futures=True)
        if stopped_now:
            _exit_at_shutdown_if_running([future for future in writing if not future.done()])
        torch.set_num_threads(threads)
        if book is not None:
            book.close()
    return BatchSummary(results, temp_removed, interrupted)


class Progress:
    """Reports a batch as it goes (pass it as `on_result`): a line per output on stdout, one per
    failure on stderr, and progress on stderr: a tqdm bar with files/s and ETA on a terminal, or,
    in logs, a plain "upscale: ..." line every `every` files or `seconds` seconds."""

    def __init__(self, total: int, *, enabled: bool = True, stream=None, every: int | None = None, seconds: float = 10.0):
        self.total, self.stream, self.seconds = total, stream or sys.stderr, seconds
        self.every = every or max(10, total // 20)
        tty = self.stream.isatty()
        self.bar = tqdm(total=total, desc="upscale", unit="file", dynamic_ncols=True, file=self.stream,
                        disable=not (enabled and tty))
        self.plain = enabled and not tty
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.start = self.last = time.perf_counter()

    def __call__(self, result: JobResult) -> None:
        if result.status == "failed":
            tqdm.write(f"medsr: skipped: {result.reason}", file=sys.stderr)
        elif result.status == "done" and result.reason:
            tqdm.write(f"medsr: note: {result.job.input}: {result.reason}", file=sys.stderr)
        for item in result.files:
            tqdm.write(f"{result.job.input} -> {item['path']}")
        self.counts[result.status] += 1
        if result.status == "skipped":  # complete already: out of the bar's count, so its files/s and ETA are of real work
            self.bar.total -= 1
            self.bar.set_postfix_str(f"{self.counts['skipped']} skipped (complete)")
        else:
            self.bar.update(1)
        now, finished = time.perf_counter(), sum(self.counts.values())
        if self.plain and finished < self.total and (finished % self.every == 0 or now - self.last >= self.seconds):
            self.last = now
            print(self.line(finished, now), file=self.stream, flush=True)

    def line(self, finished: int, now: float) -> str:
        """'upscale: 20/40 files (18 done, 1 skipped, 1 failed), 2.10 files/s, ETA 00:09': the rate of the files
        upscaled or failed, not of those skipped as complete (a resumed run's would promise an ETA of 0)."""
        rate = (finished - self.counts["skipped"]) / max(now - self.start, 1e-9)
        eta = tqdm.format_interval((self.total - finished) / rate) if rate > 0 else "?"
        counts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        return f"upscale: {finished}/{self.total} files ({counts}), {rate:.2f} files/s, ETA {eta}"

    def close(self) -> None:
        self.bar.close()
