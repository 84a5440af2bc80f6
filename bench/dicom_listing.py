"""DICOM listing: reading headers (stop_before_pixels) against decoding pixels, and a trial's
listing from the header index against the first listing.

N single-frame MONOCHROME1 15-bit DICOM files (two per PatientID) in an image folder, against a
fresh cache: `list_dataset` cold (every header read), `list_dataset` warm (headers from the
index, as every trial after the pre-flight lists), and `load_dataset` cold (pixels decoded).

    python -m bench.dicom_listing --size small    # 2,000 files of 256 x 256
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Results, note, parser, setup

PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"files": 40, "side": 64},
    "small": {"files": 2000, "side": 256},
    "full": {"files": 20000, "side": 512},
}


def write_files(folder: Path, files: int, side: int) -> None:
    """`files` DICOM files, half per class, two per PatientID (synthetic, no real identifier)."""
    from pydicom import Dataset, FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    rng = np.random.default_rng(0)
    for i in range(files):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.SOPInstanceUID = generate_uid()
        ds.PatientID = f"BENCH{i // 2}"
        set_pixel_data(ds, rng.integers(0, 2**15, (side, side), dtype=np.uint16), "MONOCHROME1", 15)
        path = folder / "train" / ("A" if i % 2 else "B") / f"{i:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.split("\n")[0]).parse_args(argv)
    device = setup(args)
    prof = PROFILES[args.size]
    results = Results("dicom_listing", args, device, argv)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-dicom-"))
    os.environ["CXR_TUNE_CACHE"] = str(work / "cache")
    try:
        note(f"writing {prof['files']} DICOM files of {prof['side']} px under {work}")
        write_files(work / "data", prof["files"], prof["side"])
        from trainables.data import list_dataset, load_dataset

        data = str(work / "data")
        cold = timed(lambda: list_dataset(data))
        warm = timed(lambda: list_dataset(data))
        decode = timed(lambda: load_dataset(data, image_size=64))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_file = {k: 1000 * v / prof["files"] for k, v in (("cold", cold), ("warm", warm))}
    results.figure("files", prof["files"])
    results.figure("seconds", {"list_cold": cold, "list_warm": warm, "load_cold": decode})
    note(
        f"list cold {cold:.2f} s ({per_file['cold']:.2f} ms/file), warm {warm:.2f} s "
        f"({per_file['warm']:.2f} ms/file); load with decoding {decode:.2f} s"
    )
    results.ratio(
        "warm_over_cold_listing", warm / cold, "< 1", "a trial's listing against the first one"
    )
    results.ratio(
        "headers_over_decoding",
        cold / decode,
        "< 1",
        "listing's header reads against listing + decoding every file",
    )
    results.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
