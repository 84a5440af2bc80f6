"""DICOM files: which files are DICOM, what their headers say, and their display values.

The one owner of DICOM reading (pydicom). A file is DICOM when its name ends in one of
`DICOM_SUFFIXES` or, for any other name that is not a known image suffix (hospital exports
often have none), when it carries the ``DICM`` marker at byte 128 (`pydicom.misc.is_dicom`).

- Listing (`screen_entries`) reads headers only (``stop_before_pixels``): it counts DICOM files
  per photometric interpretation, bits stored and transfer syntax, skips with its reason what
  is not a single-frame grayscale image (multi-frame, colour, a structured report or
  presentation state without pixels, a transfer syntax no installed plugin decodes, naming the
  package that would), and gives a file without a manifest/metadata patient id the hash of
  its PatientID as a grouping key (`patient_key`). No other header value is kept.
- Decoding (`read_gray`) follows `DECODE_RULES`: pydicom's modality LUT (rescale slope and
  intercept or a Modality LUT Sequence), then its VOI LUT (a VOI LUT Sequence first, else the
  first window; neither: values unchanged), MONOCHROME1 negated (its low values are white),
  then the 16-bit rule every reader shares (`trainables.pixels.scale_to_uint8`: own min..max to
  0..255) and the same pad/crop/resize as any image (`trainables.preprocess`). `describe`
  records these rules in bundle.json.

No identifier (PatientName, PatientID, BirthDate, AccessionNumber, ...) leaves this module:
skip reasons name the SOP class, photometric interpretation, frame count or transfer syntax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom as has_dicm_marker
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from trainables.cache import atomic_write_text, cache_root
from trainables.layouts import IMAGE_SUFFIXES, Entry, Listing
from trainables.pixels import ImageError, scale_to_uint8

DICOM_SUFFIXES = (".dcm", ".dicom")
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
INVERTED = "MONOCHROME1"  # stores dense tissue dark: negated before scaling
VOI_INDEX = 0  # the first window (or VOI LUT) when a file lists several
HEADER_INDEX_VERSION = 1  # bump when `Header` changes: the listing index is keyed by it
PATIENT_KEY_PREFIX = "dicom-"
_PATIENT_SALT = b"cxr-tune: DICOM PatientID as an opaque grouping key\0"
# Transfer syntax keyword -> what to install when pydicom has no decoder for it here.
_OPENJPEG = "pylibjpeg and pylibjpeg-openjpeg (MIT; pip install pylibjpeg pylibjpeg-openjpeg)"
DECODER_PACKAGES: dict[str, str] = {
    "JPEG2000Lossless": _OPENJPEG,
    "JPEG2000": _OPENJPEG,
    "HTJ2KLossless": _OPENJPEG,
    "HTJ2KLosslessRPCL": _OPENJPEG,
    "HTJ2K": _OPENJPEG,
    "JPEGLossless": "pylibjpeg and pylibjpeg-libjpeg (GPL-3.0; pip install "
    "pylibjpeg pylibjpeg-libjpeg) or python-gdcm (BSD)",
    "JPEGLosslessSV1": "pylibjpeg and pylibjpeg-libjpeg (GPL-3.0; pip install "
    "pylibjpeg pylibjpeg-libjpeg) or python-gdcm (BSD)",
    "JPEGLSLossless": "pylibjpeg and pylibjpeg-libjpeg (GPL-3.0), pyjpegls (BSD) or python-gdcm",
    "JPEGLSNearLossless": "pylibjpeg and pylibjpeg-libjpeg (GPL-3.0), pyjpegls (BSD) or "
    "python-gdcm",
    "JPEGExtended12Bit": "pylibjpeg and pylibjpeg-libjpeg (GPL-3.0) or python-gdcm (BSD)",
}
PILLOW_8_BIT_ONLY = ("JPEGExtended12Bit",)  # syntaxes Pillow decodes at 8 bits only
DECODE_RULES: dict[str, Any] = {
    "detect": f"name ends in {list(DICOM_SUFFIXES)}, or b'DICM' at byte 128 of a file whose "
    f"suffix is no other image format's",
    "read": "pydicom.dcmread(path); ds.pixel_array (any installed decoder plugin)",
    "accepted": f"one frame, SamplesPerPixel 1, PhotometricInterpretation in {list(GRAYSCALE)}",
    "modality_lut": "pydicom.pixels.apply_modality_lut(arr, ds)",
    "voi_lut": f"pydicom.pixels.apply_voi_lut(arr, ds, index={VOI_INDEX}) (the VOI LUT Sequence "
    "first, else the first WindowCenter/WindowWidth, else unchanged)",
    "invert": f"{INVERTED}: values negated (v = -v) before scaling",
    "to_uint8": "float64; np.round((v - min) * 255 / (max - min)) to uint8; all 0 if max == min",
    "then": "the uint8 image (PIL mode L) goes through exif_transpose, to_gray, pad or crop and "
    "resize as any image; jpeg_draft does not apply",
}


@dataclass(frozen=True)
class Header:
    """What listing keeps of one DICOM header; never a name, date or identifier."""

    photometric: str
    bits_stored: str
    transfer_syntax: str
    problem: str | None
    """Why the file is no single-frame grayscale image, or None (decoders: `missing_decoder`)."""
    patient_key: str | None
    """`patient_key` of its PatientID (None without one)."""
    syntax_uid: str | None = None
    """The transfer syntax UID, checked against the installed decoders at each listing."""


def is_dicom(path: Path) -> bool:
    """By suffix, else (a name without a known image suffix) by the DICM marker."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES:
        return False
    try:
        return bool(has_dicm_marker(path))
    except OSError:
        return False  # unreadable: the image decoder says why


def patient_key(patient_id: str) -> str:
    """An opaque, stable grouping key for a PatientID (salted sha256; the ID is not kept)."""
    digest = hashlib.sha256(_PATIENT_SALT + patient_id.encode("utf-8", "replace")).hexdigest()
    return PATIENT_KEY_PREFIX + digest[:16]


def _syntax(ds: pydicom.Dataset) -> pydicom.uid.UID | None:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


@lru_cache(maxsize=64)
def missing_decoder(uid: str, bits_stored: int = 8) -> str | None:
    """None when pydicom can decode `uid` here, else what to install (or why it cannot).
    Pillow, pydicom's fallback for JPEG Extended, decodes only its 8-bit samples."""
    uid = pydicom.uid.UID(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name} has no pixel decoder in pydicom"
    pillow_only = set(decoder.available_plugins) <= {"pillow"}
    too_deep = uid.keyword in PILLOW_8_BIT_ONLY and bits_stored > 8 and pillow_only
    if decoder.is_available and not too_deep:
        return None
    hint = DECODER_PACKAGES.get(uid.keyword) or "; ".join(decoder.missing_dependencies)
    depth = f" at {bits_stored} bits" if decoder.is_available else ""
    return f"transfer syntax {uid.name}{depth} has no installed decoder: install {hint}"


def image_problem(ds: pydicom.Dataset) -> str | None:
    """Why `ds` is not a single-frame grayscale image this project decodes, or None."""
    syntax, bits = _syntax(ds), int(ds.get("BitsStored") or 8)
    return shape_problem(ds) or (missing_decoder(str(syntax), bits) if syntax else None)


def shape_problem(ds: pydicom.Dataset) -> str | None:
    """`image_problem` without the decoder check (what a header says, whatever is installed)."""
    if "Rows" not in ds or "Columns" not in ds or "PhotometricInterpretation" not in ds:
        sop = ds.get("SOPClassUID")
        what = f"a {sop.name}" if sop is not None else "a DICOM object"
        return f"not an image: {what} without pixel data"
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        return f"multi-frame DICOM ({frames} frames): only single-frame images are used"
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in GRAYSCALE or int(ds.get("SamplesPerPixel") or 1) != 1:
        return f"colour DICOM ({photometric}): only {' or '.join(GRAYSCALE)} images are used"
    if _syntax(ds) is None:
        return "DICOM file without a TransferSyntaxUID in its file meta"
    return None


def _header_of(ds: pydicom.Dataset) -> Header:
    syntax = _syntax(ds)
    pid = str(ds.get("PatientID") or "").strip()
    return Header(
        photometric=str(ds.get("PhotometricInterpretation") or "none"),
        bits_stored=str(ds.get("BitsStored") or "none"),
        transfer_syntax=syntax.name if syntax is not None else "none",
        problem=shape_problem(ds),
        patient_key=patient_key(pid) if pid else None,
        syntax_uid=str(syntax) if syntax is not None else None,
    )


def read_header(path: Path) -> Header:
    """The header of one DICOM file, pixels not read; ImageError names an unreadable file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise ImageError(f"{path}: not a DICOM file (no DICM marker at byte 128)") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot be read ({err})") from None
    except Exception as err:  # pydicom raises many kinds on a damaged header
        raise ImageError(f"{path}: corrupt DICOM header ({type(err).__name__}: {err})") from None
    return _header_of(ds)


def screen_entries(entries: list[Entry], listing: Listing, root: Path | None = None) -> list[Entry]:
    """Keep non-DICOM entries and usable DICOM ones; count DICOM headers into `listing.dicom`,
    skip the rest with their reason, and group files without a patient id by PatientID.

    With `root`, headers come from an index under `cache_root()/dicom/` while a file's size
    and mtime are unchanged (a trial's listing then reads no header)."""
    kept = []
    counts = {k: Counter(v) for k, v in listing.dicom.items()}
    index = _HeaderIndex(root)
    for e in entries:
        try:
            header = index.header(e)
        except ImageError as err:
            listing.skip(e.rel, str(err).removeprefix(f"{e.path}: "))
            continue
        if header is None:  # not DICOM
            kept.append(e)
            continue
        for field, value in (
            ("photometric", header.photometric),
            ("bits_stored", header.bits_stored),
            ("transfer_syntax", header.transfer_syntax),
        ):
            counts.setdefault(field, Counter())[value] += 1
        problem = header.problem or (
            header.syntax_uid and missing_decoder(header.syntax_uid, _bits(header.bits_stored))
        )
        if problem:
            listing.skip(e.rel, problem)
            continue
        if e.patient is None and header.patient_key:
            e.patient = header.patient_key
        kept.append(e)
    index.save()
    listing.dicom = {k: dict(sorted(c.items())) for k, c in counts.items()}
    return kept


def _bits(text: str) -> int:
    return int(text) if text.isdigit() else 8


class _HeaderIndex:
    """rel path -> [size, mtime_ns, Header fields or None (not DICOM)] for one data root; holds
    no identifier (`Header` keeps a hashed PatientID only)."""

    def __init__(self, root: Path | None) -> None:
        self.path = None
        self.records: dict[str, list] = {}
        self.changed = False
        if root is not None:
            key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:32]
            self.path = cache_root() / "dicom" / f"headers-v{HEADER_INDEX_VERSION}-{key}.json"
            try:
                self.records = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.records = {}

    def header(self, e: Entry) -> Header | None:
        suffix = e.path.suffix.lower()
        if suffix in IMAGE_SUFFIXES and suffix not in DICOM_SUFFIXES:
            return None  # a PNG, JPEG, ...: no I/O, no record
        try:
            st = os.stat(e.path)
        except OSError:
            st = None
        known = self.records.get(e.rel)
        if st is not None and known and known[:2] == [st.st_size, st.st_mtime_ns]:
            return Header(*known[2]) if known[2] is not None else None
        header = read_header(e.path) if is_dicom(e.path) else None
        if st is not None and self.path is not None:
            fields = list(dataclasses.astuple(header)) if header is not None else None
            self.records[e.rel] = [st.st_size, st.st_mtime_ns, fields]
            self.changed = True
        return header

    def save(self) -> None:
        if self.changed and self.path is not None:
            atomic_write_text(self.path, json.dumps(self.records))


def display_values(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values -> float64 display values (brighter = denser), by `DECODE_RULES`."""
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=VOI_INDEX)
    values = np.asarray(values, dtype=np.float64)
    return -values if str(ds.PhotometricInterpretation) == INVERTED else values


def read_gray(path: Path) -> np.ndarray:
    """One DICOM file -> its uint8 display image (`trainables.preprocess` squares and resizes
    it as any image); ImageError names the file."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageError(f"{path}: not a DICOM file (no DICM marker at byte 128)") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot be read ({err})") from None
    except Exception as err:
        raise ImageError(f"{path}: corrupt DICOM file ({type(err).__name__}: {err})") from None
    problem = image_problem(ds) or ("PixelData" not in ds and "DICOM file without PixelData")
    if problem:
        raise ImageError(f"{path}: {problem}")
    pixels = int(ds.Rows) * int(ds.Columns)
    if pixels > (Image.MAX_IMAGE_PIXELS or float("inf")):
        raise ImageError(
            f"{path}: {ds.Columns}x{ds.Rows} pixels is over Pillow's decompression-bomb limit "
            f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS})"
        )
    try:
        values = display_values(ds)
    except Exception as err:  # a decoder plugin's own error on damaged data
        raise ImageError(
            f"{path}: corrupt DICOM pixel data ({type(err).__name__}: {err})"
        ) from None
    return scale_to_uint8(values)


def describe() -> dict[str, Any]:
    """The DICOM step of bundle.json's preprocessing steps."""
    return {"op": "dicom", **DECODE_RULES}
