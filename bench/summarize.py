"""Print the ratio tables of a benchmark run as Markdown, for bench/RESULTS.md.

python -m bench.summarize [--size small] [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.common import REPO, SIZES

ORDER = (
    "pipeline",
    "decode_once",
    "sweep_utilization",
    "overhead",
    "asha_vs_random",
    "compile_batch",
)


def table(record: dict) -> str:
    m = record["machine"]
    card = m.get("card", f"no GPU, {m['host_cpus']} CPU cores, {m['torch_threads']} torch threads")
    load = record.get("load_average", {})
    busy = (
        f"; load average {load['start']:.1f} at the start, {load['end']:.1f} at the end"
        if "end" in load
        else ""
    )
    lines = [
        f"`{record['command']}` ({record['date']}; {card}; torch {m['torch']}{busy})",
        "",
        "| ratio | value | goal | what |",
        "|---|---:|---|---|",
    ]
    for name, r in record["ratios"].items():
        value = r["value"]
        shown = (
            "n/a"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else f"{value:.3f}"
        )
        detail = r["detail"].replace("|", "/")
        lines.append(f"| {name} | {shown} | {r['goal']} | {detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="small", choices=SIZES)
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    found = False
    for bench in ORDER:
        path = args.results / f"{bench}-{args.size}.json"
        if not path.is_file():
            print(f"### {bench}\n\nno results at {path}\n")
            continue
        found = True
        print(f"### {bench}\n\n{table(json.loads(path.read_text()))}\n")
    if not found:
        raise SystemExit(f"no results for --size {args.size} in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
