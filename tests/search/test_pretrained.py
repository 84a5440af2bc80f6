"""Pretrained weights: fetched once by the driver from a local HTTP server (no internet), hash
checked, refused in one line offline, and a space whose choices do not depend on the disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from weight_server import WeightServer, corrupted_copy, resnet18_file  # noqa: E402

from search.preflight import explore  # noqa: E402
from search.pretrained import ModelPlan, drop_missing, prepare_models  # noqa: E402
from search.space import load_space  # noqa: E402
from trainables.weights import URLS_ENV, fetch, weight_file  # noqa: E402

RUN = {"defaults": {"image_size": 32}, "overrides": {"data": "phantom:small"}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    good, conv1 = resnet18_file(root)
    bad = corrupted_copy(good)
    server = WeightServer(root)
    yield {"server": server, "good": good, "bad": bad, "conv1": conv1}
    server.stop()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _point_at(monkeypatch, url: str) -> None:
    monkeypatch.setenv(URLS_ENV, json.dumps({"resnet18/imagenet": url}))


def test_fetch_downloads_once_into_the_torch_cache_and_checks_the_hash(
    served, torch_home, monkeypatch
):
    server, good = served["server"], served["good"]
    _point_at(monkeypatch, server.url(good.name))
    before = server.requests[good.name]
    wf = weight_file("resnet18", "imagenet")
    assert wf.path == torch_home / good.name  # torch.hub's standard cache, under TORCH_HOME
    path, digest = fetch(wf, progress=False)
    path_again, _ = fetch(wf, progress=False)  # a second fetch finds the file: no download
    assert path == path_again == wf.path and path.read_bytes() == good.read_bytes()
    assert server.requests[good.name] - before == 1
    assert digest.startswith(good.name.split("-")[1].split(".")[0])


def test_without_a_mirror_the_url_is_torchvisions_own(monkeypatch):
    monkeypatch.delenv(URLS_ENV, raising=False)
    import torchvision

    wf = weight_file("resnet50", "imagenet")
    assert wf.url == torchvision.models.ResNet50_Weights.DEFAULT.url
    assert wf.path.parent == Path(torch.hub.get_dir()) / "checkpoints"


def test_a_corrupted_download_is_refused_in_one_line_and_not_kept(served, torch_home, monkeypatch):
    bad = served["bad"]
    _point_at(monkeypatch, served["server"].url(bad.name))
    wf = weight_file("resnet18", "imagenet")
    with pytest.raises(ValueError) as err:
        fetch(wf, progress=False)
    message = str(err.value)
    assert "\n" not in message and "invalid hash value" in message
    assert wf.url in message and str(wf.path) in message  # names the URL and where to put it
    assert not wf.path.exists()  # torch.hub removed the bad download


def test_a_corrupted_file_already_in_the_cache_is_refused(served, torch_home, monkeypatch):
    good = served["good"]
    _point_at(monkeypatch, served["server"].url(good.name))
    torch_home.mkdir(parents=True)
    (torch_home / good.name).write_bytes(b"truncated")  # an interrupted copy by hand
    with pytest.raises(ValueError, match=r"is corrupted: its SHA-256 .* does not start with"):
        fetch(weight_file("resnet18", "imagenet"), progress=False)


def test_offline_the_fetch_is_refused_in_one_line_naming_url_and_place(
    served, torch_home, monkeypatch
):
    stopped = WeightServer(served["good"].parent)
    url = stopped.url(served["good"].name)
    stopped.stop()  # nothing listens on that port any more: as offline as it gets
    _point_at(monkeypatch, url)
    wf = weight_file("resnet18", "imagenet")
    with pytest.raises(ValueError) as err:
        fetch(wf, progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot fetch resnet18/imagenet")
    assert f"download {url} and place it at {wf.path}" in message


def _pairs(space) -> set[tuple[str, str]]:
    configs, _ = explore(space.define, "transfer", restricted=True)
    return {(c.model, c.weights) for c in configs}


def test_the_transfer_space_offers_the_same_choices_with_and_without_files(
    served, torch_home, monkeypatch
):
    path = REPO / "spaces" / "transfer.py"
    empty = _pairs(load_space(path, **RUN))
    torch_home.mkdir(parents=True)
    for model in ("resnet18", "resnet50", "densenet121"):
        wf = weight_file(model, "imagenet")
        wf.path.write_bytes(b"x")  # a file at each place the old space looked
    with_files = _pairs(load_space(path, **RUN))
    assert empty == with_files
    # every torchvision backbone is offered both starts, whatever the disk holds
    assert {("resnet50", "none"), ("resnet50", "imagenet"), ("resnet18", "imagenet")} <= empty


SPACE = """
METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 1
POINTS_TO_EVALUATE = [{"model": "resnet18", "weights": "imagenet"}, {"model": "simple_cnn"}]

def define(trial):
    model = trial.suggest_categorical("model", ["resnet18", "simple_cnn"])
    if model == "resnet18":
        trial.suggest_categorical("weights", ["none", "imagenet"])
    return {"image_size": 32}
"""


def test_offline_with_allow_missing_the_weight_set_is_left_out_loudly(
    served, torch_home, monkeypatch, tmp_path, capsys
):
    space_file = tmp_path / "space.py"
    space_file.write_text(SPACE)
    _point_at(monkeypatch, "http://127.0.0.1:9/resnet18-0123456789.pth")  # discard port: closed
    space = load_space(space_file, **RUN)
    with pytest.raises(ValueError, match="--allow-missing-weights"):
        prepare_models(space, allow_missing=False, progress=False)
    plan = prepare_models(space, allow_missing=True, progress=False)
    assert plan.files == {} and list(plan.dropped) == ["resnet18/imagenet"]
    space = drop_missing(space, plan)
    out = capsys.readouterr().out
    assert "WARNING: --allow-missing-weights: weights ['imagenet'] are left out" in out
    assert _pairs(space) == {("resnet18", "none"), ("simple_cnn", "none")}
    assert space.points_to_evaluate == [{"model": "simple_cnn"}]  # the imagenet point left out


def test_fetched_files_reach_every_trial_config_as_weights_path(
    served, torch_home, monkeypatch, tmp_path
):
    space_file = tmp_path / "space.py"
    space_file.write_text(SPACE)
    _point_at(monkeypatch, served["server"].url(served["good"].name))
    space = load_space(space_file, **RUN)
    plan = prepare_models(space, progress=False)
    assert isinstance(plan, ModelPlan) and list(plan.files) == ["resnet18/imagenet"]
    record = plan.record()["files"]["resnet18/imagenet"]
    assert record["file"] == str(torch_home / served["good"].name)
    configs, _ = explore(space.define, "space", restricted=True)
    for cfg in configs:
        # a trial reads the file the driver fetched, and its config says which one
        expected = record["file"] if cfg.weights == "imagenet" else ""
        assert cfg.weights_path == expected
