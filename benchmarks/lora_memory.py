"""Peak memory of LoRA training steps on a Qwen2.5-1.5B-shaped model: the default (bf16 frozen base, on a CPU
with native bf16) and QLoRA (`fine_tuning_mode: "qlora"`: the base's linear layers 4-bit NF4, computing in bf16)
against `precision: "fp32"` (every weight fp32, what openft did before), measured in the same run.

    python benchmarks/lora_memory.py                  # Qwen2.5-1.5B shape (random weights), 2 steps each
    python benchmarks/lora_memory.py --layers 4       # a quicker, smaller check of the same thing
    python benchmarks/lora_memory.py --configs qlora fp32   # only these

Each configuration is a real trainer process (`python -m openft train job.json`); its peak resident set is
the kernel's `ru_maxrss` of that child. The weights are random (no download) in the model's real shape:
memory depends on the shapes, not on the values. Prints the figures, each one's mean step time and the ratios
to fp32 (goals: LoRA bf16 ≤ 0.6×, QLoRA ≤ 0.35×).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qwen_shape import build_model  # a sibling: benchmarks run as scripts from this folder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, dict[str, Any]] = {
    "bf16": {"precision": "bf16"},
    "fp32": {"precision": "fp32"},
    "qlora": {"precision": "bf16", "quantization": "nf4"},
}
"""What each configuration adds to the job: LoRA on a bf16 frozen base, on an fp32 one, and on a 4-bit NF4 one."""
GOALS = {"bf16": 0.6, "qlora": 0.35}
"""Issue 13's goals for each configuration's peak RSS as a fraction of fp32's."""


def train_once(model_dir: Path, work: Path, config: str, steps: int) -> dict[str, Any]:
    lines = [
        {"messages": [{"role": "user", "content": f"question {i} " * 20}, {"role": "assistant", "content": "a " * 60}]}
        for i in range(steps)
    ]
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    spec = {
        "job_id": "ftjob-memory",
        "base_model": {"name": "qwen-shape", "source": "local", "path": str(model_dir)},
        "cache_dir": str(work / "cache"),
        "training_file": str(data),
        "output_dir": str(work / "out"),
        "hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0},
        "seed": 0,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "base_learning_rate": 2e-4,
        "max_seq_len": 256,
        "micro_batch_size": 1,
        "keep_checkpoints": 1,
        **CONFIGS[config],
    }
    job = work / "job.json"
    job.write_text(json.dumps(spec), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "openft", "train", str(job)], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        raise SystemExit(f"{config}: the trainer failed ({result.returncode}): {result.stdout[-2000:]}")
    if peak_kib <= before:
        raise SystemExit("ru_maxrss of children did not grow: run each configuration in a fresh process")
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    logs = [m["message"] for m in messages if m["type"] == "log"]
    loaded = next(line for line in logs if line.startswith("Loaded base model"))
    how = [line for line in logs if line.startswith(("Forward pass", "Memory plan"))]  # what the trainer chose
    step_seconds = [m["step_seconds"] for m in messages if m["type"] == "metrics"]
    return {
        "config": config,
        "peak_rss_mib": peak_kib / 1024,
        "seconds": seconds,
        "step_seconds": step_seconds,
        "note": loaded,
        "how": how,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (Qwen2.5-1.5B: 28)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="which to run (default: all)"
    )
    parser.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)  # one, in this process
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lora-memory-") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir or build_model(root / "model", args.layers)
        if args.config:  # one configuration per process: ru_maxrss of children is a high-water mark
            work = root / args.config
            work.mkdir()
            print(json.dumps(train_once(model_dir, work, args.config, args.steps)))
            return
        reports: dict[str, dict[str, Any]] = {}
        for config in args.configs:
            command = [sys.executable, __file__, "--config", config, "--steps", str(args.steps)]
            command += ["--model-dir", str(model_dir)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            reports[config] = json.loads(out.strip().splitlines()[-1])
    print(f"Qwen2.5-1.5B shape ({args.layers} layers), LoRA r16, {args.steps} steps, one trainer process each")
    ratios: dict[str, float] = {}
    for config, report in reports.items():
        steps = ", ".join(f"{s:.1f}" for s in report["step_seconds"])
        peak, seconds = report["peak_rss_mib"], report["seconds"]
        print(f"  {config:>5}: peak RSS {peak:8.0f} MiB, {seconds:.0f} s in all (steps: {steps} s)")
        for line in [report["note"], *report["how"]]:
            print(f"         {line}")
    if "fp32" in reports:
        for config, goal in GOALS.items():
            if config in reports:
                ratios[config] = reports[config]["peak_rss_mib"] / reports["fp32"]["peak_rss_mib"]
                print(f"  ratio {config} / fp32 peak RSS: {ratios[config]:.2f}× (goal ≤ {goal}×)")
    if args.json:
        figures = {"reports": list(reports.values()), "ratios": ratios}
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
