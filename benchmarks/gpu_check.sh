#!/usr/bin/env bash
# Everything a GPU machine should show, in one command, in under 9 minutes (BUDGET, default 540 s):
#   bash benchmarks/gpu_check.sh OUT [WHEELS (default .gpu-wheels)]
# on a machine with CUDA, nvcc and torch but without this project's other dependencies and without network
# (../shared/GPU-NOTES.md). Fetch the wheels beforehand where PyPI is reachable: bash benchmarks/gpu_wheels.sh
#   1. install the carried wheels into /tmp/site (PYTHONPATH) and this project (editable, no dependencies)
#   2. build gsplat, nerfacc and nvdiffrast in parallel; then `dream3d env --build` loads each and checks it against torch
#   3. python -m pytest -m cuda
#   4. benchmarks/speed.py: every preset at the embedded and the SD-1.5 size, and a whole SD-size dreamgaussian job
#   5. benchmarks/quality.py train.device=cuda on two prompts (gaussian-vsd)
#   6. benchmarks/speed.py for image-to-3D with Zero123: the embedded one and Zero123-XL's size (random weights)
#   7. if time is left: benchmarks/speed.py again with train.compile=reduce-overhead
# Each step has its own timeout and writes its results as it goes, so a run stopped early keeps what it measured.
# OUT gets: log.txt, env.txt, pytest_cuda.txt (+ .xml), speed.json, speed.md, speed_zero123.json,
# speed_compiled.json, quality.md,
# runs.tar.gz (the quality and speed run folders, without checkpoints).
# SMOKE=1 runs the same steps on the CPU at tiny sizes in a minute or two: a check of this script itself.
# STEPS="build pytest speed" runs only those of: build env pytest speed quality zero123 compiled (the two
# installs always run; runs.tar.gz comes with quality); PRESETS replaces step 4's presets, SIZES steps 4 and 7's
# sizes, PYTEST_ARGS step 3's test paths (default: tests). For a second, shorter call; give it a new OUT.
set -uo pipefail
out="$(mkdir -p "${1:?usage: gpu_check.sh OUT [WHEELS]}" && cd "$1" && pwd)"
wheels="${2:-.gpu-wheels}"
cd "$(dirname "$0")/.."
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$out/log.txt"; }
budget="${BUDGET:-540}"  # seconds for the whole script; every step's limit is cut to what is left of it
wanted() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }
step() {  # step NAME SECONDS COMMAND...: run under a timeout, output to the log, never stop the script
  local name=$1 limit=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then log "== $name: skipped, ${left}s of the budget left"; return 0; fi
  log "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >>"$out/log.txt" 2>&1
  local rc=$?
  log "== $name: exit $rc"
  return 0
}

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$(python3 -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")' 2>/dev/null || echo 9.0)}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/torch_ext}"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "${SMOKE:-0}" = 1 ]; then
  dev=cpu; sizes=embedded; zsizes=sd15-small; presets=dreamgaussian,gaussian-vsd; nsteps=2; nwarm=1; job_steps=4; budget="${BUDGET:-600}"
  tiny=(--set nerf.num_samples=16 mesh.resolution=40 mesh.texture.texture_size=64 output.turntable_frames=4 output.turntable_resolution=32)
  qsteps=(--steps 3); quality_extra=(train.resolution=32 gaussians.num_points=300 mesh.resolution=40 output.turntable_frames=4 output.turntable_resolution=32)
else
  dev=cuda; sizes=embedded,sd15; zsizes=embedded,sd15; presets=gaussian-vsd,dreamgaussian,prolificdreamer; nsteps=30; nwarm=8; job_steps=500
  tiny=(); qsteps=(); quality_extra=()
fi
presets="${PRESETS:-$presets}"; sizes="${SIZES:-$sizes}"
nvidia-smi >>"$out/log.txt" 2>&1
log "python $(python3 --version 2>&1), torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1), arch $TORCH_CUDA_ARCH_LIST"

# 1. wheels and the project (gpu_wheels.sh packs them as wheels.tar.xz; loose *.whl files are taken as they are)
if [ "${SMOKE:-0}" != 1 ] && [ -f "$wheels/wheels.tar.xz" ]; then
  mkdir -p /tmp/gpu-wheels && tar xJf "$wheels/wheels.tar.xz" -C /tmp/gpu-wheels && wheels=/tmp/gpu-wheels
fi
if [ "${SMOKE:-0}" != 1 ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
  step install 120 python3 -m pip install --no-index --no-deps --no-compile --target /tmp/site "$wheels"/*.whl
else
  log "no wheels in $wheels: using what is installed"
fi
step install-project 60 python3 -m pip install --no-index --no-deps --no-build-isolation -e .

# 2. the three CUDA libraries, built in parallel (wait on our own PIDs only: a bare `wait` would also wait on tee)
if wanted build; then
log "== build gsplat, nerfacc, nvdiffrast in parallel"
(MAX_JOBS=10 timeout 240 python3 -c "from gsplat.cuda._backend import _C; assert _C is not None; print('gsplat built')" >"$out/build_gsplat.txt" 2>&1; echo "exit $?" >>"$out/build_gsplat.txt") & p1=$!
(MAX_JOBS=4 timeout 240 python3 -c "from nerfacc.cuda._backend import _C; assert _C is not None; print('nerfacc built')" >"$out/build_nerfacc.txt" 2>&1; echo "exit $?" >>"$out/build_nerfacc.txt") & p2=$!
(MAX_JOBS=2 timeout 240 python3 -c "from renderers import backends; backends.require('nvdiffrast', 'cuda'); print('nvdiffrast built')" >"$out/build_nvdiffrast.txt" 2>&1; echo "exit $?" >>"$out/build_nvdiffrast.txt") & p3=$!
wait $p1 $p2 $p3
for lib in gsplat nerfacc nvdiffrast; do log "build $lib: $(tail -n 2 "$out/build_$lib.txt" | tr '\n' ' ')"; done
fi
if wanted env; then
log "== dream3d env --build"
timeout 180 python3 -m dream3d.cli env --build >"$out/env.txt" 2>&1
log "== env: exit $?"; cat "$out/env.txt" >>"$out/log.txt"
fi

# 3. the CUDA tests
wanted pytest && step pytest-cuda 150 bash -c "python3 -m pytest -m cuda -q -rs -p no:cacheprovider --junitxml='$out/pytest_cuda.xml' ${PYTEST_ARGS:-tests} >'$out/pytest_cuda.txt' 2>&1"
wanted pytest && log "pytest -m cuda: $(tail -n 1 "$out/pytest_cuda.txt")"

# 4. speed: embedded and SD size, then the whole SD-size job
mkdir -p /tmp/speed
wanted speed && step speed 240 python3 benchmarks/speed.py --device $dev --sizes $sizes --presets $presets --steps $nsteps --warmup $nwarm --job --job-steps $job_steps --work /tmp/speed --out "$out/speed.json" "${tiny[@]}"
[ -f "$out/speed.json" ] && python3 - "$out/speed.json" >"$out/speed.md" 2>>"$out/log.txt" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
from speed import table
r = json.load(open(sys.argv[1]))
print(f"{r['device_name']}, torch {r['torch']}, {r['date']}\n")
print(table(r["cases"]))
print("\njob:", r.get("job"), "\nerrors:", r.get("errors"))
EOF
[ -f "$out/speed.md" ] && tee -a "$out/log.txt" <"$out/speed.md"

# 5. quality on two prompts, on the GPU
wanted quality && step quality 150 python3 benchmarks/quality.py --presets gaussian-vsd --prompts "a red house;a green mug" --no-baseline --out /tmp/quality "${qsteps[@]}" train.device=$dev "${quality_extra[@]}"
wanted quality && cp /tmp/quality/quality.md "$out/" 2>/dev/null
wanted quality && tar --exclude=checkpoint.pt --exclude='*_random' -czf "$out/runs.tar.gz" -C /tmp quality speed 2>>"$out/log.txt"

# 6. image-to-3D with Zero123 (its own step: building the XL-size folder takes a while, and must not cost step 4)
wanted zero123 && step speed-zero123 150 python3 benchmarks/speed.py --device $dev --sizes $zsizes --presets zero123 --steps $nsteps --warmup $nwarm --no-counts --work /tmp/speed --out "$out/speed_zero123.json" "${tiny[@]}"

# 7. compiled, with what time is left of the budget
mode=reduce-overhead; [ "$dev" = cpu ] && mode=aot_eager
wanted compiled && step speed-compiled 300 python3 benchmarks/speed.py --device $dev --sizes $sizes --presets gaussian-vsd,dreamgaussian --steps $nsteps --warmup $nwarm --no-counts --compile $mode --work /tmp/speed --out "$out/speed_compiled.json" "${tiny[@]}"
log "done in $(( $(date +%s) - start ))s"
