"""Users' own models: registered by a space file itself or by a plugin file, rebuilt by name in
a fresh process from what the config records, and refused clearly when nothing registers them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from search.pretrained import check_models
from search.space import load_space
from trainables.models import MODELS, build_model, model_source, register_model

REPO = Path(__file__).resolve().parents[2]

SPACE = """
import torch.nn as nn
from trainables.models import register_model

METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 1


@register_model
def space_net(cfg, num_classes=3):
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def define(trial):
    trial.suggest_float("lr", 1e-4, 1e-3, log=True)
    return {"model": "space_net", "image_size": 32}
"""


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "my_space.py"
    path.write_text(SPACE)
    yield path
    MODELS.pop("space_net", None)


def test_a_space_that_registers_its_model_is_its_trials_plugin(space_file):
    space = load_space(space_file, overrides={"data": "phantom:small"})
    # every trial config names the file that registers its model
    assert {(c.model, c.plugin) for c in space.samples} == {("space_net", str(space_file))}
    cfg = space.samples[0]
    assert model_source(cfg)["kind"] == "plugin" and model_source(cfg)["plugin"] == str(space_file)
    check_models(space.samples, "space")  # the pre-flight's model check passes
    # a fresh process (a Ray worker, a bundle reader) rebuilds it from the config alone
    code = (
        "import json, sys; from trainables.config import TrialConfig; "
        "from trainables.models import build_model; "
        "m = build_model(TrialConfig.from_dict(json.loads(sys.argv[1]))); print(type(m).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg.to_dict())],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "Sequential"


def test_a_plugin_that_does_not_register_the_model_is_refused_naming_it(tmp_path):
    plugin = tmp_path / "empty_models.py"
    plugin.write_text("x = 1\n")
    from trainables.config import TrialConfig

    cfg = TrialConfig(model="ghost_net", plugin=str(plugin))
    with pytest.raises(ValueError, match=r"'ghost_net' is not registered by plugin .*empty_models"):
        check_models([cfg], "space file s.py")
    with pytest.raises(ValueError, match=r"unknown model 'ghost_net' \(plugin .*empty_models.py\)"):
        build_model(cfg)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="plugin file .*broken.py does not load: RuntimeError"):
        build_model(TrialConfig(model="ghost_net", plugin=str(broken)))


def test_a_builder_cannot_take_a_built_in_name():
    def densenet121(cfg, num_classes=3):  # pragma: no cover - never built
        raise AssertionError

    with pytest.raises(ValueError, match="'densenet121' is registered twice"):
        register_model(densenet121)


def test_a_resume_keeps_the_experiments_plugin(tmp_path, space_file):
    from search.checks import resume_changes
    from search.cli import build_parser
    from trainables.experiment import ExperimentRecord

    first, other = tmp_path / "a.py", tmp_path / "b.py"
    first.write_text("")
    other.write_text("")
    record = ExperimentRecord(
        name="x", metric="val_loss", mode="min", space=str(space_file),
        overrides={"plugin": str(first)}, args={"plugin": str(first)},
    )  # fmt: skip
    parser = build_parser()
    same = parser.parse_args(["--space", str(space_file), "--plugin", str(first), "--resume"])
    assert resume_changes(parser, same, record) == (None, None)
    moved = parser.parse_args(["--space", str(space_file), "--plugin", str(other), "--resume"])
    refusal, _ = resume_changes(parser, moved, record)
    assert refusal and f"--plugin {other} (the experiment has {first})" in refusal


def test_the_model_card_says_where_a_plugin_model_comes_from(space_file, tmp_path):
    from trainables.bundle import BUNDLE_META_FILE, save_bundle
    from trainables.model_card import MODEL_CARD_FILE

    space = load_space(space_file, overrides={"data": "phantom:small"})
    cfg = space.samples[0]
    out = save_bundle(tmp_path / "b", build_model(cfg), cfg, ["a", "b"], {}, [])
    card = (out / MODEL_CARD_FILE).read_text()
    assert "Started from random initialisation" in card
    assert f"the builder `space_net` of the plugin file `{space_file}`" in card
    meta = json.loads((out / BUNDLE_META_FILE).read_text())
    assert meta["model_source"]["sha256"][:12] in card
