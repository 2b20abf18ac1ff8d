#!/usr/bin/env bash
# The wheels the GPU machine's image lacks for `benchmarks/gpu_check.py --part all` (its package
# list: ../shared/ENVIRONMENT.md and the device tool's KINDS.md: torch, Triton, transformers,
# accelerate, pyarrow, rich, typer, pandas, fsspec, xxhash are there): Liger-Kernel and TRL for the
# baselines, datasets (TRL imports it) with the pure-Python pieces it needs that the image lacks,
# and wonderwords for the RULER tasks. Downloaded here, on a CPU machine with a package index, for
# the image's CPython 3.12, into the git-ignored .whl/ (checked under 60 MiB: a device call carries
# at most 64). The device command's first line installs them:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Usage: bash benchmarks/gpu_wheels.sh [--list]
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(liger-kernel trl datasets dill multiprocess wonderwords)
if [ "${1:-}" = "--list" ]; then printf '%s\n' "${WHEELS[@]}"; exit 0; fi
rm -rf .whl && mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl "${WHEELS[@]}"
size=$(du -sm .whl | cut -f1)
ls -1 .whl
echo "total ${size} MiB in .whl/"
[ "$size" -lt 60 ] || { echo "error: .whl/ is ${size} MiB; a device call carries at most 64 MiB in all" >&2; exit 1; }
