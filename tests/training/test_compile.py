"""`compile: true` (training/compile.py): the decoder layers compiled in place; results close to eager ones;
a compiled run paused and resumed ends bit-identical to a straight compiled run; a resume never switches.

The runs are real trainer processes, as the worker starts them, with torch's inductor compiling for this CPU
(gcc). Compiling is slow on two cores (about 20 s per graph, a few graphs per run, fewer once inductor's cache
in /tmp holds them), so the runs skip validation, and the resumed run starts once the straight one has filled
the cache (two runs compiling the same graphs at once would each compile them all).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from openft.trainer_contract import ExitCode, TrainJobSpec
from openft.training import checkpoint as ckpt
from openft.training.compile import compile_layers, decoder_layers
from tests.training.conftest import (
    TrainerRun,
    assert_same_tensors,
    job_spec,
    results_rows,
    run_in_process,
    run_subprocess,
    train_losses,
    write_job,
)

# Fast: what is compiled, and the fingerprint -----------------------------------------------------


def test_each_decoder_layer_is_compiled_in_place(tiny_model_dir: Path) -> None:
    """LoRA inside, names and parameters unchanged: checkpoints and adapters see the same model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    names = list(model.state_dict())
    parameters = list(model.parameters())
    assert compile_layers(model) == 2 == base.config.num_hidden_layers
    layers = decoder_layers(model)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(any("lora_A" in name for name, _ in layer.named_parameters()) for layer in layers)
    assert list(model.state_dict()) == names
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    assert torch._dynamo.config.fail_on_recompile_limit_hit  # never a silent fallback to eager code


def test_a_model_without_decoder_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="no transformers decoder layers"):
        compile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_compile_is_in_the_fingerprint_only_when_on(tmp_path: Path, tiny_model_dir: Path, data_files: Any) -> None:
    """Jobs without it keep the fingerprint they had before the option existed (their checkpoints still resume)."""
    spec = job_spec(tmp_path, tiny_model_dir, data_files)
    plain = ckpt.fingerprint(TrainJobSpec.model_validate(spec))
    assert ckpt.fingerprint(TrainJobSpec.model_validate({**spec, "compile": False})) == plain
    assert ckpt.fingerprint(TrainJobSpec.model_validate({**spec, "compile": True})) != plain


# Slow: real compiled runs -------------------------------------------------------------------------


class Runs:
    def __init__(self, tmp: Path, model_dir: Path, data: dict[str, Path]):
        self.tmp, self.model_dir, self.data = tmp, model_dir, data
        self.runs: dict[str, list[TrainerRun]] = {}

    def job(self, name: str, leg: int, **overrides: Any) -> Path:
        spec = job_spec(self.tmp, self.model_dir, self.data, name=name, validation_file=None, **overrides)
        return write_job(self.tmp / f"{name}-{leg}.json", spec)

    def chain(self, name: str, stops: list[str], **overrides: Any) -> None:
        self.runs[name] = [
            run_subprocess(self.job(name, i, **overrides), debug_signals=s, timeout=900) for i, s in enumerate(stops)
        ]

    def output(self, name: str) -> Path:
        return self.tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, data_files: dict[str, Path]) -> Runs:
    found = Runs(tmp_path_factory.mktemp("compile"), tiny_model_dir, data_files)
    with ThreadPoolExecutor(max_workers=1) as pool:
        straight = pool.submit(found.chain, "straight", [""], compile=True)  # compiles, filling inductor's cache
        found.runs["eager"] = [run_in_process(found.job("eager", 0))]  # meanwhile, nothing to compile
        straight.result()
    found.chain("resumed", ["2:SIGUSR1", ""], compile=True)  # the same graphs: from the cache, as on one machine
    return found


def _metric_rows(output_dir: Path) -> list[dict[str, Any]]:
    train_losses(output_dir)  # each step once
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "step_seconds"} for line in lines]


@pytest.mark.slow
def test_a_compiled_run_completes_close_to_eager(runs: Runs) -> None:
    [run] = runs.runs["straight"]
    assert run.rc == ExitCode.COMPLETED, run.stderr[-3000:]
    [forward] = [m["message"] for m in run.of("log") if m["message"].startswith("Forward pass")]
    assert "2 decoder layers compiled" in forward
    eager, compiled = train_losses(runs.output("eager")), train_losses(runs.output("straight"))
    assert list(compiled) == list(eager) == [1, 2, 3, 4, 5, 6]
    # Step 1 runs the initial weights (LoRA's B starts at zero, so its dropout changes nothing): rounding only.
    assert compiled[1] == pytest.approx(eager[1], rel=1e-5)
    # Later steps: rounding, and LoRA's dropout masks drawn by the compiled code's own generator (seeded from
    # torch's), so they are other masks than eager code draws.
    assert list(compiled.values()) == pytest.approx(list(eager.values()), rel=1e-2)
    assert compiled != eager  # it really ran compiled code


@pytest.mark.slow
def test_a_compiled_run_paused_and_resumed_ends_bit_identical(runs: Runs) -> None:
    first, last = runs.runs["resumed"]
    assert first.rc == ExitCode.STOPPED and first.last["step"] == 2, first.stderr[-3000:]
    assert last.rc == ExitCode.COMPLETED, last.stderr[-3000:]
    assert last.of("started")[0]["start_step"] == 2
    straight, resumed = runs.output("straight"), runs.output("resumed")
    assert _metric_rows(resumed) == _metric_rows(straight)  # float ==: bit for bit
    assert results_rows(resumed) == results_rows(straight)
    assert_same_tensors(straight / "model", resumed / "model")


def test_a_resume_cannot_switch_compile_on(tmp_path: Path, tiny_model_dir: Path, data_files: Any) -> None:
    """A job paused uncompiled and resumed with `compile: true` is refused (checkpoint_mismatch), not continued
    with other arithmetic."""
    spec = job_spec(tmp_path, tiny_model_dir, data_files, name="switch", validation_file=None)
    first = run_subprocess(write_job(tmp_path / "a.json", spec), debug_signals="2:SIGUSR1")
    assert first.rc == ExitCode.STOPPED, first.stderr[-3000:]
    second = run_in_process(write_job(tmp_path / "b.json", {**spec, "compile": True}))
    assert second.last["type"] == "failed" and second.last["code"] == "checkpoint_mismatch"
