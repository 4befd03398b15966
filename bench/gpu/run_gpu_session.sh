#!/usr/bin/env bash
# One GPU session for the CUDA and Triton backends, sized for one device-tool call of at most 8 minutes of wall
# time (device time is 15 minutes per lent session, the machine's start-up included). Run from the repository
# root on the GPU machine, with $OUT the folder whose files come back:
#
#   TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 bash bench/gpu/run_gpu_session.sh          (timeout_s=540)
#
# Steps, in this order, each with its own time cap (never past the session budget, SESSION_BUDGET_S, default 470 s)
# and each writing its results under $OUT as soon as it ends, so a call cut short still returns every finished step:
#   1. environment + JIT build of the op library, with the Triton kernels compiling meanwhile  -> env_build.log
#   2. smoke: a 20-second correctness run of the CUDA kernels (a few random cases)              -> smoke.log
#   3. CUDA correctness vs float64: every dtype x layout x activation x k, GhostNet shapes, the 7x7/14x14
#      shapes at batch 256 (entry 37's forward layouts, bit-identical to batch 2), TF32               -> cuda_check.log
#      then the train-mode BatchNorm passes and ghost_module_bn_train on CUDA (tests/test_cuda_bn_train.py's GPU
#      tests, step bn_train)                                                                     -> cuda_check.log
#   4. Triton correctness: 8 cases, one autotune configuration                                   -> triton_check.log
#   5. timings: entry 37's small-map shapes first (fused-cuda and eager, forward), then 6 GhostNet shapes, forward
#      and forward+backward, fused-cuda / fused-triton / eager / torch.compile, inputs made on the GPU
#                                                                          -> timings.json, log in timings_e2e.log
#   6. end to end: ghostnet_100, batch 256, float16 channels_last, eager vs fused              -> timings_e2e.log
#   7. compute-sanitizer memcheck on a small forward+backward of the ghostkernels kernels          -> memcheck.log
#   8. compute-sanitizer racecheck (shared-memory hazards: the overlapped copies of entry 37) on its two cases
#                                                                                                -> memcheck.log
# plus summary.txt (every step's status and key lines: read it first): 8 files at most, none in sub-folders.
# Without a CUDA device (a dry run: OUT=/tmp/out bash bench/gpu/run_gpu_session.sh) every step says why it is
# skipped and the script exits 0.
set -u
OUT=${OUT:?set OUT to the folder for results}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's ghostkernels, also for scripts in bench/gpu
export GHOSTKERNELS_CACHE=${GHOSTKERNELS_CACHE:-/tmp/ghostkernels-cache}
export GHOSTKERNELS_TRITON_AUTOTUNE=${GHOSTKERNELS_TRITON_AUTOTUNE:-one}  # one config per shape: quick compiles
PY=${PYTHON:-python3}
BUDGET=${SESSION_BUDGET_S:-470}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - SECONDS)); }

HAVE_GPU=0
GPU_WHY="no CUDA device"
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
  HAVE_GPU=1
else
  GPU_WHY="no CUDA device ($($PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tail -n 1))"
fi

# step NAME CAP LOG CMD...: runs CMD with its output in LOG, capped at CAP seconds and at the budget left; notes
# the status and duration in the summary. Skipped without a GPU or when fewer than 15 s are left.
step() {
  local name=$1 cap=$2 log=$3
  shift 3
  if ((HAVE_GPU == 0)); then
    note "[SKIP] $name: $GPU_WHY"
    echo "$name skipped: $GPU_WHY" >> "$log"
    return 0
  fi
  local remaining
  remaining=$(left)
  if ((remaining < 15)); then
    note "[SKIP] $name: out of time ($remaining s of the ${BUDGET} s budget left)"
    return 0
  fi
  ((cap > remaining - 5)) && cap=$((remaining - 5))
  local t0=$SECONDS
  timeout --kill-after=5 "$cap" "$@" >> "$log" 2>&1
  local rc=$?
  local status=PASS
  ((rc == 124 || rc == 137)) && status="TIMEOUT(${cap}s)"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAIL(rc=$rc)"
  note "[$status] $name: $((SECONDS - t0)) s, $(basename "$log")"
  return $rc
}

note "== ghostkernels GPU session $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget ${BUDGET} s"

# 1. environment, then the build with the Triton kernels compiling beside it (they need no op library)
LOG="$OUT/env_build.log"
{
  nvidia-smi 2>&1 | head -n 15
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -n 2
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS GHOSTKERNELS_TRITON_AUTOTUNE=$GHOSTKERNELS_TRITON_AUTOTUNE"
} > "$LOG" 2>&1
grep -E "^python|^triton|release" "$LOG" | tee -a "$SUMMARY"
if ((HAVE_GPU == 1)); then
  timeout 200 $PY bench/gpu/check_triton_kernels.py --warm > "$OUT/triton_check.log" 2>&1 &
  WARM_PID=$!
fi
step build 240 "$LOG" $PY -c "
import ghostkernels
print('library:', ghostkernels.load_library())
ops = ghostkernels.ops
ok = getattr(ops, 'cuda_kernels_available', lambda: True)()
print('cuda kernels:', ok)
assert ok, 'the op library was built without the CUDA kernels'
"
BUILD_OK=$?
grep -E "cuda kernels:|error" "$LOG" | head -n 5 | tee -a "$SUMMARY"
if ((HAVE_GPU == 1)); then
  wait "$WARM_PID"
  note "triton warm-up (compiles, autotune=$GHOSTKERNELS_TRITON_AUTOTUNE): rc $?, $(grep -c '^\[PASS\]' "$OUT/triton_check.log") of 8 cases ran"
fi

if ((HAVE_GPU == 1 && BUILD_OK != 0)); then
  note "build failed: the CUDA steps are skipped (see env_build.log)"
  HAVE_GPU=0
  GPU_WHY="the build failed"
fi

# 2. smoke: a few random cases of every dtype, forward and backward, in about 20 s
step smoke 30 "$OUT/smoke.log" $PY bench/gpu/check_cuda_kernels.py --checks sweep --cases 12
grep -E "^\[(PASS|FAIL)\]" "$OUT/smoke.log" | cut -c1-200 | tee -a "$SUMMARY"

# 3. CUDA correctness against float64
step cuda_check 90 "$OUT/cuda_check.log" $PY bench/gpu/check_cuda_kernels.py \
  --checks grid,ghostnet,blocking,gated,tf32,empty,strided,graph,errors
grep -E "^\[(PASS|FAIL)\]|    FAIL|check_cuda_kernels:" "$OUT/cuda_check.log" | cut -c1-200 | head -n 20 | tee -a "$SUMMARY"
echo "== bn_train" >> "$OUT/cuda_check.log"
step bn_train 60 "$OUT/cuda_check.log" $PY -m pytest tests/test_cuda_bn_train.py -q -x -p no:cacheprovider -k gpu
sed -n '/^== bn_train/,$p' "$OUT/cuda_check.log" | grep -E "passed|failed|Error" | cut -c1-200 | head -n 5 | \
  tee -a "$SUMMARY"

# 4. Triton correctness (the warm-up compiled its kernels)
echo "== check" >> "$OUT/triton_check.log"
step triton_check 60 "$OUT/triton_check.log" $PY bench/gpu/check_triton_kernels.py
sed -n '/^== check/,$p' "$OUT/triton_check.log" | grep -E "FAIL|check_triton_kernels:" | cut -c1-200 | tee -a "$SUMMARY"

# 5. timings of 6 shapes (JSON rewritten after every shape)
TE="$OUT/timings_e2e.log"
echo "== timings" >> "$TE"
step timings 120 "$TE" $PY bench/gpu/time_shapes.py --batch 256 --shapes small+spread --json "$OUT/timings.json"
tail -n 13 "$TE" | tee -a "$SUMMARY"
grep -E "Error" "$TE" | head -n 5 | cut -c1-200 | tee -a "$SUMMARY"

# 6. end to end: ghostnet_100 at batch 256 (no Ghost-module microbenchmarks, no memory probe)
echo "== end to end" >> "$TE"
step e2e 90 "$TE" $PY -m ghostkernels.bench --device cuda --models ghostnet_100 --modes forward \
  --dtype float16:cl --batch 256 --no-modules --no-memory
sed -n '/^== end to end/,$p' "$TE" | tail -n 12 | tee -a "$SUMMARY"

# 7. compute-sanitizer on the ghostkernels kernels only (cuDNN's are not ours)
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
step memcheck 60 "$OUT/memcheck.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CS" --tool memcheck \
  --kernel-name kns=ghost_ --error-exitcode 3 $PY bench/gpu/sanitize_case.py
grep -E "ERROR SUMMARY|Invalid" "$OUT/memcheck.log" | head -n 3 | tee -a "$SUMMARY"
echo "== racecheck" >> "$OUT/memcheck.log"
step racecheck 45 "$OUT/memcheck.log" "$CS" --tool racecheck --kernel-name kns=ghost_forward --error-exitcode 3 \
  $PY bench/gpu/sanitize_case.py --only-layouts
sed -n '/^== racecheck/,$p' "$OUT/memcheck.log" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard" | head -n 3 | \
  tee -a "$SUMMARY"

note "== done in $SECONDS s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
exit 0
