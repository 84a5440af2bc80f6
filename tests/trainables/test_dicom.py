"""DICOM decoding and listing against an independent rendering (tests/trainables/dicom_files.py):
photometric interpretations, bit depths, signed values, rescale, VOI window and LUT, three
compressed encodings, files without a suffix, and what is skipped with which reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_files import PATIENT_ID_PREFIX, PLANTED, chest, dataset, film, render, save
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from trainables.data import load_dataset
from trainables.dicom import is_dicom, patient_key, read_header
from trainables.preprocess import ImageError, decode_file

REPO = Path(__file__).resolve().parents[2]
SIZE = 64  # px: the test images' own size, so decode_file does not resize


def decoded(path: Path, size: int = SIZE) -> np.ndarray:
    return decode_file(path, size, "pad")


def test_monochrome1_15_bit_film_decodes_the_right_way_up(tmp_path):
    display = chest(SIZE)
    stored = film(display, bits=15)
    path = save(dataset(stored, "MONOCHROME1", 15), tmp_path / "film.dcm")
    got = decoded(path)
    # Lungs dark, mediastinum bright, the marker bright in the top-left corner: not a negative.
    lungs, middle = got[30:45, 15:22].mean(), got[30:45, 30:34].mean()
    assert lungs < 80 < 150 < middle, (lungs, middle)
    assert got[:6, :6].mean() > 200 and got[-6:, -6:].mean() < 230
    # The stored values are the negative: read naively, the lungs would be the bright part.
    assert stored[30:45, 15:22].mean() > stored[30:45, 30:34].mean()
    np.testing.assert_allclose(got, render(dcmread(path)), atol=1)
    assert np.corrcoef(got.ravel(), display.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("bits", [8, 12, 15, 16])
@pytest.mark.parametrize("photo", ["MONOCHROME1", "MONOCHROME2"])
def test_bit_depths_and_photometric_interpretations_match_the_rendering(tmp_path, bits, photo):
    stored = film(chest(SIZE, seed=bits), bits, photo)
    path = save(dataset(stored, photo, bits), tmp_path / "x.dcm")
    got = decoded(path)
    np.testing.assert_allclose(got, render(dcmread(path)), atol=1)
    assert got[30:45, 15:22].mean() < 80 < 150 < got[30:45, 30:34].mean()  # lungs dark


@pytest.mark.parametrize("bits", [12, 16])
def test_signed_values_with_rescale_slope_and_intercept(tmp_path, bits):
    top = (1 << (bits - 1)) - 1  # signed range: -top-1 .. top
    stored = np.round((chest(SIZE, seed=3) * 2 - 1) * top * 0.9).astype(np.int16)
    assert stored.min() < 0
    ds = dataset(stored, "MONOCHROME2", bits, RescaleSlope=0.5, RescaleIntercept=-1024)
    path = save(ds, tmp_path / "signed.dcm")
    back = dcmread(path)
    assert back.PixelRepresentation == 1 and (back.pixel_array == stored).all()
    got = decoded(path)
    np.testing.assert_allclose(got, render(back), atol=1)
    assert got[30:45, 15:22].mean() < 80 < 150 < got[30:45, 30:34].mean()


def test_the_first_voi_window_is_applied(tmp_path):
    stored = film(chest(SIZE, seed=4), 12, "MONOCHROME2")
    lo, hi = np.percentile(stored, [20, 80])
    centre, width = float((lo + hi) / 2), float(hi - lo)
    # Two windows listed: the first (narrow) one is used, the second would show everything.
    ds = dataset(stored, "MONOCHROME2", 12, WindowCenter=[centre, 2048.0],
                 WindowWidth=[width, 4096.0])  # fmt: skip
    path = save(ds, tmp_path / "window.dcm")
    got = decoded(path)
    np.testing.assert_allclose(got, render(dcmread(path)), atol=1)
    assert (got == 0).mean() > 0.1 and (got == 255).mean() > 0.1  # clipped by the window
    plain = save(dataset(stored, "MONOCHROME2", 12), tmp_path / "plain.dcm")
    assert np.abs(got.astype(int) - decoded(plain)).max() > 40  # the window made a difference


def test_a_voi_lut_sequence_is_applied_before_any_window(tmp_path):
    stored = film(chest(SIZE, seed=5), 12, "MONOCHROME2")
    entries = np.arange(4096, dtype=np.float64)
    lut = np.round(65535 * (entries / 4095) ** 0.3).astype(np.uint16)  # a strong gamma
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor: entries, first value, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUTData
    ds = dataset(stored, "MONOCHROME2", 12, WindowCenter=2048.0, WindowWidth=400.0)
    ds.VOILUTSequence = [item]
    path = save(ds, tmp_path / "lut.dcm")
    got = decoded(path)
    want = lut[stored].astype(np.float64)
    want = np.round((want - want.min()) / (want.max() - want.min()) * 255)
    np.testing.assert_allclose(got, want, atol=1)  # the LUT, not the 400-wide window
    np.testing.assert_allclose(got, render(dcmread(path)), atol=1)


def test_rle_jpeg2000_and_jpeg_lossless_decode_to_the_same_pixels(tmp_path):
    stored = film(chest(SIZE, seed=6), 15, "MONOCHROME1")
    ds = dataset(stored, "MONOCHROME1", 15)
    plain = save(ds, tmp_path / "plain.dcm")
    syntaxes = {"rle": RLELossless, "j2k": JPEG2000Lossless, "jpegll": JPEGLosslessSV1}
    want = decoded(plain)
    for name, syntax in syntaxes.items():
        path = save(ds, tmp_path / f"{name}.dcm", syntax)
        back = dcmread(path)
        assert back.file_meta.TransferSyntaxUID == syntax and back.PixelData != ds.PixelData
        assert (back.pixel_array == stored).all(), name
        assert (decoded(path) == want).all(), name


def test_baseline_jpeg_as_rsna_ships_it_decodes_close_to_the_original(tmp_path):
    """8-bit MONOCHROME2 in baseline JPEG (lossy; Pillow decodes it): nearly the same pixels."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    display = np.round(chest(SIZE, seed=8) * 255).astype(np.uint8)
    ds = dataset(display, "MONOCHROME2", 8)
    plain = save(ds, tmp_path / "plain.dcm")
    buf = io.BytesIO()
    Image.fromarray(display).save(buf, "JPEG", quality=95)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    lossy = save(ds, tmp_path / "lossy.dcm")
    diff = np.abs(decoded(lossy).astype(int) - decoded(plain))
    assert 0 < diff.max() < 24 and diff.mean() < 3, (diff.max(), diff.mean())


def test_pydicoms_own_encodings_of_one_image_agree():
    """Files made by other encoders (pydicom's test files: RLE, JPEG 2000, JPEG-LS)."""
    want = decoded(Path(get_testdata_file("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        assert (decoded(Path(get_testdata_file(name))) == want).all(), name


def test_a_file_without_suffix_is_found_by_its_dicm_marker(tmp_path):
    stored = film(chest(SIZE, seed=7), 12, "MONOCHROME1")
    ds = dataset(stored, "MONOCHROME1", 12)
    named, bare = save(ds, tmp_path / "a.dcm"), save(ds, tmp_path / "IM000001")
    assert is_dicom(bare) and is_dicom(named)
    (tmp_path / "README").write_text("not an image")
    assert not is_dicom(tmp_path / "README")
    assert (decoded(bare) == decoded(named)).all()


def _skipped_objects(folder: Path) -> dict[str, str]:
    """name -> expected reason, for DICOM objects that are not single-frame grayscale images."""
    frames = np.stack([film(chest(32, seed=s), 12, "MONOCHROME2") for s in range(3)])
    save(dataset(frames, "MONOCHROME2", 12), folder / "cine.dcm")
    rgb = np.zeros((32, 32, 3), np.uint8)
    save(dataset(rgb, "RGB", 8), folder / "photo.dcm")
    sr = dcmread(get_testdata_file("test-SR.dcm"))
    sr.save_as(folder / "report.dcm")
    pr = Dataset()
    pr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
    pr.SOPInstanceUID = "1.2.3.4"
    pr.PatientName = PLANTED["PatientName"]
    pr.PresentationLUTShape = "IDENTITY"
    pr.file_meta = dataset(rgb[..., 0], "MONOCHROME2", 8).file_meta
    pr.save_as(folder / "GSPS0001", enforce_file_format=True)  # no suffix either
    return {
        "cine.dcm": "multi-frame DICOM (3 frames)",
        "photo.dcm": "colour DICOM (RGB)",
        "report.dcm": "not an image: a Comprehensive SR Storage without pixel data",
        "GSPS0001": "not an image: a Grayscale Softcopy Presentation State Storage",
    }


def test_non_images_are_skipped_with_their_reason_by_listing_and_by_decode(tmp_path):
    expected = _skipped_objects(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(ImageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            decoded(tmp_path / name)
        header = read_header(tmp_path / name)
        assert header.problem and header.problem.startswith(reason), (name, header)


def _folder(root: Path, broken: bool = True) -> dict[str, str]:
    """train/{NORMAL,PNEUMONIA} and test/ of DICOM files, two per patient, some without a
    suffix, plus objects to skip; returns rel path -> expected skip reason."""
    n = 0
    for split, per_class in (("train", 8), ("test", 2)):
        for c, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for i in range(per_class):
                n += 1
                display = chest(32, seed=n) * (0.6 + 0.4 * c)
                ds = dataset(film(display, 15), "MONOCHROME1", 15, patient=f"{split}{cls}{i // 2}")
                name = f"img{n:03d}.dcm" if i % 3 else f"IMG{n:03d}"
                save(ds, root / split / cls / name)
    skips = _skipped_objects(root / "train" / "NORMAL")
    return {f"train/NORMAL/{k}": v for k, v in skips.items()}


def test_a_dicom_folder_lists_by_header_groups_by_patient_and_reports_no_identifier(tmp_path):
    expected = _folder(tmp_path / "data")
    data = load_dataset(str(tmp_path / "data"), image_size=16, val_fraction=0.3,
                        include_test=True)  # fmt: skip
    report = data.report
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert set(reasons) == set(expected)
    for path, reason in expected.items():
        assert reasons[path].startswith(reason), (path, reasons[path])
    assert report.counts["train"]["NORMAL"] + report.counts["val"]["NORMAL"] == 8
    assert report.counts["test"] == {"NORMAL": 2, "PNEUMONIA": 2}
    # Every DICOM file listed is counted by its header, the skipped ones too.
    assert report.dicom["photometric"] == {"MONOCHROME1": 20, "MONOCHROME2": 1, "RGB": 1,
                                           "none": 2}  # fmt: skip
    assert report.dicom["bits_stored"]["15"] == 20
    assert report.dicom["transfer_syntax"]["Explicit VR Little Endian"] == 24
    assert "DICOM files by photometric: MONOCHROME1 20" in report.format()
    # Two images per PatientID, and the validation split never splits a patient.
    train, val = data.train, data.val
    assert set(train.patients).isdisjoint(val.patients)
    assert len(set(train.patients) | set(val.patients)) == 8
    assert all(p.startswith("dicom-") for p in train.patients + val.patients)
    assert patient_key(PATIENT_ID_PREFIX + "trainNORMAL0") in train.patients + val.patients
    text = json.dumps([report.to_dict(), data.split_record, train.patients, val.patients])
    text += report.format()
    for secret in [*PLANTED.values(), PATIENT_ID_PREFIX, "Zzyzx", "Quorthon"]:
        assert secret not in text, secret
    # The pixels of a MONOCHROME1 file: dense tissue bright after decoding.
    assert data.train.images.float().mean() > 60


def test_listing_reads_headers_only(tmp_path):
    """A file whose pixel data is cut short is listed (its header is whole) and skipped only
    when decoded, with its reason."""
    _folder(tmp_path / "data")
    cut = tmp_path / "data" / "train" / "PNEUMONIA" / "img011.dcm"
    cut.write_bytes(cut.read_bytes()[:-600])
    from trainables.data import list_dataset

    _, listing, entries, _ = list_dataset(str(tmp_path / "data"))
    assert "train/PNEUMONIA/img011.dcm" in [e.rel for e in entries["train"]]
    data = load_dataset(str(tmp_path / "data"), image_size=16)
    reasons = {s["path"]: s["reason"] for s in data.report.skipped}
    assert "corrupt DICOM" in reasons["train/PNEUMONIA/img011.dcm"]


def test_a_syntax_without_its_decoder_is_skipped_naming_the_package(tmp_path):
    """Without the DICOM extras (no pylibjpeg), a JPEG Lossless file is skipped at listing
    with the packages that would decode it (a subprocess: pydicom checks plugins on import)."""
    path = save(dataset(film(chest(32), 15), "MONOCHROME1", 15), tmp_path / "ll.dcm",
                JPEGLosslessSV1)  # fmt: skip
    code = (
        "import sys; sys.modules['pylibjpeg'] = None\n"  # as if no DICOM extra were installed
        "from pathlib import Path\n"
        "from trainables.dicom import screen_entries\n"
        "from trainables.layouts import Entry, Listing\n"
        "listing = Listing()\n"
        f"kept = screen_entries([Entry('ll.dcm', Path({str(path)!r}), 'A', None),"
        f" Entry('x12.dcm', Path({get_testdata_file('JPGExtended.dcm')!r}), 'A', None)],"
        " listing)\n"
        "print(len(kept), listing.skipped[0]['reason'])\n"
        "print(listing.skipped[1]['reason'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, jpeg12 = proc.stdout.strip().splitlines()
    kept, reason = first.split(" ", 1)
    assert kept == "0"
    # 12-bit JPEG Extended: Pillow is there but decodes 8-bit samples only.
    assert jpeg12.startswith("transfer syntax JPEG Extended (Process 2 and 4) at 12 bits has no")
    assert "pylibjpeg-libjpeg" in jpeg12
    assert reason.startswith("transfer syntax JPEG Lossless, Non-Hierarchical, First-Order")
    assert "has no installed decoder: install pylibjpeg and pylibjpeg-libjpeg" in reason
    assert "python-gdcm" in reason
    assert read_header(path).problem is None  # here, with the plugin, it decodes
    assert decoded(Path(get_testdata_file("JPGExtended.dcm")), 32).std() > 0


def test_a_second_listing_reads_its_headers_from_the_index(tmp_path, monkeypatch):
    """The header index spares a trial's listing every header read; a file whose size or
    mtime changed is read again; the index holds no identifier."""
    import os

    import trainables.dicom as dicom
    from trainables.data import list_dataset

    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path / "cache"))
    _folder(tmp_path / "data")
    first = list_dataset(str(tmp_path / "data"), include_test=True)[1]
    reads = []
    real = dicom.read_header
    monkeypatch.setattr(dicom, "read_header", lambda path: reads.append(path) or real(path))
    second = list_dataset(str(tmp_path / "data"), include_test=True)[1]
    assert reads == [] and second.skipped == first.skipped and second.dicom == first.dicom
    touched = tmp_path / "data" / "train" / "NORMAL" / "img002.dcm"
    os.utime(touched, ns=(0, 1))
    list_dataset(str(tmp_path / "data"), include_test=True)
    assert reads == [touched]
    (index,) = (tmp_path / "cache" / "dicom").glob("headers-*.json")
    text = index.read_text()
    assert "dicom-" in text and PATIENT_ID_PREFIX not in text
    assert not [v for v in PLANTED.values() if v in text]
