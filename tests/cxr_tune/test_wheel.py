"""The package runs outside the checkout: a wheel built from the tree, installed with no source
tree in sight into a fresh venv inside someone else's git repository, lists its spaces and runs
a one-trial sweep by the space's name from a folder whose `search.py` and `analysis.py` would
shadow the project's packages if anything imported from the working folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from trainables.bundle import read_bundle_meta
from trainables.experiment import EXPORT_DIR, read_record

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What the wheel is built from: the build configuration and the packages (no tests, no bench).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "cxr_tune", "search", "trainables",
           "analysis", "spaces")  # fmt: skip
SHADOW = "raise SystemExit('imported the working folder\\'s {} instead of the package')\n"
SWEEP_TIMEOUT = 420  # seconds; one 3-epoch trial at 32 px and Ray's start, on 2 busy cores


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no source tree in sight
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin folder, the user's working folder) after installing the wheel."""
    root = tmp_path_factory.mktemp("outside")
    tree = root / "tree"
    tree.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, tree / name)
    dist = root / "dist"
    # The build backend of this interpreter (setuptools, in the dev extra): nothing downloaded.
    _check(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-q", "-w", str(dist), str(tree)], root))  # fmt: skip
    wheel = next(dist.glob("cxr_tune-*.whl"))
    user = root / "project"  # the user's own repository, with a commit of its own
    user.mkdir()
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@example.org"]
    _check(_run([*git, "init", "-q"], user))
    (user / "notes.txt").write_text("mine\n")
    _check(_run([*git, "add", "notes.txt"], user))
    _check(_run([*git, "commit", "-q", "-m", "mine"], user))
    env_dir = user / ".venv"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], user))
    python = env_dir / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = _check(_run([str(python), "-c", where], user)).stdout.strip()
    # The dependencies (torch, Ray, ...) come from this test's environment, read-only: a path in
    # a .pth file adds that folder without running its .pth files, so this checkout's own
    # editable install stays out of the fresh venv.
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib) / "dependencies.pth").write_text("\n".join(ours) + "\n")
    _check(_run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                 "--no-deps", "--no-index", str(wheel)], user))  # fmt: skip
    work = user / "work"
    work.mkdir()
    for name in ("search", "analysis"):
        (work / f"{name}.py").write_text(SHADOW.format(name))
    return env_dir / "bin", work


def test_the_installed_package_lists_its_spaces(venv) -> None:
    bin_dir, work = venv
    out = _check(_run([str(bin_dir / "cxr-tune"), "spaces"], work)).stdout
    # The three spaces ship inside the installed package, not in a checkout.
    for name in ("transfer", "seed", "smoke"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), out
        assert f"cxr_tune/spaces/{name}.py" in out
    assert str(REPO) not in out


def test_a_sweep_by_space_name_runs_outside_the_checkout(venv) -> None:
    bin_dir, work = venv
    storage = work / "runs"
    proc = _run(
        [str(bin_dir / "cxr-tune"), "sweep", "--space", "smoke", "--storage", str(storage),
         "--name", "outside", "--wandb-mode", "disabled", "--num-samples", "1",
         "--max-concurrent", "1"],
        work, timeout=SWEEP_TIMEOUT,
    )  # fmt: skip
    _check(proc)
    exp = storage / "outside"
    summary = json.loads((exp / "summary.json").read_text())
    # The trial trained: the workers imported the installed packages, not ./search.py.
    assert summary["errors"] == [] and "imported the working folder" not in proc.stderr
    record = read_record(exp)
    assert record is not None and Path(record.space).name == "smoke.py"
    assert "site-packages" in record.space  # the shipped file, found by its name
    # The code version is the installed package's; the user's repository around the venv is
    # not the project's checkout, so its commit is recorded nowhere.
    meta = read_bundle_meta(exp / EXPORT_DIR)
    assert meta["code_version"]["git_commit"] is None and "+g" not in record.code_version
    assert meta["code_version"]["version"] == record.code_version
    # The closing hints work here: no extra of a package that is not on the index.
    assert "cxr-tune[" not in proc.stdout
