"""Real sweeps on data the project did not make: a 4-class folder with non-X-ray class names
and hostile files (train, per-class metrics, W&B, summary, export, report, predict), a 2-class
CSV manifest, a folder and a manifest of DICOM files in one sweep (no planted identifier in any
file it writes), and a sweep whose every trial fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_log import final_run, history_rows

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "trainables"))
from dicom_files import PATIENT_ID_PREFIX, PLANTED, chest, dataset, film, save  # noqa: E402
from image_folders import make_folder, noise, write_bad  # noqa: E402

from trainables.experiment import (  # noqa: E402
    read_data_report,
    read_params,
    read_results,
    trial_dirs,
)

pytestmark = pytest.mark.slow
FOUR = ("Lung_Opacity", "No Finding", "Pleural Effusion", "tuber culosis")
KEYS = ("lung_opacity", "no_finding", "pleural_effusion", "tuber_culosis")


def sweep(storage: Path, data: Path, *extra: str, space: Path | str = "spaces/smoke.py"):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["--space", str(space), "--data", str(data), "--storage", str(storage)]
    return subprocess.run(
        [sys.executable, "-m", "search.run", *args, "--name", "s", "--max-concurrent", "2", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def hostile_four_class_folder(root: Path) -> dict[str, str]:
    """Four classes of non-X-ray names plus hostile files; returns path -> expected reason."""
    make_folder(
        root,
        counts=dict.fromkeys(FOUR, 12),
        test_counts=dict.fromkeys(FOUR, 2),
        images_per_patient=1,
    )
    opacity, finding = root / "train" / "Lung_Opacity", root / "train" / "No Finding"
    os.symlink(root / "nowhere.png", opacity / "dangling.png")
    os.mkfifo(opacity / "pipe.png")
    (finding / "folder.png").mkdir()
    write_bad("zero_byte", finding / "empty.png")
    write_bad("corrupt", root / "train" / "tuber culosis" / "broken.png")
    (root / "train" / "Pleural Effusion" / "notes.txt").write_text("not an image")
    return {
        "train/Lung_Opacity/dangling.png": "dangling symlink",
        "train/Lung_Opacity/pipe.png": "not a regular file",
        "train/No Finding/folder.png": "a directory named like an image file",
        "train/No Finding/empty.png": "zero-byte",
        "train/tuber culosis/broken.png": "corrupt or truncated",
        "train/Pleural Effusion/notes.txt": "not an image file",
    }


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("four")
    hostile = hostile_four_class_folder(base / "data")
    proc = sweep(base / "runs", base / "data", "--num-samples", "2", "--wandb-mode", "offline")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = base / "runs" / "s"
    summary = json.loads((exp / "summary.json").read_text())
    return {"proc": proc, "exp": exp, "summary": summary, "hostile": hostile, "data": base / "data"}


def test_the_data_report_comes_before_the_sweep_and_is_kept_in_the_summary(four):
    out = four["proc"].stdout
    assert out.index("pre-flight:") < out.index(" start ")  # before the first trial starts
    data = four["summary"]["data"]
    assert data["classes"] == list(FOUR)
    reasons = {s["path"]: s["reason"] for s in data["skipped"]}
    assert set(reasons) == set(four["hostile"])  # every skipped file, with its reason
    for path, reason in four["hostile"].items():
        assert reason in reasons[path], (path, reasons[path])
    assert (four["exp"] / "data_report.json").is_file()


def test_every_epoch_reports_all_four_classes_to_ray_and_wandb(four):
    for trial in trial_dirs(four["exp"]):
        for row in read_results(trial).rows:
            assert all(f"val_acc_{k}" in row for k in KEYS), sorted(row)
    runs = sorted((four["exp"] / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = [r for r in runs if final_run(r).job_type == "trial"]  # not the export's run
    assert len(runs) == 2
    for run_file in runs:
        logged = set().union(*(h.keys() for h in history_rows(run_file)))
        assert {f"val_acc_{k}" for k in KEYS} <= logged


def test_the_bundle_records_the_classes_and_the_data_and_predicts_with_the_four_names(four, capsys):
    from analysis.predict import main as predict

    meta = json.loads((four["exp"] / "export" / "bundle.json").read_text())
    assert meta["classes"] == list(FOUR)
    assert {s["path"] for s in meta["data"]["skipped"]} == set(four["hostile"])
    image = next((four["data"] / "test" / "Pleural Effusion").iterdir())
    assert predict([str(four["exp"] / "export"), str(image), "--json", "--device", "cpu"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["predictions"]
    assert list(row["probabilities"]) == list(FOUR) and row["class"] in FOUR
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_the_report_tables_and_data_section_follow_the_four_classes(four, tmp_path):
    from analysis.report import run_report

    _, _, tables = run_report(four["exp"], tmp_path / "report", top_k=1, device="cpu")
    per_class = tables["table2_balance_per_class"]
    assert {f"test_acc_{k}" for k in KEYS} <= set(per_class.columns)
    from trainables.markdown import md_text

    page = (tmp_path / "report" / "report.md").read_text()
    # The skipped file is named in the data section, escaped as every name from the data is.
    assert "### Data" in page
    assert md_text("train/Lung_Opacity/pipe.png") in page and "Lung\\_Opacity" in page


def test_a_resume_on_data_that_changed_is_refused_naming_the_change(four, tmp_path, capsys):
    """A copy of the experiment whose data lost one image since it started: the resume's
    pre-flight sees other counts and refuses before Ray starts, naming the class."""
    from dataclasses import replace

    from trainables.experiment import EXPERIMENT_FILE, read_record

    data, exp = tmp_path / "data", tmp_path / "runs" / "s"
    shutil.copytree(four["data"], data, symlinks=True, ignore=shutil.ignore_patterns("pipe.png"))
    shutil.copytree(four["exp"], exp)
    record = read_record(exp)
    copied = replace(record, overrides={**record.overrides, "data": str(data)})
    (exp / EXPERIMENT_FILE).write_text(copied.to_json())  # the copy's record, not the original's
    next(p for p in sorted((data / "train" / "Lung_Opacity").glob("*.png")) if p.is_file()).unlink()
    before = sorted(d.name for d in trial_dirs(exp))
    import ray

    from search.run import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run(["--space", str(REPO / "spaces" / "smoke.py"), "--resume", "--name", "s"]
            + ["--storage", str(tmp_path / "runs")])  # fmt: skip
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--resume: the data changed since the experiment started" in line
    assert "Lung_Opacity" in line
    assert not ray.is_initialized()  # refused before Ray started
    assert sorted(d.name for d in trial_dirs(exp)) == before


def test_a_two_class_csv_manifest_sweeps_to_a_bundle(tmp_path):
    base = tmp_path / "cxr"
    rows = ["path,label,patient_id,split,site"]
    for i in range(40):
        label = ("NORMAL", "PNEUMONIA")[i % 2]
        noise(base / "png" / f"{i:03d}.png", 7000 + i)
        rows.append(f"png/{i:03d}.png,{label},P{i},{'test' if i >= 32 else 'train'},north")
    rows.append("png/missing.png,NORMAL,P99,train,south")
    (base / "labels.csv").write_text("\n".join(rows) + "\n")
    proc = sweep(
        tmp_path / "runs", base / "labels.csv", "--num-samples", "1", "--wandb-mode", "disabled"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "runs" / "s"
    meta = json.loads((exp / "export" / "bundle.json").read_text())
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"]
    data = json.loads((exp / "summary.json").read_text())["data"]
    assert data["layout"] == "manifest" and "site" in data["columns"]
    assert data["skipped"] == [{"path": "png/missing.png", "reason": "missing file"}]


def test_a_sweep_in_which_every_trial_fails_exits_non_zero_even_without_export(tmp_path):
    space = tmp_path / "broken.py"
    # Passes every pre-flight check, then fails in each trial: the space's own model is
    # registered (the pre-flight checks that) but its builder raises.
    space.write_text(
        "from trainables.models import register_model\n\n"
        "@register_model\ndef broken_net(cfg, num_classes=3):\n"
        "    raise RuntimeError('this model cannot be built')\n\n"
        'METRIC = "val_loss"\nMODE = "min"\nMAX_EPOCHS = 1\n\ndef define(trial):\n'
        "    return {'model': 'broken_net', 'image_size': 32}\n"
    )
    data = make_folder(tmp_path / "d", counts={"NORMAL": 10, "VIRAL": 10}, images_per_patient=1)
    proc = sweep(
        tmp_path / "runs",
        data,
        "--num-samples",
        "1",
        "--no-export",
        "--wandb-mode",
        "disabled",
        "--max-failures",
        "0",  # its own error: a retry would fail the same way
        space=space,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "every trial failed" in proc.stderr
    summary = json.loads((tmp_path / "runs" / "s" / "summary.json").read_text())
    assert len(summary["errors"]) == 1
    # Run once, not retried (Ray's count of the trial's failures).
    assert [row["failures"] for row in summary["trial_rows"]] == [1]


DICOM_SPACE = """
METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 1
NUM_SAMPLES = 2
POINTS_TO_EVALUATE = [{{"data": {folder!r}}}, {{"data": {manifest!r}}}]


def define(trial):
    trial.suggest_categorical("data", [{folder!r}, {manifest!r}])
    return {{"model": "simple_cnn_10m", "image_size": 32, "batch_size": 8, "max_train_batches": 2}}
"""


def dicom_data(base: Path) -> tuple[Path, Path]:
    """A folder of DICOM files (MONOCHROME1 15-bit, some without a suffix, a structured report
    to skip, one patient in train and test) and a manifest of DICOM files in four transfer
    syntaxes with no patient_id column (PatientID groups them)."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, RLELossless

    folder, n = base / "dicom_folder", 0
    for split, per_class in (("train", 8), ("test", 2)):
        for c, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for i in range(per_class):
                n += 1
                pid = f"{cls}{i // 2}" if split == "train" or i else f"{cls}0"  # one in both
                ds = dataset(film(chest(40, n) * (0.5 + 0.5 * c)), "MONOCHROME1", 15, pid)
                save(ds, folder / split / cls / (f"img{n:03d}.dcm" if i % 3 else f"IMG{n:03d}"))
    (folder / "train" / "NORMAL" / "sr.dcm").write_bytes(
        Path(get_testdata_file("test-SR.dcm")).read_bytes()
    )
    syntaxes = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLosslessSV1)
    rows = ["path,label,split"]
    for i in range(24):
        label = ("NORMAL", "PNEUMONIA")[i % 2]
        ds = dataset(film(chest(40, 100 + i) * (0.5 + 0.5 * (i % 2)), 12, "MONOCHROME2"),
                     "MONOCHROME2", 12, f"M{i // 2}")  # fmt: skip
        name = f"files/{i:03d}" + (".dicom" if i % 4 else "")
        save(ds, base / name, syntaxes[i % 4])
        rows.append(f"{name},{label},{'test' if i >= 20 else 'train'}")
    (base / "dicom.csv").write_text("\n".join(rows) + "\n")
    return folder, base / "dicom.csv"


def test_a_dicom_folder_and_a_dicom_manifest_sweep_export_and_predict_without_identifiers(
    tmp_path, capsys
):
    from analysis.predict import main as predict

    folder, manifest = dicom_data(tmp_path / "data")
    space = tmp_path / "dicom_space.py"
    space.write_text(DICOM_SPACE.format(folder=str(folder), manifest=str(manifest)))
    with pytest.MonkeyPatch.context() as mp:  # a cache of its own, grepped below too
        mp.setenv("CXR_TUNE_CACHE", str(tmp_path / "cache"))
        proc = sweep(tmp_path / "runs", folder, "--wandb-mode", "offline", space=space)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "runs" / "s"
    by_root = {Path(r["root"]).name: r for r in read_data_report(exp)}
    folder_report, manifest_report = by_root["dicom_folder"], by_root["data"]
    assert folder_report["dicom"]["photometric"] == {"MONOCHROME1": 16, "none": 1}  # train
    assert folder_report["skipped"] == [
        {"path": "train/NORMAL/sr.dcm",
         "reason": "not an image: a Comprehensive SR Storage without pixel data"}
    ]  # fmt: skip
    assert manifest_report["layout"] == "manifest" and manifest_report["skipped"] == []
    assert len(manifest_report["dicom"]["transfer_syntax"]) == 4
    counts = manifest_report["counts"]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 20
    assert manifest_report["dicom"]["bits_stored"] == {"12": 20}
    # Both datasets trained: one trial each (POINTS_TO_EVALUATE).
    datas = sorted(read_params(d)["data"] for d in trial_dirs(exp))
    assert datas == sorted([str(folder), str(manifest)])
    # The leakage audit names the folder's two train-and-test patients by their hashed key.
    summary = json.loads((exp / "summary.json").read_text())
    shared = summary["leakage"]["patients_in_two_splits"]
    assert len(shared) == (2 if summary["best"]["config"]["data"] == str(folder) else 0)
    assert all(p["patient"].startswith("dicom-") for p in shared)
    meta = json.loads((exp / "export" / "bundle.json").read_text())
    assert meta["preprocessing"]["steps"][0]["op"] == "dicom"
    images = [folder / "test" / "PNEUMONIA" / "IMG019", manifest.parent / "files" / "021.dicom"]
    assert predict([str(exp / "export"), *map(str, images), "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["class"] in ("NORMAL", "PNEUMONIA") for r in rows] == [True, True]
    # No planted identifier in any file the sweep wrote (experiment, export, W&B, cache), nor
    # in what it printed.
    secrets = [v.encode() for v in PLANTED.values()] + [b"Zzyzx", b"Quorthon", b"Vexmoor"]
    secrets.append(PATIENT_ID_PREFIX.encode())
    written = [p for d in (exp, tmp_path / "cache") for p in d.rglob("*") if p.is_file()]
    assert len(written) > 20 and any(p.suffix == ".wandb" for p in written)
    for path in written:
        data = path.read_bytes()
        assert not [s for s in secrets if s in data], path
    printed = (proc.stdout + proc.stderr).encode()
    assert not [s for s in secrets if s in printed]
