#!/usr/bin/env bash
# One device call's worth of GPU validation, for a session that has a GPU (device tool, no network).
#
#   bash bench/gpu_session.sh [STEP ...]          default steps: versions verify tests
#
# Steps: versions | verify (python -m lstm_gpu) | tests (pytest -m gpu) | tests-triton | tests-numba | tests-rest |
#        bench (python -m bench --quick) | profile (python -m bench.profile) | charlm (GPU loss curves + tokens/s)
# Each step has its own time limit so one call stays under the device tool's 10 minutes; everything it
# printed goes to $OUT/session.log and what it wrote under reports/ to $OUT/reports.tar.gz (the device
# tool brings back at most 8 files from $OUT). Unpack on the CPU machine with:
#   tar -xzf <files_at>/reports.tar.gz        (then commit reports/data/gpu-* and the plots)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT" reports/data
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
LOG="$OUT/session.log"
pack() { tar -czf "$OUT/reports.tar.gz" reports 2>/dev/null; }
trap pack EXIT

step() {    # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -40
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s" | tee -a "$LOG"
}

for s in "${@:-versions verify tests}"; do
  for s1 in $s; do
    case $s1 in
      versions) step versions 60 bash -c 'nvidia-smi; python -c "import sys, torch, triton, numba; \
print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version()); \
print(\"triton\", triton.__version__, \"numba\", numba.__version__); \
import importlib.metadata as m; print(\"numba-cuda\", m.version(\"numba-cuda\"))"; git rev-parse HEAD' ;;
      verify) step verify 300 python -m lstm_gpu ;;
      tests) step tests 540 python -m pytest -m gpu -q -x --durations=15 -p no:cacheprovider ;;
      tests-triton) step tests-triton 540 python -m pytest -m gpu -q --durations=10 -p no:cacheprovider \
                      tests/test_triton_gpu.py ;;
      tests-numba) step tests-numba 540 python -m pytest -m gpu -q --durations=10 -p no:cacheprovider \
                     tests/test_numba_gpu.py ;;
      tests-rest) step tests-rest 540 python -m pytest -m gpu -q --durations=10 -p no:cacheprovider tests \
                    --ignore=tests/test_triton_gpu.py --ignore=tests/test_numba_gpu.py ;;
      bench) step bench 560 python -m bench --quick ;;
      profile) step profile 400 python -m bench.profile ;;
      charlm) step charlm 300 python -m bench.train_charlm --device cuda --backends nn,cudnn,triton,numba \
                --steps 200 --json reports/data/gpu-charlm.json --plot reports/charlm-gpu.png ;;
      *) echo "unknown step $s1" | tee -a "$LOG" ;;
    esac
  done
done
