#!/usr/bin/env bash
# GPU check for rtml serving: confirms ONNX Runtime's CUDA execution provider really runs, then
# records the serving benchmark (quick grid) with the device named. Never resets or reconfigures
# the GPU: it only reads nvidia-smi and runs inference.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --prepare    # here (with PyPI): build the wheel bundle to carry
#   bash benchmarks/gpu_check.sh --stage      # on the GPU machine: keep the carried bundle parts
#
# Why a bundle and not the project's .venv: the GPU machine reaches no package index, its own
# python3 is 3.12 (the project's venv is 3.11 and ~1 GB) and only 64 MiB travel per call. Its
# image already holds numpy, onnx, PyYAML, psutil, prometheus-client and the CUDA 13 / cuDNN 9
# libraries (PyTorch's nvidia-* wheels), but neither onnxruntime-gpu nor pydantic nor grpc's
# health/reflection packages, orjson, datasketches, confluent-kafka and redis. So --prepare downloads exactly those (pinned as in pyproject.toml,
# for CPython 3.12), unpacks them into one tree, compresses it (xz) and splits it into parts of
# < 60 MiB under build/gpu/parts/ (build/ is git-ignored). Each device call carries one part and
# runs --stage, which copies it to /tmp/rtml-gpu/parts (kept while the machine stays warm); the
# last call runs --stage then the check, which verifies the parts' sha256, unpacks them into
# /tmp/rtml-gpu/site and puts that first on PYTHONPATH. If a working .venv was carried instead
# (same Python, all imports present), it is used as it is.
#
# Results: $OUT/serving_gpu.json (the device tool's output folder; benchmarks/results without it)
# and $OUT/gpu_check.log. Every step has a timeout; the whole run stays under 8 minutes.
# RTML_GPU_USE_BUNDLE=1 forces the bundle even where a working .venv exists (to test it).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PARTS_DIR="build/gpu/parts"
STAGE="/tmp/rtml-gpu"
DEVICE_PY="${RTML_GPU_PYTHON_VERSION:-3.12}"
PART_SIZE="${RTML_GPU_PART_SIZE:-60M}"
# Pinned like pyproject.toml; onnxruntime-gpu 1.31.1 is built for CUDA 13 + cuDNN 9.
WHEELS=(
  onnxruntime-gpu==1.31.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 grpcio==1.85.3 grpcio-health-checking==1.81.1
  grpcio-reflection==1.81.1 protobuf==6.33.6 prometheus-client==0.26.0
  # The server imports these too (bandit rewards, event codecs, feature sketches).
  orjson==3.13.0 datasketches==5.2.0 confluent-kafka==2.16.1 redis==8.1.0 hiredis==3.5.0
  # To compile rtml's C extensions (setup.py) for the device's Python.
  setuptools==80.9.0
)

log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

prepare() {
  local pip="${PIP:-$ROOT/.venv/bin/pip}" work="build/gpu"
  rm -rf "$work/whl" "$work/site" "$PARTS_DIR" && mkdir -p "$work/whl" "$work/site" "$PARTS_DIR" || return 1
  "$pip" download --no-deps --only-binary=:all: --python-version "$DEVICE_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -q -d "$work/whl" "${WHEELS[@]}" || return 1
  local w
  for w in "$work"/whl/*.whl; do unzip -q -o "$w" -d "$work/site" || return 1; done
  # Not used here and 1 MB: ONNX Runtime's TensorRT provider (no TensorRT on the machine).
  rm -f "$work"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
  log "compressing $(du -sh "$work/site" | cut -f1) (xz, ~2 minutes on 2 cores)"
  tar -C "$work/site" -cf - . | xz -T0 -6 | split -b "$PART_SIZE" -d -a 2 - "$PARTS_DIR/part-" || return 1
  (cd "$PARTS_DIR" && sha256sum part-* > SHA256SUMS)
  log "bundle ready:"; ls -la "$PARTS_DIR"
  log "carry one part per device call together with $PARTS_DIR/SHA256SUMS, e.g."
  log "  carry [$PARTS_DIR/part-00, $PARTS_DIR/SHA256SUMS]  command: bash benchmarks/gpu_check.sh --stage"
  log "  ... last part: bash benchmarks/gpu_check.sh --stage && bash benchmarks/gpu_check.sh"
}

stage() {
  mkdir -p "$STAGE/parts" || return 1
  local f n=0
  for f in "$PARTS_DIR"/part-* "$PARTS_DIR"/SHA256SUMS; do
    [ -f "$f" ] || continue
    cp -f "$f" "$STAGE/parts/" && n=$((n + 1))
  done
  log "staged $n file(s); $STAGE/parts now holds: $(cd "$STAGE/parts" && ls | tr '\n' ' ')"
}

# Unpack the staged bundle into $STAGE/site (once per machine); return non-zero when incomplete.
install_bundle() {
  [ -f "$STAGE/site/.complete" ] && return 0
  [ -d "$STAGE/parts" ] || stage >/dev/null
  if [ ! -f "$STAGE/parts/SHA256SUMS" ]; then
    log "no bundle staged (run --prepare here, then carry the parts)"; return 1
  fi
  (cd "$STAGE/parts" && sha256sum -c --quiet SHA256SUMS) || { log "bundle parts missing or corrupt"; return 1; }
  rm -rf "$STAGE/site" && mkdir -p "$STAGE/site"
  # Python's own tarfile/lzma: no dependence on an xz binary on the machine.
  cat "$STAGE"/parts/part-* | "$1" -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('$STAGE/site')" \
    || { log "unpacking the bundle failed"; return 1; }
  touch "$STAGE/site/.complete"
}

check() {
  local out="${OUT:-$ROOT/benchmarks/results}" t_start=$SECONDS py rc=0
  mkdir -p "$out"
  exec > >(tee -a "$out/gpu_check.log") 2>&1
  log "repository $ROOT, results in $out"

  log "nvidia-smi"
  timeout 30 nvidia-smi || log "nvidia-smi failed (rc $?)"
  local gpu
  gpu="$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  gpu="${gpu:-unknown GPU}"

  # 1. a Python with every import the serving benchmark needs
  py=""
  if [ -z "${RTML_GPU_USE_BUNDLE:-}" ] && [ -x .venv/bin/python ] && timeout 60 .venv/bin/python -c "import onnxruntime, grpc, pydantic, grpc_health" 2>/dev/null; then
    py="$ROOT/.venv/bin/python"; log "using the carried virtualenv"
  else
    py="$(command -v python3)"
    log "using $py ($("$py" -V 2>&1)) with the carried wheel bundle"
    timeout 120 bash -c "$(declare -f log stage install_bundle); STAGE='$STAGE' PARTS_DIR='$PARTS_DIR' install_bundle '$py'" || return 3
    export PYTHONPATH="$STAGE/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # rtml's compiled modules (setup.py; git-ignored, so never carried): built in place for the
  # device's Python when missing. That needs the device's C compiler and Python headers.
  if ! timeout 60 "$py" -c "import engine.events._batch_check, engine.features._kernels, engine.features._resp, engine.runtime._routing" 2>/dev/null; then
    log "building rtml's C extensions in place for $("$py" -V 2>&1)"
    timeout 240 "$py" setup.py -q build_ext --inplace 2>&1 | tail -20
    timeout 60 "$py" -c "import engine.events._batch_check, engine.features._kernels, engine.features._resp, engine.runtime._routing" \
      || { log "no compiled modules: the device needs gcc and the Python headers"; return 7; }
  fi
  # CUDA 13 / cuDNN 9 libraries shipped as nvidia-* wheels in the image's site-packages: make
  # them findable by ONNX Runtime's CUDA provider here and in the server subprocess.
  local libdirs
  libdirs="$("$py" - <<'EOF'
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
# The CUDA toolkit's own folder last (it has cuBLAS but usually no cuDNN).
for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"):
    if os.path.isdir(d):
        dirs.add(d)
print(":".join(sorted(dirs, key=lambda d: (d.startswith("/usr/local/cuda"), d))))
EOF
)"
  [ -n "$libdirs" ] && export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "LD_LIBRARY_PATH += ${libdirs:-nothing}"

  # 2. providers listed, and a session that really runs on CUDA
  log "onnxruntime providers"
  timeout 60 "$py" -c 'import onnxruntime as o; print(o.__version__, o.__file__); print(o.get_available_providers())' || return 4
  log "CUDA session on the benchmark MLP"
  timeout 180 "$py" - <<'EOF'
import time, numpy as np, onnxruntime as ort
from benchmarks.models import BENCH_MODELS
from serving.onnx_session import cuda_provider_works, default_providers, load_onnx

spec = BENCH_MODELS["mlp"]
opts = ort.SessionOptions()
sess = ort.InferenceSession(spec.build(), opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print("session providers:", sess.get_providers())
assert sess.get_providers()[0] == "CUDAExecutionProvider", "CUDA provider not used"
x = spec.sample(128)
gpu = sess.run(None, {spec.input_name: x})[0]
cpu = ort.InferenceSession(spec.build(), providers=["CPUExecutionProvider"]).run(None, {spec.input_name: x})[0]
print("max |cuda - cpu| over 128 rows:", float(np.abs(gpu - cpu).max()))
# ORT's CUDA provider uses TF32 for float GEMMs by default (use_tf32=1): ~1e-3 relative.
assert np.allclose(gpu, cpu, rtol=1e-2, atol=1e-2), "CUDA and CPU outputs differ beyond TF32 rounding"
print("serving probe: cuda_provider_works =", cuda_provider_works(), "default_providers =", default_providers())
model = load_onnx(spec.build())
print("serving load_onnx providers:", model.providers)
assert model.providers[0] == "CUDAExecutionProvider", "the server's loader did not choose CUDA"
for b in (1, 32, 128):
    feeds = {spec.input_name: spec.sample(b)}
    for _ in range(20):
        model.run(feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        model.run(feeds); n += 1
    print(f"batch {b}: {n / (time.perf_counter() - t0):.0f} calls/s on CUDA")
EOF
  rc=$?
  if [ "$rc" -ne 0 ]; then
    log "CUDA check failed (rc $rc); libraries the CUDA provider needs, as the loader sees them:"
    local lib d
    for lib in libcudart.so.13 libcublasLt.so.13 libcublas.so.13 libcufft.so.12 libcurand.so.10 libcudnn.so.9; do
      local where=""
      for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$lib" ] && { where="$d"; break; }; done
      echo "  $lib: ${where:-not in LD_LIBRARY_PATH} $(ldconfig -p 2>/dev/null | grep -m1 "$lib" | sed 's/.*=> /ldconfig: /')"
    done
    return 5
  fi
  log "CUDA provider confirmed"

  # 3. the serving benchmark, quick grid, device named
  local left=$(( 450 - (SECONDS - t_start) ))
  [ "$left" -lt 60 ] && { log "not enough time left for the serving benchmark"; return 6; }
  # The sequence ranker is exported with torch, which the carried wheel bundle may lack.
  local models="mlp ranker"
  if timeout 60 "$py" -c "import torch, onnxscript" 2>/dev/null; then
    models="$models seq_ranker"
  else
    log "torch not importable here: the sequence ranker is left out"
  fi
  log "serving benchmark (--quick, models $models, timeout ${left}s)"
  # shellcheck disable=SC2086  # $models is a list of words on purpose
  PYTHONUNBUFFERED=1 timeout -k 10 "$left" "$py" -m benchmarks.serving --quick --device-label "$gpu" \
    --models $models --out "$out" --name serving_gpu --no-readme || rc=$?
  log "serving benchmark exit $rc after $((SECONDS - t_start))s total"
  return "$rc"
}

case "${1:-}" in
  --prepare) prepare ;;
  --stage) stage ;;
  ""|--check) check ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--prepare | --stage | --check]" >&2; exit 2 ;;
esac
