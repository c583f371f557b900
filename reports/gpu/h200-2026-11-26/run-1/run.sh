#!/usr/bin/env bash
# Device script for issue 5's GPU part: bench/train_steps.py (every step) then bench/train_speed.py.
set -u
export PYTHONUNBUFFERED=1 MNIST_DIR=.dev/mnist
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi -L; nproc; grep -m1 "model name" /proc/cpuinfo
  python3 -c "import torch,torchvision,onnx,onnxruntime,pydantic;print('torch',torch.__version__,'cuda',torch.version.cuda,'tv',torchvision.__version__,'onnx',onnx.__version__,'ort',onnxruntime.__version__,'pydantic',pydantic.VERSION,torch.cuda.get_device_name(0))"; } 2>&1 | tee $OUT/env.txt
echo "== smoke ($SECONDS s)"
timeout 100 python3 -m trainer run --steps scheduler --epochs 1 --limit 2000 --device cuda --data-dir .dev/mnist --out /tmp/smoke 2>&1 | tail -5 | tee $OUT/smoke.txt
[ "${PIPESTATUS[0]}" = 0 ] || { echo SMOKE FAILED; exit 2; }
echo "== train_steps ($SECONDS s)"
timeout 470 python3 bench/train_steps.py --device cuda --data-dir .dev/mnist --keep /tmp/ts 2>$OUT/train_steps.err | tee $OUT/train_steps.txt
echo "rc ${PIPESTATUS[0]} at $SECONDS s"
tar czf $OUT/volumes.tgz -C /tmp/ts . 2>/dev/null; ls -la $OUT
left=$((560 - SECONDS))
echo "== train_speed ($SECONDS s, $left s left)"
[ $left -gt 30 ] && timeout $left python3 bench/train_speed.py --device cuda --repeats 1 --data-dir .dev/mnist 2>&1 | tee $OUT/train_speed.txt
echo "done at $SECONDS s"
tail -3 $OUT/train_steps.err
