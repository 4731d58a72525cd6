#!/usr/bin/env bash
# One prepared check on a GPU machine without network access: carried wheels, build (sm_90), the CUDA tests,
# the other tests (quick), then the comparison runner on CUDA. Everything lands in OUTDIR; a short table last.
#
#   bash bench/gpu_check.sh OUTDIR [--dry-run]
#
# Prepare on a machine with PyPI (once; .whl/ is gitignored, ~6 MB): the device image has torch 2.11, transformers,
# huggingface-hub, safetensors, pytest(-benchmark, -xdist), onnx, onnxruntime, scikit-build-core, pybind11, but no
# diffusers (diffusers 0.42.1 needs nothing else that is missing there on Python 3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
#
# The lead's device call (one call, at most 7 min of script on an H100 including the build):
#   run(command="bash bench/gpu_check.sh $OUT", carry=[".whl"], timeout_s=480)
#
# --dry-run (any machine, no GPU needed): checks the script's flow: prints the install/build commands instead of
# running them, runs the CUDA-marked tests (they skip without a GPU), the bench smoke test as "the rest", and the
# runner with --device cpu --quick.
#
# Files in OUTDIR (the device returns at most 8): summary.txt, build.log, tests_cuda.log, tests.log, compare.log,
# compare.json, compare.md. Time budget: GPU_CHECK_BUDGET_S (default 420 s) for the whole script; each step gets
# a timeout from what is left, the comparison's UNet part a budget from what is left after the other parts.
set -uo pipefail

OUTDIR=${1:?usage: bench/gpu_check.sh OUTDIR [--dry-run]}
DRY=0
[[ "${2:-}" == "--dry-run" ]] && DRY=1
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-420}
T_END=$((SECONDS + BUDGET_S))
SUMMARY="$OUTDIR/summary.txt"
: >"$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((T_END - SECONDS)); }
# step NAME LOG TIMEOUT_S CMD...: run with a timeout, log to LOG, record status and seconds in the summary
step() {
  local name=$1 log=$2 limit=$3 t0=$SECONDS rc
  shift 3
  if ((limit < 10)); then
    say "[$name] SKIPPED: ${limit}s of the ${BUDGET_S}s budget left"
    return 1
  fi
  echo "\$ $*" >"$log"
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
  step build "$OUTDIR/build.log" $(($(left) < 300 ? $(left) : 300)) "${BUILD[@]}" || { tail -30 "$OUTDIR/build.log"; exit 3; }
fi
say "$($PY -c 'import noisefast._ext, json; b = noisefast._ext.build_info(); print("build:", json.dumps({k: b.get(k) for k in ("cpu_extension", "cuda_extension", "cuda_archs", "cuda_usable", "cuda_unusable_reason")}))' 2>&1)"

# 3. the CUDA-marked tests
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
step tests_cuda "$OUTDIR/tests_cuda.log" $(($(left) < 150 ? $(left) : 150)) "${PYTEST[@]}" -m cuda -rs
say "    $(tail -1 "$OUTDIR/tests_cuda.log")"

# 4. the comparison runner. Parts 1-3 with the model build take ~1-2 min on an H100; part 4 (UNet calls) gets
#    what is left after those and a minute for step 5; torch.compile (1024², batch 8) runs last, only if 120 s
#    of that budget remain once the eager rows are done.
if ((DRY)); then
  CMP=(--device cpu --quick --threads 1)
else
  CMP=(--device cuda --compile --budget-s $(($(left) - 160 > 30 ? $(left) - 160 : 30)))
fi
step compare "$OUTDIR/compare.log" $(($(left) - 10)) "$PY" -m bench.compare --json "$OUTDIR/compare.json" \
  --md "$OUTDIR/compare.md" "${CMP[@]}"
CMP_RC=$?

# 5. the other tests (not slow), in parallel where pytest-xdist is installed, in the time that is left
if ((DRY)); then
  REST=(tests/test_bench_smoke.py)
else
  REST=(-m "not cuda and not slow")
  $PY -c "import xdist" 2>/dev/null && REST+=(-n 8)
fi
step tests "$OUTDIR/tests.log" $(($(left) - 5 < 150 ? $(left) - 5 : 150)) "${PYTEST[@]}" "${REST[@]}"
say "    $(tail -1 "$OUTDIR/tests.log")"

# 6. the short table: the step lines, then the runner's headline and targets
echo
cat "$SUMMARY"
if [[ -f "$OUTDIR/compare.md" ]]; then
  echo
  sed -n '1,/^### /p' "$OUTDIR/compare.md" | sed '$d'
fi
exit $CMP_RC
