#!/usr/bin/env bash
# Create .venv and install pinas with everything it needs, in the order that works on CPU machines:
# torch first (the local CPU wheel), then setuptools<81 (mmcv's setup.py imports pkg_resources), then mmcv 2.1.0 with
# its compiled ops (from a prebuilt wheel folder when given, else compiled from source), then the package itself.
# Re-running on a set-up machine only checks a stamp and exits.
#
#   PINAS_WHEELS=DIR   extra folder of prebuilt wheels (e.g. ../shared/wheels/torch-2.13.0-cpu-cp311)
#   PYTHON=python3.11  interpreter to build the venv from
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
stamp="$VENV/.pinas-setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import pinas, mmcv.ops" 2>/dev/null; then
    echo "setup: $VENV is up to date"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade "pip>=24"
pip install -q "torch==$TORCH_VERSION"
pip install -q "setuptools>=77.0.3,<81" wheel
find_links=()
if [ -n "${PINAS_WHEELS:-}" ] && [ -d "$PINAS_WHEELS" ]; then
    find_links=(--find-links "$PINAS_WHEELS")
    echo "setup: using prebuilt wheels from $PINAS_WHEELS"
fi
# With a GPU and a CUDA toolkit (nvcc), mmcv's ops are built with CUDA kernels for this GPU's compute capability
# (Mask R-CNN's RoIAlign and NMS need them on a GPU); otherwise CPU ops only, and a transfer set to CUDA is refused
# before training (pinas.preflight). TORCH_CUDA_ARCH_LIST, when set, wins.
force_cuda=0
if command -v nvcc >/dev/null && capability=$("$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(); print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null); then
    force_cuda=1
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$capability}
    echo "setup: building mmcv's CUDA ops for compute capability $TORCH_CUDA_ARCH_LIST"
fi
if ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
    echo "setup: installing mmcv 2.1.0 with ops (compiling from source takes ~20 min when no wheel matches)"
    MMCV_WITH_OPS=1 FORCE_CUDA=$force_cuda MAX_JOBS=${MAX_JOBS:-2} pip install -q --no-build-isolation "${find_links[@]}" "mmcv==2.1.0"
fi
pip install -q -e ".[test]"
"$VENV/bin/python" -c "import torch, mmcv.ops, mmdet, mmseg, prefect, onnxruntime; print('setup: torch', torch.__version__, '| mmcv', mmcv.__version__, '| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__, '| prefect', prefect.__version__)"
echo "$want" > "$stamp"
