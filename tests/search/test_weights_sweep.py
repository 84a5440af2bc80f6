"""One real sweep over every kind of model source: a torchvision backbone whose ImageNet file
the driver downloads once (from a local HTTP server) for two trials, a user's own model from a
plugin file, and a timm model (when the extra is installed); each exports and predicts. Then the
same command offline is refused in one line before Ray starts.

Those trials are the space's POINTS_TO_EVALUATE, and the sampler draws two more: the points are
the first trials Ray creates, exactly and in order, though the space is define-by-run
(ray#35319: some Ray versions ignored `points_to_evaluate` for define-by-run spaces)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from weight_server import WeightServer, resnet18_file  # noqa: E402

from search.optuna_pruned import journal_storage  # noqa: E402
from trainables.experiment import (  # noqa: E402
    OPTUNA_JOURNAL,
    read_params,
    read_ray_states,
    read_record,
    trial_dirs,
)
from trainables.weights import URLS_ENV  # noqa: E402

pytestmark = pytest.mark.slow
TIMM = importlib.util.find_spec("timm") is not None

PLUGIN = """
import torch.nn as nn
from trainables.models import register_model, seed_head


class TinyNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = seed_head(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


@register_model
def tiny_net(cfg, num_classes=3):
    return TinyNet(num_classes)
"""

MODELS = ["resnet18", "tiny_net"] + (["timm:resnet18"] if TIMM else [])
POINTS = [
    {"model": "resnet18", "weights": "imagenet", "lr": 1e-3},
    {"model": "resnet18", "weights": "imagenet", "lr": 1e-4},
] + [{"model": m, "lr": 1e-3} for m in MODELS[1:]]
SAMPLED = 2  # trials the sampler draws after the points
SPACE = f"""
METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 1
MODELS = {MODELS!r}
POINTS_TO_EVALUATE = {POINTS!r}
NUM_SAMPLES = len(POINTS_TO_EVALUATE) + {SAMPLED}


def define(trial):
    model = trial.suggest_categorical("model", MODELS)
    if model == "resnet18":
        trial.suggest_categorical("weights", ["imagenet"])
    trial.suggest_float("lr", 1e-4, 1e-3, log=True)
    frozen = 4 if model != "tiny_net" else 0  # stem + 3 stages frozen: quick on a CPU
    return {{"image_size": 32, "batch_size": 16, "max_train_batches": 2, "frozen_depth": frozen}}
"""


def _run(tmp: Path, storage: Path, torch_home: Path, url: str, *extra: str):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TORCH_HOME": str(torch_home),
        URLS_ENV: json.dumps({"resnet18/imagenet": url}),
    }
    args = ["--space", str(tmp / "space.py"), "--plugin", str(tmp / "my_models.py")]
    return subprocess.run(
        [sys.executable, "-m", "search.run", *args, "--storage", str(storage), "--name", "w",
         "--max-concurrent", "2", "--wandb-mode", "disabled", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights_sweep")
    (tmp / "space.py").write_text(SPACE)
    (tmp / "my_models.py").write_text(PLUGIN)
    served = tmp / "served"
    served.mkdir()
    good, conv1 = resnet18_file(served)
    server = WeightServer(served)
    try:
        proc = _run(tmp, tmp / "runs", tmp / "torch", server.url(good.name))
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {
        "tmp": tmp,
        "exp": tmp / "runs" / "w",
        "server": server,
        "file": good,
        "conv1": conv1,
        "stdout": proc.stdout,
    }


def test_the_driver_downloads_once_and_every_trial_reads_the_cached_file(swept):
    name = swept["file"].name
    assert swept["server"].requests[name] == 1  # two resnet18 trials or more, one download
    cached = swept["tmp"] / "torch" / "hub" / "checkpoints" / name
    record = read_record(swept["exp"])
    entry = record.weights["files"]["resnet18/imagenet"]
    # the experiment record keeps the file, its hash and where it came from
    assert entry["file"] == str(cached) and entry["library"] == "torchvision"
    assert entry["sha256"].startswith(name.split("-")[1].split(".")[0])
    params = [read_params(d) for d in trial_dirs(swept["exp"])]
    resnets = [p for p in params if p["model"] == "resnet18"]
    imagenet = [p for p in resnets if p.get("weights") == "imagenet"]
    assert len(imagenet) >= 2 and all(p["weights_path"] == str(cached) for p in imagenet)
    assert {p["model"] for p in params} == set(MODELS)


def test_the_enqueued_points_are_the_first_trials_and_the_sampler_draws_the_rest(swept):
    exp = swept["exp"]
    # Creation order is the study's trial numbers in the journal (Ray's trial ids are random and
    # two trials launched together start in either order); each study trial names the Ray
    # trial that ran it, and that trial's own params.json must hold the same values.
    study = optuna.load_study(study_name="w", storage=journal_storage(exp / OPTUNA_JOURNAL))
    dirs = {s.trial_id: s.dir_name for s in read_ray_states(exp)}
    by_number = sorted(study.get_trials(), key=lambda t: t.number)
    trials = [read_params(exp / dirs[t.user_attrs["ray_trial_id"]]) for t in by_number]
    for t, params in zip(by_number, trials, strict=True):
        assert {k: params[k] for k in t.params} == t.params
    assert len(trials) == len(POINTS) + SAMPLED
    for point, params in zip(POINTS, trials, strict=False):  # exactly and in order
        assert {k: params[k] for k in point} == point
    # The later ones are the sampler's own (a drawn lr never equals a point's exactly).
    assert all(p["lr"] not in (1e-3, 1e-4) for p in trials[len(POINTS) :])
    # The record states the points and TPE's start-up count: the points + max(3, n / 3).
    record = read_record(exp)
    assert record.points_to_evaluate == POINTS
    assert record.tpe_startup_trials == len(POINTS) + 3
    assert f"TPE: {len(POINTS)} enqueued point(s) first" in swept["stdout"]


def _image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), mode="L").save(path)
    return path


def _check_bundle(bundle_dir: Path, image: Path) -> None:
    from analysis.predict import predict_files
    from trainables.augment import normalize, to_float
    from trainables.bundle import load_bundle, read_bundle_meta, temperature_of
    from trainables.preprocess import decode_file

    bundle = load_bundle(bundle_dir)
    rows = predict_files(bundle, [image])
    x = torch.from_numpy(decode_file(image, 32, bundle.cfg.resize_mode))[None, None]
    with torch.no_grad():
        logits = bundle.model(normalize(to_float(x)))
        expected = torch.softmax(logits / temperature_of(bundle), dim=1)[0]
    got = torch.tensor([rows[0]["probabilities"][c] for c in bundle.classes])
    assert torch.allclose(got, expected, atol=1e-5)
    source = read_bundle_meta(bundle_dir)["model_source"]
    if bundle.cfg.model == "tiny_net":  # the bundle says how to rebuild the user's model
        assert source["kind"] == "plugin" and source["plugin"].endswith("my_models.py")
    else:
        assert source["kind"] in ("builtin", "timm")


def test_every_model_source_exports_with_onnx_and_predicts(swept, tmp_path):
    from search.export import export_onnx, onnx_metadata
    from trainables.bundle import preprocessing_of, save_bundle
    from trainables.train import model_from_checkpoint

    image = _image(tmp_path / "x.png")
    _check_bundle(swept["exp"] / "export", image)  # the sweep's own export of its best trial
    one_per_model = {read_params(d)["model"]: d for d in trial_dirs(swept["exp"])}
    for trial in one_per_model.values():
        checkpoint = sorted(trial.glob("checkpoint_*"))[-1]
        model, cfg, classes = model_from_checkpoint(checkpoint)
        out = tmp_path / trial.name
        out.mkdir()
        meta = onnx_metadata(classes, preprocessing_of(cfg))
        check = export_onnx(model, cfg.image_size, out / "model.onnx", meta, 1.0)
        assert check["max_abs_diff_probabilities"] < 1e-4, (cfg.model, check)
        save_bundle(out / "bundle", model, cfg, classes, {}, [])
        _check_bundle(out / "bundle", image)


def test_a_plugin_model_whose_file_is_gone_cannot_be_exported(swept, tmp_path):
    from trainables.bundle import save_bundle
    from trainables.config import TrialConfig

    cfg = TrialConfig(model="tiny_net", plugin=str(tmp_path / "gone.py"), image_size=32)
    with pytest.raises(ValueError, match="cannot be rebuilt: its plugin file .*gone.py.* missing"):
        save_bundle(tmp_path / "b", torch.nn.Linear(1, 1), cfg, ["a", "b"], {}, [])


def test_offline_the_sweep_is_refused_in_one_line_before_ray_starts(swept, tmp_path):
    dead = WeightServer(tmp_path)
    url = dead.url(swept["file"].name)
    dead.stop()
    proc = _run(swept["tmp"], tmp_path / "runs", tmp_path / "torch", url)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot fetch resnet18/imagenet") and url in last
    assert "place it at" in last and "--allow-missing-weights" in last
    assert not (tmp_path / "runs" / "w").exists()  # nothing written, no trial started
