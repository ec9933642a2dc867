#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that benchmarks/gpu_check.sh installs on a GPU machine without network
# (one that has torch with CUDA, but not this project's other dependencies: ../shared/GPU-NOTES.md).
# Usage: bash benchmarks/gpu_wheels.sh [DIR (default .gpu-wheels)] [PYTHON_VERSION (default 3.12)]
# DIR ends up holding one file, wheels.tar.xz (3.4 MB; the wheels themselves are 8.4 MB): the repository (60 MB) and
# what a GPU call carries must fit in 64 MiB together. gpu_check.sh unpacks it.
# imageio-ffmpeg (68 MB) is left out: without it the turntable is written as a GIF.
set -euo pipefail
dir="${1:-.gpu-wheels}"
py="${2:-3.12}"
rm -rf "$dir" && mkdir -p "$dir"
pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  -d "$dir" diffusers==0.42.1 trimesh xatlas fast-simplification gsplat==1.5.3 nerfacc==0.5.3 diffrp-nvdiffrast==0.3.3.1 importlib_metadata
# gsplat's wheel carries glm's HTML and PDF manual and its tests (5.8 of its 6.5 MB): drop them, so that the wheels
# and this repository fit together in what a GPU call carries (64 MiB). Its headers, which the build needs, stay.
python3 - "$dir"/gsplat-*.whl <<'EOF_PY'
import sys, zipfile, os
src = sys.argv[1]
extra = ("gsplat/cuda/csrc/third_party/glm/doc/", "gsplat/cuda/csrc/third_party/glm/test/")
with zipfile.ZipFile(src) as zi:
    items = [(i, zi.read(i.filename)) for i in zi.infolist() if not i.filename.startswith(extra)]
with zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zo:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):  # the RECORD lists only what the wheel holds
            lines = data.decode().splitlines()
            data = "".join(f"{l}\n" for l in lines if not l.startswith(extra)).encode()
        zo.writestr(info, data)
os.replace(src + ".tmp", src)
EOF_PY
# A wheel is a deflated zip, which xz cannot shrink further: store each one uncompressed, then xz them together.
python3 - "$dir"/*.whl <<'EOF_PY'
import sys, zipfile, os
for src in sys.argv[1:]:
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            zo.writestr(info, zi.read(info), compress_type=zipfile.ZIP_STORED)
    os.replace(src + ".tmp", src)
EOF_PY
(cd "$dir" && XZ_OPT=-9 tar cJf wheels.tar.xz ./*.whl && rm ./*.whl)
ls -l "$dir"
