#!/usr/bin/env bash
# The GPU check, as one command for a session that is lent the device (see the device tool's
# README): the engine's tests on CUDA, then the speed benchmarks (issue #15), each step under its
# own time limit and the slowest (sam2's vos_optimized compiles with max-autotune) after them; the
# limits of those add up to 570 s, one call of the device tool (at most 600 s). Last, the time of
# a continual adaptation on the device (issue #16), in whatever the call has left: the steps
# before rarely use their whole limit, and if the call's limit ends this one, the reports of the
# others are already in $OUT.
#
# Here, once:  bash ../shared/scripts/gpu-wheels.sh   (sam2, hydra and friends into .whl/)
#              .venv/bin/python -m pip wheel -q --no-deps -w .whl "monai==$(.venv/bin/python -c 'import monai; print(monai.__version__)')"
#              (the evaluation's NSD, which the continual step computes; pure Python, 2 MB)
# There:       run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=590)
# Rehearse on the CPU: DEVICE=cpu SIZE=64 FRAMES=4 LARGE_FRAMES=2 bash scripts/gpu_check.sh
#
# Everything lands in $OUT (the device tool brings it back): one log per step and the reports.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-512}
FRAMES=${FRAMES:-256}
LARGE_FRAMES=${LARGE_FRAMES:-128}
OUT=${OUT:-/tmp/gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && [ "$DEVICE" != cpu ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
fi

step() {  # step NAME SECONDS COMMAND...: run it under its own limit, log it, go on either way
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/$name.log"
  echo "=== $name: rc $rc"
}

step environment 30 bash -c "nvidia-smi || true; $PY -c 'import torch, sam2; print(torch.__version__, torch.cuda.is_available())'"
# The engine on the device, in float32: the oracle (bit-identical to stock), converge-stop and
# background encoding. pytest's ini options name plugins a bare machine lacks: none of them.
step tests 120 env NAPARI_SAMED2_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -x -p no:cacheprovider -p no:warnings \
  -o addopts="" tests/engine/test_oracle.py tests/engine/test_converge.py tests/engine/test_prefetch.py
# Tiny at 512 px: stock, ours, and the GUI's way (encoded ahead, converge-stop).
step bench_tiny 120 "$PY" benchmarks/bench_engine.py --device "$DEVICE" --frames "$FRAMES" --size "$SIZE" \
  --gui --out "$OUT/benchmarks_cuda_tiny.md"
# Large at 1024 px (SIZE*2).
step bench_large 120 "$PY" benchmarks/bench_engine.py --device "$DEVICE" --frames "$LARGE_FRAMES" \
  --size $((SIZE * 2)) --model sam2.1-large --gui --out "$OUT/benchmarks_cuda_large.md"
# Stock vos_optimized last: its first call compiles every component with max-autotune.
step bench_vos 180 "$PY" benchmarks/bench_engine.py --device "$DEVICE" --frames "$FRAMES" --size "$SIZE" \
  --vos-optimized --out "$OUT/benchmarks_cuda_vos.md"
# Continual adaptation: two domains, one confirmed volume each, replay + distillation, at the
# shape and clicks of docs/continual.md's run; the report's "s / adaptation" is what issue #16
# asks for on a GPU (20 steps with the adaptation's check; 11-13 s on the CPU of that run).
step continual 150 "$PY" benchmarks/bench_continual.py demo --device "$DEVICE" --domains mr ct \
  --modes replay+distill --train-volumes 1 --test-volumes 1 --shape 16 128 128 --clicks 2 \
  --out "$OUT/continual_cuda.md"
ls -l "$OUT"
