#!/usr/bin/env bash
# The one device call for CUDA graphs (issue 18): check them against the plain loop, then time
# eager against graphs for every step, with up to 3 seeds of graphs, in one H200 lease.
#
# The lease is 15 minutes in all, the machine's start (a minute or two) included, and one call
# may run 10. So: a hard limit of $LIMIT s (560 by default), extra graph seeds only while they
# fit in it (--budget, 30 s under it), and the eager baseline trains the final step its 15
# epochs (its time to 99.4 %) but the other steps 3 (--eager-epochs 3: enough for a steady
# s/epoch; the report estimates their 15-epoch sum from them and says so). The eager run of
# 2026-11-26 took 4 min 15 s for seven steps: in full it would leave no room for seeds.
#
# Here first, `bash bench/gpu_prepare.sh` (MNIST into .dev/mnist, pydantic's wheels into .whl),
# then from the repository root on the lent machine, with the device tool:
#   run(command="bash bench/gpu_compare_graphs.sh", carry=[".dev/mnist", ".whl"], timeout_s=590)
# Outputs go to $OUT (default /tmp/compare-graphs). A dry run of the plumbing on a CPU (minutes;
# the graphs themselves are not exercised):
#   DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu_compare_graphs.sh --steps scheduler \
#     --epochs 1 --limit 200 --seeds 2 --target 0
# Arguments are passed on to bench/train_steps.py after the defaults.
# Writes env.txt, report.md (what bench/train_steps.py printed), check.json, trainer.log,
# runs.tar.gz (every run's metrics and summaries) and dmon.txt (GPU load, once a second). Exits
# with the benchmark's status: non-zero when the check fails, a run fails or a step fell back to
# eager (report.md's FAILED lines say which).
set -u
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-560}
OUT=${OUT:-/tmp/compare-graphs}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null && ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{
  date -u
  nvidia-smi -L
  echo "cpus: $(nproc)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  git log -1 --format='commit %H' 2>/dev/null
} 2>&1 | tee "$OUT/env.txt"
nvidia-smi dmon -s u -d 1 >"$OUT/dmon.txt" 2>&1 &  # SM load, eager and graphs
dmon=$!
timeout "$LIMIT" "$PYTHON" bench/train_steps.py --device "$DEVICE" --compare-graphs --seeds 3 \
  --budget $((LIMIT - 30)) --eager-epochs 3 --data-dir "${MNIST_DIR:-.dev/mnist}" --out "$OUT" \
  --keep /tmp/compare-graphs-volumes "$@"
rc=$?
kill "$dmon" 2>/dev/null
echo "bench/train_steps.py exited $rc after $SECONDS s"
exit "$rc"
