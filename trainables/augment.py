"""Batched, seeded image augmentations (seed sections 2 and 4) that run on the CPU or the GPU.

Every op takes a float batch in [0, 1] of shape (B, C, H, W) (C = 1 for chest X-rays) and a
`torch.Generator` on the batch's device, draws its random parameters per sample, and returns a
batch of the same shape, dtype and range. There is no Python loop over images: the geometric ops
build one (B, 2, 3) matrix batch and resample once with `F.affine_grid` + `F.grid_sample`
(bilinear, zero padding like torchvision's default fill). Ops compose, so test-time augmentation
builds its views from `OPS` as well.

A named set (`AUGMENTATIONS`) is deterministic preprocessing, applied to every image the model
ever sees (training, validation, test, TTA, `analysis.predict`; recorded in the bundle), then
random augmentations drawn per image on training batches only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables import vocab

Op = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]

ROTATE_DEGREES = 10.0  # seed: rotation drawn from [-10, 10] degrees
SHIFT_FRACTION = 0.1  # seed: shift up to 10% of the side in each direction
HFLIP_P = 0.5  # seed: horizontal flip with probability 0.5
AFFINE_SCALE = (0.9, 1.1)  # zoom factor range of `affine`
AFFINE_SHEAR_DEGREES = 10.0  # x-shear range of `affine`, degrees
MEAN, STD = 0.5, 0.5  # seed: normalisation of train and test images


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"augmentations take a float batch (B, C, H, W) in [0, 1], got {x.dtype} "
            f"{tuple(x.shape)}"
        )


def _uniform(
    n: int, low: float, high: float, x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """n draws from U[low, high), float32 on x's device (parameters stay fp32 for accuracy)."""
    u = torch.rand(n, generator=generator, device=x.device, dtype=torch.float32)
    return low + (high - low) * u


def identity(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The unchanged batch (the plain view in test-time augmentation)."""
    _check_batch(x)
    return x


def equalize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Histogram equalization per image and channel, as PIL's `ImageOps.equalize` (the seed's)
    does on 8-bit images; deterministic, so `generator` is unused."""
    # torchvision is imported here, not with the module: its import pulls in torch._dynamo
    # (about a second of CPU), which a trial that never equalizes should not pay at start.
    from torchvision.transforms.v2.functional import equalize as tv_equalize

    _check_batch(x)
    as_uint8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return tv_equalize(as_uint8).to(x.dtype) / 255


def hflip(
    x: torch.Tensor, generator: torch.Generator | None = None, p: float = HFLIP_P
) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    _check_batch(x)
    flip = _uniform(len(x), 0.0, 1.0, x, generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _warp(x: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """Resample x under per-sample forward maps `forward` (B, 2, 3) given in pixel units about
    the image centre (x right, y down): output(p) = input(A^-1 (p - t))."""
    b, _, h, w = x.shape
    square = torch.zeros(b, 3, 3, device=x.device, dtype=torch.float32)
    square[:, :2] = forward
    square[:, 2, 2] = 1
    inverse = torch.linalg.inv(square)[:, :2]
    # affine_grid works in coordinates normalised to [-1, 1]; pixel = normalised * (side / 2).
    to_pixels = torch.tensor([w / 2, h / 2], device=x.device, dtype=torch.float32)
    theta = inverse.clone()
    theta[:, :, :2] = inverse[:, :, :2] * to_pixels.view(1, 1, 2) / to_pixels.view(1, 2, 1)
    theta[:, :, 2] = inverse[:, :, 2] / to_pixels.view(1, 2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0, 1)  # bilinear weights can overshoot 1 by a rounding error


def _matrices(
    angle_deg: torch.Tensor,
    shift_xy: torch.Tensor,
    scale: torch.Tensor | None = None,
    shear_deg: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward maps (B, 2, 3) = translate . rotate . shear . scale, pixel units."""
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    if shear_deg is not None:
        shear = torch.zeros_like(linear)
        shear[:, 0, 0] = 1
        shear[:, 1, 1] = 1
        shear[:, 0, 1] = torch.tan(torch.deg2rad(shear_deg))
        linear = linear @ shear
    if scale is not None:
        linear = linear * scale.view(-1, 1, 1)
    return torch.cat([linear, shift_xy.unsqueeze(-1)], dim=-1)


def rotate(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image about its centre by an angle drawn from [-10, 10] degrees."""
    _check_batch(x)
    angle = _uniform(len(x), -ROTATE_DEGREES, ROTATE_DEGREES, x, generator)
    return _warp(x, _matrices(angle, torch.zeros(len(x), 2, device=x.device)))


def _random_shift(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 2) shifts in pixels, each axis up to SHIFT_FRACTION of that side either way."""
    h, w = x.shape[-2:]
    dx = _uniform(len(x), -SHIFT_FRACTION, SHIFT_FRACTION, x, generator) * w
    dy = _uniform(len(x), -SHIFT_FRACTION, SHIFT_FRACTION, x, generator) * h
    return torch.stack([dx, dy], dim=-1)


def shift(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to 10% of its width and height in each direction."""
    _check_batch(x)
    angle = torch.zeros(len(x), device=x.device)
    return _warp(x, _matrices(angle, _random_shift(x, generator)))


def affine(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation (±10°), translation (≤10%), scale (0.9 to 1.1) and x-shear (±10°) per
    image, in one resampling (the seed's TTA 'random affine')."""
    _check_batch(x)
    n = len(x)
    angle = _uniform(n, -ROTATE_DEGREES, ROTATE_DEGREES, x, generator)
    offset = _random_shift(x, generator)
    scale = _uniform(n, *AFFINE_SCALE, x, generator)
    shear = _uniform(n, -AFFINE_SHEAR_DEGREES, AFFINE_SHEAR_DEGREES, x, generator)
    return _warp(x, _matrices(angle, offset, scale, shear))


OPS: dict[str, Op] = {
    "identity": identity,
    "equalize": equalize,
    "rotate": rotate,
    "hflip": hflip,
    "shift": shift,
    "affine": affine,
}

# Ops that depend on nothing but the image itself. In a set they are preprocessing: applied to
# every image the model ever sees (training, validation, test, TTA, analysis.predict) and
# recorded in the bundle, never drawn at random (that would validate on pixels never trained on).
DETERMINISTIC_OPS = frozenset({"identity", "equalize"})


@dataclass(frozen=True)
class AugmentSet:
    """A named training recipe: deterministic preprocessing, then random augmentations.

    `preprocess` runs on every image everywhere (see DETERMINISTIC_OPS). `random` runs on
    training batches only, in order; each entry is (op name, probability that an image gets that
    op), the op's own parameters (angle, shift, flip) being drawn per image as well.
    """

    preprocess: tuple[str, ...] = ()
    random: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        names = [*self.preprocess, *(name for name, _ in self.random)]
        unknown = [name for name in names if name not in OPS]
        if unknown:
            raise ValueError(
                f"unknown augmentation ops {unknown}; expected names from {sorted(OPS)}"
            )
        random_pre = [name for name in self.preprocess if name not in DETERMINISTIC_OPS]
        if random_pre:
            raise ValueError(
                f"preprocessing must be deterministic; {random_pre} draw random parameters "
                f"(deterministic ops: {sorted(DETERMINISTIC_OPS)})"
            )
        bad_p = [(name, p) for name, p in self.random if not 0.0 <= p <= 1.0]
        if bad_p:
            raise ValueError(f"augmentation probabilities must be in [0, 1], got {bad_p}")

    @property
    def ops(self) -> tuple[str, ...]:
        """Every op name of the set, preprocessing first (the order training applies them)."""
        return (*self.preprocess, *(name for name, _ in self.random))


# Equalization is preprocessing where a set names it. Measured on phantom:small at 64 px, 10
# epochs, 3 seeds (bench/RESULTS.md, "Train/eval parity: where equalize belongs"): equalizing
# training images only validated 19 points below; as preprocessing or as a random p = 0.5 op it
# is within noise of the set without it, and preprocessing keeps train and eval intensities equal.
AUGMENTATIONS: dict[str, AugmentSet] = {
    "none": AugmentSet(),
    # the seed's training set, section 2: equalization, rotation, flip, shift
    "seed": AugmentSet(("equalize",), (("rotate", 1.0), ("hflip", 1.0), ("shift", 1.0))),
    "equalize": AugmentSet(("equalize",)),
    "flip_rotate": AugmentSet((), (("hflip", 1.0), ("rotate", 1.0))),
    "geometric": AugmentSet((), (("rotate", 1.0), ("shift", 1.0), ("hflip", 1.0))),
    "affine": AugmentSet((), (("affine", 1.0), ("hflip", 1.0))),
}
if set(AUGMENTATIONS) != set(vocab.AUGMENTATIONS):  # the names config.py checks against
    raise RuntimeError("trainables.augment.AUGMENTATIONS and trainables.vocab disagree")


def register_set(name: str, aug: AugmentSet, description: str = "") -> None:
    """Add a named set for this process (benchmarks): both the recipe and the name config checks."""
    AUGMENTATIONS[name] = aug
    vocab.AUGMENTATIONS[name] = description or name


def get_set(augment: str) -> AugmentSet:
    """The named augmentation set."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[augment]


def ops_for(augment: str) -> tuple[str, ...]:
    """The op names of a named augmentation set, preprocessing first."""
    return get_set(augment).ops


def preprocessing_ops(augment: str) -> tuple[str, ...]:
    """The deterministic ops every image of a model trained with `augment` goes through."""
    return get_set(augment).preprocess


def apply_ops(
    x: torch.Tensor, ops: Sequence[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply the named ops in order; float [0, 1] in and out. A string is taken as the name of an
    augmentation set (a key of AUGMENTATIONS), not as a sequence of letters."""
    names = ops_for(ops) if isinstance(ops, str) else tuple(ops)
    unknown = [name for name in names if name not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation ops {unknown}; expected names from {sorted(OPS)}")
    _check_batch(x)
    for name in names:
        x = OPS[name](x, generator)
    return x


def _per_image(
    x: torch.Tensor, out: torch.Tensor, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """`out` for a random share p of the images (drawn per image), `x` for the rest."""
    if p >= 1.0:
        return out  # no draw: the generator stream is the same as an unconditional op
    keep = _uniform(len(x), 0.0, 1.0, x, generator) < p
    return torch.where(keep.view(-1, 1, 1, 1), out, x)


def augment_batch(
    x: torch.Tensor,
    augment: str,
    generator: torch.Generator | None = None,
    p_augment: float = 1.0,
) -> torch.Tensor:
    """A training batch (float [0, 1]) under set `augment`: its preprocessing on every image,
    then with probability `p_augment` per image its random chain (each op with its own
    probability). p_augment = 0 gives exactly the evaluation pixels."""
    if not 0.0 <= p_augment <= 1.0:
        raise ValueError(f"p_augment must be in [0, 1], got {p_augment!r}")
    spec = get_set(augment)
    x = apply_ops(x, spec.preprocess)
    if p_augment == 0.0 or not spec.random:
        return x
    out = x
    for name, p in spec.random:
        out = _per_image(out, OPS[name](out, generator), p, generator)
    return _per_image(x, out, p_augment, generator)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) to float32 in [0, 1]."""
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float expects a uint8 tensor, got {x.dtype}")
    return x.float() / 255


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] to [-1, 1] (mean 0.5, std 0.5, as the seed did for train and test)."""
    return (x - MEAN) / STD


def prepare_batch(
    x: torch.Tensor, ops: Sequence[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 batch (B, 1, H, W) to the network's input: to_float, apply_ops, normalize."""
    return normalize(apply_ops(to_float(x), ops, generator))


def prepare_train_batch(
    x: torch.Tensor,
    augment: str,
    generator: torch.Generator | None = None,
    p_augment: float = 1.0,
) -> torch.Tensor:
    """uint8 training batch to the network's input: to_float, augment_batch, normalize."""
    return normalize(augment_batch(to_float(x), augment, generator, p_augment))
