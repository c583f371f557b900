#!/usr/bin/env bash
# Here, before the one device call of bench/gpu_compare_graphs.sh: what the lent machine lacks,
# in two ignored folders that the call carries. MNIST's four files go to .dev/mnist (11 MB),
# and pydantic's wheels for the machine's Python 3.12 go to .whl (2.8 MB; its image has torch,
# onnx and onnxruntime but not pydantic), at the versions this project's venv uses.
#   bash bench/gpu_prepare.sh        # then the device call in bench/gpu_compare_graphs.sh's header
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p .git/info .dev/mnist .whl
for ignored in /.dev/ /.whl/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
done
install -m 644 "${MNIST_DIR:-../shared/datasets/mnist}"/*-ubyte.gz .dev/mnist/
wheels=$("$PYTHON" -m pip list --format freeze 2>/dev/null |
  grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection)==')
rm -f .whl/*.whl
# shellcheck disable=SC2086  # one argument per wheel
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $wheels
ls -l .dev/mnist .whl
