#!/usr/bin/env bash
# One GPU session: openft's trainer vs transformers.Trainer + peft (LoRA, bf16 autocast) on random-init models
# of SmolLM2-135M's and Qwen2.5-0.5B's shapes, batch 8 × up to 1024 tokens, tokens/s and MFU (H100: 989 TFLOP/s).
#
#   bash benchmarks/gpu/run_gpu_bench.sh                    # on the GPU machine, from the repo root
#   MODELS=tiny-llama STEPS=3 WARMUP=1 SEQ=128 bash benchmarks/gpu/run_gpu_bench.sh   # smoke test on a CPU
#
# Needs: a python3 with torch, transformers and peft; pydantic & co. as wheels in .whl/ where missing
# (installed to /tmp/site); the SmolLM2 tokenizer in .gpu-assets/tokenizer (no weights: models are random).
# Results: $OUT/<model>.json (see benchmarks/train_vs_hf.py) and $OUT/log.txt.
set -uo pipefail
OUT=${OUT:-/tmp/openft-gpu-bench}
MODELS=${MODELS:-"smollm2-135m qwen2.5-0.5b"}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-6}
SEQ=${SEQ:-1024}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

if compgen -G ".whl/*.whl" >/dev/null && ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

$PY - <<'PYEOF' 2>&1 | tee "$OUT/env.txt"
import torch, transformers, peft, pydantic
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"pydantic {pydantic.__version__}, {gpu}")
PYEOF

for model in $MODELS; do
  echo "=== $model" | tee -a "$OUT/log.txt"
  $PY benchmarks/train_vs_hf.py --random-init "$model" --tokenizer-dir .gpu-assets/tokenizer \
    --synthetic "64:$SEQ" --max-seq-len "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --batch-size 8 \
    --precision bf16 --peak-tflops 989 --also-packed --json "$OUT/$model.json" >>"$OUT/log.txt" 2>&1
  echo "exit $?" >>"$OUT/log.txt"
  sed -n '/^$/,$p' "$OUT/log.txt" | grep -v "^{'\|Loading\|Writing\|warn" | tail -12
done
