"""The `medsr` command. Thin: parse arguments, call the library, turn MedsrError into one line.

Each command imports its part of medsr when it runs, so `medsr --help` and a typo cost no torch import.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

from medsr import __version__
from medsr.errors import MedsrError
from medsr.files import OUTPUT_MARKER, mark_output_folder, output_folder_lock
from medsr.io.formats import FORMAT_CHOICES, format_of_extension, with_format_extension
from medsr.settings import DEVICES, PRECISIONS, PROTOCOLS, RUNTIMES, TILE, TILE_AMX, TILE_OVERLAP


def _train(args) -> int:
    from medsr.training.config import load_config
    from medsr.training.trainer import Trainer

    cfg = load_config(args.config, args.set or [])
    _output_folder(cfg.out_dir, "out_dir (--set out_dir=FOLDER)")
    trainer = Trainer(cfg)
    trainer.fit(resume=args.resume)
    return 130 if trainer.interrupted else 0  # 130: the shell's code for a run stopped by Ctrl-C


def _load_upscaler(args, model_name: str | None, tile: int | None = None, any_scale: bool = False):
    """`model_name` loaded as the options say; it must upscale by --scale, where given, unless `any_scale`."""
    from medsr.inference.upscaler import load_upscaler

    return load_upscaler(model_name, scale=None if any_scale else args.scale, device=args.device, precision=args.precision,
                         tile=args.tile if tile is None else tile, tile_overlap=args.tile_overlap,
                         runtime=getattr(args, "runtime", "torch"))


def _collect_inputs(paths: list[str], out_dir: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to the output folder) for each input file; folders are walked, except
    the output folder where it lies inside one, and earlier outputs of medsr's (medsr.data.scan leaves
    them out): medsr never reads its own outputs as inputs. One folder's structure lands in the output
    folder as it is; of several folders, each lands in a subfolder of its own name."""
    from medsr.data import scan

    out = out_dir.resolve()
    several = sum(Path(text).is_dir() for text in paths) > 1  # each folder's files then go under its name, as cp -r puts them
    pairs = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            folder = path.resolve()
            if folder == out:
                raise MedsrError(f"{path}: -o is this input folder, so outputs would mix with the inputs; choose another output folder")
            inside = out.is_relative_to(folder)  # -o inside this input folder: its files are outputs (around it: inputs)
            under = Path(folder.name) if several else Path()
            found = [(item.path, under / item.path.relative_to(path)) for item in scan(path)]
            kept = [pair for pair in found if not (inside and pair[0].resolve().is_relative_to(out))]
            if len(kept) < len(found):
                print(f"medsr: note: {len(found) - len(kept)} file(s) in {out_dir} left out: -o is inside {path}, so its files "
                      "are taken for outputs; choose an -o outside the inputs to upscale them", file=sys.stderr)
            pairs += kept
        elif path.is_file():
            pairs.append((path, Path(path.name)))
        else:
            raise MedsrError(f"{path}: no such file or folder; check the path")
    unique = {}
    for pair in pairs:  # a file named twice (a folder and a file in it, overlapping globs) is one input; links stay two names
        unique.setdefault(os.path.normpath(os.path.abspath(pair[0])), pair)
    return list(unique.values())


def _output_folder(text: str, option: str) -> Path:
    """The folder an option names, checked before any work (it was found a file only when the results
    were written): not a file, and writable (made if need be)."""
    folder = Path(text)
    _not_a_file(folder, option)
    _check_writable(folder, option)
    return folder


def _not_a_file(folder: Path, option: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise MedsrError(f"{folder}: {option} must name a folder, and this is a file; choose another {option}")


def _check_writable(folder: Path, option: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise MedsrError(f"{folder}: cannot write into this folder ({err.strerror or err}); choose a writable {option} folder") from None


def _output_path(rel: Path, out_dir: Path, fmt: str | None) -> Path:
    return out_dir / (rel if fmt is None else with_format_extension(rel, fmt))


def _jobs(pairs: list[tuple[Path, Path]], out_dir: Path, fmt: str | None, named: set[Path] = frozenset(), thin: bool = False) -> list:
    """One job per file, except that while the output stays DICOM or is NIfTI, the volumes of a DICOM
    series are one job that writes one derived series (or one NIfTI file); a series that cannot form a
    volume is said so (one line) and done file by file. DICOM files in a folder that hold no image (a
    DICOMDIR, reports, presentation states) are left out with one note; `named` files are kept (and fail).
    `thin` (--through-plane): such a series cannot be made thin, and the note says so."""
    from medsr.inference import batch
    from medsr.io.formats import format_named, format_of_path

    as_series = fmt is None or format_named(fmt).name in ("dicom", "nifti")
    # (a broken link is left to its own job, which fails naming it)
    dicom_files = [path for path, _ in pairs if getattr(format_of_path(path), "name", "") == "dicom" and path.exists()]
    series_of, left_out = {}, set()
    if dicom_files:  # pydicom loads only when there are DICOM files
        from medsr.io import series as series_io

        for found in series_io.scan_series(dicom_files):
            if not found.images:
                left_out.update(path for path in found.paths if path not in named)
                continue
            if not as_series:
                if thin and found.volumes:  # its files alone are single slices, and nothing would be made thin
                    raise MedsrError(f"{found.paths[0].parent}: --through-plane makes a DICOM series thin as a series (DICOM) or "
                                     f"one NIfTI volume, not as {format_named(fmt).name.upper()} files; drop --format or use --format nii")
                continue
            if found.repeats and found.volumes:  # (without a volume every file is done on its own)
                print(f"medsr: note: {found.repeats[0]}" + (f" and {len(found.repeats) - 1} more" if len(found.repeats) > 1 else "")
                      + ": a copy of another file of its series (the same SOPInstanceUID); left out", file=sys.stderr)
            if found.volumes:
                series_of.update(dict.fromkeys(found.paths, found))
            elif len(found.paths) > 1 and found.spatial:  # radiographs without positions are not series to warn about
                then = "--through-plane cannot make it thin (its files fail)" if thin else "processing it slice by slice instead"
                print(f"medsr: note: {found.message(then)}", file=sys.stderr)
    if left_out:
        first = min(left_out)
        print(f"medsr: note: {first}" + (f" and {len(left_out) - 1} more" if len(left_out) > 1 else "")
              + ": DICOM objects that hold no image (a DICOMDIR, reports, presentation states); left out", file=sys.stderr)
    jobs, started = [], set()
    for path, rel in pairs:
        found = series_of.get(path)
        if path in left_out:
            continue
        if found is None:
            jobs.append(batch.Job(path, _output_path(rel, out_dir, fmt)))
        elif found.uid not in started:  # the whole series is one job, where its first file is
            started.add(found.uid)
            jobs.append(batch.Job(path.parent, out_dir / rel.parent, series=found, kind=batch.series_kind(fmt)))
    return jobs


def _say_which_default(model: str, jpeg_model: str | None, inputs: list[Path]) -> None:
    """One note on stderr where the default model depends on the inputs being JPEG-coded (JPEG
    files, DICOM stored as lossy JPEG: medsr.io.formats.jpeg_coded)."""
    from medsr import zoo
    from medsr.io.formats import jpeg_coded

    if model == zoo.JPEG_MODEL:
        print(f"medsr: note: the input(s) are JPEG-coded (JPEG files, DICOM stored as lossy JPEG), so {zoo.JPEG_MODEL} "
              "upscales them: trained on JPEG inputs, it does "
              f"not sharpen their 8x8 block grid (--model {zoo.DEFAULT_MODEL} is closer to the original for near-lossless "
              "JPEGs that show no grid, but sharpens what grid there is: docs/results/jpeg-quality.md)", file=sys.stderr)
    elif jpeg_model is not None:
        jpeg = sum(map(jpeg_coded, inputs))
        are = "is JPEG-coded" if jpeg == 1 else "are JPEG-coded"
        print(f"medsr: note: {jpeg} of the {len(inputs)} input files {are} (JPEG files, DICOM stored as lossy JPEG): "
              f"{jpeg_model} upscales {'it' if jpeg == 1 else 'them'} "
              f"(trained on JPEG inputs, it does not sharpen their 8x8 block grid), {model} the rest; --model picks "
              "one model for all", file=sys.stderr)


def _batch_model(args, model_name: str | None, through_plane):
    """`model_name` loaded as `medsr upscale` runs it (None: no in-plane model, for --through-plane
    alone): a batch.BatchModel, and the name of its uncertainty reference (None without one)."""
    from medsr import zoo
    from medsr.inference import batch

    upscaler, meta = _load_upscaler(args, model_name) if model_name is not None else (None, {})
    reference = reference_meta = reference_name = None
    if args.uncertainty:
        from medsr.inference import hallucination

        if args.reference_model:
            hallucination.check_reference(model_name, args.reference_model)
        reference_name = args.reference_model or hallucination.reference_model_name(model_name, upscaler.scale)
        if reference_name is None:
            print(f"medsr: note: no shipped x{upscaler.scale} reference model; the uncertainty maps show the consistency "
                  "residual only (--reference-model adds the disagreement with a model of yours)", file=sys.stderr)
        else:
            reference, reference_meta = _load_upscaler(args, reference_name, any_scale=True)
            if reference.scale != upscaler.scale:
                raise MedsrError(f"--reference-model {reference_name} upscales x{reference.scale}, the model x{upscaler.scale}; "
                                 "pick a reference of the same scale (or leave it out)")
    names = []  # what the outputs' headers say made them
    if model_name is not None:
        names.append(f"{meta['medsr_arch']} model " + (model_name if model_name in zoo.shipped_models() else Path(meta["path"]).name))
    if through_plane:
        names.append(f"through-plane model {through_plane.model}")
    # What makes an earlier output reusable on --resume: same weights, same way of running them
    # (the precision that runs: auto is int8 or a float one, depending on the CPU and the model).
    settings = {"model": batch.model_identity(model_name, meta) if model_name is not None else None,
                "precision": getattr(upscaler, "precision", args.precision), "tile": getattr(upscaler, "tile", args.tile),
                "tile_overlap": args.tile_overlap, "runtime": getattr(args, "runtime", "torch"),
                "reference": reference_meta and batch.model_identity(args.reference_model, reference_meta)}
    return batch.BatchModel(upscaler, " + ".join(names), settings, reference), reference_name


def _upscale(args) -> int:
    from medsr import zoo
    from medsr.inference import batch

    through_plane = None
    if args.through_plane:
        from medsr.inference.volume import ThroughPlane

        if args.uncertainty:
            raise MedsrError("--uncertainty maps are drawn for in-plane results only; run --through-plane without it")
        through_plane = ThroughPlane(args.slice_spacing, args.slice_thickness, args.adapt_minutes, device=args.device, precision=args.precision,
                                     **({"model": args.through_plane_model} if args.through_plane_model else {}))
        if args.through_plane_model:
            from medsr.inference.volume import check_model

            check_model(args.through_plane_model)  # said once, before the files, not as each one's failure
    elif args.slice_spacing is not None or args.slice_thickness is not None or args.adapt_minutes or args.through_plane_model:
        raise MedsrError("--slice-spacing, --slice-thickness, --adapt-minutes and --through-plane-model go with --through-plane; add it")
    if args.ray_address and args.engine != "ray":
        raise MedsrError("--ray-address goes with --engine ray; add it")
    if args.reference_model and not args.uncertainty:
        raise MedsrError("--reference-model is what --uncertainty compares with; add --uncertainty")
    # --through-plane alone makes slices thin and keeps the in-plane grid; --model or --scale adds in-plane SR
    in_plane = not args.through_plane or args.model is not None or args.scale is not None
    out_dir = Path(args.output)
    pairs = _collect_inputs(args.inputs, out_dir)
    jpeg_model = None
    if args.model is None:
        inputs = [path for path, _ in pairs] if in_plane else []  # through-plane alone uses no in-plane model
        args.model = zoo.default_model(args.scale, inputs)
        jpeg_model = zoo.jpeg_default(args.scale, inputs)
        _say_which_default(args.model, jpeg_model, inputs)
    _not_a_file(out_dir, "-o")
    summary_path = Path(args.summary) if args.summary else out_dir / batch.SUMMARY_NAME
    if summary_path.resolve() in {p.resolve() for p, _ in pairs}:
        raise MedsrError(f"{summary_path}: the summary CSV would overwrite this input; choose another --summary")
    if summary_path.is_dir():
        raise MedsrError(f"{summary_path}: --summary names a folder; give a file, such as {summary_path / batch.SUMMARY_NAME}")
    jobs = _jobs(pairs, out_dir, args.format, {Path(text) for text in args.inputs}, thin=through_plane is not None)
    if through_plane and jobs and all(job.series is None and getattr(format_of_extension(job.input), "module", "") == "raster"
                                      for job in jobs):
        raise MedsrError(f"{jobs[0].input}: --through-plane makes the slices of a volume thin, and PNG, JPEG, TIFF and BMP files "
                         "hold none; give a NIfTI volume or a DICOM series folder")
    if jobs and all(job.series is None and job.output.resolve() == job.input.resolve() for job in jobs):
        raise MedsrError(f"{jobs[0].input}: -o {out_dir} would overwrite the input(s) with their outputs; choose another "
                         "output folder (or another --format)")
    if (out_dir / OUTPUT_MARKER).exists():  # a folder another run is writing into: said before the model loads, not after
        with output_folder_lock(out_dir):
            pass
    model, reference_name = _batch_model(args, args.model if in_plane else None, through_plane)
    for folder in {out_dir, summary_path.parent}:  # before any file is upscaled, rather than at every write
        _check_writable(folder, "-o" if folder == out_dir else "--summary")
    mark_output_folder(out_dir)
    upscaler = model.upscaler
    jpeg = jpeg_reference = None  # default-jpeg for the JPEG-coded files of a run that holds others too (zoo.jpeg_default)
    if jpeg_model is not None:
        jpeg, jpeg_reference = _batch_model(args, jpeg_model, through_plane)
    if args.uncertainty and any(job.series for job in jobs):
        print("medsr: note: hallucination maps are drawn for single files; the DICOM series here get none", file=sys.stderr)
    progress = batch.Progress(len(jobs), enabled=len(jobs) >= 2)
    ledger = out_dir / batch.LEDGER_NAME
    refused = batch.refused_jobs(jobs, batch.input_paths(jobs), args.uncertainty, args.format)
    replaced = batch.replaced_outputs([job for i, job in enumerate(jobs) if i not in refused], ledger)
    if replaced:
        job, other = replaced[0]
        more = f" (and {len(replaced) - 1} more)" if len(replaced) > 1 else ""
        print(f"medsr: note: {job.output} was made from {other} by an earlier run and is replaced by {job.input}'s output{more}; "
              "give another -o to keep both", file=sys.stderr)
    with output_folder_lock(out_dir):  # a second run into it would remove this one's temporary files
        try:
            if args.engine == "ray":
                from medsr.inference import ray_engine

                scale = upscaler.scale if upscaler else 1
                protect = tuple(str(p.resolve()) for p, _ in pairs)

                def setup(model_name: str | None, model: batch.BatchModel, reference: str | None, jpeg_setup=None):
                    settings = batch.batch_settings(model.settings, scale, args.format, args.uncertainty, through_plane)
                    return ray_engine.WorkerSetup(
                        model_name, args.scale, args.device, model.settings["precision"], model.settings["tile"], args.tile_overlap,
                        getattr(args, "runtime", "torch"), reference, json.dumps(settings), model.model_name, args.format,
                        args.uncertainty, through_plane, protect, jpeg_setup)

                setups = setup(ray_engine.for_workers(args.model if in_plane else None), model, ray_engine.for_workers(reference_name),
                               jpeg and setup(ray_engine.for_workers(jpeg_model), jpeg, ray_engine.for_workers(jpeg_reference)))
                summary = ray_engine.run_batch_ray(jobs, setups, ledger=ledger, force=args.force, on_result=progress,
                                                   address=args.ray_address)
            else:
                summary = batch.run_batch(jobs, upscaler, model_name=model.model_name, format=args.format,
                                          uncertainty=args.uncertainty, reference=model.reference, through_plane=through_plane,
                                          workers=args.workers, streams=args.streams, settings=model.settings, ledger=ledger,
                                          force=args.force, on_result=progress, jpeg=jpeg)
        finally:
            progress.close()
        summary.write_csv(summary_path)
    print(f"{summary.describe(out_dir, upscaler.scale if upscaler else 1, thin=through_plane is not None)}\nsummary: {summary_path}")
    return 130 if summary.interrupted else 1 if summary.failed else 0


def _evaluate(args) -> int:
    from medsr.evaluation import quality, report

    _output_folder(args.out, "--out")
    methods = [quality.Method(name) for name in quality.BASELINES]
    scale, scale_from = args.scale, "--scale"
    for model in args.model or []:
        upscaler, meta = _load_upscaler(args, model, tile=0)
        if scale is not None and upscaler.scale != scale:
            raise MedsrError(f"{meta['path']}: model is x{upscaler.scale} but {scale_from} is x{scale}; evaluate models of one scale at a time")
        scale, scale_from = upscaler.scale, scale_from if scale is not None else model
        methods.append(quality.Method(model, upscaler, quality.held_out_volumes(meta)))
    scale = scale or 3
    if args.task == "classify":
        from medsr.evaluation import diagnostic

        if args.protocol != "paper":
            raise MedsrError("--task classify uses the paper protocol (150x150 HR); drop --protocol native")
        if len(args.data) > 1:
            raise MedsrError(f"--task classify tells apart the classes of one data set; give one --data folder at a time, "
                             f"not {len(args.data)}")
        diagnostic.run_classify(args.data, methods, scale, Path(args.out), classifier=args.classifier,
                              classifier_epochs=args.classifier_epochs, split=args.split, limit=args.limit,
                              device=args.device, precision=args.precision)
        return 0
    rows = quality.evaluate(args.data, methods, scale, args.protocol, args.split, args.limit)
    summary = quality.summarize(rows)
    print(f"\n{args.protocol} protocol, x{scale}, split '{args.split}', {', '.join(args.data)}\n")
    print(quality.markdown_table(summary))
    context = {"data": args.data, "protocol": args.protocol, "split": args.split, "scale": scale}
    paths = report.write_reports(rows, summary, Path(args.out), context)
    print(f"\nwrote {', '.join(map(str, paths))}")
    return 0


def _compare(args) -> int:
    from medsr.evaluation.compare import compare

    names = [m for m in args.models.split(",") if m]
    _output_folder(args.out, "--out")
    result = compare(args.data, names, Path(args.out), args.protocol, args.split, args.limit, args.figures,
                     args.scale, args.device, args.precision, timing=not args.no_timing)
    print(f"\n{args.protocol} protocol, split '{args.split}', {', '.join(args.data)}\n\n{result['table']}")
    print(f"\nwrote {args.out}/: table.md, summary.csv, per_image.csv, results.json, summary.png, figures/ ({len(result['figures'])} images)")
    return 0


def _demo(args) -> int:
    from medsr import zoo
    from medsr.demo import run_demo

    args.model = args.model or zoo.default_model(args.scale)
    _output_folder(args.output, "-o")
    upscaler, meta = _load_upscaler(args, args.model)
    paths = run_demo(upscaler, Path(args.output), args.model)
    print("wrote:\n  " + "\n  ".join(map(str, paths)))
    return 0


def _serve(args) -> int:
    try:
        from medsr.serve import serve
    except ImportError as err:
        raise MedsrError(f"medsr serve needs {err.name}: pip install -e \".[serve]\"") from None

    serve(args.host, args.port, args.model, args.max_upload_mb, args.device, args.precision)
    return 0


def _export(args) -> int:
    from medsr.inference.onnx import CONTRACT, export_onnx

    path = export_onnx(args.model, Path(args.output), args.opset)
    print(f"wrote {path} (ONNX opset {args.opset}, fp32, any H and W): {CONTRACT}")
    return 0


def _models(args) -> int:
    from medsr import zoo

    shipped = zoo.shipped_models()
    if not shipped:
        print("no models are shipped in this version; train one with 'medsr train configs/default.yaml'")
        return 0
    print("| name | architecture | scale | parameters | file |\n|---|---|---:|---:|---|")
    for name, path in shipped.items():
        meta = zoo.load(path)[1]
        print(f"| {name} | {meta['medsr_arch']} | x{meta['medsr_scale']} | {int(meta['parameters']):,} | {path} |")
    print(f"\nmodel cards: {zoo.ZOO_DIR}/<name>.md; default for 'medsr upscale': {zoo.DEFAULT_MODEL} "
          f"({zoo.JPEG_MODEL} on JPEG files and DICOM stored as lossy JPEG; default-x2 / default-x4 with --scale 2 / 4)")
    return 0


def _tile_size(text: str) -> int | None:
    """--tile's value: pixels, or None for auto (medsr.hardware.default_tile decides once the precision is known)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a tile size; give LR pixels (0 = whole image at once) or auto") from None


def _millimetres(text: str) -> float:
    """--slice-spacing's and --slice-thickness's value."""
    return _number(text, lambda value: value > 0, "is not a length; give a positive number of mm")


def _minutes(text: str) -> float:
    """--adapt-minutes's value."""
    return _number(text, lambda value: value >= 0, "is not a duration; give minutes, 0 or more")


def _number(text: str, allowed, problem: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and allowed(value)):
        raise argparse.ArgumentTypeError(f"'{text}' {problem}")
    return value


def _path(text: str) -> str:
    """A file or folder argument: an empty one (an unset shell variable) would mean the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (an unset variable?); name the file or folder")
    return text


def _count(text: str) -> int:
    """A number of things: 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a count; give 0 or more")
    return int(text)


def _port(text: str) -> int:
    """--port's value: a TCP port."""
    if not (text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"'{text}' is not a port; give a number from 1 to 65535")
    return int(text)


def _device_options(p) -> None:
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="int8: the model's residual body in int8 (CPU; shipped default models and large; faster, slightly less exact: "
                   "docs/PERFORMANCE.md); auto: int8 on CPUs with int8 units (VNNI, AMX) or with AVX2 and no bf16 for models whose int8 is within 0.05 dB "
                   "of the calibrating CPU's float path (fp32 as shipped) on the validation split (as shipped: default, default-jpeg, "
                   "default-gan, default-x4; see their cards), else bf16 where the "
                   "hardware does it natively, else fp32")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N")


def _model_options(p, model_help: str,
                   scale_help: str = "upscaling factor; must be the model's own (without --model: picks the shipped default of that scale)") -> None:
    p.add_argument("--model", help=model_help)
    p.add_argument("--scale", type=int, help=scale_help)
    _device_options(p)
    p.add_argument("--tile", type=_tile_size, default="auto",
                   help=f"LR tile size in pixels; 0 = whole image at once; auto = {TILE}, or {TILE_AMX} for bf16 on CPUs with AMX (faster there)")
    p.add_argument("--tile-overlap", type=int, default=TILE_OVERLAP, help="context pixels around each tile")
    p.add_argument("--runtime", default=RUNTIMES[0], choices=RUNTIMES,
                   help="onnx: onnxruntime, fp32 only (pip install -e \".[onnx]\"); --model may then be an .onnx file")


UPSCALE_EXAMPLES = """examples:
  medsr upscale scan.dcm -o out/                   x3 with the shipped default; a derived DICOM
  medsr upscale scans/ -o out/ --scale 2           a folder (walked, structure mirrored), x2 model
  medsr upscale scans/ -o out/ --format png        PNG outputs whatever the inputs' formats
  medsr upscale scan.png -o out/ --uncertainty     also the hallucination map next to the output
  medsr upscale scans/ -o out/                     again after a crash: completed files are skipped
  medsr upscale t1.nii.gz -o out/ --through-plane  thick slices made thin: isotropic at the in-plane spacing
  medsr upscale SERIES_DIR/ -o out/                a DICOM series in, one derived series out
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout and shows each option's default, where it has one."""

    def _get_help_string(self, action) -> str:
        shown = action.default not in (None, False, argparse.SUPPRESS) and "default" not in (action.help or "")
        return f"{action.help} (default: %(default)s)" if shown else action.help


def build_parser() -> argparse.ArgumentParser:
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(prog="medsr", description="Super-resolution of medical images (X-ray, MRI; PNG/JPEG/TIFF, DICOM, NIfTI).")
    parser.add_argument("--version", action="version", version=f"medsr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML recipe", formatter_class=formatter)
    p.add_argument("config", type=_path, help="recipe, e.g. configs/paper.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable), e.g. --set epochs=2")
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.set_defaults(func=_train)

    shipped_help = "shipped model name (medsr models), .safetensors file, or training run folder; default: the shipped default model"
    p = sub.add_parser("upscale", help="upscale image files or folders", epilog=UPSCALE_EXAMPLES, formatter_class=formatter)
    p.add_argument("inputs", nargs="+", type=_path, help="files or folders (walked recursively; structure mirrored)")
    p.add_argument("-o", "--output", required=True, type=_path, help="output folder (never the same file as an input)")
    _model_options(p, shipped_help + " (x3: default, and default-jpeg on JPEG files and DICOM stored as lossy JPEG; x2: default-x2, x4: default-x4)")
    p.add_argument("--format", choices=FORMAT_CHOICES, help="output format (default: the input's)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write <name>.uncertainty.png (overlay) and .uncertainty.tif (float map) next to each output")
    p.add_argument("--reference-model", help="the model --uncertainty compares with (default: 'default', or 'default-gan' when --model is "
                   "default; at x2 and x4 none: the map is the consistency residual alone)")
    p.add_argument("--through-plane", action="store_true",
                   help="make the thick slices of NIfTI volumes and DICOM series thin (SMORE-style through-plane SR); "
                        "alone it keeps the in-plane grid, with --model or --scale it also upscales in-plane")
    p.add_argument("--slice-spacing", type=_millimetres, metavar="MM",
                   help="with --through-plane: the new slice spacing (default: the source's in-plane pixel spacing)")
    p.add_argument("--slice-thickness", type=_millimetres, metavar="MM",
                   help="with --through-plane: the slices' thickness when it differs from their spacing "
                        "(gaps; default: a DICOM series' SliceThickness, else the spacing)")
    p.add_argument("--through-plane-model", type=_path, metavar="MODEL",
                   help="with --through-plane: the model that makes slices thin, a file or run folder trained with "
                        "configs/through-plane.yaml (default: the shipped through-plane; --model names the in-plane one)")
    p.add_argument("--adapt-minutes", type=_minutes, default=0, metavar="N",
                   help="with --through-plane: first fine-tune the model on each file's own in-plane detail for N minutes "
                        "(a 4-D file or series: on its first volume, for all)")
    p.add_argument("--workers", type=int, default=2, help="local engine: threads that decode and write files around the model (0: none)")
    p.add_argument("--streams", type=int, help="local engine: files upscaled at once, each with its share of the CPU threads "
                   "(default: 2 on a CPU with 2 or more threads, else 1; faster on 2 cores: docs/PERFORMANCE.md)")
    p.add_argument("--force", action="store_true", help="redo every file, also those a previous run completed")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine; ray: spread the files over a Ray cluster (pip install -e \".[ray]\"; README)")
    p.add_argument("--ray-address", help="the Ray cluster to join (HOST:PORT or auto); default: start one on this machine")
    p.add_argument("--summary", type=_path, help="CSV of every file's status and reason (default: OUTPUT/medsr-summary.csv)")
    p.set_defaults(func=_upscale)

    p = sub.add_parser("evaluate", help="PSNR/SSIM/MS-SSIM of models and baselines on a data split", formatter_class=formatter)
    p.add_argument("--data", nargs="+", required=True, type=_path, help="data folder(s)")
    _model_options(p, "comma-separated models to evaluate besides the interpolations (shipped names, files, run folders)",
                   "upscaling factor; must be the models' own (without --model: the interpolations alone, at this factor)")
    p.add_argument("--protocol", default="paper", choices=PROTOCOLS)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--limit", type=int, help="evaluate at most this many images, spread evenly over the split (every class); "
                                             "each slice of a volume counts as one")
    p.add_argument("--out", default="evaluation", type=_path, help="folder for per_image.csv, summary.csv, results.json")
    p.add_argument("--task", default="quality", choices=["quality", "classify"],
                   help="quality: PSNR/SSIM/MS-SSIM; classify: does a classifier trained on HR images still get the "
                        "diagnosis right on the upscaled images (accuracy, AUC)")
    p.add_argument("--classifier", help="classifier .safetensors from an earlier --task classify run (default: train one)")
    p.add_argument("--classifier-epochs", type=int, default=15, help="epochs when training the classifier")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("compare", help="models and interpolation side by side: metrics table, per-image and summary figures",
                       formatter_class=formatter)
    p.add_argument("--data", nargs="+", required=True, type=_path, help="data folder(s)")
    p.add_argument("--models", default="bicubic,paper,default", help="comma-separated: interpolations (nearest, bicubic, lanczos), "
                   "shipped model names, .safetensors/.pth files or run folders; LABEL=PATH names one in the table")
    p.add_argument("--out", default="comparison", type=_path, help="output folder")
    p.add_argument("--protocol", default="paper", choices=PROTOCOLS)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--figures", type=_count, default=4, help="per-image figures to draw")
    p.add_argument("--scale", type=int, help="expected scale; must match the models")
    _device_options(p)
    p.add_argument("--no-timing", action="store_true", help="skip the ms-per-512x512 measurement")
    p.set_defaults(func=_compare)

    p = sub.add_parser("demo", help="upscale real scans shipped in pip packages and write comparison figures", formatter_class=formatter)
    p.add_argument("-o", "--output", default="medsr-demo", type=_path, help="output folder")
    _model_options(p, shipped_help)
    p.set_defaults(func=_demo)

    p = sub.add_parser("serve", help="a local web page: upload a scan, compare before/after, download the result", formatter_class=formatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this computer only)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--model", action="append", help="offer this model (repeatable; default: every shipped model)")
    p.add_argument("--max-upload-mb", type=float, default=50, help="refuse uploads larger than this")
    _device_options(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("export", help="export a model to ONNX (fp32, any image size) for onnxruntime", formatter_class=formatter)
    p.add_argument("--model", default="default", help="shipped model name, .safetensors file, or training run folder")
    p.add_argument("-o", "--output", required=True, type=_path, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.set_defaults(func=_export)

    p = sub.add_parser("models", help="list the shipped models")
    p.set_defaults(func=_models)
    for command in sub.choices.values():  # -v after the command too; SUPPRESS keeps one given before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate" and isinstance(args.model, str):  # --model a,b,c
        args.model = [m for m in args.model.split(",") if m]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="medsr: %(message)s")
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not a crash mid-batch
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return args.func(args)
    except MedsrError as err:
        if args.verbose:
            raise
        print(f"medsr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsr: interrupted", file=sys.stderr)
        return 130
