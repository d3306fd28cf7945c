#!/usr/bin/env bash
# GPU check (not a test): the default beta sweep end to end on CUDA, then the same command again (all runs done).
# Runs on a GPU machine with no network: packages its image lacks travel as wheels in .whl/ (see README, "On GPUs").
# Usage: bash bench/gpu.sh            results and a log land in $OUT (default /tmp/dporef-gpu)
set -euo pipefail
OUT=${OUT:-/tmp/dporef-gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export DPOREF_CACHE=${DPOREF_CACHE:-/tmp/dporef-cache} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY'
import torch, transformers, trl
print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)
print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
PY
start=$(date +%s.%N)
python3 -m dpo_ref sweep-beta --out "$OUT/runs" "$@"
mid=$(date +%s.%N)
python3 -m dpo_ref sweep-beta --out "$OUT/runs" "$@" > "$OUT/second_run.txt" 2>&1
end=$(date +%s.%N)
python3 -c "print(f'first run {float($mid)-float($start):.1f}s (world build included), second run {float($end)-float($mid):.1f}s')"
cp "$OUT/runs/rq1_sweep_beta/results.md" "$OUT/runs/rq1_sweep_beta/results.png" "$OUT/" 
