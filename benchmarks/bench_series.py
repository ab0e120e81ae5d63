"""A 130-slice 256x256 DICOM series upscaled x3 in-plane by `medsr upscale`, end to end: seconds,
peak memory, and what dcm2niix makes of the result.

    python benchmarks/bench_series.py [--slices 130] [--runs 2]

The series is synthetic (written here into a temp folder with pydicom): 130 axial MR slices of
256x256, 16-bit, 1 x 1 mm pixels, 1.2 mm apart, made from nilearn's MNI152 T1 template resampled
to that grid, with real-looking headers (one SeriesInstanceUID, positions along the normal). Each
run is a fresh `medsr upscale SERIES -o OUT --force` process; its peak memory is the child's
maximum resident set size (resource.getrusage(RUSAGE_CHILDREN)). The first run also loads the
model from disk and warms the caches: both runs are shown.
"""

from __future__ import annotations

import argparse
import importlib.resources
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from common import machine
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

from medsr.demo import MNI_T1


def write_series(folder: Path, slices: int) -> None:
    template = np.asarray(nib.load(Path(str(importlib.resources.files("nilearn") / MNI_T1))).dataobj, dtype=np.float32)
    zoom = (256 / template.shape[0], 256 / template.shape[1], slices / template.shape[2])
    volume = ndimage.zoom(template, zoom, order=1)[:256, :256, :slices]
    volume = np.clip(volume / volume.max() * 4000, 0, 4095).astype(np.uint16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, k + 1
        ds.PatientName, ds.PatientID = "Bench^Series", "bench"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-128.0, -128.0, -78.0 + 1.2 * k]
        ds.PixelSpacing, ds.SliceThickness, ds.SpacingBetweenSlices = [1.0, 1.0], 1.2, 1.2
        ds.Rows = ds.Columns = 256
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).tobytes()
        pydicom.dcmwrite(folder / f"slice{k:03d}.dcm", ds, enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=130)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"{machine()}\n")
    medsr = shutil.which("medsr") or sys.exit("the medsr console script is not installed: pip install -e .")
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "series", Path(tmp) / "out"
        source.mkdir()
        write_series(source, args.slices)
        for run in range(1, args.runs + 1):
            started = time.perf_counter()
            result = subprocess.run([medsr, "upscale", str(source), "-o", str(out), "--force"], capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                sys.exit(result.stderr)
            peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB -> GB, the largest child so far
            print(f"- run {run} ({'cold: a fresh process' if run == 1 else 'again, files cached'}): {args.slices} slices of 256x256 "
                  f"-> 768x768 in {seconds:.1f} s, peak memory {peak_gb:.2f} GB")
        converted = Path(tmp) / "nii"
        converted.mkdir()
        dcm2niix = shutil.which("dcm2niix")
        if dcm2niix:
            subprocess.run([dcm2niix, "-o", str(converted), "-z", "n", str(out)], capture_output=True, check=True)
            images = [nib.load(p) for p in converted.glob("*.nii")]
            print(f"- dcm2niix: {len(images)} volume(s): {[img.shape for img in images]}, zooms {[img.header.get_zooms() for img in images]}")


if __name__ == "__main__":
    main()
