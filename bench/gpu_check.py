"""The parts of `bench/gpu_check.sh` that are Python: one subcommand per part, each writing its
figures to `OUT/<part>.json` before the script starts the next part, and `summary`, which turns
every part file in OUT into `OUT/summary.md` (the figures against the goals).

    python -m bench.gpu_check setup   --out DIR   # card, versions, phantom:full + 256 px decode
    python -m bench.gpu_check memory  --out DIR   # measured memory of every registry model
    python -m bench.gpu_check sweep   --out DIR --arm one_per_device|packed
    python -m bench.gpu_check tests   --out DIR --junit FILE
    python -m bench.gpu_check mark    --out DIR --part P --rc RC --wall S --cap S
    python -m bench.gpu_check summary --out DIR

Only `setup`, `memory` and `sweep` need a GPU (and `sweep` needs Ray); `summary` and `mark`
run anywhere (the tests run them on made-up part files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

GIB = 2**30
DATA = "phantom:full"
IMAGE_SIZE = 256  # pixels
TRIAL_BATCH = 32  # the spaces' batch (TrialConfig's default)
SWEEP_MODELS = ("simple_cnn_10m", "resnet18")  # bench/spaces/small_models.py
TRANSFER_ASHA = (2, 3, 12)  # spaces/transfer.py: grace period, reduction factor, MAX_EPOCHS
GOALS = {
    "pipeline": ">= 0.85",
    "packed": ">= 0.80",
    "oom": "== 0",
}


def write_part(out: Path, part: str, payload: dict[str, Any]) -> Path:
    from trainables.cache import atomic_write_text

    path = out / f"{part}.json"
    atomic_write_text(path, json.dumps({"part": part, **payload}, indent=1, default=str) + "\n")
    return path


def read_part(out: Path, part: str) -> dict[str, Any] | None:
    path = out / f"{part}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return {"part": part, "status": "unreadable"}


# --- setup --------------------------------------------------------------------------------------


def cmd_setup(out: Path, data_name: str = DATA, image_size: int = IMAGE_SIZE) -> int:
    import torch

    from trainables.config import TrialConfig
    from trainables.data import load_for_config
    from trainables.phantom import ensure_phantom

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host_cpus": os.cpu_count(),
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "driver": _nvidia_smi("driver_version"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(card=props.name, card_bytes=props.total_memory, gpus=torch.cuda.device_count())
    payload: dict[str, Any] = {"status": "running", "env": env}
    write_part(out, "setup", payload)
    started = time.perf_counter()
    ensure_phantom(data_name.split(":", 1)[1])
    payload["phantom_s"] = time.perf_counter() - started
    started = time.perf_counter()
    data = load_for_config(TrialConfig(data=data_name, image_size=image_size))
    payload.update(decode_s=time.perf_counter() - started, train_images=len(data.train.labels))
    payload["status"] = "ok"
    write_part(out, "setup", payload)
    print(
        f"setup: {env} | phantom {payload['phantom_s']:.0f} s, decode {payload['decode_s']:.0f} s"
    )
    return 0


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed on this machine
        return None


def _nvidia_smi(field: str) -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


# --- the measured memory table ----------------------------------------------------------------


def memory_shapes() -> list[Any]:
    """Every registry model at the trials' batch, 256 px, bf16, nothing frozen, and the seed's
    frozen ResNet50 (everything but layer4[2] and the head)."""
    from trainables.config import TrialConfig
    from trainables.models import MODELS

    base = TrialConfig(data=DATA, image_size=IMAGE_SIZE, batch_size=TRIAL_BATCH, augment="seed")
    shapes = [replace(base, model=m) for m in sorted(MODELS)]
    shapes.append(replace(base, model="resnet50", frozen_depth=5, unfrozen_blocks=1))
    return shapes


def memory_row(m: Any, epoch_images: int) -> dict[str, Any]:
    """One measured shape against the estimate, with its checkpoint plan for spaces/transfer.py."""
    from search import checkpoints as ck
    from search import gpu_memory as gm
    from search.resources import gpu_fraction, peak_bytes

    k = m.key
    estimate = peak_bytes(k.model, k.batch_size, k.image_size)
    row: dict[str, Any] = {
        "shape": gm.describe(m).split(" on ")[0],
        "source": m.source,
        "reserved_gib": m.reserved_bytes / GIB,
        "context_gib": m.context_bytes / GIB,
        "need_gib": gm.need_bytes(m) / GIB,
        "share": gm.share_for(gm.need_bytes(m), k.card_bytes),
        "estimate_gib": estimate / GIB,
        "estimate_share": gpu_fraction(k.model, k.batch_size, k.image_size, k.card_bytes),
        "step_ms": m.step_s * 1e3,
        "save_s": m.save_s,
        "checkpoint_mb": m.checkpoint_bytes / 1e6,
    }
    if m.step_s > 0:
        epoch_s = epoch_images * m.step_s / k.batch_size + m.eval_s
        grace, rf, epochs = TRANSFER_ASHA
        milestones = ck.asha_milestones(grace, rf, epochs)
        every = ck.choose_checkpoint_every(m.save_s, epoch_s, epochs, milestones)
        saved = ck.saved_epochs(every, epochs, milestones)
        worst, mean = ck.lost_work(saved, epochs)
        row.update(
            epoch_s=epoch_s,
            checkpoint_every=every,
            saved_epochs=saved,
            checkpoint_cost=ck.checkpoint_cost(m.save_s, epoch_s, saved, epochs),
            cost_every_epoch=ck.checkpoint_cost(
                m.save_s, epoch_s, list(range(1, epochs + 1)), epochs
            ),
            lost_epochs_worst=worst,
            lost_epochs_mean=mean,
            lost_s_worst=worst * epoch_s,
        )
    return row


def cmd_memory(out: Path, timeout_s: float) -> int:
    import torch

    from search import gpu_memory as gm
    from trainables.balance import epoch_indices
    from trainables.config import TrialConfig
    from trainables.data import load_for_config

    data = load_for_config(TrialConfig(data=DATA, image_size=IMAGE_SIZE))
    # An oversampled epoch (the spaces' default balance), images.
    epoch_images = len(epoch_indices("oversample", data.train.labels, torch.Generator()))
    table = gm.MemoryTable.load()
    payload: dict[str, Any] = {"status": "running", "epoch_images": epoch_images, "rows": []}
    failures = 0
    for cfg in memory_shapes():
        try:
            m = gm.measure(cfg, timeout_s=timeout_s, table=table)
        except gm.GpuMemoryError as err:
            failures += 1
            payload["rows"].append({"shape": gm.shape_name(cfg), "error": str(err)})
        else:
            payload["rows"].append(memory_row(m, epoch_images))
            print(f"memory: {gm.describe(m)}", flush=True)
        payload["table"] = str(table.path)
        write_part(out, "memory", payload)  # after every shape: a timeout keeps the rest
    payload["status"] = "ok" if not failures else "failed"
    write_part(out, "memory", payload)
    return 1 if failures else 0


# --- the Ray sweep: one trial per GPU, then packed by measured memory --------------------------


def cmd_sweep(
    out: Path,
    arm_name: str,
    trials: int,
    epochs: int,
    data_name: str = DATA,
    image_size: int = IMAGE_SIZE,
    max_train_batches: int = 0,
) -> int:
    """One arm of the sweep. On a machine without CUDA the same code runs CPU arms (a rehearsal:
    the tests run it on `phantom:small` at 32 px)."""
    import torch

    from bench.sweep_utilization import arms, useful_fraction

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arm = next(a for a in arms(device, os.cpu_count() or 1) if a["name"] == arm_name)
    part = f"sweep_{'one' if arm_name == 'one_per_device' else 'packed'}"
    defaults = {"image_size": image_size, "max_train_batches": max_train_batches}
    space, floors, payload = _prepare_sweep(arm, device, epochs, data_name, defaults)
    write_part(out, part, payload)  # the floors, before the sweep can run out of time
    try:
        sweep = _fit(space, arm, trials)
    except RuntimeError as err:  # run_sweep raises when any trial failed
        oom = int("out of GPU memory" in str(err))
        payload.update(status="failed", error=str(err)[:2000], oom=oom)
        write_part(out, part, payload)
        return 1
    fraction, useful, images = useful_fraction(sweep, floors)
    payload.update(
        status="ok",
        oom=0,
        useful_fraction=fraction,
        useful_s=useful,
        sweep_wall_s=sweep.wall_s,
        images_trained=images,
        trials=len(sweep.trials),
        epochs=sum(len(t.results) for t in sweep.trials),
    )
    write_part(out, part, payload)
    print(f"{part}: useful fraction {fraction:.3f} ({useful:.1f} s of {sweep.wall_s:.1f} s)")
    return 0


def _prepare_sweep(
    arm: dict[str, Any], device: Any, epochs: int, data_name: str, defaults: dict[str, Any]
) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """The space, the compute floors and the first part payload of one arm."""
    from bench.harness import space_for
    from bench.sweep_utilization import GPU_SPACE, measure_floors
    from search.resources import measure_before_packing
    from trainables.config import TrialConfig
    from trainables.data import load_for_config

    space = space_for(GPU_SPACE, defaults, {"data": data_name}, epochs)
    base = TrialConfig(data=data_name, batch_size=TRIAL_BATCH, **defaults)
    data = load_for_config(base)  # also warms the decode cache the trials read
    payload: dict[str, Any] = {"status": "running", "device": str(device), "arm": dict(arm)}
    if arm["gpus"] is None:  # the driver hook: measure what the table lacks, then pack
        payload["gpu_memory"] = measure_before_packing(space.define, arm["card"], budget_s=60)
    prof = {"models": SWEEP_MODELS, "floor_batches": 20 if device.type == "cuda" else 1}
    floors = measure_floors(base, prof, len(data.classes), device, os.cpu_count() or 1)
    payload["floor_images_per_s"] = floors
    return space, floors, payload


def _fit(space: Any, arm: dict[str, Any], trials: int) -> Any:
    import shutil
    import tempfile

    from bench.harness import run_sweep, start_ray, stop_ray

    storage = Path(tempfile.mkdtemp(prefix="cxr-gpu-sweep-"))
    temp_dir = start_ray(num_cpus=os.cpu_count() or 1)
    try:
        return run_sweep(
            space,
            num_samples=trials,
            storage=storage,
            name=arm["name"],
            max_concurrent=arm["max_concurrent"],
            cpus_per_trial=arm["cpus"],
            gpus_per_trial=arm["gpus"],
            card_bytes=arm.get("card"),
        )
    finally:
        stop_ray(temp_dir)
        shutil.rmtree(storage, ignore_errors=True)


# --- GPU-only tests, part status, summary -----------------------------------------------------


def cmd_tests(out: Path, junit: Path) -> int:
    import xml.etree.ElementTree as ET

    payload: dict[str, Any] = {"status": "failed", "passed": 0, "failed": 0, "skipped": 0}
    if junit.is_file():
        cases = list(ET.parse(junit).getroot().iter("testcase"))
        failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
        skipped = [c for c in cases if c.find("skipped") is not None]
        payload.update(
            failed=len(failed),
            skipped=len(skipped),
            passed=len(cases) - len(failed) - len(skipped),
            failures=[f"{c.get('classname')}::{c.get('name')}" for c in failed],
        )
        payload["status"] = "ok" if cases and not failed else "failed"
    write_part(out, "gputests", payload)
    return 0 if payload["status"] == "ok" else 1


def cmd_mark(out: Path, part: str, rc: int, wall: float, cap: float) -> int:
    """Record how a part ended (the script calls this after each one, also after a timeout)."""
    payload = read_part(out, part)
    written = payload is not None
    payload = payload or {}
    payload.pop("part", None)
    status = str(payload.get("status", ""))
    if rc in (124, 137):  # timeout's exit codes (TERM, then KILL)
        payload["status"] = f"timeout after {cap:.0f} s (cap)"
    elif rc != 0 and not status.startswith("failed"):
        payload["status"] = f"failed (exit {rc})" + ("" if written else ": no figures written")
    elif rc == 0 and status in ("", "running"):
        payload["status"] = "ok"
    payload.update(exit_code=rc, wall_s=wall, cap_s=cap)
    write_part(out, part, payload)
    return 0


def verdict(value: float | None, goal: str) -> str:
    if value is None:
        return "not measured"
    op, target = goal.split()
    ok = value >= float(target) if op == ">=" else value == float(target)
    return "met" if ok else "NOT met"


def summary_rows(out: Path) -> list[tuple[str, str, str, str, str]]:
    """(part, figure, value, goal, verdict) for every part file found in `out`."""
    rows: list[tuple[str, str, str, str, str]] = []
    for part in PART_FILES:
        p = read_part(out, part)
        if p is None:
            continue
        rows.append((part, "status", str(p.get("status")), "ok", _took(p)))
        rows.extend(ROW_MAKERS[part](p))
    return rows


def _took(p: dict[str, Any]) -> str:
    if "wall_s" not in p:
        return ""
    return f"{p['wall_s']:.0f} s of a {p.get('cap_s', 0):.0f} s cap"


def _setup_rows(p: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    env = p.get("env", {})
    card = (
        f"{env.get('card')} ({env.get('card_bytes', 0) / GIB:.1f} GiB, driver {env.get('driver')})"
    )
    rows = [
        ("setup", "card", card, "", ""),
        (
            "setup",
            "torch / python / ray",
            f"{env.get('torch')} / {env.get('python')} / {env.get('ray')}",
            "",
            "",
        ),
    ]
    if "phantom_s" in p:
        rows.append(
            (
                "setup",
                "phantom:full + decode at 256 px",
                f"{p['phantom_s']:.0f} s + {p.get('decode_s', 0):.0f} s",
                "",
                "",
            )
        )
    return rows


def _pipeline_rows(p: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, r in p.get("ratios", {}).items():
        if name.endswith("fast_over_floor"):
            rows.append(
                (
                    "pipeline",
                    name,
                    f"{r['value']:.3f}",
                    GOALS["pipeline"],
                    verdict(r["value"], GOALS["pipeline"]),
                )
            )
    return rows


def _memory_rows(p: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for r in p.get("rows", []):
        if "error" in r:
            rows.append(("memory", r["shape"], r["error"][:80], "fits", "NOT met"))
            continue
        value = (
            f"need {r['need_gib']:.2f} GiB (share {r['share']:g}) vs estimate "
            f"{r['estimate_gib']:.2f} GiB ({r['estimate_share']:g}); save {r['save_s']:.2f} s"
        )
        if "checkpoint_every" in r:
            value += f", every {r['checkpoint_every']} ep, cost {r['checkpoint_cost']:.1%}"
        rows.append(("memory", r["shape"], value, "", r["source"]))
    return rows


def _tests_rows(p: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    value = (
        f"{p.get('passed', 0)} passed, {p.get('failed', 0)} failed, {p.get('skipped', 0)} skipped"
    )
    return [
        (
            "gputests",
            "GPU-only tests",
            value,
            "0 failed",
            "met" if p.get("status") == "ok" else "NOT met",
        )
    ]


def _sweep_rows(p: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    part = p.get("part", "sweep")
    fraction = p.get("useful_fraction")
    goal = GOALS["packed"] if part == "sweep_packed" else "beside packed"
    rows = [
        (
            part,
            "useful GPU time fraction",
            "-" if fraction is None else f"{fraction:.3f}",
            goal,
            verdict(fraction, goal) if part == "sweep_packed" else "",
        ),
        (
            part,
            "out-of-memory failures",
            str(p.get("oom", "-")),
            GOALS["oom"],
            verdict(p.get("oom"), GOALS["oom"]),
        ),
    ]
    if "sweep_wall_s" in p and "trials" in p:
        rows.append(
            (
                part,
                "trials / epochs / sweep wall",
                f"{p['trials']} / {p['epochs']} / {p['sweep_wall_s']:.0f} s",
                "",
                "",
            )
        )
    return rows


PART_FILES = ("setup", "pipeline", "memory", "gputests", "sweep_one", "sweep_packed")
ROW_MAKERS = {
    "setup": _setup_rows,
    "pipeline": _pipeline_rows,
    "memory": _memory_rows,
    "gputests": _tests_rows,
    "sweep_one": _sweep_rows,
    "sweep_packed": _sweep_rows,
}


def cmd_summary(out: Path) -> int:
    from trainables.cache import atomic_write_text

    lines = [
        "| part | figure | value | goal | verdict |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in summary_rows(out)),
    ]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", text)
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("setup", "memory", "sweep", "tests", "mark", "summary"):
        s = sub.add_parser(name)
        s.add_argument("--out", type=Path, required=True, help="the output folder")
    sub.choices["setup"].add_argument("--data", default=DATA, choices=("phantom:small", DATA))
    sub.choices["setup"].add_argument("--image-size", type=int, default=IMAGE_SIZE)
    sub.choices["memory"].add_argument("--timeout", type=float, default=40.0, help="s per shape")
    sweep = sub.choices["sweep"]
    sweep.add_argument("--arm", choices=("one_per_device", "packed"), required=True)
    sweep.add_argument("--trials", type=int, default=16)
    sweep.add_argument("--epochs", type=int, default=2)
    sweep.add_argument("--data", default=DATA, help="rehearsals on a CPU: phantom:small")
    sweep.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    sweep.add_argument("--max-train-batches", type=int, default=0)
    sub.choices["tests"].add_argument("--junit", type=Path, required=True)
    mark = sub.choices["mark"]
    mark.add_argument("--part", choices=("install", *PART_FILES), required=True)
    mark.add_argument("--rc", type=int, required=True)
    mark.add_argument("--wall", type=float, required=True)
    mark.add_argument("--cap", type=float, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "setup":
        return cmd_setup(args.out, args.data, args.image_size)
    if args.command == "memory":
        return cmd_memory(args.out, args.timeout)
    if args.command == "sweep":
        return cmd_sweep(
            args.out,
            args.arm,
            args.trials,
            args.epochs,
            args.data,
            args.image_size,
            args.max_train_batches,
        )
    if args.command == "tests":
        return cmd_tests(args.out, args.junit)
    if args.command == "mark":
        if args.part == "install":
            return 0  # the install writes no part file; its outcome is in the log
        return cmd_mark(args.out, args.part, args.rc, args.wall, args.cap)
    return cmd_summary(args.out)


if __name__ == "__main__":
    sys.exit(main())
