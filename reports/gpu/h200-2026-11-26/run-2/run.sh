#!/usr/bin/env bash
# Second sample: the final step again (time to 99.4 %), train_speed with 3 repeats, GPU utilisation.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L | tee $OUT/env.txt
nvidia-smi dmon -s u -d 1 > $OUT/dmon.txt 2>&1 &
echo "== train_steps ($SECONDS s)"
timeout 240 python3 bench/train_steps.py --steps scheduler --device cuda --data-dir .dev/mnist --keep /tmp/ts 2>$OUT/train_steps.err | tee $OUT/train_steps.txt
echo "rc ${PIPESTATUS[0]} at $SECONDS s"
kill %1
left=$((330 - SECONDS))
echo "== train_speed ($SECONDS s, $left s left)"
[ $left -gt 30 ] && timeout $left python3 bench/train_speed.py --device cuda --repeats 3 --data-dir .dev/mnist 2>&1 | tee $OUT/train_speed.txt
echo "done at $SECONDS s"
