"""Small image folders for the data tests, written with PIL into a test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

S = 32  # pixels; small keeps the data tests fast on 2 cores


def noise(path: Path, seed: int, size=(24, 20), mode="L") -> Path:
    """A distinct small image (distinct content, so distinct cache keys)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    img = Image.fromarray(arr, mode="L")
    if mode != "L":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_folder(
    root: Path,
    counts: dict[str, int] | None = None,
    test_counts: dict[str, int] | None = None,
    images_per_patient: int = 2,
) -> Path:
    """ROOT/{train,test}/<CLASS>/person<PID>_<class>_<N>.png, `images_per_patient` per patient."""
    counts = counts or {"NORMAL": 20, "BACTERIA": 30, "VIRAL": 20}
    test_counts = test_counts or {c: 3 for c in counts}
    seed, pid = 0, 0
    for split, split_counts in (("train", counts), ("test", test_counts)):
        for cls, n in split_counts.items():
            for i in range(n):
                if i % images_per_patient == 0:
                    pid += 1
                seed += 1
                noise(root / split / cls / f"person{pid}_{cls.lower()}_{i}.png", seed)
    return root


def make_pediatric(root: Path, patients: int = 30) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/ with the public set's file names."""
    base = root / "chest_xray"
    seed = 1000
    for p in range(1, patients + 1):
        for n in range(1 + p % 3):  # 1 to 3 images per patient
            seed += 1
            if p % 3 == 0:
                name = f"NORMAL/IM-{p:04d}-{n + 1:04d}.jpeg"
            else:
                kind = "bacteria" if p % 3 == 1 else "virus"
                name = f"PNEUMONIA/person{p}_{kind}_{seed}.jpeg"
            noise(base / "train" / name, seed)
    noise(base / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg", 1)
    noise(base / "val" / "PNEUMONIA" / "person1946_bacteria_4874.jpeg", 2)
    noise(base / "val" / "PNEUMONIA" / "person1947_virus_4875.jpeg", 3)
    noise(base / "test" / "NORMAL" / "IM-0001-0001.jpeg", 4)
    noise(base / "test" / "PNEUMONIA" / "person100_bacteria_1.jpeg", 5)
    noise(base / "test" / "PNEUMONIA" / "person101_virus_2.jpeg", 6)
    return base


def write_bad(kind: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        noise(path, 7, size=(30, 30))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "corrupt":
        good = noise(path, 8, size=(30, 30)).read_bytes()
        path.write_bytes(good[:60] + b"\x00garbage" * 40 + good[-12:])
    elif kind == "not_image":
        path.write_text("patient notes, not an image\n")
    elif kind == "zero_byte":
        path.write_bytes(b"")
    elif kind in ("bomb_warning", "bomb_error"):
        # Over the limit set by the test (Image.MAX_IMAGE_PIXELS = 1000 pixels): 40x30 is over
        # it (Pillow warns), 60x60 is over twice it (Pillow raises).
        noise(path, 9, size=(40, 30) if kind == "bomb_warning" else (60, 60))
    return path


BAD_KINDS = {
    "truncated": "corrupt or truncated",
    "corrupt": "corrupt or truncated",
    "not_image": "not an image",
    "zero_byte": "zero-byte",
    "bomb_warning": "decompression-bomb",
    "bomb_error": "decompression-bomb",
}
