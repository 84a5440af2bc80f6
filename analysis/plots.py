"""The report's figures (PNG, matplotlib Agg): confusion matrices, training curves, t-SNE of the
penultimate features, the ASHA view of the sweep, and fANOVA parameter importance."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402
from torch import nn  # noqa: E402

from analysis.load import Experiment, TrialRecord  # noqa: E402
from trainables.augment import normalize, to_float  # noqa: E402
from trainables.cache import atomic_write_bytes  # noqa: E402
from trainables.experiment import (  # noqa: E402
    COMPLETED,
    ERRORED,
    STOPPED,
    asha_milestones,
    journal_path,
)
from trainables.models import feature_layer  # noqa: E402

DPI = 110
TSNE_POINTS = 400  # images per split embedded by t-SNE (a seeded subsample above this)
TSNE_ITERATIONS = 500  # gradient steps; the layout of a few hundred points settles well before
_STATUS_COLORS = {COMPLETED: "tab:green", STOPPED: "tab:orange", ERRORED: "tab:red"}


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write the figure as PNG atomically (a reader never sees half a file) and close it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def confusion_figure(
    labels: np.ndarray, predictions: dict[str, np.ndarray], classes: Sequence[str], path: Path
) -> Path:
    """Side-by-side test confusion matrices, one per named prediction set (seed Figure 11)."""
    fig, axes = plt.subplots(1, len(predictions), figsize=(4.2 * len(predictions), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (title, preds) in zip(axes, predictions.items(), strict=True):
        ConfusionMatrixDisplay.from_predictions(
            labels,
            preds,
            labels=list(range(len(classes))),
            display_labels=list(classes),
            ax=ax,
            colorbar=False,
            cmap="Blues",
        )
        ax.set(title=f"test split, {title}", xlabel="predicted class", ylabel="true class")
    return _save(fig, path)


def curves_figure(
    trials: Sequence[TrialRecord], path: Path, metric: str | None = None, mode: str = "max"
) -> Path:
    """Loss and accuracy per epoch of the given trials, train solid and validation dashed
    (seed Figures 3, 9 and 12), and the metric the sweep ranks by with each trial's best epoch
    starred."""
    panels = 3 if metric else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.9))
    loss_ax, acc_ax = axes[0], axes[1]
    for i, trial in enumerate(trials):
        h, color = trial.history, f"C{i % 10}"
        label = f"{trial.trial_id} ({trial.params.get('model')}, {trial.params.get('balance')})"
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            if f"train_{key}" in h:
                ax.plot(h["epoch"], h[f"train_{key}"], color=color, marker=".", label=label)
            if f"val_{key}" in h:
                ax.plot(h["epoch"], h[f"val_{key}"], color=color, marker=".", linestyle="--")
        if metric and metric in h and len(h):
            axes[2].plot(h["epoch"], h[metric], color=color, marker=".")
            best = h[metric].idxmin() if mode == "min" else h[metric].idxmax()
            axes[2].scatter(h.loc[best, "epoch"], h.loc[best, metric], color=color, marker="*",
                            s=120, zorder=3)  # fmt: skip
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss (train —, validation --)")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy (train —, validation --)")
    if metric:
        axes[2].set(xlabel="epoch", ylabel=metric,
                    title=f"{metric}, the sweep's metric ({mode}; ★ best epoch)")  # fmt: skip
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=7, title="trial (model, balance)", title_fontsize=7)
    return _save(fig, path)


@torch.no_grad()
def penultimate_features(
    model: nn.Module, images_uint8: torch.Tensor, device: str | torch.device, batch_size: int = 128
) -> np.ndarray:
    """The input of the model's last Linear layer (`trainables.models.feature_layer`), (N, F)."""
    device = torch.device(device)
    captured: list[torch.Tensor] = []
    hook = feature_layer(model).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach().float().flatten(1).cpu())
    )
    was_training = model.training
    model.eval().to(device)
    try:
        for start in range(0, len(images_uint8), batch_size):
            x = images_uint8[start : start + batch_size].to(device)
            model(normalize(to_float(x)))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).numpy() if captured else np.empty((0, 0))


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def tsne_figure(
    model: nn.Module,
    splits: dict[str, tuple[torch.Tensor, np.ndarray]],
    classes: Sequence[str],
    device: str | torch.device,
    path: Path,
    seed: int = 0,
) -> Path:
    """2-D t-SNE of penultimate features, one panel per split (seed Figures 4 and 5)."""
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.4))
    axes = np.atleast_1d(axes)
    for ax, (name, (images, labels)) in zip(axes, splits.items(), strict=True):
        keep = _subsample(len(images), TSNE_POINTS, seed)
        features = penultimate_features(model, images[keep], device)
        labels = np.asarray(labels)[keep]
        # Perplexity must stay below the number of points; 30 is scikit-learn's default.
        perplexity = float(min(30, max(2, (len(keep) - 1) // 3)))
        tsne = TSNE(
            2, perplexity=perplexity, init="pca", max_iter=TSNE_ITERATIONS, random_state=seed
        )
        xy = tsne.fit_transform(features)
        for c, cls in enumerate(classes):
            mask = labels == c
            ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7, label=cls)
        ax.set_title(f"t-SNE of penultimate features: {name} ({len(keep)} images)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, markerscale=2)
    return _save(fig, path)


def rungs(exp: Experiment) -> list[int]:
    """ASHA's rungs in epochs for the experiment's record (`trainables.experiment`'s rule)."""
    record = exp.record
    top = exp.max_epochs or max((t.epochs for t in exp.trials), default=1)
    if record is None or not record.reduction_factor or (record.grace_period or 1) > top:
        return []
    return list(asha_milestones(int(record.grace_period or 1), int(record.reduction_factor), top))


def asha_figure(exp: Experiment, path: Path) -> Path:
    """Each trial's metric per epoch with its end marked by status: where ASHA stopped whom."""
    fig, (curve_ax, bar_ax) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=[3, 2])
    for trial in exp.trials:
        h = trial.history
        if exp.metric not in h or not len(h):
            continue
        color = _STATUS_COLORS.get(trial.status, "tab:gray")
        curve_ax.plot(h["epoch"], h[exp.metric], color=color, alpha=0.6, linewidth=1)
        curve_ax.scatter(h["epoch"].iloc[-1], h[exp.metric].iloc[-1], color=color, s=18, zorder=3)
    for r in rungs(exp):
        curve_ax.axvline(r, color="black", linestyle=":", linewidth=1)
    values = pd.concat([t.history[exp.metric] for t in exp.trials if exp.metric in t.history])
    if len(values) and values.min() > 0 and values.max() / values.min() > 10:
        curve_ax.set_yscale("log")  # one diverged trial's loss would flatten all the others
    curve_ax.set(
        xlabel="epoch",
        ylabel=exp.metric,
        title=f"validation {exp.metric} per epoch, one line per trial (dotted: ASHA rungs)",
    )
    curve_ax.xaxis.get_major_locator().set_params(integer=True)
    present = pd.Series([t.status for t in exp.trials]).value_counts()
    handles = [
        plt.Line2D([], [], color=c, marker="o", label=f"{s} ({present[s]})")
        for s, c in _STATUS_COLORS.items()
        if s in present  # only the statuses this sweep has
    ]
    curve_ax.legend(handles=handles, fontsize=8, title="trial ended: status (trials)")
    epochs = pd.Series([t.epochs for t in exp.trials])
    counts = epochs.value_counts().sort_index()
    bar_ax.bar(counts.index.astype(str), counts.values, color="tab:blue")
    bar_ax.set(xlabel="epochs trained", ylabel="number of trials", title="epochs each trial ran")
    return _save(fig, path)


def importance_table(exp: Experiment, seed: int = 0) -> pd.DataFrame:
    """fANOVA importance of each searched parameter, from the sweep's own Optuna journal.

    The study `NAME/optuna_journal.log` holds every trial with the distributions the space
    suggested (no guessing of ranges or log scales). With at least 2 COMPLETE trials it is
    Optuna's own `get_param_importances` on the study, the figure optuna-dashboard shows; with
    fewer, trials ASHA pruned count too, with the value Optuna keeps for them (their last
    intermediate value). `table.attrs["trials"]` says which. Raises ValueError when there is
    too little to fit or no journal.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    study = _journal_study(exp)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    used, which = complete, f"the study's {len(complete)} complete trials, as optuna-dashboard"
    if len(complete) < 2:
        used = [t for t in (*complete, *pruned) if t.value is not None]
        which = (
            f"{len(complete)} complete and {len(used) - len(complete)} pruned trials (pruned ones"
            " with their last value; optuna-dashboard uses complete trials only)"
        )
        if len(used) < 2:
            raise ValueError(f"parameter importance needs 2 scored trials, got {len(used)}")
        study = _as_complete(study.direction, used)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except RuntimeError as err:  # Optuna: no parameter varies, or none is shared by all trials
        raise ValueError(f"parameter importance cannot be fitted: {err}") from err
    table = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
    table.attrs["trials"] = which
    return table


def _journal_study(exp: Experiment):
    """The experiment's Optuna study, read from its journal (Optuna's public storage API)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = journal_path(exp.path)
    if not path.is_file():
        raise ValueError(f"no Optuna journal at {path}")
    storage = JournalStorage(JournalFileBackend(str(path)))
    names = optuna.get_all_study_names(storage)
    name = exp.name if exp.name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ValueError(f"{path} holds no study named {exp.name!r} (it holds {names})")
    return optuna.load_study(study_name=name, storage=storage)


def _as_complete(direction, trials) -> Any:
    """An in-memory study holding `trials` as complete ones, with their own distributions."""
    import optuna

    study = optuna.create_study(direction=direction)
    for t in trials:
        study.add_trial(
            optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value)
        )
    return study


def importance_figure(table: pd.DataFrame, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(table)))
    ordered = table.iloc[::-1]
    ax.barh(ordered["parameter"], ordered["importance"], color="tab:purple")
    ax.set(
        xlabel=f"fANOVA importance for {metric} (share of variance, sums to 1)",
        xlim=(0, 1),
        title=f"Which searched parameters explain {metric}",
    )
    return _save(fig, path)
