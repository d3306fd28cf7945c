#!/usr/bin/env bash
# GPU check (not a test), under 10 minutes on one H100/H200: dporef's DPO training tokens/s and MFU for a ~0.56B
# config-built Llama in bf16 with and without gradient checkpointing, generation tokens/s and peak memory
# (bench/throughput.py); a short real DPO sweep on CUDA with a ~350M Llama built from a config (no weights needed),
# trained on instruction pairs made on the spot (bench/config_model_sweep.py), once with its runs one after another
# and once two at a time on the one GPU (launch.workers=2; the wall-time ratio is printed); a LoRA DPO sweep of a ~1B
# config-built Llama; then the world's default sweep.
# Runs on a GPU machine with no network: packages its image lacks travel as wheels in .whl/ (see README, "On GPUs").
# Usage: bash bench/gpu.sh [--no-world]      results and logs land in $OUT (default /tmp/dporef-gpu)
#        SIZE=tiny bash bench/gpu.sh --no-world   the same steps at their smallest sizes, on a CPU (a few minutes)
set -euo pipefail
OUT=${OUT:-/tmp/dporef-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export DPOREF_CACHE=${DPOREF_CACHE:-/tmp/dporef-cache} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "${SIZE:-}" = tiny ]; then  # throughput, sweep and LoRA sizes
  T=tiny S=tiny L=tiny LORA=(--set "train.lora={r: 8, alpha: 16, target_modules: all-linear}")
else
  T=0.5b S=gpu L=lora LORA=()
fi
python3 - <<'PY'
import torch, transformers, trl
print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)
gpu = torch.cuda.is_available()
print("device", torch.cuda.get_device_name(0) if gpu else "CPU", "bf16", gpu and torch.cuda.is_bf16_supported())
PY
python3 bench/throughput.py --size $T 2>&1 | tee "$OUT/throughput.log" | grep -v "━"
python3 bench/config_model_sweep.py --size $S --out "$OUT/config-model" 2>&1 | tee "$OUT/config_model.log" | grep -v "━"
cp "$OUT/config-model/runs/config_model_$S/results.md" "$OUT/config_model_results.md"
python3 bench/config_model_sweep.py --size $S --out "$OUT/config-model-2" --set launch.workers=2 2>&1 \
  | tee "$OUT/config_model_2.log" | grep -v "━"
python3 - "$OUT" "$S" <<'PY'
import glob, json, sys
def span(runs):  # from the first run's start to the last run's end: the runs alone, prepare excluded
    st = [json.load(open(f)) for f in glob.glob(f"{runs}/*/status.json")]
    return max(s["finished"] for s in st) - min(s["started"] for s in st), len(st)
out, size = sys.argv[1:]
(one, n), (two, _) = (span(f"{out}/{d}/runs/config_model_{size}") for d in ("config-model", "config-model-2"))
print(f"config-model runs ({n}): one at a time {one:.1f}s, two at a time {two:.1f}s, ratio {two / one:.2f}")
PY
python3 bench/config_model_sweep.py --size $L --out "$OUT/config-model-lora" "${LORA[@]}" 2>&1 \
  | tee "$OUT/config_model_lora.log" | grep -v "━"
cp "$OUT/config-model-lora/runs/config_model_$L/results.md" "$OUT/config_model_lora_results.md"
if [ "${1:-}" != "--no-world" ]; then
  start=$(date +%s.%N)
  python3 -m dpo_ref sweep-beta --out "$OUT/runs" > "$OUT/world_sweep.log" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'world default sweep {float($end)-float($start):.1f}s (world build included)')"
  cp "$OUT/runs/rq1_sweep_beta/results.md" "$OUT/world_results.md"
fi
