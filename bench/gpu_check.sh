#!/usr/bin/env bash
# One prepared check on a GPU machine without network access: carried wheels, build (sm_90), the CUDA tests (the
# fused ops' edge cases, CUDA graphs, pinned noise), then the measurements — all through the installed command
# `noisefast bench` (noisefast/bench/), each writing its JSON result as it finishes so that a time limit keeps what
# was measured:
#   scoring   noisefast bench scoring --matrix: seeds/s at 512² 1+1 (Turbo-style, trailing, no CFG) and 1024² 4+4
#             (CFG 5.5), batch 8/32/1, fp16 SDXL UNet with random weights (arch:sdxl-turbo / arch:sdxl): noisefast
#             plain and with the fast path (variant "fast": channels_last, SDPA, fused QKV, CUDA graph of the whole
#             chain, pinned seed noise) vs the per-seed and the batched diffusers users, same run
#   kernels   noisefast bench kernels: fused ops' GB/s vs the same run's device copy (fp16, bf16, fp32)
#   optimize  noisefast bench optimize --steps 1 4 10: s/iteration and torch.cuda.max_memory_allocated (flat in N?)
#   unet      noisefast bench unet: SDXL UNet calls at 512² and 1024², batch 1/8/32, vs the measured matmul peak
# TensorRT and onnxruntime-gpu cannot be installed on the device machine: the script records that skip and spends no
# device time on those backends.
#
#   bash bench/gpu_check.sh OUTDIR [--dry-run]
#
# Prepare on a machine with PyPI (once; .whl/ is gitignored, ~6 MB): the device image has torch 2.11, transformers,
# huggingface-hub, safetensors, pytest(-benchmark, -xdist), onnx, onnxruntime, scikit-build-core, pybind11, but no
# diffusers (diffusers 0.42.1 needs nothing else that is missing there on Python 3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
#
# The device call (one call, at most 8 min of script on an H100/H200 including the build; budget below):
#   run(command="bash bench/gpu_check.sh $OUT", carry=[".whl"], timeout_s=540)
#
# --dry-run (any machine, no GPU needed): checks the script's flow: prints the install/build commands instead of
# running them, runs the CUDA-marked tests (they skip without a GPU), every measurement above on the CPU with the tiny
# architecture (--model arch:tiny --quick), and the bench schema/compare tests as "the rest".
#
# Files in OUTDIR (at most 8): summary.txt, build.log, tests.log (CUDA tests, then the rest), bench.log (every
# measurement's output and Markdown), scoring.json, kernels.json, optimize.json, unet.json (the noisefast bench results
# schema: `noisefast bench show X.json` renders one again, `noisefast bench compare A.json B.json` lays two side by side).
# Time budget: GPU_CHECK_BUDGET_S (default 450 s) for the whole script; each step gets a timeout from what is left:
#   build ≤ 200 s · CUDA tests ≤ 75 s · scoring matrix: rows started within (what is left − 150 s, 30…160 s) ·
#   kernels ≤ 40 s · optimization 1/4/10 steps ≤ 90 s · UNet calls: what is left less 15 s (budget 20…120 s) ·
#   the other tests only with ≥ 40 s left.
set -uo pipefail

OUTDIR=${1:?usage: bench/gpu_check.sh OUTDIR [--dry-run]}
DRY=0
[[ "${2:-}" == "--dry-run" ]] && DRY=1
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
T_END=$((SECONDS + BUDGET_S))
SUMMARY="$OUTDIR/summary.txt"
: >"$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((T_END - SECONDS)); }
clamp() { local v=$1 lo=$2 hi=$3; ((v < lo)) && v=$lo; ((v > hi)) && v=$hi; echo $v; }
# step NAME LOG TIMEOUT_S CMD...: run with a timeout, log to LOG, record status and seconds in the summary
step() {
  local name=$1 log=$2 limit=$3 t0=$SECONDS rc
  shift 3
  if ((limit < 10)); then
    say "[$name] SKIPPED: ${limit}s of the ${BUDGET_S}s budget left"
    return 1
  fi
  echo "\$ $*" >>"$log"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local status="ok"
  ((rc == 124)) && status="TIMED OUT after ${limit}s"
  ((rc != 0 && rc != 124)) && status="FAILED (exit $rc)"
  say "[$name] $status in $((SECONDS - t0))s  (log: $(basename "$log"))"
  return $rc
}

say "# noisefast gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)  git $(git describe --always --dirty 2>/dev/null || echo '?')"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi: no GPU')"
say "$($PY -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())')"

# 1. carried wheels (pure Python; --target keeps the image's packages untouched)
if ((DRY)); then
  say "[wheels] dry run: would run: $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl"
elif compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$SUMMARY" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  say "[wheels] installed: $(cd .whl && ls *.whl | tr '\n' ' ')"
fi
for mod in tensorrt onnxruntime; do
  if [[ $mod == onnxruntime ]]; then
    has=$($PY -c "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())" 2>/dev/null)
  else
    has=$($PY -c "import tensorrt; print(True)" 2>/dev/null)
  fi
  [[ $has == True ]] || say "[backends] $mod$([[ $mod == onnxruntime ]] && echo ' (CUDA provider)') not installable here: skipped, no device time spent"
done
if ! $PY -c "import diffusers" 2>>"$SUMMARY"; then
  say "[wheels] diffusers is not importable: carry .whl (see the header of this script)"
  exit 2
fi

# 2. build: the CPU and CUDA extensions, sm_90 only (H100/H200). CMake takes the architecture from CUDAARCHS
#    (or -DCMAKE_CUDA_ARCHITECTURES in CMAKE_ARGS, which scikit-build-core passes on), not from an environment
#    variable named CMAKE_CUDA_ARCHITECTURES.
BUILD=(env CUDAARCHS=90 CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" NOISEFAST_CUDA=ON
       "$PY" -m pip install --no-build-isolation --no-deps -e .)
if ((DRY)); then
  say "[build] dry run: would run: ${BUILD[*]}"
else
  step build "$OUTDIR/build.log" $(($(left) < 200 ? $(left) : 200)) "${BUILD[@]}" || { tail -30 "$OUTDIR/build.log"; exit 3; }
fi
say "$($PY -c 'import noisefast._ext, json; b = noisefast._ext.build_info(); print("build:", json.dumps({k: b.get(k) for k in ("cpu_extension", "cuda_extension", "cuda_archs", "cuda_usable", "cuda_unusable_reason")}))' 2>&1)"

# 3. the CUDA-marked tests (ops on every dtype, tests/test_cuda_edges.py, CUDA graphs, pinned seed noise)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
TESTS_LOG="$OUTDIR/tests.log"
step tests_cuda "$TESTS_LOG" $(($(left) < 75 ? $(left) : 75)) "${PYTEST[@]}" -m cuda -rs
say "    $(tail -1 "$TESTS_LOG")"

# 4. the measurements, through the installed command (its Markdown goes to bench.log)
BENCH_LOG="$OUTDIR/bench.log"
NB=("$PY" -m noisefast.cli bench)
if ((DRY)); then  # the same flow on the CPU: the tiny architecture, quick sizes
  DEV=(--device cpu --threads 1)
  SC=(--model arch:tiny --quick --budget-s 60)
  KR=(--quick)
  OP=(--model arch:tiny --quick --steps 1 2)
  UN=(--model arch:tiny --quick --budget-s 30)
else
  DEV=(--device cuda)
  SC=(--budget-s "$(clamp $(($(left) - 150)) 30 160)")
  KR=()
  OP=(--steps 1 4 10)
fi
# the scoring step's limit: the rows' budget + the model builds + one row running over
step scoring "$BENCH_LOG" "$(clamp $(($(left) - 110)) 10 200)" "${NB[@]}" scoring --matrix "${DEV[@]}" "${SC[@]}" \
  --json "$OUTDIR/scoring.json"
SC_RC=$?
step kernels "$BENCH_LOG" "$(clamp $(($(left) - 15)) 10 40)" "${NB[@]}" kernels "${DEV[@]}" "${KR[@]}" \
  --json "$OUTDIR/kernels.json"
KR_RC=$?
step optimize "$BENCH_LOG" "$(clamp $(($(left) - 15)) 10 90)" "${NB[@]}" optimize "${DEV[@]}" "${OP[@]}" \
  --json "$OUTDIR/optimize.json"
OP_RC=$?
((DRY)) || UN=(--budget-s "$(clamp $(($(left) - 40)) 20 120)")  # what the steps before left
step unet "$BENCH_LOG" $(($(left) - 15)) "${NB[@]}" unet "${DEV[@]}" "${UN[@]}" --json "$OUTDIR/unet.json"
UN_RC=$?

# 5. the other tests (not slow), in parallel where pytest-xdist is installed, only if 40 s are left
if ((DRY)); then
  REST=(tests/test_bench.py -k "schema or compare or legacy or summarize or round_robin")
else
  REST=(-m "not cuda and not slow")
  $PY -c "import xdist" 2>/dev/null && REST+=(-n 8)
fi
if (($(left) >= 40)); then
  step tests "$TESTS_LOG" $(($(left) - 5)) "${PYTEST[@]}" "${REST[@]}"
  say "    $(tail -1 "$TESTS_LOG")"
else
  say "[tests] SKIPPED: $(left)s left of the ${BUDGET_S}s budget"
fi

# 6. the short table: the step lines, then each result's tables
echo
cat "$SUMMARY"
for r in scoring kernels optimize unet; do
  [[ -f "$OUTDIR/$r.json" ]] && { echo; "${NB[@]}" show "$OUTDIR/$r.json" | sed -n '/^timing:/,$p'; }
done
for rc in $SC_RC $KR_RC $OP_RC $UN_RC; do ((rc != 0)) && exit $rc; done
exit 0
