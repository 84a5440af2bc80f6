"""Augmentations: shape, dtype and range kept, seeded, batched, composable."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from trainables import augment
from trainables.augment import (
    AUGMENTATIONS,
    DETERMINISTIC_OPS,
    OPS,
    AugmentSet,
    apply_ops,
    augment_batch,
    normalize,
    prepare_batch,
    prepare_train_batch,
    to_float,
)
from trainables.config import TrialConfig
from trainables.data import load_for_config
from trainables.models import build_model
from trainables.train import evaluate, predict_proba


def _batch(seed: int = 0, n: int = 6, size: int = 32) -> torch.Tensor:
    """A float batch in [0, 1] with structure (a bright off-centre square on noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.3
    x[:, :, 4:12, 6:20] = 0.9
    return x


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_keeps_shape_dtype_and_range(name):
    x = _batch()
    y = OPS[name](x, _gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype  # a drop-in batch transform
    assert y.min() >= 0 and y.max() <= 1  # stays in [0, 1] for normalize()


RANDOM_SETS = sorted(n for n in AUGMENTATIONS if augment.get_set(n).random)
FIXED_SETS = sorted(n for n in AUGMENTATIONS if not augment.get_set(n).random)


@pytest.mark.parametrize("name", RANDOM_SETS)
def test_each_random_set_repeats_under_a_seed_and_differs_under_another(name):
    x = _batch(n=16)
    first = augment_batch(x, name, _gen(3))
    again = augment_batch(x, name, _gen(3))
    assert torch.equal(first, again)  # reproducible trials and TTA views
    assert not torch.equal(first, augment_batch(x, name, _gen(4)))  # the seed is what repeats


@pytest.mark.parametrize("name", FIXED_SETS)
def test_each_fixed_set_ignores_the_generator_and_equals_its_preprocessing(name):
    x = _batch()
    out = augment_batch(x, name, _gen(3))
    assert torch.equal(out, augment_batch(x, name, _gen(4)))  # nothing random is drawn
    if name == "none":
        assert torch.equal(out, x)  # no augmentation is the identity
    else:
        assert not torch.equal(out, x)  # its preprocessing does change the pixels


@pytest.mark.parametrize("name", ["rotate", "hflip", "shift", "affine"])
def test_random_ops_differ_under_another_seed_and_per_sample(name):
    x = _batch(n=16)
    a, b = OPS[name](x, _gen(1)), OPS[name](x, _gen(2))
    assert not torch.equal(a, b)  # the generator drives the randomness
    same = _batch(n=1).expand(16, -1, -1, -1).contiguous()
    out = OPS[name](same, _gen(1))
    assert not all(torch.equal(out[0], out[i]) for i in range(1, 16))  # per-sample parameters


def test_hflip_with_p_one_is_torch_flip_and_p_zero_is_identity():
    x = _batch()
    assert torch.equal(augment.hflip(x, _gen(0), p=1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(augment.hflip(x, _gen(0), p=0.0), x)


def test_hflip_flips_about_half_the_batch():
    x = _batch(n=400, size=8)
    flipped = (augment.hflip(x, _gen(0)) != x).flatten(1).any(dim=1).float().mean()
    assert 0.4 < flipped < 0.6  # p = 0.5 as in the seed


def test_rotate_stays_within_ten_degrees():
    # a horizontal bar through the centre: its tilt after rotation measures the angle
    x = torch.zeros(64, 1, 65, 65)
    x[:, :, 32, 2:63] = 1
    y = augment.rotate(x, _gen(0))
    rows = torch.arange(65.0).view(1, 65, 1)
    cols = torch.arange(65.0).view(1, 1, 65)
    w = y[:, 0]
    mass = w.sum((1, 2))
    cy = (w * rows).sum((1, 2)) / mass
    cx = (w * cols).sum((1, 2)) / mass
    cov = (w * (rows - cy.view(-1, 1, 1)) * (cols - cx.view(-1, 1, 1))).sum((1, 2))
    var = (w * (cols - cx.view(-1, 1, 1)) ** 2).sum((1, 2))
    angles = torch.rad2deg(torch.atan(cov / var))
    assert angles.abs().max() <= 10.5  # ±10 degrees (plus interpolation error)
    assert angles.abs().max() > 5  # and it really rotates


def test_shift_moves_content_up_to_ten_percent():
    x = torch.zeros(64, 1, 100, 100)
    x[:, :, 50, 50] = 1
    y = augment.shift(x, _gen(0))
    rows = torch.arange(100.0).view(1, 100, 1)
    cols = torch.arange(100.0).view(1, 1, 100)
    mass = y[:, 0].sum((1, 2))
    dy = (y[:, 0] * rows).sum((1, 2)) / mass - 50
    dx = (y[:, 0] * cols).sum((1, 2)) / mass - 50
    assert dx.abs().max() <= 10 and dy.abs().max() <= 10  # pixels: 10% of 100
    assert dx.abs().max() > 5 and dy.abs().max() > 5  # both axes move


def test_equalize_matches_pil_per_image():
    # the seed used PIL's ImageOps.equalize; each image uses its own histogram
    g = _gen(0)
    narrow = torch.rand(1, 1, 32, 32, generator=g) * 0.1 + 0.4  # low contrast
    wide = torch.rand(1, 1, 32, 32, generator=g)
    x = (torch.cat([narrow, wide]) * 255).round() / 255  # exact 8-bit levels
    y = augment.equalize(x, None)
    for image, out in zip(x, y, strict=True):
        pil = Image.fromarray(
            (image[0] * 255).round().byte().numpy(),
        )
        expected = torch.from_numpy(np.array(ImageOps.equalize(pil))).float() / 255
        assert torch.allclose(out[0], expected)
    assert y[0].max() - y[0].min() > 0.9  # the narrow histogram is spread out


def test_prepare_batch_maps_uint8_to_normalised_float():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    y = prepare_batch(x, (), None)
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([-1.0, 1.0, -0.6]).view(1, 1, 1, 3))  # mean 0.5 std 0.5
    assert torch.equal(normalize(to_float(x)), y)


def test_seed_set_is_the_seed_papers_training_augmentations():
    assert AUGMENTATIONS["seed"].ops == ("equalize", "rotate", "hflip", "shift")
    # Equalization is the seed set's preprocessing (train and evaluation), the rest is random.
    assert AUGMENTATIONS["seed"].preprocess == ("equalize",)
    assert AUGMENTATIONS["none"] == AugmentSet()


def test_apply_ops_accepts_a_set_name():
    x = _batch()
    ops = AUGMENTATIONS["seed"].ops
    assert torch.equal(apply_ops(x, "seed", _gen(4)), apply_ops(x, ops, _gen(4)))


def test_unknown_op_or_set_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown augmentation ops \['blur'\].*hflip"):
        apply_ops(_batch(), ["rotate", "blur"], _gen(0))
    with pytest.raises(ValueError, match=r"unknown augment 'heavy'.*flip_rotate"):
        apply_ops(_batch(), "heavy", _gen(0))


def test_wrong_input_types_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="float batch"):
        apply_ops(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), ["rotate"], _gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ops_run_on_the_gpu_with_a_gpu_generator():
    x = _batch().cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    y = apply_ops(x, AUGMENTATIONS["seed"].ops + ("affine",), g)
    assert y.device == x.device and y.shape == x.shape  # no hidden CPU round trip
    g2 = torch.Generator(device="cuda").manual_seed(0)
    assert torch.equal(y, apply_ops(x, AUGMENTATIONS["seed"].ops + ("affine",), g2))
    z = augment_batch(x, "seed", torch.Generator(device="cuda").manual_seed(0), p_augment=0.5)
    assert z.device == x.device and z.shape == x.shape


# --- train/eval parity: what evaluation feeds the model is what training fed it ---------------


@pytest.fixture(scope="module")
def phantom64():
    return load_for_config(TrialConfig(image_size=64, data="phantom:small"))


def _eval_inputs(cfg: TrialConfig, images: torch.Tensor, split) -> list[torch.Tensor]:
    """The batches the model is fed by train.evaluate (validation) and predict_proba (TTA's and
    analysis.predict's path), captured at the model's input."""
    model = build_model(cfg, 3)
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        evaluate(model, split, "cpu", cfg=cfg, classes=["NORMAL", "BACTERIA", "VIRAL"])
        validation = torch.cat(seen)
        seen.clear()
        predict_proba(model, images, "cpu", cfg=cfg)
        return [validation, torch.cat(seen)]
    finally:
        handle.remove()


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_training_inputs_without_augmentation_are_the_evaluation_inputs(name, phantom64):
    cfg = TrialConfig(image_size=64, augment=name, data="phantom:small")
    v = phantom64.val
    split = replace(
        v,
        images=v.images[:24],
        labels=v.labels[:24],
        path_list=v.paths[:24],
        patient_list=v.patients[:24],
    )
    train_inputs = prepare_train_batch(split.images, name, _gen(0), p_augment=0.0)
    # Bit for bit: validation and prediction apply the set's preprocessing, and nothing else.
    for inputs in _eval_inputs(cfg, split.images, split):
        assert torch.equal(inputs, train_inputs)


def _centre_quantiles(x: torch.Tensor) -> torch.Tensor:
    """Pixel-value quantiles 10/50/90 % of the central half of each image (away from the zero
    padding a rotation or shift brings in), in the network's normalized units."""
    h, w = x.shape[-2:]
    centre = x[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].flatten()
    return torch.quantile(centre[::3], torch.tensor([0.1, 0.5, 0.9]))


# Normalized units ([-1, 1]); the geometric sets move these quantiles by at most 0.03 on the
# phantom, equalizing training images only moved them by 0.5 (the bug this guards against).
INTENSITY_TOLERANCE = 0.05


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmented_training_batches_keep_the_evaluation_intensities(name, phantom64):
    images = phantom64.train.images
    trained = prepare_train_batch(images, name, _gen(1))
    evaluated = prepare_batch(images, AUGMENTATIONS[name].preprocess)
    # Random augmentations move pixels about; none may change what intensities mean.
    gap = (_centre_quantiles(trained) - _centre_quantiles(evaluated)).abs().max()
    assert gap < INTENSITY_TOLERANCE, (name, float(gap))


def test_equalizing_training_images_only_fails_the_intensity_check(phantom64):
    # The pre-fix treatment of `seed`: equalize on every training image, never at evaluation.
    images = phantom64.train.images
    old = AugmentSet((), (("equalize", 1.0), ("rotate", 1.0), ("hflip", 1.0), ("shift", 1.0)))
    trained = normalize(apply_ops(to_float(images), old.ops, _gen(1)))
    gap = (_centre_quantiles(trained) - _centre_quantiles(prepare_batch(images, ()))).abs().max()
    assert gap > 5 * INTENSITY_TOLERANCE  # so the check above can fail


def test_every_named_set_keeps_deterministic_ops_out_of_its_random_chain():
    for name, spec in AUGMENTATIONS.items():
        # A deterministic op drawn only at training time is the train/eval gap itself.
        assert not {op for op, _ in spec.random} & DETERMINISTIC_OPS, name
        assert set(spec.preprocess) <= DETERMINISTIC_OPS, name


def test_sets_refuse_random_preprocessing_and_bad_probabilities():
    with pytest.raises(ValueError, match=r"deterministic; \['rotate'\]"):
        AugmentSet(("rotate",))
    with pytest.raises(ValueError, match=r"probabilities must be in \[0, 1\]"):
        AugmentSet((), (("hflip", 1.5),))
    with pytest.raises(ValueError, match="p_augment"):
        augment_batch(_batch(), "seed", _gen(0), p_augment=2.0)


def test_p_augment_is_the_share_of_images_augmented():
    x = _batch(n=400, size=16)
    out = augment_batch(x, "flip_rotate", _gen(0), p_augment=0.25)
    changed = (out != x).flatten(1).any(dim=1).float().mean()
    # rotate changes every image it touches, so about a quarter of the batch differs.
    assert 0.18 < changed < 0.32, float(changed)
