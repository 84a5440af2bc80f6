"""Test-time augmentation (seed section 4): several views of each test image, one merged answer.

A policy is the plain image (always included) plus named views, each a chain of ops from
`trainables.augment.OPS` (the ops training uses), drawn `draws` times with a seeded generator,
and a merge rule over the softmax outputs. The seed's TTA1 and TTA2 average three predictions:
the plain image and one draw of each of two views.

Beyond the seed, `select_policy_on_validation` picks a policy (and how many views and draws) on
the validation split, so the test split is used once, for the chosen policy; `flip_counts` says
per class how many test predictions TTA turned from right to wrong and from wrong to right.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables.augment import OPS
from trainables.config import TrialConfig
from trainables.data import Dataset
from trainables.device import EVAL_BATCH
from trainables.train import predict_proba

MERGES = ("mean", "geometric", "vote")

# Exact ops applied to the uint8 images before the network's preprocessing. `mirror` flips every
# image (unlike OPS['hflip'], which flips each with p = 0.5), so a policy built from it is
# deterministic and can be checked by hand.
EXACT_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mirror": lambda images: images.flip(-1),
}


def op_names() -> list[str]:
    return sorted({*OPS, *EXACT_OPS})


@dataclass(frozen=True)
class TTAPolicy:
    name: str
    views: tuple[tuple[str, ...], ...]
    """Augmented views besides the plain image; each is a chain of op names applied in order
    (exact ops such as `mirror` first, then `trainables.augment.OPS`). `()` is the plain image."""
    draws: int = 1
    """Random draws of each view per image."""
    seed: int = 0
    """Seed of the augmentation generator (on the evaluation device)."""
    merge: str = "mean"
    """'mean' of softmax (the seed's), 'geometric' mean of softmax, or majority 'vote'."""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(tuple(v) for v in self.views))
        if self.merge not in MERGES:
            raise ValueError(f"unknown TTA merge {self.merge!r}; expected one of {list(MERGES)}")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f"TTA draws must be a positive integer, got {self.draws!r}")
        for view in self.views:
            unknown = [op for op in view if op not in OPS and op not in EXACT_OPS]
            if unknown:
                raise ValueError(
                    f"TTA policy {self.name!r}: unknown ops {unknown}; expected names from "
                    f"{op_names()}"
                )

    @property
    def cost(self) -> int:
        """Forward passes per image: the plain image plus every draw of every view."""
        return 1 + len(self.views) * self.draws

    def describe(self) -> str:
        if not self.views:
            return "plain image only"
        views = "; ".join(" + ".join(v) if v else "plain" for v in self.views)
        draws = f", {self.draws} draws each" if self.draws > 1 else ""
        merge = "" if self.merge == "mean" else f", {self.merge}"  # mean is the seed's rule
        return f"plain + [{views}]{draws}{merge}"


TTA_POLICIES: dict[str, TTAPolicy] = {}


def register_policy(policy: TTAPolicy) -> TTAPolicy:
    if policy.name in TTA_POLICIES:
        raise ValueError(f"TTA policy {policy.name!r} is registered twice")
    TTA_POLICIES[policy.name] = policy
    return policy


register_policy(TTAPolicy("none", (), description="no TTA: the plain image only"))
register_policy(
    TTAPolicy(
        "tta1",
        (("rotate", "affine"), ("equalize", "hflip")),
        description="seed TTA 1: rotation + random affine; equalization + horizontal flip",
    )
)
register_policy(
    TTAPolicy(
        "tta2",
        (("rotate", "hflip"), ("equalize", "rotate")),
        description="seed TTA 2: rotation + horizontal flip; histogram equalization + rotation",
    )
)
register_policy(
    TTAPolicy("mirror", (("mirror",),), description="plain and mirrored image (deterministic)")
)

SEED_POLICIES = ("tta1", "tta2")  # the policies the seed's Table 4 compares


def get_policy(name: str) -> TTAPolicy:
    """A registered policy, or a variant `NAME:vKxD` (its first K views, D draws each) as
    `candidate_policies` names them and the report prints."""
    if name in TTA_POLICIES:
        return TTA_POLICIES[name]
    base, _, suffix = name.partition(":")
    match = re.fullmatch(r"v(\d+)x(\d+)", suffix)
    if base in TTA_POLICIES and match:
        k, d = int(match[1]), int(match[2])
        views = len(TTA_POLICIES[base].views)
        if 1 <= k <= views and d >= 1:
            return variant(TTA_POLICIES[base], k, d)
        raise ValueError(
            f"TTA policy {name!r}: {base!r} has {views} views, so K in {base}:vKxD must be 1 to "
            f"{views} and D (draws) at least 1"
        )
    raise ValueError(
        f"unknown TTA policy {name!r}; expected one of {sorted(TTA_POLICIES)}, or NAME:vKxD "
        "(the first K views of NAME, D draws each, e.g. tta1:v1x3)"
    )


def variant(base: TTAPolicy, k: int, draws: int) -> TTAPolicy:
    """`base` with its first `k` views drawn `draws` times; named `NAME:vKxD` unless it is
    `base` itself (all views, one draw)."""
    name = base.name if (k, draws) == (len(base.views), 1) else f"{base.name}:v{k}x{draws}"
    return replace(base, name=name, views=base.views[:k], draws=draws)


@dataclass
class TTAResult:
    policy: TTAPolicy
    probs: np.ndarray
    """Merged class probabilities (N, C), float64 (vote: the share of views per class)."""
    preds: np.ndarray
    """Predicted class per image (N,), int64."""
    seconds: float
    """Wall time of all forward passes, seconds."""

    @property
    def cost(self) -> int:
        return self.policy.cost


def _view_probs(
    model: nn.Module,
    images: torch.Tensor,
    view: tuple[str, ...],
    generator: torch.Generator,
    device: torch.device,
    batch_size: int,
    cfg: TrialConfig | None,
    preprocess: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    exact = [op for op in view if op in EXACT_OPS]
    random_ops = tuple(op for op in view if op not in EXACT_OPS)
    for op in exact:
        images = EXACT_OPS[op](images)
    return predict_proba(
        model,
        images,
        device,
        batch_size,
        ops=random_ops,
        generator=generator,
        cfg=cfg,
        preprocess=preprocess,
        temperature=temperature,
    ).double()


def merge_probs(stack: torch.Tensor, merge: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge (V, N, C) float64 softmax outputs of V views into (probs (N, C), preds (N,))."""
    if merge == "mean":
        # float64 sums of identical float32 views divide back to the same value exactly, so a
        # policy of plain views only reproduces no TTA bit for bit.
        probs = stack.mean(dim=0)
        return probs.numpy(), probs.argmax(dim=1).numpy()
    if merge == "geometric":
        log_mean = torch.log(stack.clamp_min(1e-12)).mean(dim=0)
        probs = torch.softmax(log_mean, dim=1)  # renormalised geometric mean
        return probs.numpy(), probs.argmax(dim=1).numpy()
    if merge == "vote":
        votes = torch.nn.functional.one_hot(stack.argmax(dim=2), stack.shape[2]).double()
        share = votes.mean(dim=0)
        # Ties between classes with equal votes go to the higher mean probability: the mean is
        # below one vote's share (1 / V), so it never overturns a real majority.
        tie_break = stack.mean(dim=0) / (stack.shape[0] + 1)
        return share.numpy(), (share + tie_break).argmax(dim=1).numpy()
    raise ValueError(f"unknown TTA merge {merge!r}; expected one of {list(MERGES)}")


def evaluate_tta(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor | np.ndarray | None,
    policy: TTAPolicy | str,
    device: str | torch.device,
    batch_size: int = EVAL_BATCH,
    cfg: TrialConfig | None = None,
    preprocess: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> TTAResult:
    """Merged predictions of `policy` for uint8 images (N, 1, S, S), batched on `device`.

    `labels` are not needed to predict; when given they are only checked for length (the
    caller scores the result). `cfg` sets the numerics (bf16 autocast on CUDA for amp='auto')
    and the deterministic preprocessing of its augment set, applied before every view, so pass
    the trial's config to match how it was trained and validated; `preprocess` (a bundle's
    recorded ops) overrides the latter.
    Each view's softmax is taken of logits / `temperature` (a bundle's calibration; 1.0
    leaves them as trained).
    """
    policy = get_policy(policy) if isinstance(policy, str) else policy
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(
            f"TTA takes uint8 images (N, 1, S, S), got {images_uint8.dtype} "
            f"{tuple(images_uint8.shape)}"
        )
    if labels is not None and len(labels) != len(images_uint8):
        raise ValueError(f"{len(labels)} labels for {len(images_uint8)} images")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(policy.seed)
    start = time.perf_counter()
    args = (generator, device, batch_size, cfg, preprocess, temperature)
    outputs = [_view_probs(model, images_uint8, (), *args)]
    for view in policy.views:
        for _ in range(policy.draws):
            outputs.append(_view_probs(model, images_uint8, view, *args))
    seconds = time.perf_counter() - start
    probs, preds = merge_probs(torch.stack(outputs), policy.merge)
    return TTAResult(policy, probs, preds.astype(np.int64), seconds)


def candidate_policies(
    names: Sequence[str] = ("tta1", "tta2", "mirror"), draws: Sequence[int] = (1, 3)
) -> list[TTAPolicy]:
    """No TTA plus every named policy with its first k views (k = 1..all) and each draw count."""
    out = [get_policy("none")]
    for name in names:
        base = get_policy(name)
        deterministic = all(
            op in EXACT_OPS or op in ("identity", "equalize") for v in base.views for op in v
        )
        for k in range(1, len(base.views) + 1):
            # Repeating a deterministic view adds cost and nothing else.
            for d in (1,) if deterministic else draws:
                out.append(variant(base, k, d))
    return out


def select_policy(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    candidates: Sequence[TTAPolicy],
    device: str | torch.device,
    batch_size: int = EVAL_BATCH,
    cfg: TrialConfig | None = None,
) -> tuple[TTAPolicy, pd.DataFrame]:
    """Choose the candidate with the best validation accuracy (ties: the cheaper one).

    Returns the policy and one row per candidate: policy, views, draws, cost, val_acc, seconds.
    """
    if not candidates:
        raise ValueError("select_policy needs at least one candidate policy")
    y = np.asarray(labels)
    rows = []
    for policy in candidates:
        result = evaluate_tta(model, images_uint8, y, policy, device, batch_size, cfg)
        rows.append(
            {
                "policy": policy.name,
                "views": policy.describe(),
                "draws": policy.draws,
                "cost": policy.cost,
                "val_acc": float(np.mean(result.preds == y)),
                "seconds": result.seconds,
            }
        )
    table = pd.DataFrame(rows)
    best = table.sort_values(["val_acc", "cost"], ascending=[False, True], kind="stable").index[0]
    return candidates[int(best)], table


def select_policy_on_validation(
    model: nn.Module,
    data: Dataset,
    device: str | torch.device,
    batch_size: int = EVAL_BATCH,
    cfg: TrialConfig | None = None,
    candidates: Sequence[TTAPolicy] | None = None,
) -> tuple[TTAPolicy, pd.DataFrame]:
    """The report's TTA choice: `select_policy` over `candidates` (default `candidate_policies()`)
    on `data.val` only. It takes the whole dataset, so no caller can hand it the test split by
    mistake; the test split is then scored once per policy, never to choose one."""
    chosen = list(candidate_policies() if candidates is None else candidates)
    val = data.val
    return select_policy(model, val.images, val.labels.numpy(), chosen, device, batch_size, cfg)


def flip_counts(
    labels: np.ndarray, base_preds: np.ndarray, tta_preds: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """Per true class: test predictions TTA turned right -> wrong and wrong -> right."""
    labels, base_preds, tta_preds = (np.asarray(a) for a in (labels, base_preds, tta_preds))
    base_ok, tta_ok = base_preds == labels, tta_preds == labels
    rows = []
    for c, name in enumerate(classes):
        in_class = labels == c
        rows.append(
            {
                "class": name,
                "images": int(in_class.sum()),
                "right_to_wrong": int(np.sum(in_class & base_ok & ~tta_ok)),
                "wrong_to_right": int(np.sum(in_class & ~base_ok & tta_ok)),
            }
        )
    table = pd.DataFrame(rows)
    table["net"] = table["wrong_to_right"] - table["right_to_wrong"]
    return table
