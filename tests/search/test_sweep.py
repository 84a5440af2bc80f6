"""A real sweep on the tiny phantom: ASHA, Optuna states, checkpoints, W&B files, export."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from smoke_sweep import SMOKE_KEY, SMOKE_TRIALS
from wandb_log import final_run, final_summary, history_rows, records_of

from search.summary import installed_command
from trainables.experiment import (
    best_epoch_row,
    journal_path,
    read_data_report,
    read_record,
    read_results,
    trial_dirs,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = SMOKE_KEY  # the fake W&B API key the smoke sweep ran with
NUM_SAMPLES = SMOKE_TRIALS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(smoke_sweep) -> dict:
    """The session's smoke sweep (tests/conftest.py); the analysis tests read a copy of it."""
    return smoke_sweep


def test_sweep_finishes_with_asha_stopping_some_trials(sweep) -> None:
    summary, rows = sweep["summary"], sweep["rows"]
    # The first output line says which profile ran and why.
    assert sweep["proc"].stdout.splitlines()[0].startswith("profile: cpu (no GPU visible)")
    assert summary["state"] == "finished" and summary["trials"] == NUM_SAMPLES
    assert len(rows) == NUM_SAMPLES and not summary["errors"]
    stopped = {s["trial_id"]: s["epoch"] for s in summary["stopped_early"]}
    # ASHA stopped at least one trial before MAX_EPOCHS, and its rows stop there.
    assert stopped, summary
    for trial_id, epoch in stopped.items():
        assert epoch < 3 and max(r["epoch"] for r in rows[trial_id]) == epoch
    # The end summary names the best config and the early stops.
    assert "stopped early by ASHA" in sweep["proc"].stdout
    assert summary["best"]["value"] == min(r["val_loss"] for rs in rows.values() for r in rs)


def test_asha_stopped_trials_are_pruned_in_the_optuna_study(sweep) -> None:
    from search.optuna_pruned import journal_storage, read_state

    state_file = sorted(sweep["exp"].glob("searcher-state-*.pkl"))[-1]
    numbers = read_state(state_file.read_bytes())["trials"]  # Ray's ids to Optuna's numbers
    storage = journal_storage(sweep["exp"] / "optuna_journal.log")
    study = optuna.load_study(study_name=sweep["exp"].name, storage=storage)
    by_number = {t.number: t for t in study.trials}
    stopped = {s["trial_id"] for s in sweep["summary"]["stopped_early"]}
    assert len(numbers) == NUM_SAMPLES
    for ray_id, number in numbers.items():
        frozen = by_number[number]
        per_epoch = {int(r["epoch"]): r["val_loss"] for r in sweep["rows"][ray_id]}
        # Every epoch reached Optuna as an intermediate value at step = epoch.
        assert frozen.intermediate_values == pytest.approx(per_epoch)
        if ray_id in stopped:
            # ASHA's early stop is PRUNED, not COMPLETE with an epoch-1 score.
            assert frozen.state.name == "PRUNED"
        else:
            assert frozen.state.name == "COMPLETE"
            # Its value is its best epoch (what export and report rank by), not its last.
            assert frozen.value == pytest.approx(min(per_epoch.values()))


def test_checkpoints_keep_the_best_two_and_the_latest(sweep) -> None:
    for trial_dir in trial_dirs(sweep["exp"]):
        rows = read_results(trial_dir).rows
        kept = {p.name for p in trial_dir.glob("checkpoint_*")}
        ranked = sorted(rows, key=lambda r: r["val_loss"])
        wanted = {r["checkpoint_dir_name"] for r in ranked[:2]} | {rows[-1]["checkpoint_dir_name"]}
        # Exactly Ray's "best num_to_keep by the metric, plus the latest".
        assert kept == wanted, trial_dir.name


def test_result_rows_record_each_trials_node(sweep) -> None:
    for rows in sweep["rows"].values():
        # The cluster view needs which node and process ran each epoch.
        assert all(r["node_ip"] and r["hostname"] and r["pid"] for r in rows)


def test_wandb_offline_runs_hold_the_per_epoch_metrics(sweep) -> None:
    runs = {k: v for k, v in _run_files(sweep["exp"]).items() if k.startswith("trial/")}
    # One run per trial, plus the export's own run (its artifact test below).
    assert len(runs) == NUM_SAMPLES and set(_run_files(sweep["exp"])) - set(runs) == {"export"}
    for run_file in runs.values():
        trial_id = run_file.stem.removeprefix("run-")
        logged = {
            int(json.loads(h["epoch"])): json.loads(h["val_loss"])
            for h in history_rows(run_file)
            if "val_loss" in h
        }
        expected = {int(r["epoch"]): r["val_loss"] for r in sweep["rows"][trial_id]}
        # W&B's own Record protobufs hold one history row per epoch, with Ray's values.
        assert logged == pytest.approx(expected)


def test_api_key_is_never_written(sweep) -> None:
    leaked = [
        p for p in sweep["exp"].rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    assert leaked == []
    assert SECRET not in sweep["proc"].stdout + sweep["proc"].stderr
    recorded = read_record(sweep["exp"])
    assert recorded.metric == "val_loss" and recorded.mode == "min"


def test_export_bundle_reloads_with_checkpoint_predictions_and_onnx_agrees(sweep) -> None:
    import onnxruntime as ort

    from trainables.bundle import load_bundle
    from trainables.data import load_for_config
    from trainables.experiment import best_checkpoint
    from trainables.train import model_from_checkpoint, predict_proba

    out = sweep["bundle"]
    bundle = load_bundle(out)
    meta = json.loads((out / "bundle.json").read_text())
    best = best_checkpoint(sweep["exp"], "val_loss", "min")
    # The export is the best checkpoint of the sweep.
    assert meta["source"]["checkpoint"] == best.checkpoint_dir.name
    assert meta["source"]["value"] == sweep["summary"]["best"]["value"]
    model, cfg, classes = model_from_checkpoint(best.checkpoint_dir)
    assert bundle.cfg == cfg and bundle.classes == classes

    images = load_for_config(cfg).val.images
    from_bundle = predict_proba(bundle.model, images, "cpu", 64)
    from_checkpoint = predict_proba(model, images, "cpu", 64)
    # Same weights, same predictions.
    assert torch.equal(from_bundle.argmax(1), from_checkpoint.argmax(1))
    assert torch.allclose(from_bundle, from_checkpoint, atol=1e-6)

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = (images.float() / 255 - 0.5) / 0.5  # the bundle's preprocessing
    logits = session.run(["logits"], {"image": x.numpy()})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    # ONNX on real validation images (dynamic batch) agrees with PyTorch.
    assert np.abs(probs - from_checkpoint.numpy()).max() < 1e-4
    assert meta["onnx"]["max_abs_diff_probabilities"] < 1e-4


def _run_files(exp: Path) -> dict[str, Path]:
    """job_type/trial id -> the offline run file, e.g. {"trial/3f2a_00001": ..., "export": ...}."""
    out = {}
    for run_file in sorted((exp / "wandb").glob("offline-run-*/run-*.wandb")):
        run = final_run(run_file)
        out[run.job_type if run.job_type != "trial" else f"trial/{run.run_id}"] = run_file
    return out


def test_wandb_runs_sort_like_the_sweep_and_tag_asha_stops(sweep) -> None:
    runs = _run_files(sweep["exp"])
    stopped = {s["trial_id"]: s["epoch"] for s in sweep["summary"]["stopped_early"]}
    for trial_id, rows in sweep["rows"].items():
        run_file = runs[f"trial/{trial_id}"]
        summary = {k: json.loads(v) for k, v in final_summary(run_file).items()}
        epoch, best = best_epoch_row(rows, "val_loss", "min")
        # define_metric(METRIC, summary=MODE): the runs table's val_loss.min is the best epoch's.
        assert summary["val_loss"] == {"min": pytest.approx(best["val_loss"])}
        assert summary["best_epoch"] == epoch
        assert summary["best"]["val_acc"] == pytest.approx(best["val_acc"])
        run = final_run(run_file)
        if trial_id in stopped:
            assert "stopped_early" in run.tags and summary["stopped_early"] is True
            assert summary["stop_epoch"] == stopped[trial_id]
        else:
            assert "completed" in run.tags and summary["stopped_early"] is False


def test_wandb_config_holds_the_whole_trial_config_and_the_experiment(sweep) -> None:
    from dataclasses import fields

    from trainables.config import TrialConfig

    record = read_record(sweep["exp"])
    for key, run_file in _run_files(sweep["exp"]).items():
        run = final_run(run_file)
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        assert run.run_group == "smoke"
        experiment = config["experiment"]
        # Space, metric, ASHA settings, profile and code version, as the record has them.
        assert experiment["space"] == record.space and experiment["metric"] == "val_loss"
        assert experiment["asha"]["grace_period"] == record.grace_period
        assert experiment["profile"] == "cpu" and experiment["code_version"]
        # The classes the pre-flight found, in the order of data_report.json.
        assert experiment["classes"] == read_data_report(sweep["exp"])[0]["classes"]
        assert experiment["classes"] == ["NORMAL", "BACTERIA", "VIRAL"]
        if key.startswith("trial/"):
            # Every TrialConfig field (21), not only the space's suggestions.
            assert {f.name for f in fields(TrialConfig)} <= set(config)
            assert run.job_type == "trial" and "profile:cpu" in run.tags


def test_the_exported_bundle_is_a_model_artifact_of_the_experiment(sweep) -> None:
    runs = _run_files(sweep["exp"])
    artifacts = records_of(runs["export"], "artifact")
    assert len(artifacts) == 1
    artifact = artifacts[0]
    assert artifact.type == "model" and artifact.name == "smoke-model"
    files = {e.path: e for e in artifact.manifest.contents}
    exported = {p.name for p in sweep["bundle"].iterdir() if p.is_file()}
    # Every file of the bundle, referenced where it lies in the experiment folder.
    assert set(files) == exported and "model.onnx" in files
    assert all(e.local_path.startswith(str(sweep["bundle"])) for e in files.values())
    meta = json.loads(artifact.metadata)
    assert meta["source"]["value"] == sweep["summary"]["best"]["value"]


def test_optuna_journal_opens_with_load_study(sweep) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = journal_path(sweep["exp"])
    study = optuna.load_study(
        study_name="smoke", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    stopped = {s["trial_id"] for s in sweep["summary"]["stopped_early"]}
    # One Optuna trial per Ray trial, no leftover RUNNING trial.
    assert set(by_ray_id) == set(sweep["rows"]) and len(study.trials) == NUM_SAMPLES
    for ray_id, trial in by_ray_id.items():
        per_epoch = {int(r["epoch"]): r["val_loss"] for r in sweep["rows"][ray_id]}
        assert trial.intermediate_values == pytest.approx(per_epoch)
        assert trial.state.name == ("PRUNED" if ray_id in stopped else "COMPLETE")
        assert trial.user_attrs["best_value"] == pytest.approx(min(per_epoch.values()))
    # Optuna's best is over COMPLETE trials only; the sweep's best is over every trial's best
    # epoch (an ASHA-stopped trial can hold it), so each is checked against its own rows.
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if completed:
        assert study.best_value == pytest.approx(min(t.user_attrs["best_value"] for t in completed))
    overall = min(t.user_attrs["best_value"] for t in study.trials)
    assert overall == pytest.approx(sweep["summary"]["best"]["value"])


def test_optuna_dashboard_lists_the_study(sweep) -> None:
    import socket
    import time
    import urllib.request

    pytest.importorskip("optuna_dashboard")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen(
        [str(dashboard), str(journal_path(sweep["exp"])), "--host", "127.0.0.1"]
        + ["--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        listing, deadline = None, time.monotonic() + 60
        while listing is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    listing = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert listing is not None, "optuna-dashboard did not answer within 60 s"
        studies = listing["study_summaries"]
        assert [s["study_name"] for s in studies] == ["smoke"]
        assert studies[0]["directions"] == ["minimize"]
    finally:
        proc.terminate()  # by its pid, the process this test started
        proc.wait(timeout=30)


def test_the_output_is_quiet_and_ends_with_next_steps(sweep) -> None:
    out = sweep["proc"].stdout + sweep["proc"].stderr
    # Ray's config box, its TensorBoard hint at a temp folder and its INFO lines are hidden.
    assert "Configuration for experiment" not in out and "SearchGenerator" not in out
    assert "To visualize your results with TensorBoard" not in out
    assert not [line for line in out.splitlines() if " INFO " in line], out[-3000:]
    assert "core_worker.cc" not in out  # Ray's C++ warnings (once about W&B's logging actors)
    assert "logging.cc" not in out  # nor Ray's C++ notice that it read RAY_BACKEND_LOG_LEVEL
    exp = sweep["exp"]
    steps = sweep["proc"].stdout.split("next steps:")[-1]
    # Each next step names this experiment's files.
    assert f"cxr-tune report {exp}" in steps
    # The bundle is where --export put it, not STORAGE/NAME/export.
    assert f"cxr-tune predict {shlex.quote(str(sweep['bundle']))} IMAGE..." in steps
    assert not (exp / "export").exists()
    assert f"wandb sync {exp / 'wandb'}/offline-run-*" in steps
    assert f"optuna-dashboard {journal_path(exp)}" in steps
    # No hint at a tool that is not there: the install line names the real package, and
    # TensorBoard (not a dependency) is suggested only where it is installed.
    dashboard = installed_command("optuna-dashboard")
    assert ("(pip install optuna-dashboard)" in steps) == (dashboard is None)
    assert "cxr-tune[" not in steps
    assert (f"tensorboard --logdir {exp}" in steps) == bool(installed_command("tensorboard"))
    # TensorBoard has something to show there: Ray's event files in the trial folders.
    assert list(exp.glob("trial_*/events.out.tfevents.*"))


def _resume_copy(sweep: dict, tmp_path: Path) -> Path:
    """The experiment's own files (record, Ray's state, the journal), without the trial folders:
    what a resume reads before it may start Ray. A resume here never touches the sweep's."""
    storage = tmp_path / "runs"
    (storage / "smoke").mkdir(parents=True)
    for f in sweep["exp"].iterdir():
        if f.is_file():
            shutil.copy2(f, storage / "smoke" / f.name)
    return storage


def test_a_resume_of_a_space_edited_in_place_is_refused_naming_the_change(
    sweep, tmp_path, capsys
) -> None:
    import ray

    from search.run import run

    space, original = sweep["space"], sweep["space"].read_text()
    storage = _resume_copy(sweep, tmp_path)
    argv = ["--space", str(space), "--storage", str(storage), "--name", "smoke", "--resume"]
    try:
        # A numeric constant: 32 px trials would be ranked against 64 px ones.
        space.write_text(original.replace('"image_size": 32', '"image_size": 64'))
        proc = subprocess.run(
            [sys.executable, "-m", "search.run", *argv],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        (line,) = proc.stderr.strip().splitlines()  # one line: no usage block, no traceback
        assert f"the space file {space} changed since the experiment started" in line
        assert "image_size: 32 -> 64" in line
        assert f"--space {space} --name smoke-2" in line  # how to start a new experiment
        # A categorical's choices changed in place (Optuna would fail mid-resume on this one).
        space.write_text(original.replace('"oversample"', '"weighted"'))
        with pytest.raises(SystemExit) as refused:
            run(argv)
        assert refused.value.code == 2
        assert not ray.is_initialized()  # refused before Ray started
    finally:
        space.write_text(original)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "balance: choices ['original', 'oversample'] -> choices ['original', 'weighted']" in line
    # The copy is as it was: nothing of the experiment was changed by the refusals.
    for f in (storage / "smoke").iterdir():
        if f.name != "cxr_tune.lock":
            assert f.read_bytes() == (sweep["exp"] / f.name).read_bytes(), f.name
