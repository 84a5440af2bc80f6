"""Preprocessing: any image file -> an 8-bit grayscale square, the same for training and serving.

`preprocess` applies EXIF orientation, converts any PIL mode to grayscale (16-bit and float
images scaled by their own range), pads or center-crops to a square and resizes (Lanczos).
`decode_file` opens one file and preprocesses it; every failure is an `ImageError` naming the
file. DICOM files go to `trainables.dicom`, which turns them into display values and hands
them to the same steps. `PREPROCESS_VERSION` keys the decode cache: bump it when the output
changes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trainables.pixels import ImageError, scale_to_uint8
from trainables.vocab import check_resize_mode

# Bump when `preprocess` changes its output, so old decoded arrays are not reused.
# 2: DICOM files decode (version 1 cached every DICOM file as a failure).
PREPROCESS_VERSION = 2
# Modes scaled by their own min..max (PIL's convert("L") would clip them at 255).
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Modes with an alpha band PIL's getbands() spells "a" (premultiplied).
PREMULTIPLIED_ALPHA_MODES = ("La", "RGBa")
# Modes converted straight to L; any other mode goes to RGB first.
DIRECT_TO_L_MODES = ("1", "L", "P", "RGB")
PAD_VALUE = 0  # the padding colour (black), uint8
RESAMPLE = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0  # Pillow resize(reducing_gap=): reduce() by an integer factor first, to >= 3x
JPEG_DRAFT_FACTOR = 2  # JPEG only: libjpeg may decode at 1/2^k while keeping >= 2x the target


def preprocess(img: Image.Image, image_size: int, resize_mode: str) -> np.ndarray:
    """Any PIL image -> uint8 (image_size, image_size) grayscale, aspect ratio kept.

    EXIF orientation is applied first. 16-bit, 32-bit and float images are scaled from their
    own min..max to 0..255 (PIL's own conversion would clip them at 255); alpha is composited
    onto black. 'pad' centres the image on a black square, 'crop' takes the central square;
    the square is then resized with antialiasing (Lanczos).
    """
    check_preprocessing(image_size, resize_mode)
    img = ImageOps.exif_transpose(img)
    gray = _to_gray(img)
    h, w = gray.shape
    side = max(h, w) if resize_mode == "pad" else min(h, w)
    if resize_mode == "pad":
        square = np.full((side, side), PAD_VALUE, dtype=np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = gray
    else:
        top, left = (h - side) // 2, (w - side) // 2
        square = gray[top : top + side, left : left + side]
    out = Image.fromarray(np.ascontiguousarray(square), mode="L")
    if side != image_size:
        out = out.resize((image_size, image_size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.asarray(out, dtype=np.uint8).copy()


def describe_steps(image_size: int, resize_mode: str) -> list[dict[str, Any]]:
    """`decode_file`'s steps, in order, as data: what bundle.json records so that a reader with
    Pillow and numpy alone can reproduce the uint8 square exactly (README's reference snippet)."""
    check_preprocessing(image_size, resize_mode)
    square = (
        {"op": "pad", "value": PAD_VALUE, "placement": "centre; top = (side - h) // 2, "
         "left = (side - w) // 2, side = max(h, w)"}
        if resize_mode == "pad"
        else {"op": "crop", "placement": "centre; top = (h - side) // 2, "
              "left = (w - side) // 2, side = min(h, w)"}
    )  # fmt: skip
    from trainables.dicom import describe as describe_dicom  # pydicom only when asked

    return [
        describe_dicom(),
        {"op": "jpeg_draft", "size": [JPEG_DRAFT_FACTOR * image_size] * 2,
         "rule": "Image.draft(None, size) before load(); a no-op for other formats"},
        {"op": "exif_transpose", "rule": "PIL.ImageOps.exif_transpose"},
        {"op": "to_gray",
         "high_depth_modes": list(HIGH_DEPTH_MODES),
         "high_depth": "float64; np.round((v - min) * 255 / (max - min)) to uint8; all 0 if "
         "max == min",
         "alpha_modes": ["any mode with an 'A' band", *PREMULTIPLIED_ALPHA_MODES,
                         "P with 'transparency' in info"],
         "alpha": "convert('RGBA').convert('LA'), then np.round(L * A / 255) to uint8 "
         "(composited onto black)",
         "direct_to_l_modes": list(DIRECT_TO_L_MODES),
         "other": "convert('RGB').convert('L') (CMYK, YCbCr, LAB, HSV, ...)"},
        square,
        {"op": "resize", "size": [image_size, image_size], "library": "Pillow",
         "filter": RESAMPLE.name.lower(), "reducing_gap": REDUCING_GAP,
         "when": "only if the square's side differs from size"},
    ]  # fmt: skip


def check_preprocessing(image_size: int, resize_mode: str) -> None:
    """Refuse an unknown resize mode or a size that is not a positive integer."""
    check_resize_mode(resize_mode)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def _to_gray(img: Image.Image) -> np.ndarray:
    if img.mode in HIGH_DEPTH_MODES:
        return scale_to_uint8(np.asarray(img))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if "A" in img.getbands() or img.mode in PREMULTIPLIED_ALPHA_MODES:
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32)
        return np.round(la[..., 0] * la[..., 1] / 255.0).astype(np.uint8)
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode not in DIRECT_TO_L_MODES:
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV: via RGB, which PIL converts from all
    return np.asarray(img.convert("L"), dtype=np.uint8)


def decode_image(path: Path, image_size: int, resize_mode: str) -> np.ndarray:
    """Decode one file; the caller decides how DecompressionBombWarning is treated."""
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: zero-byte file")
        from trainables.dicom import is_dicom, read_gray  # pydicom only when needed

        if is_dicom(path):  # display values in 8 bits, then the same square as any image
            return preprocess(Image.fromarray(read_gray(path)), image_size, resize_mode)
        with Image.open(path) as img:
            w, h = img.size
            if w * h > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise ImageError(
                    f"{path}: {w}x{h} pixels is over Pillow's decompression-bomb limit "
                    f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS})"
                )
            # JPEG only: let libjpeg downscale by 2^k while keeping >= 2x the target (as
            # Image.thumbnail does), a large speed-up at no visible cost after Lanczos.
            img.draft(None, (JPEG_DRAFT_FACTOR * image_size,) * 2)
            img.load()
            return preprocess(img, image_size, resize_mode)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: over Pillow's decompression-bomb limit ({err})") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: vanished after listing") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied: not readable by this user") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{path}: corrupt or truncated image ({err})") from None


def decode_file(path: str | Path, image_size: int, resize_mode: str) -> np.ndarray:
    """Open, decode and `preprocess` one file; any failure is an ImageError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return decode_image(Path(path), image_size, resize_mode)
