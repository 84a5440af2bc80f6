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


# --- chest X-ray weights (torchxrayvision, the extra `cxr`) -----------------------------------

XRV = pytest.importorskip  # alias: the tests below skip without the extra


@pytest.fixture
def xrv_served(tmp_path, monkeypatch):
    """torchxrayvision's DenseNet-121 file format (a pickled xrv DenseNet), with seeded random
    weights, served locally under the name torchxrayvision's own URL gives it; HOME points at
    tmp_path, so torchxrayvision's cache (~/.torchxrayvision/models_data) starts empty."""
    xrv = XRV("torchxrayvision")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    torch.manual_seed(3)
    reference = xrv.models.DenseNet(weights=None)
    name = Path(xrv.models.model_urls["densenet121-res224-all"]["weights_url"]).name
    root = tmp_path / "served"
    root.mkdir()
    torch.save(reference, root / name)
    server = WeightServer(root)
    monkeypatch.setenv(URLS_ENV, json.dumps({"densenet121/cxr": server.url(name)}))
    yield {"xrv": xrv, "reference": reference.eval(), "server": server, "name": name}
    server.stop()


def test_cxr_weights_are_fetched_into_torchxrayvisions_cache_once(xrv_served, tmp_path):
    wf = weight_file("densenet121", "cxr")
    assert wf.library == "torchxrayvision"
    assert wf.path == tmp_path / "home" / ".torchxrayvision" / "models_data" / xrv_served["name"]
    fetch(wf, progress=False)
    path, digest = fetch(wf, progress=False)
    assert xrv_served["server"].requests[xrv_served["name"]] == 1 and path == wf.path
    assert len(digest) == 64


def test_cxr_weights_need_their_input_size():
    from trainables.config import TrialConfig

    with pytest.raises(ValueError, match=r"take 224 px inputs; set image_size=224 \(got 64\)"):
        TrialConfig(model="densenet121", weights="cxr", image_size=64)
    with pytest.raises(ValueError, match=r"resnet18' has no weights 'cxr'"):
        TrialConfig(model="resnet18", weights="cxr", image_size=224)


def test_a_cxr_bundle_records_its_preprocessing_and_predict_matches_torchxrayvision(
    xrv_served, tmp_path
):
    """The bundle's model reproduces torchxrayvision's own pipeline: its normalize(img, 255) to
    [-1024, 1024] and its DenseNet features, then the study's head."""
    import numpy as np
    from PIL import Image

    from analysis.predict import predict_files
    from trainables.bundle import load_bundle, read_bundle_meta, save_bundle, temperature_of
    from trainables.config import TrialConfig
    from trainables.models import build_model
    from trainables.preprocess import decode_file

    xrv, reference = xrv_served["xrv"], xrv_served["reference"]
    path, _ = fetch(weight_file("densenet121", "cxr"), progress=False)
    cfg = TrialConfig(model="densenet121", weights="cxr", image_size=224, weights_path=str(path))
    model = build_model(cfg, num_classes=2).eval()
    save_bundle(tmp_path / "bundle", model, cfg, ["a", "b"], {}, [])
    prep = read_bundle_meta(tmp_path / "bundle")["preprocessing"]
    assert prep["image_size"] == 224
    assert prep["weights"]["input_range"] == [-1024.0, 1024.0]
    assert prep["weights"]["source"] == "torchxrayvision densenet121-res224-all"

    image = tmp_path / "x.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (300, 260), dtype=np.uint8), mode="L").save(image)
    bundle = load_bundle(tmp_path / "bundle")  # rebuilt without reading the xrv file again
    got = predict_files(bundle, [image])[0]["probabilities"]

    pixels = decode_file(image, 224, cfg.resize_mode).astype(np.float32)
    x = torch.from_numpy(xrv.utils.normalize(pixels, 255))[None, None]  # xrv's own scaling
    with torch.no_grad():
        features = reference.features(x)
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.relu(features), 1).flatten(1)
        head = bundle.model.net[1].classifier
        expected = torch.softmax(head(pooled) / temperature_of(bundle), dim=1)[0]
    assert torch.allclose(torch.tensor([got["a"], got["b"]]), expected, atol=1e-4)


def test_timm_frozen_depth_follows_feature_info():
    pytest.importorskip("timm")
    from trainables.config import TrialConfig
    from trainables.models import build_model

    model = build_model(
        TrialConfig(model="timm:resnet18", frozen_depth=2, unfrozen_blocks=1, image_size=32)
    )
    body = model.net[0]
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    # feature_info: act1 (the stem: conv1 + bn1), layer1, layer2, ...; depth 2 = stem + layer1,
    # with layer1's last block reopened
    assert frozen == {"conv1", "bn1", "layer1"}
    assert all(p.requires_grad for p in body.layer1[1].parameters())
    assert not any(p.requires_grad for p in body.layer1[0].parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3)


def test_timm_imagenet_weights_from_a_mirror_are_fetched_once_and_loaded(
    tmp_path, torch_home, monkeypatch
):
    """timm's own download of a URL source (torch.hub, hash prefix checked), then a trial's
    build from the local file: timm sums the first convolution's RGB filters for one channel."""
    timm = pytest.importorskip("timm")
    import hashlib

    from trainables.config import TrialConfig
    from trainables.models import build_model

    torch.manual_seed(4)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    root = tmp_path / "served"
    root.mkdir()
    torch.save(state, root / "r.tmp")
    name = f"resnet18-{hashlib.sha256((root / 'r.tmp').read_bytes()).hexdigest()[:10]}.pth"
    (root / "r.tmp").rename(root / name)
    server = WeightServer(root)
    try:
        monkeypatch.setenv(URLS_ENV, json.dumps({"timm:resnet18/imagenet": server.url(name)}))
        wf = weight_file("timm:resnet18", "imagenet")
        assert wf.path == torch_home / name
        fetch(wf, progress=False)
        path, _ = fetch(wf, progress=False)
        assert server.requests[name] == 1
    finally:
        server.stop()
    cfg = TrialConfig(
        model="timm:resnet18", weights="imagenet", image_size=32, weights_path=str(path)
    )
    body = build_model(cfg).net[0]
    summed = state["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(body.conv1.weight, summed, atol=1e-6)
    assert torch.equal(body.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_a_weights_path_the_space_sets_must_exist_and_is_not_fetched(tmp_path, torch_home):
    space_file = tmp_path / "own.py"
    space_file.write_text(
        'METRIC = "val_loss"\nMODE = "min"\nMAX_EPOCHS = 1\n\ndef define(trial):\n'
        "    return {'model': 'resnet18', 'weights': 'imagenet', 'image_size': 32,\n"
        f"            'weights_path': {str(tmp_path / 'mine.pth')!r}}}\n"
    )
    space = load_space(space_file, **RUN)
    with pytest.raises(ValueError, match=r"weights_path .*mine.pth does not exist"):
        prepare_models(space, progress=False)  # refused before Ray, not in every trial
    (tmp_path / "mine.pth").write_bytes(b"x")
    assert prepare_models(space, progress=False).files == {}  # the user's file: no download
