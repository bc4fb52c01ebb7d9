#!/usr/bin/env bash
# A GPU session in ONE device call (device tool: fresh machine, no network, at most 10 minutes a command).
#
#   LSTM_GPU_COMMIT=<sha> bash bench/gpu_session.sh
#                                             the whole session, within $LSTM_GPU_SESSION_BUDGET s (default 540);
#                                             commit first and state the commit: the device's copy of .git can be
#                                             stale (it called every tree of 2026-11-28's session "22b96d8 dirty")
#       versions   GPU, SMs, driver, CUDA, cuDNN, torch, triton, numba, numba-cuda, git sha
#       warmup     compile every Triton config the later steps launch, in parallel processes
#       smoke      triton, then numba (separate processes): correctness grid vs the reference and cuDNN,
#                  fwd + bwd, fp16 / bf16 / fp32, H 256/768/1024, B 1/16/64, lengths, reverse, two with a
#                  projection, barrier time-out on
#       headline   reports/README.md's headline rows: cudnn, triton, numba, floor; fwd and fwd+bwd; p50 (p20-p80)
#       stack      the one-launch stack (2 layers, uni- and bidirectional, B16 H512 fp16) against cuDNN and
#                  against the same kernels launched per layer
#       host       host time per module call (2 layers, bidirectional, T = 1), real launches; a cProfile of triton's call
#       floorscan  the floor (barrier, polled exchange) against the program count (bench/floor_scan.py), after
#                  the L2 read bandwidth at B64 H1024's volume (bench/l2_read.py)
#       insitu     the headline kernels with and without their step synchronisation: what the wait costs in them
#                  (bench/insitu.py)
#       stalls     ncu's warp stall reasons, our B16 H768 fp16 forward beside cuDNN's (bench/stalls.py)
#       gputests   pytest -m gpu on the stack, triton and numba GPU tests, 150 s at most
#       quick      as much of `python -m bench --quick` (cudnn, triton, numba) as the time left allows
#       profile    python -m bench.profile on the headline shape
#   bash bench/gpu_session.sh STEP ...        only those steps; also the older ones: verify (python -m lstm_gpu),
#       tests (pytest -m gpu), tests-triton, tests-numba, tests-rest, bench (the whole --quick), charlm
#
# Every step has its own time limit (and never more than the session has left); what a step wrote stays
# when a later one is killed. As it goes, $OUT gets: session.log (everything printed), versions.json,
# smoke.csv, headline.csv, headline.md (the README table filled in), host.csv, and reports.tar.gz (all of
# reports/, re-packed after every step). Unpack on the CPU machine with
#   tar -xzf <files_at>/reports.tar.gz        (then commit reports/data/gpu-* and reports/profile-*)
# and rebuild auto's dispatch table from the new measurements: python -m bench.dispatch_table
#
# LSTM_GPU_SESSION_DRY=1: the same session on CPU in seconds (emulators, tiny shapes, outputs in $OUT/data,
# nothing written under reports/): tests/test_gpu_session.py runs it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
DRY=${LSTM_GPU_SESSION_DRY:-0}
BUDGET=${LSTM_GPU_SESSION_BUDGET:-540}
mkdir -p "$OUT"
# the GPU machine's Python with torch is "python3" (its image has no promise of a plain "python")
PY=${PYTHON:-$(command -v python3 || command -v python)}
export OUT PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG="$OUT/session.log"
if [ "$DRY" = 1 ]; then
    DATA="$OUT/data"
else
    DATA=reports/data
fi
mkdir -p "$DATA"
START=$SECONDS

pack() {     # everything so far into $OUT: the step files by fixed names, reports/ as one tarball
    local f
    for what in versions.json smoke.csv headline.csv headline.md stack.csv stack.md host.csv; do
        f=$(ls -t "$DATA"/*-"$what" 2>/dev/null | head -1)
        [ -n "$f" ] && cp "$f" "$OUT/$what"
    done
    if [ "$DRY" != 1 ]; then tar -czf "$OUT/reports.tar.gz" reports 2>/dev/null; fi
    return 0
}
trap pack EXIT

left() { echo $(( BUDGET - (SECONDS - START) )); }

step() {    # step NAME SECONDS COMMAND...: at most SECONDS, and never past the session's budget
    local name=$1 limit=$2; shift 2
    local remain; remain=$(left)
    if [ "$remain" -lt 10 ]; then
        echo "=== $name: skipped, ${remain}s of the session budget left" | tee -a "$LOG"
        return 0
    fi
    [ "$limit" -gt "$remain" ] && limit=$remain
    echo "=== $name (limit ${limit}s, $(( SECONDS - START ))s into the session): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -40
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "=== $name: TIME LIMIT (${limit}s) reached, killed" | tee -a "$LOG"
    echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
    pack
}

session() {   # session STEP LIMIT [ARGS...]: one step of bench/session.py, soft deadline 5 s before the hard one
    local name=$1 limit=$2; shift 2
    local remain; remain=$(left)
    [ "$limit" -gt "$remain" ] && limit=$remain
    local dry=(); [ "$DRY" = 1 ] && dry=(--dry --data "$DATA")
    step "$name" "$limit" "$PY" -m bench.session "$name" "${dry[@]}" --limit $(( limit > 10 ? limit - 5 : limit )) "$@"
}

versions() {
    step versions-nvidia-smi 20 bash -c 'nvidia-smi || echo "nvidia-smi: not available"; git rev-parse HEAD; git status --short | head -20'
    session versions 60
}

cudadevrt() {   # numba links every kernel that uses grid.sync against libcudadevrt.a, found through conda, CUDA_HOME
    # or NVIDIA's wheels; none of them found, every numba kernel fails to link: point CUDA_HOME at the toolkit
    [ "$DRY" = 1 ] || [ -n "${CUDA_HOME:-}" ] && return 0
    if ! "$PY" -c "import os, sys; from numba.cuda.cudadrv import libs
sys.exit(not os.path.exists(libs.get_cudalib('cudadevrt', static=True)))" 2>/dev/null; then
        for d in /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /none/bin/nvcc)")")"; do
            if [ -f "$d/lib64/libcudadevrt.a" ]; then
                export CUDA_HOME=$d
                echo "=== numba found no libcudadevrt.a: CUDA_HOME=$d" | tee -a "$LOG"
                break
            fi
        done
    fi
}

cudadevrt
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(versions warmup smoke headline stack host floorscan insitu stalls gputests quick profile)
for s1 in "${steps[@]}"; do
    case $s1 in
      versions) versions ;;
      warmup)   session warmup 150 ;;
      smoke)    session smoke 90 --backends triton; session smoke 60 --backends numba --append ;;
      headline) session headline 100 ;;
      stack)    session stack 60 ;;
      host)     session host 30 ;;
      quick)    q=$(( $(left) - 50 )); [ "$q" -gt 10 ] && session quick "$q" || echo "=== quick: skipped (no time left)" | tee -a "$LOG" ;;
      profile)  session profile 60 ;;
      floorscan) if [ "$DRY" = 1 ]; then step floorscan 60 "$PY" -m bench.floor_scan --dry
                 else step floorscan 60 "$PY" -m bench.floor_scan; fi ;;
      insitu)   if [ "$DRY" = 1 ]; then step insitu 45 "$PY" -m bench.insitu --dry
                else step insitu 45 "$PY" -m bench.insitu; fi ;;
      stalls)   if [ "$DRY" = 1 ]; then step stalls 90 "$PY" -m bench.stalls --dry
                else step stalls 90 "$PY" -m bench.stalls; fi ;;
      # the GPU tests of the three kernel files, as many as 150 s allow (none had run before 2026-11-28's session);
      # first the forward with K folded into M (the newest path: never run on a GPU), then the files in order
      gputests) step gputests 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider --maxfail=5 --durations=10 \
                  tests/test_triton_gpu.py::test_folded_forward_with_lengths \
                  tests/test_stack_gpu.py tests/test_triton_gpu.py tests/test_numba_gpu.py ;;
      # the older steps, each a call of its own
      verify) step verify 300 "$PY" -m lstm_gpu ;;
      tests) step tests 540 "$PY" -m pytest -m gpu -q -x --durations=15 -p no:cacheprovider ;;
      tests-triton) step tests-triton 540 "$PY" -m pytest -m gpu -q --durations=10 -p no:cacheprovider \
                      tests/test_triton_gpu.py ;;
      tests-numba) step tests-numba 540 "$PY" -m pytest -m gpu -q --durations=10 -p no:cacheprovider \
                     tests/test_numba_gpu.py ;;
      tests-rest) step tests-rest 540 "$PY" -m pytest -m gpu -q --durations=10 -p no:cacheprovider tests \
                    --ignore=tests/test_triton_gpu.py --ignore=tests/test_numba_gpu.py ;;
      bench) step bench 560 "$PY" -m bench --quick ;;
      charlm) step charlm 300 "$PY" -m bench.train_charlm --device cuda --backends nn,cudnn,triton,numba \
                --steps 200 --json reports/data/gpu-charlm.json --plot reports/charlm-gpu.png ;;
      *) echo "unknown step $s1" | tee -a "$LOG" ;;
    esac
done
echo "=== session done after $(( SECONDS - START ))s" | tee -a "$LOG"
