#!/usr/bin/env bash
# Wheels for the GPU check on a machine without a package index (Python 3.12, x86-64 Linux):
# nnU-Net 2.8, MONAI and what they need beyond an image that already has torch, triton, numpy,
# scipy, scikit-image, scikit-learn, pandas, matplotlib, seaborn, einops, timm, numba and pytest.
# A package published only as source (pure Python) is built into a wheel here.
# SimpleITK alone is 50 MiB, so it goes to a folder of its own, DIR-simpleitk.
# Usage: bash benchmarks/gpu_wheels.sh [DIR]   (default .whl; see documentation/gpu_check.md)
set -euo pipefail
dir="${1:-.whl}"
mkdir -p "$dir" "$dir-simpleitk"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
fetch() {  # fetch DIR REQUIREMENT
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$1" "$2" 2>/dev/null || python3 -m pip wheel -q --no-deps -w "$1" "$2"
}
fetch "$dir-simpleitk" "SimpleITK>=2.2.1"
for requirement in "nnunetv2>=2.8,<2.9" "acvl-utils>=0.2.6,<0.3" "dynamic-network-architectures>=0.4.4,<0.5" \
        "batchgenerators>=0.25.1" "batchgeneratorsv2>=0.3.2" nibabel graphviz yacs "blosc2>=3.3.2" ndindex \
        numexpr connected-components-3d fft-conv-pytorch "monai>=1.5"; do
    fetch "$dir" "$requirement"
done
du -sh "$dir" "$dir-simpleitk"
