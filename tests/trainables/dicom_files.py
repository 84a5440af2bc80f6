"""DICOM files for the tests, written with pydicom (and imagecodecs for JPEG Lossless, which
pydicom cannot encode), each carrying planted patient identifiers that must never leave the data.

`render` is the tests' own display rendering (pydicom's modality LUT, then its VOI LUT, then
MONOCHROME1 inversion, written out here), independent of `trainables.dicom`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut, set_pixel_data
from pydicom.uid import (
    JPEG2000,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

# Planted identifiers: grep every file a sweep writes for each of these.
PLANTED = {
    "PatientName": "Zzyzx^Quorthon",
    "PatientBirthDate": "19290317",
    "AccessionNumber": "ACC7731904",
    "InstitutionName": "Vexmoor Infirmary",
    "ReferringPhysicianName": "Drabwick^Ostrel",
}
PATIENT_ID_PREFIX = "MRN-55"  # PatientIDs are MRN-55<n>: never in any output either


def dataset(
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    patient: str = "1",
    **elements,
) -> Dataset:
    """A single-frame DX dataset of `stored` values with planted identifiers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = PATIENT_ID_PREFIX + patient
    for key, value in PLANTED.items():
        setattr(ds, key, value)
    bits = bits_stored or stored.dtype.itemsize * 8
    set_pixel_data(ds, stored, photometric, bits)
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian, **encoding) -> Path:
    """Write `ds` (a copy, compressed with `syntax` and pydicom's `encoding` options, e.g.
    ``j2k_psnr=[45]`` for lossy JPEG 2000) as a DICOM file with its DICM preamble."""
    ds = copy.deepcopy(ds)  # compress() changes the dataset in place
    if syntax == JPEGLosslessSV1:
        _jpeg_lossless(ds)
    elif syntax in (RLELossless, JPEG2000Lossless, JPEG2000):
        ds.compress(syntax, **encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg_lossless(ds: Dataset) -> None:
    """JPEG Lossless, first-order prediction (process 14, SV1) through libjpeg-turbo."""
    import imagecodecs

    arr = ds.pixel_array
    if arr.dtype.kind == "i":  # stored as two's complement in BitsStored bits
        arr = arr.astype(np.int64) & ((1 << int(ds.BitsStored)) - 1)
    unsigned = arr.astype(np.uint16 if int(ds.BitsAllocated) > 8 else np.uint8)
    frame = imagecodecs.jpeg8_encode(
        unsigned, lossless=True, predictor=1, bitspersample=int(ds.BitsStored)
    )
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def render(ds: Dataset) -> np.ndarray:
    """Independent display rendering, uint8: modality LUT -> VOI LUT -> MONOCHROME1 inversion
    -> 0..255 over the values' own range."""
    v = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    u8 = np.round((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)
    return 255 - u8 if ds.PhotometricInterpretation == "MONOCHROME1" else u8


def chest(size: int = 64, seed: int = 0) -> np.ndarray:
    """A float 'display' chest in [0, 1] (brighter = denser): dark lungs either side of a bright
    mediastinum, a bright marker in the top-left corner, noise. Up-down and left-right differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.75)
    for cx in (0.3, 0.7):  # the lungs
        img[((xx - cx) / 0.16) ** 2 + ((yy - 0.55) / 0.3) ** 2 < 1] = 0.15
    img[: size // 8, : size // 8] = 1.0  # a lead marker: top left
    return np.clip(img + 0.05 * rng.standard_normal((size, size)), 0, 1)


def film(display: np.ndarray, bits: int = 15, photometric: str = "MONOCHROME1") -> np.ndarray:
    """Stored values of a display image: MONOCHROME1 stores dense tissue LOW."""
    top = (1 << bits) - 1
    values = display if photometric == "MONOCHROME2" else 1.0 - display
    return np.round(values * (top - 200) + 100).astype(np.uint16 if bits > 8 else np.uint8)
