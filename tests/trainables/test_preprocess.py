"""Preprocessing: any image mode to a uint8 square, EXIF, pad or crop, and bad files named."""

from __future__ import annotations

import numpy as np
import pytest
from image_folders import BAD_KINDS, S, noise, write_bad
from PIL import Image

from trainables.preprocess import ImageError, decode_file, preprocess


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_decode_file_names_the_bad_file(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write_bad(kind, tmp_path / f"bad_{kind}.png")
    with pytest.raises(ImageError, match=BAD_KINDS[kind]) as err:
        decode_file(path, S, "pad")
    assert str(path) in str(err.value)  # the message names the file


def _asymmetric(w=60, h=40) -> np.ndarray:
    """Dark image with a bright block in the top-left corner."""
    arr = np.full((h, w), 40, dtype=np.uint8)
    arr[: h // 3, : w // 3] = 250
    return arr


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_uint8_square_with_same_content(mode):
    base = _asymmetric()
    if mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 200)
    elif mode == "I":
        img = Image.fromarray(base.astype(np.int32) * 1000)
    elif mode == "F":
        img = Image.fromarray(base.astype(np.float32) / 255.0)
    else:
        img = Image.fromarray(base).convert(mode)
    assert img.mode == mode
    out = preprocess(img, S, "pad")
    assert out.shape == (S, S) and out.dtype == np.uint8
    # The bright corner stays bright and the dark body dark in every mode.
    assert out[S // 4 + 2, 3] > 150 and out[S // 2 + 4, S - 4] < 120


def test_sixteen_bit_is_scaled_by_its_range_not_clipped():
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data
    out = preprocess(Image.fromarray(ramp), 64, "pad")
    # PIL's own convert("L") clips everything above 255 to white; we keep the whole ramp.
    assert out.min() <= 2 and out.max() >= 253
    assert 100 < out[32, 32] < 155  # the middle of the ramp is mid-grey, not white
    assert (out == 255).mean() < 0.05  # clipping would saturate ~94% of the pixels
    assert np.all(np.diff(out.astype(int).ravel()) >= -1)  # still monotone (up to resampling)


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns the stored image 90 degrees clockwise
    Image.fromarray(_asymmetric(60, 40)).save(path, exif=exif, quality=95)
    out = decode_file(path, 40, "crop")
    # Stored bright block at top-left; turned clockwise it sits at the top-right.
    assert out[2, 37] > 200 and out[2, 2] < 100
    upright = decode_file(noise(tmp_path / "plain.png", 1, (60, 40)), 40, "crop")
    assert upright.shape == out.shape == (40, 40)


def test_pad_keeps_the_whole_image_and_crop_takes_the_centre():
    wide = np.full((20, 60), 200, dtype=np.uint8)
    wide[:, :10] = 10  # dark left edge, only visible when nothing is cropped
    padded = preprocess(Image.fromarray(wide), 60, "pad")
    cropped = preprocess(Image.fromarray(wide), 60, "crop")
    # pad: black bands above and below (20 of 60 rows used), whole width kept, aspect unchanged.
    assert padded[:15].max() == 0 and padded[-15:].max() == 0
    assert padded[30, 2] < 60 and padded[30, 40] > 180
    # crop: the central 20x20 fills the square, so no padding and no dark edge.
    assert cropped.min() > 180
