"""The memory planner's estimate against a real trainer's peak memory on this machine's CPU.

    python benchmarks/memory_plan.py                 # a Qwen2.5-1.5B shape cut to 4 layers (random weights)
    python benchmarks/memory_plan.py --layers 8

Each configuration is a real trainer process (`python -m openft train job.json`), started from a fresh parent
process of its own so that the kernel's `ru_maxrss` of children is that trainer's peak alone. The estimate is
the one the trainer logs (`Memory plan: ... ~X GiB peak estimated ...`, `training/memory_plan.py`). Peak RSS
also counts the interpreter's libraries and the pages of the mmapped weight file; the plan's fixed overhead
stands for them. The planner is meant to err high: the ratio estimate / measured should be a little above 1.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qwen_shape import build_model  # a sibling: benchmarks run as scripts from this folder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, dict[str, Any]] = {
    "lora-bf16": {"precision": "bf16", "lora": {"r": 16, "alpha": 32, "dropout": 0.05}, "tokens": 512, "micro": 4},
    "full-fp32": {"precision": "fp32", "lora": None, "tokens": 256, "micro": 2},
}
PLAN = re.compile(r"~([0-9.]+) (GiB|MiB) peak estimated")


def train_once(model_dir: Path, work: Path, config: str) -> dict[str, Any]:
    """One trainer run of `config` on examples of exactly its token count; its plan and peak RSS."""
    settings = CONFIGS[config]
    answer = "a b " * (settings["tokens"] // 2)
    lines = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}]
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines * settings["micro"]), encoding="utf-8")
    spec = {
        "job_id": "ftjob-memory-plan",
        "base_model": {"name": "qwen-shape", "source": "local", "path": str(model_dir)},
        "cache_dir": str(work / "cache"),
        "training_file": str(data),
        "output_dir": str(work / "out"),
        "hyperparameters": {"n_epochs": 1, "batch_size": settings["micro"], "learning_rate_multiplier": 1.0},
        "seed": 0,
        "lora": settings["lora"],
        "base_learning_rate": 2e-4,
        "max_seq_len": settings["tokens"],
        "micro_batch_size": settings["micro"],
        "precision": settings["precision"],
        "gradient_checkpointing": False,
        "keep_checkpoints": 1,
    }
    job = work / "job.json"
    job.write_text(json.dumps(spec), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "openft", "train", str(job)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{config}: the trainer failed ({result.returncode}): {result.stdout[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    plan = next(m["message"] for m in messages if m["type"] == "log" and m["message"].startswith("Memory plan"))
    match = PLAN.search(plan)
    assert match is not None, plan
    estimate = float(match.group(1)) * (1 << 30 if match.group(2) == "GiB" else 1 << 20)
    return {"config": config, "estimate_bytes": estimate, "peak_rss_bytes": peak, "plan": plan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2.5-1.5B has 28)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)  # one, in this process
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memory-plan-") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir or build_model(root / "model", args.layers)
        if args.config:
            work = root / args.config
            work.mkdir()
            print(json.dumps(train_once(model_dir, work, args.config)))
            return
        print(f"Qwen2.5-1.5B shape, {args.layers} layers, CPU, one trainer process per configuration")
        for config in args.configs:
            command = [sys.executable, __file__, "--config", config, "--model-dir", str(model_dir)]
            report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            estimate, peak = report["estimate_bytes"] / (1 << 30), report["peak_rss_bytes"] / (1 << 30)
            print(f"  {config:<10} estimate {estimate:5.2f} GiB  peak RSS {peak:5.2f} GiB  ratio {estimate / peak:.2f}")
            print(f"    {report['plan']}")


if __name__ == "__main__":
    main()
