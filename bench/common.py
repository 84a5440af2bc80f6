"""What every benchmark script shares: the --size flag, the device, timing, and the result lines.

Each script measures two or more things side by side in one run and prints one line per ratio:

    RATIO <bench>.<name> = <value> [goal >= <goal>] | <detail>

The ratio is the result; absolute times vary between runs and machines. `--json PATH` also writes
every figure (with the machine, the command and the date) for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

SIZES = ("tiny", "small", "full")
REPO = Path(__file__).resolve().parents[1]


def parser(
    description: str, sizes: Sequence[str] = SIZES, sizes_help: str = ""
) -> argparse.ArgumentParser:
    """The flags every benchmark shares; a benchmark with sizes of its own passes them."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--size",
        default="small",
        choices=list(sizes),
        help=sizes_help
        or "tiny: seconds, for the smoke test (32 px, a step or two; the figures mean "
        "nothing); small: CPU-sized (64 px, a few steps, phantom:small); full: the GPU figures "
        "of the issue (256 px, batch 128, bf16, phantom:full)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: all cores when the device is the CPU)",
    )
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Environment for a benchmark run: offline W&B, no Ray telemetry, threads, the device."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A SIGTERM (a timeout, a CI kill) unwinds like Ctrl-C, so `finally` blocks stop Ray.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (all cores) or a positive count, got {args.threads}")
    torch.set_num_threads(args.threads or (os.cpu_count() or 1))
    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    return device


def machine(device: torch.device) -> dict[str, Any]:
    """Machine, card and software versions, for the record."""
    info = {
        "host_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds `fn()` takes, device work included."""
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Results:
    """Collects the figures of one run and prints the ratio lines as they come."""

    def __init__(
        self,
        bench: str,
        args: argparse.Namespace,
        device: torch.device,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.bench = bench
        given = sys.argv[1:] if argv is None else list(argv)
        self.payload: dict[str, Any] = {
            "bench": bench,
            "size": args.size,
            "command": " ".join(["python", "-m", f"bench.{bench}", *given]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(device),
            "ratios": {},
            "figures": {},
            # 1-minute load average at the start and end: other processes sharing the machine.
            "load_average": {"start": os.getloadavg()[0]},
        }
        self.json_path: Path | None = args.json

    def figure(self, name: str, value: Any) -> None:
        """A measured figure that is not itself a ratio (img/s, seconds, MB, counts)."""
        self.payload["figures"][name] = value

    def ratio(self, name: str, value: float, goal: str = "", detail: str = "") -> None:
        self.payload["ratios"][name] = {"value": value, "goal": goal, "detail": detail}
        goal_text = f" [goal {goal}]" if goal else ""
        detail_text = f" | {detail}" if detail else ""
        print(f"RATIO {self.bench}.{name} = {value:.3f}{goal_text}{detail_text}", flush=True)

    def save(self) -> None:
        self.payload["load_average"]["end"] = os.getloadavg()[0]
        if self.json_path is None:
            return
        from trainables.cache import atomic_write_text

        atomic_write_text(self.json_path, json.dumps(self.payload, indent=1, default=str))
        print(f"wrote {self.json_path}")


def note(text: str) -> None:
    """A progress line (stderr stays free for errors)."""
    print(text, flush=True)
