"""The driver's pre-flight: every branch of a space, the data and METRIC are checked before Ray
starts; a bad dataset ends the command in seconds with exit 2, one line, and no experiment."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "trainables"))
from image_folders import make_folder  # noqa: E402

from search.preflight import explore, preflight  # noqa: E402
from search.run import run  # noqa: E402
from search.space import load_space  # noqa: E402
from trainables.data import load_for_config  # noqa: E402
from trainables.vocab import AUGMENTATIONS, MODEL_NAMES  # noqa: E402

SMOKE = REPO / "spaces" / "smoke.py"
FOUR = {"Lung_Opacity": 20, "No Finding": 20, "Pleural Effusion": 20, "tuber culosis": 20}
LIMIT_S = 10.0  # the bound for a refusal on phantom:small-sized data


@pytest.fixture(autouse=True)
def cold_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path / "cache"))


def space_file(
    tmp_path: Path, metric: str, body: str = "    return {'model': 'simple_cnn_10m'}"
) -> Path:
    path = tmp_path / "space.py"
    path.write_text(
        f'METRIC = "{metric}"\nMODE = "max"\nMAX_EPOCHS = 2\n\ndef define(trial):\n{body}\n'
    )
    return path


def test_every_branch_of_the_transfer_space_is_walked_and_checked():
    space = load_space(REPO / "spaces" / "transfer.py", overrides={"data": "phantom:small"})
    configs, branches = explore(space.define, "transfer")
    # Every model and augmentation appears (5 random samples would not cover them), including
    # both ends of frozen_depth, so the unfrozen_blocks branch is walked too.
    assert {c.model for c in configs} == set(MODEL_NAMES)
    assert {c.augment for c in configs} == set(AUGMENTATIONS)
    assert {c.unfrozen_blocks for c in configs} == {0, 1}
    assert branches == len(configs) >= 2 * 4 * 6 * 2


def test_a_space_with_more_paths_than_the_walk_checks_says_so(monkeypatch):
    import search.preflight

    monkeypatch.setattr(search.preflight, "EXPLORE_LIMIT", 4)
    space = load_space(SMOKE, overrides={"data": "phantom:small", "image_size": 32})
    checked = preflight(space)
    assert checked.branches == 4
    assert any("more than 4 define() paths: the first 4 were checked" in n for n in checked.notes)
    assert "more than" in checked.format()


def test_a_bad_choice_on_a_rare_branch_is_refused_naming_the_value(tmp_path):
    body = textwrap.indent(
        textwrap.dedent(
            """\
            model = trial.suggest_categorical('model', ['simple_cnn_10m', 'resnet18'])
            if model == 'resnet18':
                if trial.suggest_int('frozen_depth', 0, 5) == 5:
                    trial.suggest_categorical('augment', ['none', 'seed', 'mixup'])
            return {}"""
        ),
        "    ",
    )
    space = load_space(space_file(tmp_path, "val_acc", body), overrides={"data": "phantom:small"})
    with pytest.raises(ValueError, match=r"suggest_categorical\('augment'\) offers 'mixup'") as err:
        explore(space.define, "space")
    assert "'flip_rotate'" in str(err.value)  # the registry's valid names


def test_preflight_fills_the_decode_cache_and_checks_metric_against_the_datas_classes(tmp_path):
    root = make_folder(tmp_path / "d", counts=FOUR, images_per_patient=1)
    run = {"defaults": {"image_size": 32}, "overrides": {"data": str(root)}}
    checked = preflight(load_space(space_file(tmp_path, "val_acc_tuber_culosis"), **run))
    assert checked.reports[0].classes == sorted(FOUR)
    assert checked.reports[0].decoded == 80  # train decoded (test only listed) ...
    # ... so a trial's load decodes nothing.
    assert load_for_config(load_space(SMOKE, **run).samples[0]).decoded == 0
    with pytest.raises(
        ValueError, match=r"METRIC 'val_acc_viral' is not reported for this data"
    ) as err:
        preflight(load_space(space_file(tmp_path, "val_acc_viral"), **run))
    assert "'Lung_Opacity'" in str(err.value) and "val_acc_no_finding" in str(err.value)


def _bad_data(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A dataset of about phantom:small's size (380 train images) with one problem, and the
    words the refusal must contain."""
    counts = {"NORMAL": 150, "BACTERIA": 150, "VIRAL": 80}
    if case == "too_few_for_the_split":
        root = make_folder(tmp_path / "d", counts={**counts, "VIRAL": 2}, images_per_patient=2)
        return root, "class VIRAL has no images in the"
    root = make_folder(tmp_path / "d", counts=counts, images_per_patient=3)
    if case == "empty_class":
        (root / "train" / "Edema").mkdir()
        return root, f"empty class folder {root / 'train' / 'Edema'}"
    if case == "one_level_too_deep":
        return root / "train", f"one level too deep: pass --data {root}"
    if case == "one_class":
        for name in ("BACTERIA", "VIRAL"):
            for f in (root / "train" / name).iterdir():
                f.unlink()
            (root / "train" / name).rmdir()
        return root, "has classes ['NORMAL']; need two"
    if case == "unreadable_class":
        for f in (root / "train" / "VIRAL").iterdir():
            f.write_bytes(b"")
        return root, "class VIRAL has no readable images in the train split"
    if case == "manifest_without_label":
        manifest = root / "m.csv"
        with open(manifest, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "finding"])
            writer.writerows([[p.relative_to(root).as_posix(), "x"] for p in root.rglob("*.png")])
        return manifest, f"manifest {manifest} has no label column and no finding columns"
    raise AssertionError(case)


CASES = [
    "too_few_for_the_split",
    "empty_class",
    "one_level_too_deep",
    "one_class",
    "unreadable_class",
    "manifest_without_label",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_data_ends_the_command_in_seconds_with_no_experiment(tmp_path, capsys, case):
    data, words = _bad_data(tmp_path, case)
    storage = tmp_path / "runs"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        run(["--space", str(SMOKE), "--data", str(data), "--storage", str(storage), "--name", "x"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert elapsed < LIMIT_S, elapsed
    assert no_experiment(storage)  # no experiment folder, so no trial either


def test_bad_metric_for_the_data_is_refused_by_the_command(tmp_path, capsys):
    root = make_folder(tmp_path / "d", counts=FOUR, images_per_patient=1)
    space = space_file(tmp_path, "val_acc_viral")
    with pytest.raises(SystemExit) as exit_:
        run(["--space", str(space), "--data", str(root), "--storage", str(tmp_path / "runs")])
    assert exit_.value.code == 2 and "val_acc_tuber_culosis" in capsys.readouterr().err
    assert no_experiment(tmp_path / "runs")


def test_the_cli_process_refuses_bad_data_with_exit_2_and_one_line(tmp_path):
    data, words = _bad_data(tmp_path, "empty_class")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXR_TUNE_CACHE": str(tmp_path / "c")}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.run",
            "--space",
            str(SMOKE),
            "--data",
            str(data),
            "--storage",
            str(tmp_path / "runs"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Interpreter start and the torch import come on top of the pre-flight's seconds; on a
    # shared 2-core machine they alone can take tens of seconds, so the bound here is loose.
    assert time.monotonic() - started < 120
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and words in proc.stderr
    assert "Traceback" not in proc.stderr and no_experiment(tmp_path / "runs")


def test_the_class_map_flag_reaches_the_data_the_trials_load(tmp_path, capsys):
    counts = {"Normal": 20, "COVID": 20, "Viral Pneumonia": 20}
    root = make_folder(tmp_path / "d", counts=counts, images_per_patient=1)
    argv = ["--data", str(root), "--storage", str(tmp_path / "runs")]
    # Without the class map COVID and Viral Pneumonia are two classes, so no VIRAL ...
    with pytest.raises(SystemExit):
        run(["--space", str(space_file(tmp_path, "val_acc_viral")), *argv])
    assert "['NORMAL', 'COVID', 'Viral Pneumonia']" in capsys.readouterr().err
    # ... and with --class-map seed they are VIRAL (the seed's merge), so no COVID.
    with pytest.raises(SystemExit):
        run(["--space", str(space_file(tmp_path, "val_acc_covid")), *argv, "--class-map", "seed"])
    assert "whose classes are ['NORMAL', 'VIRAL']" in capsys.readouterr().err
    assert no_experiment(tmp_path / "runs")


def no_experiment(storage) -> bool:
    """Nothing under --storage: the up-front write test may leave the (empty) folder itself."""
    return not storage.exists() or not any(storage.iterdir())


def test_every_image_size_the_space_can_choose_is_decoded_before_the_sweep(tmp_path):
    """A space choosing between two image sizes: the pre-flight decodes the data at both, so no
    trial decodes (a pre-flight that warmed one size would leave the other's trials cold)."""
    import dataclasses

    root = make_folder(tmp_path / "d", counts=FOUR, images_per_patient=1)
    body = "    trial.suggest_categorical('image_size', [32, 64])\n    return {}"
    space = load_space(space_file(tmp_path, "val_acc", body), overrides={"data": str(root)})
    checked = preflight(space)
    assert sorted(r.image_size for r in checked.reports) == [32, 64]
    assert all(r.decoded == 80 for r in checked.reports)
    for size in (32, 64):
        cfg = dataclasses.replace(checked.configs[0], image_size=size)
        assert load_for_config(cfg).decoded == 0, size
