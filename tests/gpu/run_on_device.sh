#!/bin/bash
# The gpu tests on a lent NVIDIA machine that has CUDA, Python and the model stack but no
# TensorRT and no network: builds pycuda from its sdist with the machine's nvcc, installs the few
# pure-Python wheels the tests import that are missing there, runs `pytest -m gpu tests/gpu`, and
# leaves the log and a JSON summary in $OUT (the device tool's folder; ./gpu-out elsewhere).
#
# Needs, carried beside the checkout in .gpucarry/ (ignored by git), made on any machine with pip:
#   pip download --no-binary :all: --no-deps --no-build-isolation pycuda==2026.1 -d .gpucarry
#   pip download --only-binary :all: --no-deps --python-version 3.12 --implementation py \
#       --platform any -d .gpucarry pytools platformdirs mako redis marshmallow
#   pip download --only-binary :all: --no-deps --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .gpucarry siphash24
# Run as: bash tests/gpu/run_on_device.sh   (device tool: carry [".gpucarry"], timeout_s 480)
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
ROOT=$PWD
SITE=/tmp/detserve-site
PY=python3

main() {
echo "== $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || return 1
nvcc --version | tail -2
$PY --version
$PY -c "import numpy, onnx, onnxruntime, PIL; print('numpy', numpy.__version__, 'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__, 'pillow', PIL.__version__)"

echo "== carried wheels"
$PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$ROOT"/.gpucarry/*.whl || return 1
export PYTHONPATH=$SITE

echo "== pycuda from its sdist"
started=$(date +%s)
CUDA_ROOT=$(dirname "$(dirname "$(command -v nvcc)")")
rm -rf /tmp/pycuda-build && mkdir -p /tmp/pycuda-build
tar xzf "$ROOT"/.gpucarry/pycuda-*.tar.gz -C /tmp/pycuda-build || return 1
cd /tmp/pycuda-build/pycuda-* || return 1
# libcuda.so: the driver's own where it is mounted, else the toolkit's link stub
$PY configure.py --cuda-root="$CUDA_ROOT" \
  --cudadrv-lib-dir="/usr/local/nvidia/lib64,/usr/lib/x86_64-linux-gnu,$CUDA_ROOT/lib64,$CUDA_ROOT/lib64/stubs" \
  >/dev/null || return 1
$PY "$ROOT/tests/gpu/build_pycuda.py" build_ext --inplace -j "$(nproc)" > "$OUT/pycuda-build.log" 2>&1 \
  || { tail -40 "$OUT/pycuda-build.log"; return 1; }
export PYTHONPATH=$PWD:$SITE
cd "$ROOT" || return 1
echo "pycuda built in $(( $(date +%s) - started )) s"
$PY -c "import pycuda, pycuda.driver as d; d.init(); print('pycuda', pycuda.VERSION_TEXT, 'driver API', d.get_driver_version(), d.Device(0).name())" || return 1

echo "== pytest -m gpu tests/gpu"
# --noconftest: tests/conftest.py starts a Redis and the API stack for the other suites; the gpu
# tests need neither. -W default: report warnings (pyproject turns them into errors) rather than
# lose a run on a deprecation in this machine's packages.
PYTHONPATH=$PYTHONPATH:$ROOT/shared:$ROOT/services/worker-gpu:$ROOT/tests \
DETSERVE_GPU_REPORT=$OUT/gpu-report.json PYTHONUNBUFFERED=1 \
  timeout 300 $PY -m pytest -m gpu tests/gpu -p no:cacheprovider --noconftest -W default -rA -s
status=$?
echo "== pytest exit $status"
cat "$OUT/gpu-report.json" 2>/dev/null
return $status
}

main 2>&1 | tee "$OUT/device.log"
exit "${PIPESTATUS[0]}"
