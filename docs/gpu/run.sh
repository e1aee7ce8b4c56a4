#!/bin/bash
# One prepared device run: environment, the GPU check, then the quick speed benchmark.
# Usage: bash .gpu/run.sh OUTDIR DEVICE [PYTHON]
OUT=${1:-/tmp/out}; DEV=${2:-cuda}; PY=${3:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" /tmp/data && tar xzf .gpu/mnist.tgz -C /tmp/data
export LATENT_DATA_ROOT=/tmp/data
TINY=""; [ "$DEV" = cpu ] && TINY="--tiny"
QUICK_LIMIT=${QUICK_LIMIT:-230}; CHECK_LIMIT=${CHECK_LIMIT:-300}
{ nvidia-smi 2>&1 | head -15; $PY -c "import torch, pyro, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'pyro', pyro.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"; } 2>&1 | tee "$OUT/env.txt"
timeout $CHECK_LIMIT $PY -m benchmarks.gpu_check --device $DEV $TINY --out /tmp/gpu_check --overwrite 2>&1 | tee "$OUT/gpu_check.log"
cp /tmp/gpu_check/gpu_check.json /tmp/gpu_check/gpu_check.md "$OUT/" 2>/dev/null
timeout $QUICK_LIMIT $PY -m benchmarks.speed --device $DEV --quick $SPEED_ARGS --out /tmp/speed --overwrite 2>&1 | tee "$OUT/speed.log"
cp /tmp/speed/speed.json /tmp/speed/speed.md "$OUT/" 2>/dev/null
ls -la "$OUT"
