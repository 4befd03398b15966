#!/usr/bin/env bash
# One GPU session for the CUDA backend (issue 4): build, check, sanitize, test, time. Run from the repository root
# on the GPU machine (through the device tool), with $OUT the folder whose files come back:
#
#   TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 bash bench/gpu/run_gpu_session.sh
#
# Steps, in order of what matters most if time runs out (each has its own time cap; the whole stays under ~9 min):
#   1. environment (GPU, driver, torch, triton, nvcc)                       -> env.log
#   2. JIT-build the op library with the CUDA kernels, print ptxas usage      -> build.log
#   3. bench/gpu/check_cuda_kernels.py: correctness sweep, GhostNet shapes, empty inputs, CUDA graph capture,
#      torch.compile(fullgraph, reduce-overhead), opcheck, error messages    -> check.log, check.json
#   4. compute-sanitizer memcheck and racecheck on bench/gpu/sanitize_case.py (ghostkernels kernels only)
#                                                                            -> memcheck.log, racecheck.log
#   5. bench/gpu/kernel_roofline.py: copy bandwidth, tensor-core rate, every GhostNet 1.0x shape at batch 256
#      float16 channels_last: fused vs eager forward and forward+backward    -> roofline.log, roofline.json
#   6. the whole pytest suite (CUDA twins of the op tests included)          -> pytest.log
#   7. the benchmark harness, python -m ghostkernels.bench --full on cuda, GhostNet 1.0x, batch 256, float16
#      channels_last and float32 NCHW (skipped with a message if the harness is missing)
#                                                                            -> bench/cuda.{json,png,md}, bench.log
# Comes back in $OUT (at most 8 files): summary.txt (every step's status and the key lines), logs.tgz (all logs),
# check.json, roofline.json, bench/cuda.json, bench/cuda.png, bench/cuda.md.
set -u
OUT=${OUT:?set OUT to the folder for results}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's ghostkernels, also for scripts in bench/gpu
export GHOSTKERNELS_CACHE=${GHOSTKERNELS_CACHE:-/tmp/ghostkernels-cache}
PY=${PYTHON:-python3}
BUDGET=${SESSION_BUDGET_S:-540}   # seconds for the whole script
LOGS="$OUT/logs"
mkdir -p "$LOGS" "$OUT/bench"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - SECONDS)); }
# step NAME CAP_SECONDS LOG CMD...: runs CMD with a time cap (never past the budget), records status and duration.
step() {
  local name=$1 cap=$2 log=$3
  shift 3
  local remaining
  remaining=$(left)
  if ((remaining < 20)); then
    note "[SKIP] $name: out of time ($remaining s left)"
    return 1
  fi
  ((cap > remaining - 10)) && cap=$((remaining - 10))
  local t0=$SECONDS
  timeout --kill-after=10 "$cap" "$@" > "$log" 2>&1
  local rc=$?
  local status=PASS
  ((rc == 124 || rc == 137)) && status="TIMEOUT(${cap}s)"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAIL(rc=$rc)"
  note "[$status] $name: $((SECONDS - t0)) s, log $(basename "$log")"
  return $rc
}

note "== ghostkernels GPU session $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# 1. environment
{
  nvidia-smi
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version | tail -n 2
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer
} > "$LOGS/env.log" 2>&1
grep -E "^python|H100|H200" "$LOGS/env.log" | head -n 3 | tee -a "$SUMMARY"

# 2. build (verbose, with ptxas register/spill report of the CUDA kernels)
step build 240 "$LOGS/build.log" env GHOSTKERNELS_VERBOSE=1 $PY -c "
import ghostkernels, torch
print('library:', ghostkernels.load_library())
print('cuda kernels:', ghostkernels.ops.cuda_kernels_available())
assert ghostkernels.ops.cuda_kernels_available(), 'built without CUDA kernels'
"
BUILD_OK=$?
grep -E "cuda kernels:|error" "$LOGS/build.log" | head -n 5 | tee -a "$SUMMARY"
for f in csrc/cuda/ghost_forward.cu csrc/cuda/ghost_backward.cu; do  # ptxas report for sm_90 (build is separate)
  nvcc -std=c++17 -O3 --use_fast_math -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Icsrc -gencode arch=compute_90,code=sm_90 \
    -Xptxas -v -c "$f" -o /tmp/ptxas_probe.o >> "$LOGS/ptxas.log" 2>&1 &
done
wait
note "ptxas (sm_90): $(grep -c 'Used' "$LOGS/ptxas.log") kernels, registers $(grep -o 'Used [0-9]* registers' "$LOGS/ptxas.log" | awk '{print $2}' | sort -n | uniq | tr '\n' ' ')spill lines $(grep -E 'bytes spill' "$LOGS/ptxas.log" | grep -vc ' 0 bytes spill stores, 0 bytes spill loads')"

if ((BUILD_OK != 0)); then
  note "build failed: stopping (see build.log)"
else
  # 3. correctness
  step check 150 "$LOGS/check.log" $PY bench/gpu/check_cuda_kernels.py --json "$OUT/check.json"
  grep -E "^\[(PASS|FAIL)\]|check_cuda_kernels:" "$LOGS/check.log" | cut -c1-200 | tee -a "$SUMMARY"

  # 4. compute-sanitizer on the ghostkernels kernels only (cuDNN's are not ours)
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    step "$tool" 100 "$LOGS/$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CS" --tool "$tool" \
      --kernel-name kns=ghost_ --error-exitcode 3 $PY bench/gpu/sanitize_case.py
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|hazard" "$LOGS/$tool.log" | head -n 3 | tee -a "$SUMMARY"
  done

  # 5. the two numbers per shape
  step roofline 150 "$LOGS/roofline.log" $PY bench/gpu/kernel_roofline.py --batch 256 --json "$OUT/roofline.json"
  grep -E "TB/s|geomean" "$LOGS/roofline.log" | tee -a "$SUMMARY"

  # 6. the whole test suite
  step pytest 240 "$LOGS/pytest.log" $PY -m pytest tests -q -p no:cacheprovider --durations=15 --maxfail=50
  tail -n 4 "$LOGS/pytest.log" | tee -a "$SUMMARY"

  # 7. the benchmark harness
  if $PY -c "import ghostkernels.bench.__main__" > /dev/null 2>&1; then
    # Forward only: with training and per-case torch.compile the full GPU run does not fit one call; a second
    # session adds `--modes train --merge` to the same file. A run cut short keeps its partial JSON.
    step bench 600 "$LOGS/bench.log" $PY -m ghostkernels.bench --full --device cuda --models ghostnet_100 \
      --modes forward --dtype float16:cl,float32:nchw --batch 256 --output "$OUT/bench/cuda.json"
    tail -n 12 "$LOGS/bench.log" | tee -a "$SUMMARY"
  else
    note "[SKIP] bench: python -m ghostkernels.bench is not available in this checkout"
  fi
fi

note "== done in $SECONDS s"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
ls -la "$OUT" "$OUT/bench" | tee -a "$SUMMARY" > /dev/null
exit 0
