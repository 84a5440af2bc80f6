"""Pixel rules shared by every image reader (Pillow's in `preprocess`, pydicom's in `dicom`):
the error a file that cannot be decoded raises, and the high-depth scaling to 8 bits."""

from __future__ import annotations

import numpy as np


class ImageError(ValueError):
    """A file that cannot be decoded as an image; the message names the file."""


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """High-depth values (16-bit, float, DICOM display values) -> uint8 by their own min..max:
    float64, np.round((v - min) * 255 / (max - min)); all 0 when max == min."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:  # a constant image carries no contrast to keep
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
