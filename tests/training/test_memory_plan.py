"""The memory planner (training/memory_plan.py), checked against the real thing where that is cheap: parameter counts
against transformers and peft, weight bytes against the trainer's loaded model (and bitsandbytes' NF4 layers), the
activation figures against the tensors autograd really keeps; then its decisions for public model shapes (numbers
from their config.json files); then the trainer's use of it: the micro-batch it picks, an early `out_of_memory`
that says what would fit, and the micro-batch pinned on resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from openft.trainer_contract import ExitCode, TrainJobSpec
from openft.training import checkpoint as ckpt
from openft.training import memory_plan as mp
from openft.training.faults import DEBUG_SIGNALS_ENV
from openft.training.memory import MEMORY_ENV
from openft.training.memory_plan import GIB, ModelShape, TrainingSetup
from tests.training.conftest import (
    MAX_SEQ_LEN,
    assert_same_tensors,
    job_spec,
    load_tensors,
    run_in_process,
    train_losses,
    write_job,
    write_jsonl,
)

# Public shapes (config.json of each model on the Hugging Face hub)
QWEN25_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
}
QWEN25_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
}
SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
LLAMA_WITH_BIASES = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "attention_bias": True,
    "mlp_bias": True,
    "tie_word_embeddings": False,
}
QWEN3_SMALL = {
    "model_type": "qwen3",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 96,
    "vocab_size": 1000,
    "tie_word_embeddings": True,
}
SHAPES = {
    "qwen2.5-7b": QWEN25_7B,
    "qwen2.5-0.5b": QWEN25_05B,
    "smollm2-135m": SMOLLM2_135M,
    "llama-biases": LLAMA_WITH_BIASES,
    "qwen3": QWEN3_SMALL,
}


def shape_of(config: dict[str, Any]) -> ModelShape:
    shape = ModelShape.from_config(config)
    assert shape is not None
    return shape


def gpu_setup(mode: mp.Mode = "lora", seq_len: int = 4096, **overrides: Any) -> TrainingSetup:
    """A job on a GPU in bf16 with the defaults (batch 8, micro-batch up to 8, LoRA r16 all-linear, dropout 0.05)."""
    setup = TrainingSetup(mode=mode, precision="bf16", seq_len=seq_len, batch_size=8, cuda=True)
    return replace(setup, **overrides)


def hf_model(config: dict[str, Any], *, meta: bool = True) -> Any:
    """The transformers model of `config` (on the meta device: shapes without memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config)
    if not meta:
        return AutoModelForCausalLM.from_config(hf_config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


# What is counted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_parameter_counts_equal_transformers(name: str) -> None:
    config = SHAPES[name]
    expected = sum(p.numel() for p in hf_model(config).parameters())
    assert shape_of(config).parameters().total == expected
    if name == "qwen2.5-7b":
        assert expected == 7_615_616_512  # the model card's 7.61B
    # a transformers config object reads the same as its config.json
    from transformers import AutoConfig

    from_object = ModelShape.from_config(AutoConfig.for_model(**config))
    assert from_object is not None  # (its class fills in a context where the config has none)
    assert from_object == replace(shape_of(config), context=from_object.context)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"], ["down_proj", "o_proj"]])
@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "llama-biases", "qwen3"])
def test_lora_adapter_counts_equal_peft(name: str, targets: Any) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(hf_model(SHAPES[name]), LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    setup = gpu_setup(lora_r=8, lora_targets=targets)
    assert mp.trainable_parameters(shape_of(SHAPES[name]), setup) == expected


def test_unknown_target_names_count_as_all_linear_and_unknown_shapes_are_none() -> None:
    shape = shape_of(QWEN25_05B)
    all_linear = mp.trainable_parameters(shape, gpu_setup())
    assert mp.trainable_parameters(shape, gpu_setup(lora_targets=["w1", "w2"])) == all_linear
    assert ModelShape.from_config({"model_type": "mystery", "d_ff": 3}) is None
    nested = {"model_type": "llava", "text_config": QWEN25_05B, "vision_config": {"hidden_size": 1024}}
    assert ModelShape.from_config(nested) == shape


def _trainer_spec(tmp_path: Path, model_dir: Path, data: dict[str, Path], **overrides: Any) -> TrainJobSpec:
    return TrainJobSpec.model_validate(job_spec(tmp_path, model_dir, data, **overrides))


@pytest.mark.parametrize(
    ("lora", "frozen"),
    [({"r": 4, "alpha": 8, "dropout": 0.1}, "fp32"), ({"r": 4, "alpha": 8, "dropout": 0.1}, "bf16"), (None, "fp32")],
)
def test_weight_bytes_equal_the_trainers_model(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path], lora: Any, frozen: mp.Precision
) -> None:
    """Frozen base in its dtype plus fp32 adapters (LoRA), or every weight fp32 (full): byte for byte."""
    from openft.training.model import load_model

    spec = _trainer_spec(tmp_path, tiny_model_dir, data_files, lora=lora)
    loaded = load_model(spec, frozen=frozen)
    actual = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    setup = mp.job_setup(spec, precision=frozen, frozen=frozen, seq_len=MAX_SEQ_LEN, cuda=False)
    shape = shape_of(json.loads((tiny_model_dir / "config.json").read_text()))
    assert mp.estimate(shape, setup, 1, False).parts["weights"] == actual
    trained = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    assert mp.trainable_parameters(shape, setup) == trained


@pytest.mark.parametrize("frozen", ["bf16", "fp32"])
def test_qlora_weight_bytes_equal_bitsandbytes(tmp_path: Path, frozen: mp.Precision) -> None:
    """NF4 with double quantization: 4-bit weights, 8-bit block scales, their fp32 scales and code books."""
    pytest.importorskip("bitsandbytes")
    from openft.training.quantization import load_quantized

    config = LLAMA_WITH_BIASES | {"attention_bias": False, "mlp_bias": False}
    hf_model(config, meta=False).save_pretrained(tmp_path / "model")
    model = load_quantized(tmp_path / "model", torch.device("cpu"), frozen)
    storages: dict[int, int] = {}

    def count(tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()

    for parameter in model.parameters():
        count(parameter)
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            count(state.absmax)
            count(state.code)
            count(getattr(state, "offset", None))
            if state.state2 is not None:
                count(state.state2.absmax)
                count(state.state2.code)
    setup = gpu_setup("qlora", precision=frozen, lora_r=16)
    shape = shape_of(config)
    adapters = 4 * mp.trainable_parameters(shape, setup)
    estimated = mp.estimate(shape, setup, 1, False).parts["weights"] - adapters
    assert estimated == pytest.approx(sum(storages.values()), rel=0.002)


ACTIVATION_MODEL = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
    "max_position_embeddings": 1024,
}


def _saved_activation_bytes(mode: mp.Mode, precision: mp.Precision, checkpointing: bool, rows: int, width: int) -> int:
    """Bytes autograd keeps for the backward after the trainer's forward (`ForwardPass`) of `rows` full sequences:
    every tensor saved for backward, by storage, weights excluded."""
    from peft import LoraConfig, get_peft_model

    from openft.training.forward import ForwardPass
    from openft.training.model import enable_gradient_checkpointing
    from openft.training.packing import Tokens

    torch.manual_seed(0)
    model = hf_model(ACTIVATION_MODEL, meta=False)
    if mode == "lora":
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float32)
        config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    model.train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    vocab = ACTIVATION_MODEL["vocab_size"]
    sequences = [Tokens([(7 * i + r) % vocab for i in range(width)], [True] * width) for r in range(rows)]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    forward = ForwardPass(0, True, True, torch.device("cpu"), precision)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(model, sequences)
    return sum(size for pointer, size in saved.items() if pointer not in weights)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_activations_cover_what_autograd_keeps(mode: mp.Mode, precision: mp.Precision, checkpointing: bool) -> None:
    """The estimate of what a micro-batch keeps for the backward (activations, and the LM head's saved part) is at
    least what autograd really saves, and, without checkpointing, not far above it (with it the estimate adds the
    layer recomputed in the backward, which the forward does not show)."""
    rows, width = 4, 128
    measured = _saved_activation_bytes(mode, precision, checkpointing, rows, width)
    setup = TrainingSetup(mode=mode, precision=precision, seq_len=width, batch_size=rows, max_micro_batch=rows)
    parts = mp.estimate(shape_of(ACTIVATION_MODEL), setup, rows, checkpointing).parts
    head_saved = 4 * rows * width * (ACTIVATION_MODEL["hidden_size"] if mode == "lora" else 1)
    estimated = parts["activations"] + head_saved
    assert measured <= estimated
    if not checkpointing:
        assert estimated <= 1.6 * measured, (estimated, measured)


# Decisions for public shapes --------------------------------------------------------------------


def test_qwen25_7b_lora_at_4096_tokens_fits_80gb_and_24gb_only_with_checkpointing() -> None:
    shape = shape_of(QWEN25_7B)
    on_80 = mp.plan(shape, gpu_setup(), 80 * GIB)
    assert on_80.fits and on_80.micro_batch_size >= 1
    on_24 = mp.plan(shape, gpu_setup(gradient_checkpointing=False), 24 * GIB)
    assert on_24.fits is False
    assert "gradient_checkpointing true" in on_24.suggestions
    checkpointed = mp.plan(shape, gpu_setup(), 24 * GIB)
    assert checkpointed.fits and checkpointed.gradient_checkpointing
    # the frozen bf16 base (2 bytes a weight) and the fp32 adapters
    weights = mp.estimate(shape, gpu_setup(), 1, True).parts["weights"]
    assert weights == 2 * 7_615_616_512 + 4 * mp.trainable_parameters(shape, gpu_setup())


def test_qwen25_7b_full_fine_tuning_does_not_fit_80gb_and_says_what_would() -> None:
    setup = gpu_setup("full")
    plan = mp.plan(shape_of(QWEN25_7B), setup, 80 * GIB)
    assert plan.fits is False
    assert plan.peak_bytes > 16 * 7_615_616_512  # fp32 weights, gradients and AdamW's two moments at least
    assert plan.suggestions[:2] == ["fine_tuning_mode lora", "fine_tuning_mode qlora"]
    message = mp.failure_message(plan, setup, "this GPU")
    assert message.startswith("the job needs ~") and "80.0 GiB available on this GPU" in message
    assert message.endswith("use fine_tuning_mode lora or fine_tuning_mode qlora")


def test_qwen25_7b_qlora_fits_a_24gb_gpu_within_20gb() -> None:
    shape = shape_of(QWEN25_7B)
    plan = mp.plan(shape, gpu_setup("qlora"), 24 * GIB)
    assert plan.fits
    smallest = mp.estimate(shape, gpu_setup("qlora"), 1, True)
    assert smallest.peak_bytes <= 20 * GIB  # the goal for this shape at 4096 tokens
    lora = mp.estimate(shape, gpu_setup(), 1, True).parts["weights"]
    assert 0.25 < smallest.parts["weights"] / lora < 0.4  # 4-bit linear layers; embeddings and head stay bf16


def test_the_benchmark_shapes_fit_an_80gb_gpu_at_batch_8_by_1024() -> None:
    for config, mode in ((QWEN25_05B, "full"), (QWEN25_05B, "lora"), (SMOLLM2_135M, "lora")):
        plan = mp.plan(shape_of(config), gpu_setup(mode, seq_len=1024), 80 * GIB)
        assert (plan.fits, plan.micro_batch_size, plan.gradient_checkpointing) == (True, 8, False), config


def test_peak_grows_with_tokens_and_checkpointing_keeps_far_less() -> None:
    shape, setup = shape_of(QWEN25_05B), gpu_setup(seq_len=2048)
    peaks = [mp.estimate(shape, setup, m, False).peak_bytes for m in (1, 2, 4, 8)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    kept = mp.estimate(shape, setup, 8, False).parts["activations"]
    checkpointed = mp.estimate(shape, setup, 8, True).parts["activations"]
    assert checkpointed < kept / 5
    dpo = mp.estimate(shape, replace(setup, dpo=True), 4, False)
    assert dpo.tokens == 8 * 2048  # both answers of 4 pairs
    full_dpo = mp.estimate(shape, replace(setup, mode="full", dpo=True), 1, True)
    assert full_dpo.parts["reference_model"] == 4 * shape.parameters().total  # the frozen fp32 starting model


def test_a_reinforcement_jobs_judges_count_their_weights() -> None:
    shape, setup = shape_of(QWEN25_05B), gpu_setup(seq_len=512)
    judges = mp.judge_weight_bytes([QWEN25_05B, {"not": "a model"}], cuda=True)
    assert judges == 2 * shape.parameters().total  # bf16 on a GPU; a config it cannot read counts nothing
    assert mp.judge_weight_bytes([QWEN25_05B], cuda=False) == 2 * judges  # fp32 on a CPU
    alone, judged = (mp.estimate(shape, replace(setup, judge_bytes=b), 1, False) for b in (0, judges))
    assert judged.parts["judge_models"] == judges and alone.parts["judge_models"] == 0
    assert judged.peak_bytes > alone.peak_bytes + judges  # the slack grows with it


# How the planner chooses ------------------------------------------------------------------------


def test_micro_batch_candidates() -> None:
    assert mp.micro_batch_candidates(gpu_setup(batch_size=4)) == [4, 2, 1]
    assert mp.micro_batch_candidates(gpu_setup(batch_size=32, max_micro_batch=6)) == [6, 4, 2, 1]
    assert mp.micro_batch_candidates(gpu_setup(batch_size=8, world_size=2)) == [4, 2, 1]
    assert mp.micro_batch_candidates(gpu_setup(batch_size=1)) == [1]


def test_the_largest_micro_batch_that_fits_and_checkpointing_only_when_needed() -> None:
    shape = shape_of(SMOLLM2_135M)
    setup = gpu_setup(seq_len=1024)  # micro-batches of 8 × 1024 tokens at most
    peak = {(m, c): mp.estimate(shape, setup, m, c).peak_bytes for m in (1, 2, 4, 8) for c in (False, True)}
    assert mp.plan(shape, setup, peak[8, False]).estimate == mp.estimate(shape, setup, 8, False)
    just_short = mp.plan(shape, setup, peak[8, False] - 1)  # 4 × 1024 tokens still fill a GPU: no recomputation
    assert (just_short.micro_batch_size, just_short.gradient_checkpointing) == (4, False)
    assert just_short.accumulation_steps == 2
    short = gpu_setup(seq_len=256)  # 2 × 256 tokens would not: 8 with checkpointing instead
    small = {(m, c): mp.estimate(shape, short, m, c).peak_bytes for m in (1, 2, 4, 8) for c in (False, True)}
    picked = mp.plan(shape, short, max(small[2, False], small[8, True]))
    assert small[8, True] < small[4, False]
    assert (picked.micro_batch_size, picked.gradient_checkpointing) == (8, True)
    forced = mp.plan(shape, replace(setup, gradient_checkpointing=True), peak[8, False])
    assert forced.gradient_checkpointing and forced.micro_batch_size == 8
    never = mp.plan(shape, replace(short, gradient_checkpointing=False), small[2, False])
    assert (never.micro_batch_size, never.gradient_checkpointing) == (2, False)
    unknown = mp.plan(shape, setup, None)  # free memory unknown: the job's micro-batch, as before the planner
    assert (unknown.fits, unknown.micro_batch_size, unknown.gradient_checkpointing) == (None, 8, False)


def test_a_pinned_micro_batch_is_kept_or_the_plan_fails_without_suggestions() -> None:
    shape, setup = shape_of(SMOLLM2_135M), gpu_setup(seq_len=1024)
    kept = mp.plan(shape, setup, 80 * GIB, micro_batch_size=2)
    assert (kept.fits, kept.micro_batch_size, kept.pinned) == (True, 2, True)
    too_small = mp.estimate(shape, setup, 2, True).peak_bytes - 1
    failed = mp.plan(shape, setup, too_small, micro_batch_size=2)
    assert failed.fits is False and failed.suggestions == [] and failed.micro_batch_size == 2
    assert "keeps its checkpoint's micro-batch" in mp.failure_message(failed, setup, "this GPU")
    assert mp.plan(shape, setup, too_small).fits  # a fresh job would take micro-batch 1


def test_the_suggested_max_seq_length_is_the_longest_halving_that_fits() -> None:
    shape = shape_of(QWEN25_7B)
    setup = gpu_setup(seq_len=32768, gradient_checkpointing=False)
    plan = mp.plan(shape, setup, 80 * GIB)
    [suggested] = [s for s in plan.suggestions if s.startswith("max_seq_length ")]
    length = int(suggested.split()[1])
    assert mp.fits(shape, replace(setup, seq_len=length), 80 * GIB)
    assert not mp.fits(shape, replace(setup, seq_len=2 * length), 80 * GIB)


def test_sequence_length_follows_the_trainer() -> None:
    assert mp.sequence_length(None, 32768) == 2048  # the trainer's default cap
    assert mp.sequence_length(None, 512) == 512
    assert mp.sequence_length(4096, 32768) == 4096
    assert mp.sequence_length(4096, 1024) == 1024  # never past the context
    assert mp.sequence_length(None, None) == 2048


def test_old_checkpoints_read_without_a_micro_batch() -> None:
    state = {"step": 3, "epoch": 1, "position": 0, "trained_tokens": 10, "num_threads": 1, "fingerprint": "f"}
    assert ckpt.LoopState(**state).micro_batch_size is None  # the recipe then pins the job's micro_batch_size


# The trainer ------------------------------------------------------------------------------------


@pytest.fixture
def make_job(tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]) -> Any:
    def make(name: str, model_dir: Path = tiny_model_dir, **overrides: Any) -> Path:
        spec = job_spec(tmp_path, model_dir, data_files, name=name, **{"validation_file": None, **overrides})
        return write_job(tmp_path / f"{name}.json", spec)

    return make


def _trainer_plan(job: Path, tiny_model_dir: Path, micro_batch: int, checkpointing: bool) -> int:
    """The peak the trainer's plan estimates for this job (fp32 on the CPU) at a micro-batch."""
    spec = TrainJobSpec.read(job)
    setup = mp.job_setup(spec, precision="fp32", frozen="fp32", seq_len=MAX_SEQ_LEN, cuda=False)
    shape = shape_of(json.loads((tiny_model_dir / "config.json").read_text()))
    return mp.estimate(shape, setup, micro_batch, checkpointing).peak_bytes


def _cap(monkeypatch: pytest.MonkeyPatch, n_bytes: float) -> None:
    monkeypatch.setenv(MEMORY_ENV, repr(n_bytes / GIB))


def _plan_logs(run: Any) -> list[str]:
    return [m["message"] for m in run.of("log") if m["message"].startswith("Memory plan")]


def test_the_plan_is_logged_and_the_jobs_micro_batch_kept_when_it_fits(make_job: Any) -> None:
    run = run_in_process(make_job("fits"))
    assert run.rc == ExitCode.COMPLETED
    [line] = _plan_logs(run)
    assert line.startswith("Memory plan: micro-batch 2 (2 per step of batch 4), gradient checkpointing off; ~")
    # the data's longest example (one is cut at max_seq_len) is what micro-batches are planned for
    assert "peak estimated for LoRA, sequences of up to 96 tokens, fp32" in line and "available" in line


def test_a_smaller_micro_batch_when_memory_is_short_trains_as_that_micro_batch_does(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job asks for micro-batches of 2; with room for 1 only the plan takes 1, and the run is the very run
    of a job that asked for 1 (so the train step really uses the plan's micro-batch)."""
    job = make_job("short", gradient_checkpointing=False)
    _cap(monkeypatch, (_trainer_plan(job, tiny_model_dir, 1, False) + _trainer_plan(job, tiny_model_dir, 2, False)) / 2)
    short = run_in_process(job)
    assert short.rc == ExitCode.COMPLETED
    assert _plan_logs(short)[0].startswith("Memory plan: micro-batch 1 (4 per step of batch 4)")
    monkeypatch.delenv(MEMORY_ENV)
    run_in_process(make_job("ones", gradient_checkpointing=False, micro_batch_size=1))
    assert train_losses(tmp_path / "short") == train_losses(tmp_path / "ones")
    assert_same_tensors(tmp_path / "short" / "model", tmp_path / "ones" / "model")


def test_micro_batches_are_planned_for_the_datas_longest_example(
    make_job: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the load the plan takes every example as max_seq_len long (here 512 tokens: only micro-batch 1 would
    fit); once the data is tokenized, its longest example (well under 512) leaves room for the job's 2."""
    job = make_job("long-cap", max_seq_len=512, gradient_checkpointing=False)
    spec = TrainJobSpec.read(job)
    setup = mp.job_setup(spec, precision="fp32", frozen="fp32", seq_len=512, cuda=False)
    shape = shape_of(json.loads((tiny_model_dir / "config.json").read_text()))
    cap = mp.estimate(shape, setup, 1, False).peak_bytes
    assert mp.estimate(shape, setup, 2, False).peak_bytes > cap
    _cap(monkeypatch, cap)
    run = run_in_process(job)
    assert run.rc == ExitCode.COMPLETED
    [line] = _plan_logs(run)
    assert line.startswith("Memory plan: micro-batch 2 (2 per step of batch 4)")
    tokens = int(line.split("sequences of up to ")[1].split()[0])
    assert tokens < 256


def test_for_examples_bounds_the_tokens_of_a_micro_batch() -> None:
    setup = gpu_setup(seq_len=2048)
    assert mp.for_examples(setup, 77).seq_len == 77
    assert mp.for_examples(setup, 5000).seq_len == 2048  # never past max_seq_len
    pairs = mp.for_examples(replace(setup, dpo=True), 151)  # both answers of the longest pair: 151 tokens
    assert pairs.seq_len == 76 and pairs.seq_len * pairs.sequences_per_example >= 151


def test_a_job_that_cannot_fit_fails_before_the_model_is_loaded(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No weights in the model folder at all: only a failure before the load can report out_of_memory."""
    config_only = tmp_path / "config-only"
    shutil.copytree(tiny_model_dir, config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    monkeypatch.setenv(MEMORY_ENV, "0.5")
    run = run_in_process(make_job("oom", model_dir=config_only))
    assert run.rc == ExitCode.FAILED
    failed = run.last
    assert (failed["type"], failed["code"]) == ("failed", "out_of_memory")
    assert failed["message"].startswith("the job needs ~1.0 GiB (LoRA, sequences of up to 96 tokens, micro-batch 1")
    assert "512 MiB available on this machine" in failed["message"]
    assert not any(m["message"].startswith("Loaded base model") for m in run.of("log"))


def test_a_judge_that_does_not_fit_fails_the_job_before_the_load(
    make_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reinforcement job's judge (training/judges.py) is planned for: a 0.5B judge (2 GiB in fp32, config only)
    does not fit 1.5 GiB beside the tiny policy."""
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text(json.dumps(QWEN25_05B))
    grader = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}", "reference": "x",
              "operation": "eq"}  # fmt: skip
    judges = {"big": {"name": "big", "source": "local", "path": str(judge)}}
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}] * 12)
    monkeypatch.setenv(MEMORY_ENV, "1.5")
    rft = {"grader": grader, "judges": judges}
    run = run_in_process(make_job("judged", method="reinforcement", reinforcement=rft, training_file=str(prompts)))
    assert run.rc == ExitCode.FAILED
    failed = run.last
    assert (failed["type"], failed["code"]) == ("failed", "out_of_memory")
    assert "judge models 1.8 GiB" in failed["message"], failed["message"]  # 494M parameters × 4 B


def test_the_failure_says_what_would_fit(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = make_job("full", lora=None)
    lora = make_job("lora")
    needs_full = min(_trainer_plan(full, tiny_model_dir, 1, c) for c in (False, True))
    needs_lora = min(_trainer_plan(lora, tiny_model_dir, 1, c) for c in (False, True))
    assert needs_lora < needs_full
    _cap(monkeypatch, (needs_full + needs_lora) / 2)
    run = run_in_process(full)
    assert run.rc == ExitCode.FAILED and run.last["code"] == "out_of_memory"
    assert ": use fine_tuning_mode lora or fine_tuning_mode qlora" in run.last["message"]


def test_a_bad_memory_cap_is_a_clear_failure(make_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEMORY_ENV, "lots")
    run = run_in_process(make_job("bad-cap"))
    assert run.rc == ExitCode.FAILED
    assert run.last["code"] == "training_error" and MEMORY_ENV in run.last["message"]


def test_the_micro_batch_is_pinned_on_resume(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused while memory was short (micro-batch 1), resumed with plenty (the plan alone would take 2): the
    resumed run keeps 1 and ends bit-identical to a straight run with 1 — which differs from a run with 2."""
    job = make_job("paused", gradient_checkpointing=False)
    cap = (_trainer_plan(job, tiny_model_dir, 1, False) + _trainer_plan(job, tiny_model_dir, 2, False)) / 2
    _cap(monkeypatch, cap)
    straight = run_in_process(make_job("straight", gradient_checkpointing=False))
    assert straight.rc == ExitCode.COMPLETED
    monkeypatch.setenv(DEBUG_SIGNALS_ENV, "2:SIGUSR1")  # paused after step 2, as by the worker
    assert run_in_process(job).rc == ExitCode.STOPPED
    monkeypatch.delenv(DEBUG_SIGNALS_ENV)
    monkeypatch.delenv(MEMORY_ENV)
    resumed = run_in_process(job)
    assert resumed.rc == ExitCode.COMPLETED
    assert _plan_logs(resumed)[0].startswith("Memory plan: micro-batch 1 (4 per step of batch 4)")
    assert train_losses(tmp_path / "paused") == train_losses(tmp_path / "straight")
    assert_same_tensors(tmp_path / "paused" / "model", tmp_path / "straight" / "model")
    unpinned = run_in_process(make_job("twos", gradient_checkpointing=False))
    assert _plan_logs(unpinned)[0].startswith("Memory plan: micro-batch 2")
    a, b = load_tensors(tmp_path / "twos" / "model"), load_tensors(tmp_path / "straight" / "model")
    assert any(not torch.equal(a[name], b[name]) for name in a)  # the micro-batch does change the weights
