"""QLoRA (`quantization: "nf4"`): the base 4-bit NF4 through bitsandbytes on this CPU, LoRA on top, exact resume.

The chains are real trainer processes, as in test_resume.py (whose comparison helpers they reuse): a QLoRA run
stopped, then killed, then resumed ends with the same metrics, bit for bit, and the same adapter as a straight
one; the same for DPO with QLoRA (its reference: the adapter switched off). The saved adapter names the
unquantized base and carries no quantization settings, so it loads onto that base like any LoRA adapter.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from openft.trainer_contract import ExitCode, TrainJobSpec, checkpoint_dir
from openft.training import checkpoint as ckpt
from openft.training.model import load_model
from tests.training.conftest import (
    TrainerRun,
    assert_same_tensors,
    job_spec,
    results_rows,
    run_in_process,
    run_subprocess,
    write_job,
)
from tests.training.test_resume import TOTAL_STEPS, metric_rows

pytestmark = [
    pytest.mark.slow,  # the chains: seven trainer processes, about 40 s on two cores
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

QLORA: dict[str, Any] = {"quantization": "nf4", "precision": "bf16", "gradient_checkpointing": True}
"""The QLoRA chains: compute in bf16 (on this CPU natively or emulated: same bits either way) and with
activations recomputed in the backward pass through the 4-bit layers."""


class Chains:
    def __init__(self, tmp: Path, model_dir: Path, data: dict[str, Path], dpo_data: dict[str, Path]):
        self.tmp, self.model_dir, self.data, self.dpo_data = tmp, model_dir, data, dpo_data
        self.runs: dict[str, list[TrainerRun]] = {}
        self.outputs: dict[str, Path] = {}

    def job(self, name: str, leg: int, overrides: dict[str, Any]) -> Path:
        spec = job_spec(self.tmp, self.model_dir, self.data, name=name, **overrides)
        self.outputs[name] = Path(spec["output_dir"])
        return write_job(self.tmp / f"{name}-{leg}.json", spec)

    def chain(self, name: str, overrides: dict[str, Any], signals: list[str]) -> None:
        self.runs[name] = [
            run_subprocess(self.job(name, leg, overrides), debug_signals=s) for leg, s in enumerate(signals)
        ]

    def run_all(self) -> None:
        dpo = {
            **QLORA,
            "precision": "fp32",  # the other compute dtype
            "gradient_checkpointing": False,
            "method": "dpo",
            "dpo": {"beta": 0.2},
            "training_file": str(self.dpo_data["train"]),
            "validation_file": str(self.dpo_data["valid"]),
        }
        chains: list[tuple[str, dict[str, Any], list[str]]] = [
            ("straight", QLORA, [""]),
            # Stopped mid-epoch, then killed one step after the first epoch checkpoint, then finished.
            ("resumed", QLORA, ["2:SIGUSR1", "4:SIGKILL", ""]),
            ("dpo_straight", dpo, [""]),
            ("dpo_resumed", dpo, ["2:SIGUSR1", ""]),
        ]
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(self.chain, *chain) for chain in chains]:
                future.result()


@pytest.fixture(scope="module")
def chains(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    data_files: dict[str, Path],
    dpo_files: dict[str, Path],
) -> Chains:
    found = Chains(tmp_path_factory.mktemp("qlora"), tiny_model_dir, data_files, dpo_files)
    found.run_all()
    return found


def _assert_identical(chains: Chains, name: str, straight: str) -> None:
    reference, resumed = chains.outputs[straight], chains.outputs[name]
    for run in (*chains.runs[straight], chains.runs[name][-1]):
        assert run.rc == ExitCode.COMPLETED, run.stderr[-3000:]
    expected = metric_rows(reference)
    assert [row["step"] for row in expected] == list(range(1, TOTAL_STEPS + 1))
    assert metric_rows(resumed) == expected  # every metric, float ==: bit for bit
    assert results_rows(resumed) == results_rows(reference)
    assert_same_tensors(reference / "model", resumed / "model")


# Loading ------------------------------------------------------------------------------------------


def _spec(tmp_path: Path, model_dir: Path, data: dict[str, Path], **overrides: Any) -> TrainJobSpec:
    return TrainJobSpec.model_validate(job_spec(tmp_path, model_dir, data, **{**QLORA, **overrides}))


@pytest.mark.parametrize(("frozen", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_base_is_4bit_nf4_with_double_quantization_and_the_adapters_fp32(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path], frozen: Any, dtype: torch.dtype
) -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    loaded = load_model(_spec(tmp_path, tiny_model_dir, data_files), frozen=frozen)
    layers: list[Any] = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14  # every linear layer of the 2 decoder layers (q, k, v, o, gate, up, down)
    for layer in layers:
        state = layer.weight.quant_state
        assert layer.weight.dtype == torch.uint8 and state.quant_type == "nf4" and state.nested  # double quant
        assert layer.compute_dtype == dtype
    frozen_params = [p for p in loaded.model.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen_params if not isinstance(p, bnb.nn.Params4bit)} == {dtype}
    assert {p.dtype for p in loaded.model.parameters() if p.requires_grad} == {torch.float32}
    assert loaded.n_trainable > 0 and loaded.is_lora
    plain = load_model(_spec(tmp_path, tiny_model_dir, data_files, quantization=None), frozen=frozen)
    assert loaded.n_params == plain.n_params  # a 4-bit weight still counts as one parameter
    assert any(note.startswith("QLoRA: the base's linear layers are 4-bit NF4") for note in loaded.notes)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_the_checkpoint_is_read_not_left_mapped(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]
) -> None:
    """Mapped, the whole bf16 file would stay resident beside its 4-bit copy (its unquantized tensors are views of
    the mapping); fp32 here so the tiny model's tensors need no conversion, as a bf16 file under bf16 would not.
    The model is a private copy: other tests of this worker load the shared one without quantization (mapped, as
    they should be) and their models may still be alive."""
    own_copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "own-model"))
    loaded = load_model(_spec(tmp_path, own_copy, data_files, precision="fp32"), frozen="fp32")
    assert loaded.n_trainable > 0
    assert str(own_copy / "model.safetensors") not in Path("/proc/self/maps").read_text()


def test_an_eval_pass_leaves_the_training_gradients_alone(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]
) -> None:
    """bitsandbytes repacks a 4-bit layer's weight for a backward-less CPU kernel on its first eval pass (on CPUs
    with AVX512-BF16); openft switches that off, so validation between steps cannot cut training's gradients."""
    spec = _spec(tmp_path, tiny_model_dir, data_files)
    ids = torch.tensor([[(7 * i + 3) % 400 for i in range(12)], [(5 * i + 1) % 400 for i in range(12)]])

    def gradients(evaluate_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = load_model(spec, frozen="bf16").model
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # trained-looking adapters, so every layer passes a gradient down
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
            model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fresh, after_eval = gradients(False), gradients(True)
    assert len(fresh) == 28 and fresh.keys() == after_eval.keys()  # A and B of 14 layers
    assert all(torch.equal(fresh[n], after_eval[n]) for n in fresh)
    assert all(bool(g.abs().sum() > 0) for g in fresh.values())


def test_without_bitsandbytes_the_job_fails_with_a_clear_code(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when it is missing
    job = write_job(tmp_path / "job.json", job_spec(tmp_path, tiny_model_dir, data_files, **QLORA))
    run = run_in_process(job)
    assert run.rc == ExitCode.FAILED
    assert run.last["type"] == "failed" and run.last["code"] == "quantization_unavailable"
    assert run.last["param"] == "method.supervised.hyperparameters.fine_tuning_mode"
    assert "bitsandbytes" in run.last["message"] and "fine_tuning_mode lora" in run.last["message"]


def test_quantization_is_in_the_fingerprint_only_when_set(tmp_path: Path) -> None:
    """A QLoRA checkpoint never resumes a LoRA job (or back); LoRA jobs keep the fingerprint they had before
    QLoRA existed (the value below is what the code computed then), so their checkpoints still resume."""
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": []}\n')
    data = {"train": train, "valid": train}

    def fp(**overrides: Any) -> str:
        spec = job_spec(tmp_path, tmp_path / "model", data, **overrides)
        return ckpt.fingerprint(TrainJobSpec.model_validate(spec))

    assert fp() == "7d07a9bf93a05dc2327633b5cc9a5a037c11b3e255abb9ad7a6e655ac53dd121"
    assert fp(quantization="nf4") != fp()


# Exact resume -------------------------------------------------------------------------------------


def test_qlora_run_learns_and_logs_what_it_loaded(chains: Chains) -> None:
    run = chains.runs["straight"][0]
    assert run.rc == ExitCode.COMPLETED, run.stderr[-3000:]
    assert run.stray_lines == []
    assert "gemv_4bit" not in run.stderr  # no backward through bitsandbytes' inference kernel
    assert "kernels-community" not in run.stderr  # bitsandbytes' optional-kernel hint is not for users
    logs = [m["message"] for m in run.of("log")]
    assert any("4-bit NF4 with double quantization" in line and "computing in bf16" in line for line in logs)
    [forward] = [line for line in logs if line.startswith("Forward pass")]
    assert "packing on" in forward and "gradient checkpointing on" in forward
    losses = [m["train_loss"] for m in run.of("metrics")]
    assert len(losses) == TOTAL_STEPS and losses[-1] < losses[0]


def test_qlora_stopped_and_killed_resumes_exactly(chains: Chains) -> None:
    stopped, killed, _ = chains.runs["resumed"]
    assert stopped.rc == ExitCode.STOPPED and stopped.last["step"] == 2
    assert killed.rc == -signal.SIGKILL and [m["step"] for m in killed.of("metrics")] == [3, 4]
    _assert_identical(chains, "resumed", straight="straight")


def test_dpo_with_qlora_resumes_exactly(chains: Chains) -> None:
    stopped = chains.runs["dpo_resumed"][0]
    assert stopped.rc == ExitCode.STOPPED and stopped.last["step"] == 2
    _assert_identical(chains, "dpo_resumed", straight="dpo_straight")
    metrics = chains.runs["dpo_straight"][0].of("metrics")
    assert metrics[0]["train_reward_margin"] == 0.0  # policy == reference (adapter off) before the first update
    assert any(m["train_reward_margin"] != 0.0 for m in metrics[1:])


def test_a_lora_checkpoint_does_not_resume_as_qlora(chains: Chains, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(chains.outputs["straight"], out)
    for path in (out / "model", checkpoint_dir(out, TOTAL_STEPS)):
        shutil.rmtree(path)
    spec = job_spec(tmp_path, chains.model_dir, chains.data, name="copy", **{**QLORA, "quantization": None})
    run = run_in_process(write_job(tmp_path / "job.json", spec))
    assert run.rc == ExitCode.FAILED and run.last["code"] == "checkpoint_mismatch"


# What serving gets -------------------------------------------------------------------------------


def test_the_adapter_names_the_unquantized_base_and_loads_onto_it(chains: Chains, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = chains.outputs["straight"] / "model"
    text = (folder / "adapter_config.json").read_text(encoding="utf-8")
    config = json.loads(text)
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    assert not any(word in text.lower() for word in ("quantization", "bnb", "4bit", "nf4"))
    assert not (folder / "config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, folder)  # the plain, unquantized base
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert tuned.dtype == torch.float32 and not torch.equal(tuned, plain)
