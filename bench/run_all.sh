#!/usr/bin/env bash
# Run every benchmark at one size and keep each one's JSON and log in bench/results/.
#   bench/run_all.sh small          # 2-core CPU, about 15 minutes
#   bench/run_all.sh full           # one GPU (phantom:full is generated on first use)
# Extra arguments go to every script (e.g. --device cuda:1 --threads 8).
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-small}"
shift || true
case "$size" in
  tiny|small|full) ;;
  *) echo "unknown size '$size'; expected one of: tiny small full" >&2; exit 2 ;;
esac
export WANDB_MODE="${WANDB_MODE:-offline}" RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
PY="${PY:-.venv/bin/python}"
out="bench/results"
mkdir -p "$out"
status=0
for bench in pipeline decode_once overhead sweep_utilization asha_vs_random compile_batch; do
  echo "== $bench ($size) $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  if ! "$PY" -m "bench.$bench" --size "$size" --json "$out/$bench-$size.json" "$@" \
      2>&1 | tee "$out/$bench-$size.log" | grep -E '^(RATIO|wrote)'; then
    echo "!! bench.$bench failed; see $out/$bench-$size.log" >&2
    status=1
  fi
done
exit $status
