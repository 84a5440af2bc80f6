#!/usr/bin/env bash
# The GPU check, for one lent GPU machine that has PyTorch but no Ray (torch 2.11, Python 3.12,
# no registry reachable). Each part runs under its own time cap and writes its figures to
# OUT/<part>.json, and OUT/summary.md is rebuilt, before the next part starts; everything lands
# in one folder ($OUT when set, else bench/results/gpu). The whole check stays under 8 minutes.
#
#   bench/gpu_check.sh --dry-run                  # list the parts, their caps and commands
#   bench/gpu_check.sh                            # every part that can run here
#   bench/gpu_check.sh --parts setup,memory       # some parts
#   bench/gpu_check.sh --stash /root/stash ...    # install Ray + Optuna wheels from there first
#
# Ray and Optuna travel as wheels (../shared/tools/device-ray-wheels.sh makes .whlA/ and .whlB/;
# the Ray wheel is split in two because one device call carries at most 64 MiB), so on the lent
# machine the check is two calls, the second within 30 s of the first (the machine stays warm):
#   1) carry [".whlA"]: mkdir -p /root/stash && cp .whlA/* /root/stash/ &&
#        bench/gpu_check.sh --parts setup,pipeline,memory,gputests
#   2) carry [".whlB"]: cp .whlB/* /root/stash/ &&
#        bench/gpu_check.sh --stash /root/stash --parts install,sweep_one,sweep_packed
set -uo pipefail
cd "$(dirname "$0")/.."

TOTAL_CAP=480  # seconds for all parts together: the check must end within 8 minutes
PARTS=(install setup pipeline memory gputests sweep_one sweep_packed)
declare -A CAP=(  # seconds per part
  [install]=30 [setup]=70 [pipeline]=45 [memory]=75 [gputests]=50 [sweep_one]=110
  [sweep_packed]=85
)
declare -A WHAT=(
  [install]="unpack Ray + Optuna wheels from --stash into /tmp/site (skipped without --stash)"
  [setup]="card, driver, versions; phantom:full generated and decoded at 256 px"
  [pipeline]="fast path vs compute floor: simple_cnn, simple_cnn_10m, seed ResNet50; 256 px, batch 128, bf16"
  [memory]="measured memory table: every registry model at batch 32, 256 px, bf16, and the seed ResNet50"
  [gputests]="pytest -m gpu: measurement on the card, enforced cap, OOM message and larger retry share"
  [sweep_one]="Ray sweep, 16 trials x 2 epochs of the small models on phantom:full, one trial per GPU"
  [sweep_packed]="the same sweep packed by measured memory (1/8-card steps, up to 8 at a time)"
)

dry_run=0
stash=""
selected=""
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --stash) stash="${2:?--stash needs a folder}"; shift ;;
    --parts) selected="${2:?--parts needs a comma-separated list}"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'; expected --dry-run, --stash DIR, --parts LIST" >&2; exit 2 ;;
  esac
  shift
done
if [[ -n "$selected" ]]; then
  IFS=, read -r -a chosen <<< "$selected"
  for p in "${chosen[@]}"; do
    [[ -n "${CAP[$p]:-}" ]] || { echo "error: unknown part '$p'; expected one of: ${PARTS[*]}" >&2; exit 2; }
  done
else
  chosen=("${PARTS[@]}")
fi

PY="${PY:-python3}"
out="${OUT:-bench/results/gpu}"
log="$out/gpu_check.log"

command_for() {
  case "$1" in
    install) echo "install_wheels $stash" ;;
    setup) echo "$PY -m bench.gpu_check setup --out $out" ;;
    pipeline) echo "$PY -m bench.pipeline --size full --models simple_cnn,simple_cnn_10m,resnet50_seed --no-seed-path --batches 20 --repeats 2 --json $out/pipeline.json" ;;
    memory) echo "$PY -m bench.gpu_check memory --out $out --timeout 40" ;;
    gputests) echo "run_gpu_tests" ;;
    sweep_one) echo "$PY -m bench.gpu_check sweep --out $out --arm one_per_device --trials 16 --epochs 2" ;;
    sweep_packed) echo "$PY -m bench.gpu_check sweep --out $out --arm packed --trials 16 --epochs 2" ;;
  esac
}

total=0
for p in "${chosen[@]}"; do total=$((total + CAP[$p])); done
if ((dry_run)); then
  echo "gpu_check dry run: output folder $out (\$OUT when set), one JSON per part + summary.md + gpu_check.log"
  printf '%-13s %6s  %s\n' part cap_s "what | command"
  for p in "${chosen[@]}"; do
    printf '%-13s %6d  %s\n' "$p" "${CAP[$p]}" "${WHAT[$p]}"
    printf '%-13s %6s  %s\n' "" "" "$(command_for "$p")"
  done
  printf '%-13s %6d  (limit %d s)\n' total "$total" "$TOTAL_CAP"
  ((total <= TOTAL_CAP)) || { echo "error: the parts' caps add up to more than $TOTAL_CAP s" >&2; exit 2; }
  exit 0
fi

mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export WANDB_MODE=disabled RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
[[ -d /tmp/site ]] && export PYTHONPATH="/tmp/site:$PYTHONPATH"  # wheels an earlier call installed
# Kept between the two calls on a warm machine: phantom:full, the decode cache, the memory table.
if [[ -z "${CXR_TUNE_CACHE:-}" ]]; then
  if [[ -w /root ]]; then export CXR_TUNE_CACHE=/root/cxr-tune-cache; else export CXR_TUNE_CACHE="$PWD/.cache/cxr-tune"; fi
fi

install_wheels() {
  local dir="$1"
  [[ -n "$dir" && -d "$dir" ]] || { echo "install: no --stash folder; Ray parts need Ray already installed"; return 0; }
  if compgen -G "$dir/raypart_*" > /dev/null; then
    cat "$dir"/raypart_* > "$dir/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl" && rm -f "$dir"/raypart_*
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl
}

run_gpu_tests() {
  local junit=/tmp/gpu_check_junit.xml
  rm -f "$junit"
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/search/test_gpu_memory.py tests/bench/test_gpu_check.py --junitxml "$junit"
  local rc=$?
  "$PY" -m bench.gpu_check tests --out "$out" --junit "$junit" || true
  return $rc
}

echo "== gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC'): parts ${chosen[*]} (caps ${total} s of ${TOTAL_CAP} s) -> $out" | tee -a "$log"
started=$SECONDS
status=0
for p in "${chosen[@]}"; do
  left=$((TOTAL_CAP - (SECONDS - started)))
  if ((CAP[$p] > left)); then
    echo "!! $p skipped: its ${CAP[$p]} s cap does not fit the ${left} s left of ${TOTAL_CAP} s" | tee -a "$log"
    status=1
    continue
  fi
  echo "== $p (cap ${CAP[$p]} s): ${WHAT[$p]}" | tee -a "$log"
  t0=$SECONDS
  if [[ "$p" == install ]]; then
    install_wheels "$stash" >> "$log" 2>&1; rc=$?
    [[ -d /tmp/site ]] && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  elif [[ "$p" == gputests ]]; then
    export -f run_gpu_tests; export PY out
    timeout --signal=TERM --kill-after=10 "${CAP[$p]}" bash -c run_gpu_tests >> "$log" 2>&1; rc=$?
  else
    # shellcheck disable=SC2046
    timeout --signal=TERM --kill-after=10 "${CAP[$p]}" $(command_for "$p") >> "$log" 2>&1; rc=$?
  fi
  wall=$((SECONDS - t0))
  "$PY" -m bench.gpu_check mark --out "$out" --part "$p" --rc "$rc" --wall "$wall" --cap "${CAP[$p]}" >> "$log" 2>&1
  "$PY" -m bench.gpu_check summary --out "$out" > /dev/null 2>> "$log"
  echo "   $p: exit $rc after ${wall} s" | tee -a "$log"
  ((rc == 0)) || status=1
done
echo "== gpu_check done in $((SECONDS - started)) s; $out/summary.md:" | tee -a "$log"
cat "$out/summary.md" 2>/dev/null
exit $status
