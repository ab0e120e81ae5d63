"""`medsr upscale --engine ray`: the batch runner's jobs spread over a Ray cluster with Ray Data.

The driver (the `medsr upscale` process) does what needs the whole archive in one place: it
refuses jobs that would overwrite inputs, skips jobs the ledger says are complete, owns the ledger
and the summary, and reports progress. The rest, read -> upscale -> write (medsr.inference.batch.JobRunner,
the local engine's own steps, so the outputs are the same bytes), runs in Ray Data `map_batches`
tasks on any node, one job per batch. A DICOM series is one job, so it is never split.

Each Ray worker process loads the models once (a cache keyed by what the CLI asked for) and keeps
them for every later task it runs: one loaded model per worker, as an actor pool would have. Tasks
rather than actors, because Ray retries a task whose node died on any node with a free CPU, while a
fixed actor pool waits for its dead actor's place to come back. A retried job writes the same bytes
again through an atomic rename, so nothing is lost, duplicated or left half-written; the temp files
of writes cut short are removed at the end. Workers read inputs and write outputs by path, so every
node must see the input and output folders at the same paths (a shared file system).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsr import zoo
from medsr.errors import MedsrError
from medsr.inference import batch
from medsr.inference import volume as volume_sr
from medsr.inference.upscaler import load_upscaler
from medsr.io.types import quiet_libraries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the driver's JobRunner: load_upscaler's arguments and the runner's options."""

    model: str | None  # None: no in-plane step (--through-plane alone)
    scale: int | None
    device: str
    precision: str
    tile: int
    tile_overlap: int
    runtime: str
    reference: str | None
    settings_json: str
    model_name: str
    format: str | None
    uncertainty: bool
    through_plane: volume_sr.ThroughPlane | None
    protect: tuple[str, ...]
    jpeg: WorkerSetup | None = None  # the set-up for JPEG files where their model differs (run_batch's `jpeg`)

    def for_job(self, job: batch.Job) -> WorkerSetup:
        """The set-up that runs `job`: `jpeg`'s for a JPEG file where there is one, else this."""
        return self.jpeg if self.jpeg is not None and batch.takes_jpeg_model(job) else self


@functools.cache
def _runner(setup: WorkerSetup) -> batch.JobRunner:
    """The worker process's JobRunner for `setup`, its models loaded on first use and kept."""
    def load(name: str | None):
        if name is None:
            return None
        return load_upscaler(name, scale=setup.scale, device=setup.device, precision=setup.precision, tile=setup.tile,
                             tile_overlap=setup.tile_overlap, runtime=setup.runtime)[0]

    return batch.JobRunner(load(setup.model), json.loads(setup.settings_json), setup.model_name, setup.format, setup.uncertainty,
                           load(setup.reference), setup.through_plane, {Path(p) for p in setup.protect})


def _run_jobs(rows: dict[str, np.ndarray], setup: WorkerSetup) -> dict[str, np.ndarray]:
    """map_batches' function: each row's pickled Job -> its pickled JobResult. A model that will not
    load on this worker fails the job with one line, as a bad input does, rather than the whole run."""
    results = []
    with quiet_libraries():
        for blob in rows["job"]:
            job = pickle.loads(blob)
            try:
                runner = _runner(setup.for_job(job))
            except MedsrError as err:
                results.append(pickle.dumps(batch.JobResult(job, "failed", f"{job.input}: on Ray node {socket.gethostname()}: {err}")))
                continue
            results.append(pickle.dumps(runner.run(job)))
    return {"index": rows["index"], "result": np.array(results, dtype=object)}


def for_workers(model: str | None) -> str | None:
    """A --model value as workers on any node find it: a shipped name as it is (each node has the
    package), a file or run folder as an absolute path (a worker's working directory is not the CLI's)."""
    return model if model is None or model in zoo.shipped_models() else str(Path(model).absolute())


def _as_driver_tells_it(result: batch.JobResult, job: batch.Job) -> batch.JobResult:
    """A worker's result with the driver's own Job object and its paths as the caller gave them (the
    worker saw them absolute), so messages, the summary and the ledger read as the local engine's."""
    reason = result.reason.replace(str(job.input.absolute()), str(job.input))
    files = result.files if job.output.is_absolute() else [dict(item, path=os.path.relpath(item["path"])) for item in result.files]
    return dataclasses.replace(result, job=job, reason=reason, files=files)


def _absolute(job: batch.Job) -> batch.Job:
    """`job` with absolute paths, as a worker whose working directory is not the CLI's must see them."""
    series = job.series
    if series is not None:
        volumes = [dataclasses.replace(v, paths=[p.absolute() for p in v.paths]) for v in series.volumes]
        series = dataclasses.replace(series, paths=[p.absolute() for p in series.paths], volumes=volumes,
                                     repeats=[p.absolute() for p in series.repeats])
    return dataclasses.replace(job, input=job.input.absolute(), output=job.output.absolute(), series=series)


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part medsr uses
    except ImportError:
        raise MedsrError("--engine ray needs Ray: pip install -e \".[ray]\" (or pip install \"ray[data]\")") from None
    return ray


def run_batch_ray(jobs: list[batch.Job], setup: WorkerSetup, *, ledger: Path | None = None, force: bool = False,
                  on_result: Callable[[batch.JobResult], None] | None = None, address: str | None = None,
                  cpus_per_job: float = 1.0) -> batch.BatchSummary:
    """batch.run_batch's contract on a Ray cluster (`address`: "auto", "HOST:PORT", or None to start a
    local one). `setup` carries the runner's options (settings already complete, batch.batch_settings).
    `on_result` is called on this thread as jobs finish, in the order they finish."""
    ray = require_ray()
    setups = [setup.for_job(job) for job in jobs]  # each job's model, decided once
    parsed = {each: json.loads(each.settings_json) for each in set(setups)}  # one or two set-ups
    settings = [parsed[each] for each in setups]
    inputs = batch.input_paths(jobs)
    book = batch.open_ledger(ledger, inputs)
    refused = batch.refused_jobs(jobs, inputs, any(each["uncertainty"] for each in settings), settings[0]["format"] if settings else None,
                                 book, force)
    temp_removed = batch.remove_temp_files(job for i, job in enumerate(jobs) if i not in refused)
    results: dict[int, batch.JobResult] = {}

    def report(index: int, result: batch.JobResult) -> None:
        result.model = setups[index].model_name
        results[index] = result
        batch.report_result(result, book, settings[index], on_result)

    todo = []
    for index, job in enumerate(jobs):
        settled = batch.settled_result(job, refused.get(index), book, settings[index], force)
        if settled is not None:
            report(index, settled)
        else:
            todo.append(index)
    interrupted = False
    try:
        if todo:
            _start(ray, address)
            rows = [{"index": i, "job": pickle.dumps(_absolute(jobs[i]))} for i in todo]
            dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                _run_jobs, fn_kwargs={"setup": setup}, batch_size=1, num_cpus=cpus_per_job, batch_format="numpy")
            for row in dataset.iter_rows():
                index = int(row["index"])
                report(index, _as_driver_tells_it(pickle.loads(row["result"]), jobs[index]))
    except KeyboardInterrupt:
        interrupted = True
    except MedsrError:
        raise  # no cluster at --ray-address: one line, before any job ran
    except Exception as err:  # Ray gave up (a worker died more often than it retries): the jobs left fail, the summary is written
        log.debug("Ray stopped the run", exc_info=err)
        reason = f"Ray stopped the run ({type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}); rerun to resume"
        for index in todo:
            if index not in results:
                report(index, batch.JobResult(jobs[index], "failed", f"{jobs[index].input}: {reason}"))
    finally:
        if book is not None:
            book.close()
        batch.remove_temp_files(job for i, job in enumerate(jobs) if i not in refused)  # writes cut short by a lost worker
    ordered = [results.get(i) or batch.JobResult(job, "not done", "interrupted (Ctrl-C); rerun to resume")
               for i, job in enumerate(jobs)]
    return batch.BatchSummary(ordered, temp_removed, interrupted)


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT that nothing listens on is one line at once (ray.init waits minutes for it, printing warnings)."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or "://" in host:
        return  # None, "auto", "ray://...": Ray finds or reports those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise MedsrError(f"--ray-address {address}: no Ray cluster there ({err.strerror or err}); start one with "
                         "'ray start --head' or check the address") from None


def _start(ray, address: str | None) -> None:
    """Join the cluster at `address`, or start a local one; quietly, as medsr's own output is the report."""
    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        # "local": a new instance of our own, never one that `ray start` or RAY_ADDRESS left on this machine
        ray.init(address=address or "local", logging_level=logging.ERROR, log_to_driver=False, configure_logging=True,
                 include_dashboard=False if address is None else None)
    except ConnectionError as err:
        raise MedsrError(f"--ray-address {address}: no Ray cluster there ({str(err).splitlines()[0]}); start one with "
                         "'ray start --head' or check the address") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines ("execution finished") would interleave
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # medsr reports progress itself
    context.execution_options.verbose_progress = False

