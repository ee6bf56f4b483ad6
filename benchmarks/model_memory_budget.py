"""Process memory while one inference engine serves several full models, with and without a memory budget.

    python benchmarks/model_memory_budget.py [--models 6] [--hidden 512] [--layers 8] [--budget-models 2]

Builds `--models` Llama-shaped models of the same size (random weights, the tiny test tokenizer) in a temp
folder, then asks one `InferenceEngine` for a 4-token reply from each in turn, twice over: once with no
budget to speak of, once with `max_model_bytes` room for `--budget-models` of them. Printed per request:
the models loaded, bytes the budget counts, models evicted, and the process's RSS (from /proc); at the end
the peak RSS of each run (each run in its own process, so one does not inherit the other's memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build_models(root: Path, count: int, hidden: int, layers: int) -> list[Path]:
    import torch
    from tests.support.tiny_model import build_tiny_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_dir = build_tiny_model(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    folders = []
    for i in range(count):
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(i)
        folder = root / f"model-{i}"
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


def serve_each(folders: list[Path], budget: int | None) -> None:
    """One run (in this process): every model once, then every model again."""
    from openft.inference import GenerationParams, InferenceEngine, ModelTarget

    engine = InferenceEngine(max_model_bytes=budget if budget is not None else 1 << 62)
    params = GenerationParams(temperature=0, max_tokens=4)
    for round_ in (1, 2):
        for folder in folders:
            engine.chat(ModelTarget(base_path=folder), [{"role": "user", "content": "hi"}], params)
            stats = engine.stats()
            print(
                f"  round {round_} {folder.name}: loaded {stats['bases_loaded']}, "
                f"counted {stats['memory_bytes'] / 2**20:.0f} MiB, evicted {stats['models_evicted']}, "
                f"RSS {_rss_mb():.0f} MiB"
            )
    print(json.dumps({"peak_rss_mb": round(_peak_mb())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--budget-models", type=float, default=2.5)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: "<budget bytes or none> <folders json>"
    args = parser.parse_args()
    if args.run:
        budget, folders = args.run.split(" ", 1)
        serve_each([Path(f) for f in json.loads(folders)], None if budget == "none" else int(budget))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folders = build_models(Path(tmp), args.models, args.hidden, args.layers)
        from openft.inference.registry import estimate_model_bytes

        one = estimate_model_bytes(folders[0])
        print(f"{args.models} models of {one / 2**20:.0f} MiB each (fp32)")
        peaks = {}
        for label, budget in (
            ("no budget", "none"),
            (f"budget {args.budget_models} models", str(int(args.budget_models * one))),
        ):
            print(label)
            run = subprocess.run(
                [sys.executable, __file__, "--run", f"{budget} {json.dumps([str(f) for f in folders])}"],
                capture_output=True,
                text=True,
                check=True,
            )
            print("\n".join(line for line in run.stdout.splitlines() if not line.startswith("{")))
            peaks[label] = json.loads(run.stdout.splitlines()[-1])["peak_rss_mb"]
        for label, peak in peaks.items():
            print(f"peak RSS, {label}: {peak} MiB")


if __name__ == "__main__":
    main()
