#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that benchmarks/gpu_check.sh installs on a GPU machine without network
# (one that has torch with CUDA, but not this project's other dependencies: ../shared/GPU-NOTES.md).
# Usage: bash benchmarks/gpu_wheels.sh [DIR (default .gpu-wheels)] [PYTHON_VERSION (default 3.12)]
# imageio-ffmpeg (68 MB) is left out: without it the turntable is written as a GIF.
set -euo pipefail
dir="${1:-.gpu-wheels}"
py="${2:-3.12}"
mkdir -p "$dir"
pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  -d "$dir" diffusers==0.42.1 trimesh xatlas fast-simplification gsplat==1.5.3 nerfacc==0.5.3 diffrp-nvdiffrast==0.3.3.1 importlib_metadata
du -sh "$dir"
