"""Inference speed and memory of openft's engine, next to plain `transformers` generate.

    python benchmarks/inference_bench.py [--model-dir DIR] [--quick]

In one run, on the same model and prompt (greedy, same max_new_tokens):
  (a) openft's engine on the base model, (b) the engine with a LoRA adapter, (c) `model.generate`
      (and `model.generate` on the same adapter through PEFT, the fair reference for (b)): time to
      first token (TTFT) and tokens/s, and the openft/HF ratios; also openft streamed;
  adapter switch time (1-token requests alternating two adapters vs. repeating one);
  process RSS with 1, 10 and 50 adapters loaded (always on the tiny test model).

TTFT is the latency of a 1-token request (prompt + first token); tokens/s is the tokens of a
max_new_tokens request over its latency; "streamed" is the time to the first delta of `stream_chat`.
Each measurement runs in a fresh process: with libgomp, a process in which more than one thread has
run torch ops is slower for good (see `openft.inference.registry`), so HF generate (main thread) and
openft (its base's thread) must not share one, nor inherit the setup's torch work.

Default model: the tiny test model (tests/support/tiny_model.py). `--model-dir` takes any HF causal-LM
folder with a chat template, e.g. SmolLM2-135M-Instruct converted by `openft.basemodels.ModelCatalog`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support.tiny_model

PROMPT = [{"role": "user", "content": "Write a long story about a fox who travels from Paris to Tokyo."}]


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def make_adapter(base_dir: Path, dest: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter with random B matrices (so it really changes the output), saved with peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    model.save_pretrained(dest)
    return dest


def median_run(run: Callable[[], tuple[float, float, int]], repeats: int) -> dict[str, float]:
    """Runs `run` (→ TTFT s, total s, tokens) once to warm up, then `repeats` times; medians."""
    run()
    samples = [run() for _ in range(repeats)]
    total = statistics.median(s[1] for s in samples)
    return {
        "ttft_ms": statistics.median(s[0] for s in samples) * 1000,
        "total_ms": total * 1000,
        "tokens": samples[0][2],
        "tok_s": samples[0][2] / total,
        "repeats": repeats,
    }


# The measurements, each run in its own process ---------------------------------------------------------


def measure_openft(model_dir: Path, adapter: Path, max_tokens: int, repeats: int) -> dict[str, object]:
    from openft.inference import GenerationParams, InferenceEngine, ModelTarget

    engine = InferenceEngine()
    base = ModelTarget(base_path=model_dir)
    lora = ModelTarget(base_path=model_dir, adapter_path=adapter)

    def chat(target: ModelTarget) -> tuple[float, float, int]:
        start = time.perf_counter()
        engine.chat(target, PROMPT, GenerationParams(temperature=0, max_tokens=1))
        first = time.perf_counter()
        result = engine.chat(target, PROMPT, GenerationParams(temperature=0, max_tokens=max_tokens))
        return first - start, time.perf_counter() - first, result.completion_tokens

    def streamed(target: ModelTarget) -> tuple[float, float, int]:
        start = time.perf_counter()
        first = None
        with engine.stream_chat(target, PROMPT, GenerationParams(temperature=0, max_tokens=max_tokens)) as stream:
            for _ in stream:
                first = first or time.perf_counter()
            tokens = stream.completion_tokens
        end = time.perf_counter()
        return (first or end) - start, end - start, tokens

    text = engine.chat(base, PROMPT, GenerationParams(temperature=0, max_tokens=max_tokens)).choices[0].text
    # Order matters: once an adapter is loaded, base requests too run through PEFT's LoRA layers (disabled).
    return {
        "openft base": median_run(lambda: chat(base), repeats),
        "openft base, streamed": median_run(lambda: streamed(base), repeats),
        "openft LoRA": median_run(lambda: chat(lora), repeats),
        "openft LoRA, streamed": median_run(lambda: streamed(lora), repeats),
        "openft base, adapters on": median_run(lambda: chat(base), repeats),
        "text": text,
    }


def measure_hf(model_dir: Path, adapter: Path, max_tokens: int, repeats: int) -> dict[str, object]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openft.inference.prompt import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids = torch.tensor([render_prompt(tokenizer, PROMPT)])

    def generate(new_tokens: int) -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                do_sample=False,
            )

    def run() -> tuple[float, float, int]:
        start = time.perf_counter()
        generate(1)
        first = time.perf_counter()
        output = generate(max_tokens)
        return first - start, time.perf_counter() - first, output.shape[1] - input_ids.shape[1]

    figures = median_run(run, repeats)
    text = tokenizer.decode(generate(max_tokens)[0, input_ids.shape[1] :], skip_special_tokens=True)
    model = PeftModel.from_pretrained(model, adapter).eval()  # the same LoRA, for openft LoRA's reference
    return {
        "HF generate": figures,
        "HF generate + PEFT LoRA": median_run(run, repeats),
        "text": text,
        "prompt_tokens": input_ids.shape[1],
    }


def measure_switch(model_dir: Path, adapters: list[Path], rounds: int) -> dict[str, object]:
    from openft.inference import GenerationParams, InferenceEngine, ModelTarget

    engine = InferenceEngine()
    targets = [ModelTarget(base_path=model_dir, adapter_path=a) for a in adapters]
    params = GenerationParams(temperature=0, max_tokens=1)
    for target in targets:
        engine.chat(target, PROMPT, params)

    def per_request(sequence: list[ModelTarget]) -> float:
        start = time.perf_counter()
        for target in sequence:
            engine.chat(target, PROMPT, params)
        return (time.perf_counter() - start) / len(sequence)

    same, alternating = [], []
    for _ in range(5):  # interleaved blocks, so drift hits both alike
        same.append(per_request([targets[0]] * rounds))
        alternating.append(per_request(targets * (rounds // 2)))
    return {"same_ms": statistics.median(same) * 1000, "alternating_ms": statistics.median(alternating) * 1000}


def measure_memory(tiny: Path, adapters: list[Path], counts: list[int]) -> dict[str, object]:
    from openft.inference import GenerationParams, InferenceEngine, ModelTarget

    engine = InferenceEngine(max_adapters=len(adapters) + 1)
    params = GenerationParams(temperature=0, max_tokens=1)
    engine.chat(ModelTarget(base_path=tiny), PROMPT, params)
    rows = [{"adapters": 0, "rss_mib": rss_mib(), "adapter_bytes": 0}]
    for index, adapter in enumerate(adapters, start=1):
        engine.chat(ModelTarget(base_path=tiny, adapter_path=adapter), PROMPT, params)
        if index in counts:
            rows.append({"adapters": index, "rss_mib": rss_mib(), "adapter_bytes": engine.stats()["adapter_bytes"]})
    return {"rows": rows}


def child(what: str, spec: dict[str, object]) -> dict[str, object]:
    """Run one measurement in a fresh interpreter; returns its JSON result."""
    output = subprocess.run(
        [sys.executable, __file__, "--child", what, json.dumps(spec)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# Report ---------------------------------------------------------------------------------------------------


def row(label: str, figures: dict[str, float]) -> None:
    print(
        f"  {label:<24} TTFT {figures['ttft_ms']:8.1f} ms   {figures['tok_s']:8.1f} tok/s   "
        f"({figures['tokens']:.0f} tokens in {figures['total_ms']:.0f} ms, median of {figures['repeats']:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="HF model folder (default: the tiny test model)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats")
    parser.add_argument("--max-tokens", type=int, help="new tokens per request (default 128, quick 32)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # (measurement, JSON spec): internal
    args = parser.parse_args()
    quiet()
    if args.child:
        what, spec = args.child[0], json.loads(args.child[1])
        functions: dict[str, Callable[..., dict[str, object]]] = {
            "openft": lambda: measure_openft(
                Path(spec["model"]), Path(spec["adapter"]), spec["tokens"], spec["repeats"]
            ),
            "hf": lambda: measure_hf(Path(spec["model"]), Path(spec["adapter"]), spec["tokens"], spec["repeats"]),
            "switch": lambda: measure_switch(Path(spec["model"]), [Path(a) for a in spec["adapters"]], spec["rounds"]),
            "memory": lambda: measure_memory(Path(spec["model"]), [Path(a) for a in spec["adapters"]], [1, 10, 50]),
        }
        print(json.dumps(functions[what]()))
        return

    import torch
    from tests.support.tiny_model import build_tiny_model

    max_tokens = args.max_tokens or (32 if args.quick else 128)
    repeats = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="openft-bench-") as tmp:
        work = Path(tmp)
        tiny = build_tiny_model(work / "tiny")
        model_dir = args.model_dir or tiny
        adapters = [make_adapter(model_dir, work / f"adapter_{i}", seed=i) for i in range(2)]
        spec = {"model": str(model_dir), "adapter": str(adapters[0]), "tokens": max_tokens, "repeats": repeats}
        hf = child("hf", spec)
        mine = child("openft", spec)
        print(f"\nmodel {model_dir} · prompt {hf['prompt_tokens']} tokens · max_new_tokens {max_tokens} · greedy")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; each block in a fresh process")
        mine_labels = [k for k in mine if k.startswith("openft")]
        for label in mine_labels:
            row(label, mine[label])
        for label in ("HF generate", "HF generate + PEFT LoRA"):
            row(label, hf[label])
        for label in mine_labels:
            reference_label = "HF generate + PEFT LoRA" if "LoRA" in label else "HF generate"
            reference = hf[reference_label]
            print(
                f"  {label} / {reference_label}: tokens/s ×{mine[label]['tok_s'] / reference['tok_s']:.2f}, "
                f"TTFT ×{mine[label]['ttft_ms'] / reference['ttft_ms']:.2f}"
            )
        print(f"  openft base text == HF generate text: {mine['text'] == hf['text']}")

        switch = child("switch", {"model": str(model_dir), "adapters": [str(a) for a in adapters], "rounds": 10})
        print(
            f"\nadapter switch on {model_dir.name}: 1-token request {switch['same_ms']:.2f} ms with the same "
            f"adapter, {switch['alternating_ms']:.2f} ms alternating two → switch ≈ "
            f"{switch['alternating_ms'] - switch['same_ms']:.2f} ms"
        )

        many = [make_adapter(tiny, work / f"many_{i}", seed=100 + i) for i in range(50)]
        memory = child("memory", {"model": str(tiny), "adapters": [str(a) for a in many]})
        print("\nRSS on the tiny model (adapters r=8 on q/k/v/o):")
        for entry in memory["rows"]:
            print(
                f"  {entry['adapters']:>3} adapters loaded: RSS {entry['rss_mib']:7.1f} MiB, "
                f"adapter weights {entry['adapter_bytes'] / 1024:7.1f} KiB"
            )


if __name__ == "__main__":
    main()
