"""The memory planner: the peak memory of a training step, from the model's config alone, and the micro-batch and
gradient checkpointing that make a job fit its device.

The trainer runs it twice. Before loading the model (`recipe.TrainingRecipe._plan_memory`: config.json is enough),
with every example taken as max_seq_len tokens long, a job that cannot fit fails at once with `out_of_memory` and
what would fit, instead of crashing an hour in; once the data is tokenized (`_fit_memory_to_data`), it picks the
micro-batch and checkpointing for the longest example (`for_examples`). The data check (`openft data check`,
`GET /v1/files/{id}/check`) runs the same two steps for this machine, and the first for 24 GB and 80 GB GPUs.
Pure functions over a config (a dict read from config.json, or a transformers config object): no torch, no model,
no I/O.

What a training process holds at its peak, in bytes (`estimate`):

- weights: full fine-tuning keeps every weight fp32 (4 B), a DPO job also a frozen fp32 copy of the starting model
  (its reference); LoRA keeps the frozen base in the frozen dtype (`model.frozen_dtype`: 2 B under bf16, else 4 B);
  QLoRA stores the decoder's linear layers as NF4 (half a byte per weight, plus the 8-bit block scales of double
  quantization and their fp32 scales: `NF4_BYTES`) and the rest (embeddings, norms, an untied head) in the frozen
  dtype. Adapters (r × (in + out) per adapted linear layer) are fp32.
- gradients (4 B) and AdamW's two moments (8 B) of every trained weight: present from the first step on, and the
  gradients also during the later micro-batches of a step (accumulation).
- activations kept for the backward pass, per token and decoder layer: `KEPT_BYTES`, measured with saved-tensor
  hooks on a Llama-shaped model (fp32 and bf16; tests/training/test_memory_plan.py measures again), plus, with LoRA
  dropout, the dropped-out copy of each adapted layer's input and its mask. With gradient checkpointing only each
  layer's input is kept (4 B per value) and one layer at a time is recomputed. A micro-batch holds at most
  micro_batch_size × `seq_len` tokens (twice that for DPO: both answers of a pair).
- the backward's working memory: the gradients of one layer's activations (counted as one more layer's activations),
  autocast's bf16 copies of trained weights (full fine-tuning under bf16: 2 B per weight of the decoder's linear
  layers, kept for the backward), QLoRA's dequantized weight of one layer.
- the LM head (`head_loss.py`): no [tokens × vocab] tensor, but one chunk of fp32 logits and one chunk of the head's
  weight; with a frozen head (LoRA) the per-target fp32 gradient of the log-probability in the hidden state (targets
  × hidden × 4 B, kept for the backward); with a trained head (full fine-tuning) its fp32 gradient (vocab × hidden ×
  4 B), twice: computed, then added to the accumulated one.
- the optimizer step: on CUDA AdamW's multi-tensor path makes one fp32 temporary the size of the trained weights,
  on a CPU its single-tensor path two the size of the largest trained tensor; activations are gone by then, so
  only what exceeds the forward/backward's transient memory adds to the peak.
- a reinforcement job's judge models (`judge_weight_bytes`): their weights, loaded next to the trained model for the
  whole run (their generations' activations are a forward of one sequence, far below a training step's).
- a fixed `FIXED_OVERHEAD_BYTES` (CUDA context and cuBLAS workspaces, or the interpreter's libraries and the data on
  a CPU) and `SLACK_FRACTION` of the rest (the allocator's fragmentation).

Conservative on purpose: every token of a micro-batch is taken as a target and every micro-batch as full; the
activation figures are rounded up from the measurement and raised by `ACTIVATION_MARGIN` for architectures that
save a little more (biases, extra norms). Too high an estimate costs speed (a smaller micro-batch, checkpointing);
too low a one costs the job, out of memory mid-run. What is not counted: the dense attention mask on the CPU (a
micro-batch's rows × width² booleans), models whose head `forward.check_model` cannot split (their [tokens × vocab]
logits), and memory other processes take after the plan was made.

The micro-batch changes how the loss's floats are summed, so a resumed job keeps its checkpoint's (`LoopState.
micro_batch_size`); only checkpointing (exact: the recomputation replays the same arithmetic) is decided anew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from openft.trainer_contract import DEFAULT_MAX_SEQ_LEN, TrainJobSpec

Mode = Literal["full", "lora", "qlora"]
Precision = Literal["fp32", "bf16"]

GIB = 1 << 30
FIXED_OVERHEAD_BYTES = GIB
SLACK_FRACTION = 0.05
"""Of the counted bytes, added for the allocator's fragmentation and what the estimate does not see."""
KEPT_BYTES: dict[Precision, tuple[int, int]] = {"fp32": (36, 16), "bf16": (32, 8)}
"""Bytes kept for the backward per token and decoder layer, as (× hidden size, × MLP width): measured with saved-
tensor hooks (full fine-tuning; LoRA without dropout keeps a little less). bf16 keeps more than half of fp32's: the
norms and the residual stream stay fp32 under autocast."""
ACTIVATION_MARGIN = 1.15
DROPOUT_EXTRA_BYTES = 3
"""LoRA dropout keeps, per value of an adapted layer's input, its dropped-out copy (compute dtype) and its mask:
measured at up to bytes-per-value + 3 (fp32 and bf16)."""
NON_LAYER_BYTES = 16
"""Per token and hidden unit outside the decoder layers: the embeddings' output, the final norm's fp32 copies,
the hidden states picked at the targets."""
CHECKPOINT_BYTES = 4
"""Per token and hidden unit of each layer's input kept by gradient checkpointing (fp32: the residual stream of a
full fine-tune is; conservative for bf16 LoRA)."""
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
"""Bytes per weight of a 4-bit NF4 linear layer with double quantization: 4 bits, an 8-bit absmax per block of 64
weights, an fp32 scale per 256 blocks."""
NF4_STATE_BYTES = 1100
"""Per 4-bit matrix: its quantization state's fp32 code book (256 entries) and scalars."""
HEAD_CHUNK_TOKENS = 1024
HEAD_CHUNK_VOCAB = 16384
"""`head_loss.CHUNK_TOKENS` / `CHUNK_VOCAB` (not imported: that module needs torch)."""
EFFICIENT_MICRO_TOKENS = 4096
"""A micro-batch of at least this many tokens keeps a GPU busy: the planner takes a smaller micro-batch without
checkpointing over a larger one with it (which costs about a third more compute) once it holds this many."""
GPU_SIZES: dict[str, int] = {"24 GB": 24 * GIB, "80 GB": 80 * GIB}
"""The GPUs the data check reports on (a 24 GB card like an RTX 4090, an 80 GB A100/H100), by their memory."""
MIN_SEQ_LEN = 16
"""The smallest `max_seq_length` a job accepts (protocol.fine_tuning)."""
ALL_LINEAR = "all-linear"
_MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


def _field(config: Any, *names: str) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def _int(config: Any, *names: str) -> int | None:
    value = _field(config, *names)
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a decoder-only transformer's config (Llama, Qwen2/3, Mistral, Gemma, MoE variants)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    model_type: str = ""
    qkv_bias: bool = False
    """Biases on the q, k and v projections (Qwen2; Llama-style `attention_bias` also on o)."""
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_expert_intermediate: int = 0
    context: int | None = None

    @classmethod
    def from_config(cls, config: Any) -> ModelShape | None:
        """The shape in `config` (a multimodal config's `text_config` where there is one); None when it lacks
        the hidden size, layer count or vocabulary (an architecture the planner does not know)."""
        text = _field(config, "text_config")
        if text is not None and _int(text, "hidden_size") is not None:
            config = text
        hidden = _int(config, "hidden_size", "n_embd", "d_model")
        layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
        vocab = _int(config, "vocab_size")
        if not hidden or not layers or not vocab:
            return None
        heads = _int(config, "num_attention_heads", "n_head") or max(1, hidden // 64)
        kv_heads = _int(config, "num_key_value_heads") or heads
        head_dim = _int(config, "head_dim") or hidden // heads
        model_type = str(_field(config, "model_type") or "")
        experts = _int(config, "num_local_experts", "num_experts", "n_routed_experts") or 0
        return cls(
            hidden=hidden,
            layers=layers,
            intermediate=_int(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden,
            vocab=vocab,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            # absent: untied, the larger count (config.json files written by transformers always say)
            tied=bool(_field(config, "tie_word_embeddings") or False),
            model_type=model_type,
            qkv_bias=bool(_field(config, "attention_bias")) or model_type in ("qwen2", "qwen2_moe"),
            o_bias=bool(_field(config, "attention_bias")),
            mlp_bias=bool(_field(config, "mlp_bias")),
            qk_norm=model_type.startswith("qwen3") or model_type.startswith("olmo2"),
            norms_per_layer=4 if model_type in ("gemma2", "gemma3", "gemma3_text") else 2,
            experts=experts,
            experts_per_token=(_int(config, "num_experts_per_tok", "num_experts_per_token") or 2) if experts else 0,
            expert_intermediate=(_int(config, "moe_intermediate_size") or 0) if experts else 0,
            shared_expert_intermediate=_int(config, "shared_expert_intermediate_size") or 0,
            context=_int(config, "max_position_embeddings", "n_positions"),
        )

    def linears(self) -> list[tuple[str, int, int, int]]:
        """The linear layers of one decoder layer: (module name, in features, out features, how many)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        found = [("q_proj", h, q, 1), ("k_proj", h, kv, 1), ("v_proj", h, kv, 1), ("o_proj", q, h, 1)]
        if self.experts:
            width = self.expert_intermediate or self.intermediate
            found += [("gate", h, self.experts, 1)]
            found += [(name, h, width, self.experts) for name in ("gate_proj", "up_proj")]
            found += [("down_proj", width, h, self.experts)]
            if self.shared_expert_intermediate:
                shared = self.shared_expert_intermediate
                found += [("gate_proj", h, shared, 1), ("up_proj", h, shared, 1), ("down_proj", shared, h, 1)]
                found += [("shared_expert_gate", h, 1, 1)]
        else:
            i = self.intermediate
            found += [("gate_proj", h, i, 1), ("up_proj", h, i, 1), ("down_proj", i, h, 1)]
        return found

    @property
    def mlp_width(self) -> int:
        """The MLP activations' width per token (a MoE layer: the experts each token is routed to)."""
        if self.experts:
            per_expert = self.expert_intermediate or self.intermediate
            return self.experts_per_token * per_expert + self.shared_expert_intermediate
        return self.intermediate

    def parameters(self) -> ParameterCounts:
        h = self.hidden
        linear = self.layers * sum(n_in * n_out * count for _, n_in, n_out, count in self.linears())
        per_layer = self.norms_per_layer * h
        if self.qkv_bias:
            per_layer += (self.heads + 2 * self.kv_heads) * self.head_dim
        if self.o_bias:
            per_layer += h
        if self.mlp_bias:
            per_layer += sum(n_out * count for name, _, n_out, count in self.linears() if name in _MLP_LINEARS)
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        embedding = self.vocab * h
        return ParameterCounts(
            embedding=embedding,
            head=0 if self.tied else embedding,
            linear=linear,
            other=self.layers * per_layer + h,  # + the final norm
        )


@dataclass(frozen=True)
class ParameterCounts:
    embedding: int
    head: int
    """0 when tied to the embeddings."""
    linear: int
    """The decoder layers' linear weights: what LoRA adapts and QLoRA quantizes."""
    other: int
    """Norms and biases."""

    @property
    def total(self) -> int:
        return self.embedding + self.head + self.linear + self.other


@dataclass(frozen=True)
class TrainingSetup:
    """What the plan depends on besides the model: the job's options, resolved for the device."""

    mode: Mode
    precision: Precision
    """The forward's precision (`precision.resolve_precision`)."""
    seq_len: int
    batch_size: int
    max_micro_batch: int = 8
    """The job's `micro_batch_size`: the largest micro-batch the planner may pick."""
    dpo: bool = False
    group_size: int = 1
    """Sequences per example besides DPO's pair: a reinforcement job's sampled answers per prompt."""
    lora_r: int = 16
    lora_targets: Sequence[str] | str = ALL_LINEAR
    lora_dropout: float = 0.05
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    cuda: bool = False
    frozen: Precision | None = None
    """The dtype of LoRA's and QLoRA's frozen weights (`model.frozen_dtype`); None: the precision's."""
    world_size: int = 1
    """Trainer processes of the job: LoRA replicates the model on each (plus DDP's gradient buckets); full
    fine-tuning shards weights, gradients and optimizer state across them (FSDP) and gathers a layer at a time."""
    judge_bytes: int = 0
    """Weights of the models the trainer runs besides the one it trains: a reinforcement job's judges
    (`judge_weight_bytes`)."""

    @property
    def sequences_per_example(self) -> int:
        return 2 if self.dpo else self.group_size

    @property
    def bytes_per_value(self) -> int:
        return 2 if self.precision == "bf16" else 4


@dataclass(frozen=True)
class MemoryEstimate:
    micro_batch_size: int
    gradient_checkpointing: bool
    tokens: int
    """Tokens of one micro-batch at most (rows × width)."""
    parts: dict[str, int]
    """Bytes by what holds them; they add up to `peak_bytes`."""

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())


def sequence_length(max_seq_len: int | None, context: int | None) -> int:
    """The trainer's `max_seq_len`: the job's, else the model's context capped at `DEFAULT_MAX_SEQ_LEN`; never more
    than the context."""
    wanted = max_seq_len or min(context or DEFAULT_MAX_SEQ_LEN, DEFAULT_MAX_SEQ_LEN)
    return min(wanted, context) if context else wanted


def for_examples(setup: TrainingSetup, longest_example: int) -> TrainingSetup:
    """`setup` for data whose longest example has `longest_example` tokens (both answers of a DPO pair together):
    a micro-batch then holds at most its size × that many tokens, however they are packed into rows."""
    per_sequence = -(-longest_example // setup.sequences_per_example)
    return replace(setup, seq_len=max(1, min(setup.seq_len, per_sequence)))


def job_setup(
    spec: TrainJobSpec,
    *,
    precision: Precision,
    frozen: Precision,
    seq_len: int,
    cuda: bool,
    adapter_config: Mapping[str, Any] | None = None,
) -> TrainingSetup:
    """The setup of a job as its trainer runs it (precision and frozen dtype pinned, `seq_len` resolved); a job
    that continues a fine-tuned adapter trains with that adapter's r, targets and dropout (`adapter_config`)."""
    lora = spec.lora
    r, targets, dropout = (lora.r, lora.target_modules, lora.dropout) if lora is not None else (0, ALL_LINEAR, 0.0)
    if adapter_config is not None:
        r = int(adapter_config.get("r") or r)
        found = adapter_config.get("target_modules")
        targets = found if isinstance(found, (str, list)) and found else targets
        dropout = float(adapter_config.get("lora_dropout") or 0.0)
    return TrainingSetup(
        mode="full" if lora is None else "qlora" if spec.quantization is not None else "lora",
        precision=precision,
        seq_len=seq_len,
        batch_size=spec.hyperparameters.batch_size,
        max_micro_batch=spec.micro_batch_size,
        dpo=spec.method == "dpo",
        group_size=spec.reinforcement.group_size if spec.reinforcement is not None else 1,
        lora_r=r,
        lora_targets=targets,
        lora_dropout=dropout,
        gradient_checkpointing=spec.gradient_checkpointing,
        cuda=cuda,
        frozen=frozen,
        world_size=spec.workers,
    )


def judge_weight_bytes(configs: Sequence[Mapping[str, Any]], *, cuda: bool) -> int:
    """The judges' weights as `training/judges.py` loads them (bf16 on a GPU, else fp32), from their configs;
    a config the planner cannot read counts nothing (the judge is then not planned for)."""
    shapes = [ModelShape.from_config(config) for config in configs]
    return sum((2 if cuda else 4) * shape.parameters().total for shape in shapes if shape is not None)


def _adapted(shape: ModelShape, targets: Sequence[str] | str) -> list[tuple[str, int, int, int]]:
    """The linear layers LoRA adapts: all of them (`all-linear`: peft leaves out only the head), else those whose
    name matches a target (peft matches the end of a module's name). Targets that name none of them count as
    all-linear: the planner does not know the architecture's names, and more adapters is the safe guess."""
    linears = shape.linears()
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            return linears
        targets = [targets]
    wanted = {t.rsplit(".", 1)[-1] for t in targets}
    matched = [linear for linear in linears if linear[0] in wanted]
    return matched or linears


def trainable_parameters(shape: ModelShape, setup: TrainingSetup) -> int:
    """Weights the job trains: every one (full), or the LoRA adapters (r × (in + out) per adapted layer)."""
    if setup.mode == "full":
        return shape.parameters().total
    per_layer = sum(
        setup.lora_r * (n_in + n_out) * count for _, n_in, n_out, count in _adapted(shape, setup.lora_targets)
    )
    return shape.layers * per_layer


def _weight_bytes(shape: ModelShape, setup: TrainingSetup) -> int:
    params = shape.parameters()
    frozen = 2 if (setup.frozen or setup.precision) == "bf16" else 4
    if setup.mode == "full":
        return 4 * params.total
    adapters = 4 * trainable_parameters(shape, setup)
    if setup.mode == "qlora":
        matrices = shape.layers * sum(count for *_, count in shape.linears())
        quantized = round(NF4_BYTES * params.linear) + NF4_STATE_BYTES * matrices
        return quantized + frozen * (params.total - params.linear) + adapters
    return frozen * params.total + adapters


def estimate(shape: ModelShape, setup: TrainingSetup, micro_batch_size: int, checkpointing: bool) -> MemoryEstimate:
    """The peak bytes of one optimizer step in micro-batches of `micro_batch_size` (see the module docstring)."""
    params = shape.parameters()
    h, layers, width = shape.hidden, shape.layers, shape.mlp_width
    bpv, world = setup.bytes_per_value, max(1, setup.world_size)
    trained = trainable_parameters(shape, setup)
    full = setup.mode == "full"
    shards = world if full else 1

    weights = _weight_bytes(shape, setup) // shards
    reference = 4 * params.total // shards if full and (setup.dpo or setup.group_size > 1) else 0
    gradients = 4 * trained // shards + (4 * trained if world > 1 and not full else 0)  # + DDP's buckets
    optimizer = 8 * trained // shards

    tokens = micro_batch_size * setup.seq_len * setup.sequences_per_example
    a_h, a_i = KEPT_BYTES[setup.precision]
    per_layer = a_h * h + a_i * width  # per token
    if shape.qk_norm:
        per_layer += 8 * (shape.heads + shape.kv_heads) * shape.head_dim  # the q/k norms' fp32 copies
    if not full and setup.lora_dropout > 0:
        inputs = sum(n_in * count for _, n_in, _, count in _adapted(shape, setup.lora_targets))
        per_layer += (bpv + DROPOUT_EXTRA_BYTES) * inputs
    if not full:
        adapted = sum(count for *_, count in _adapted(shape, setup.lora_targets))
        per_layer += 4 * setup.lora_r * adapted  # each adapter's r-wide intermediate
    one_layer = round(ACTIVATION_MARGIN * per_layer * tokens)
    kept = CHECKPOINT_BYTES * h * tokens * layers + one_layer if checkpointing else one_layer * layers
    activations = kept + NON_LAYER_BYTES * h * tokens

    chunk_tokens = min(tokens, HEAD_CHUNK_TOKENS)
    head = 2 * 4 * chunk_tokens * min(shape.vocab, HEAD_CHUNK_VOCAB)  # fp32 logits chunk, and its exp/gradient
    head += bpv * h * min(shape.vocab, HEAD_CHUNK_VOCAB) + 8 * chunk_tokens * h  # the weight and hidden chunks
    head += 4 * tokens  # log-sum-exp per target
    head += 8 * shape.vocab * h if full else 4 * tokens * h  # trained head's gradient ×2; frozen: d logprob / d h

    working = one_layer  # the backward's gradients of one layer's activations (or the layer being recomputed)
    if full and setup.precision == "bf16":
        working += 2 * params.linear // shards  # autocast's bf16 copies of the trained linear weights
    if full and world > 1:
        working += 2 * 4 * (params.linear // layers)  # FSDP: one layer gathered, the next prefetched
    if setup.mode == "qlora":
        largest = max(n_in * n_out for _, n_in, n_out, _ in shape.linears())
        working += 2 * bpv * largest  # one layer's weight dequantized, forward or backward
    forward_backward = activations + head + working
    step = 4 * trained // shards if setup.cuda else 8 * _largest_trained(shape, setup)  # AdamW's temporaries

    parts = {
        "weights": weights,
        "reference_model": reference,
        "gradients": gradients,
        "optimizer_state": optimizer,
        "activations": activations,
        "lm_head": head,
        "working": working,
        "optimizer_step": max(0, step - forward_backward),
        "judge_models": setup.judge_bytes,
    }
    counted = sum(parts.values())
    parts["overhead"] = FIXED_OVERHEAD_BYTES + round(SLACK_FRACTION * counted)
    return MemoryEstimate(micro_batch_size, checkpointing, tokens, parts)


def _largest_trained(shape: ModelShape, setup: TrainingSetup) -> int:
    if setup.mode == "full":
        return max(shape.vocab * shape.hidden, *(n_in * n_out for _, n_in, n_out, _ in shape.linears()))
    return max(setup.lora_r * max(n_in, n_out) for _, n_in, n_out, _ in _adapted(shape, setup.lora_targets))


def micro_batch_candidates(setup: TrainingSetup) -> list[int]:
    """The micro-batches the planner tries, largest first: the job's (at most the batch), then powers of two below."""
    cap = max(1, min(setup.max_micro_batch, setup.batch_size // max(1, setup.world_size) or 1))
    smaller = [1 << k for k in range(cap.bit_length()) if (1 << k) < cap]
    return [cap, *reversed(smaller)]


@dataclass(frozen=True)
class MemoryPlan:
    estimate: MemoryEstimate
    """The chosen micro-batch and checkpointing; when nothing fits, the smallest (micro-batch 1, checkpointing
    unless the job turned it off)."""
    budget_bytes: int | None
    """What the plan had to fit in (None: unknown, nothing was checked)."""
    fits: bool | None
    batch_size: int
    suggestions: list[str] = field(default_factory=list)
    """When it does not fit: changes that would (`fine_tuning_mode qlora`, `max_seq_length 1024`, ...)."""
    pinned: bool = False
    """The micro-batch was given (a resumed job's, from its checkpoint), not chosen."""

    @property
    def micro_batch_size(self) -> int:
        return self.estimate.micro_batch_size

    @property
    def gradient_checkpointing(self) -> bool:
        return self.estimate.gradient_checkpointing

    @property
    def peak_bytes(self) -> int:
        return self.estimate.peak_bytes

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step (the last may be smaller)."""
        return -(-self.batch_size // self.micro_batch_size)


def _checkpointing_options(setup: TrainingSetup) -> list[bool]:
    wanted = setup.gradient_checkpointing
    return [False, True] if wanted == "auto" else [bool(wanted)]


def plan(
    shape: ModelShape, setup: TrainingSetup, budget_bytes: int | None, *, micro_batch_size: int | None = None
) -> MemoryPlan:
    """The largest micro-batch (the job's `micro_batch_size` at most, or exactly `micro_batch_size` when given: a
    resumed job's) and the checkpointing that fit `budget_bytes`.

    Without checkpointing where a micro-batch of at least `EFFICIENT_MICRO_TOKENS` tokens (or the largest one)
    fits so; else with it, at the largest micro-batch that fits ("auto"; an explicit true/false is kept). Unknown
    budget: the largest micro-batch, checkpointing as the job says (off for "auto"), `fits` None.
    """
    candidates = [micro_batch_size] if micro_batch_size is not None else micro_batch_candidates(setup)
    options = _checkpointing_options(setup)
    if budget_bytes is None:
        unplanned = estimate(shape, setup, candidates[0], setup.gradient_checkpointing is True)
        return MemoryPlan(unplanned, None, None, setup.batch_size)
    fitting = {
        ckpt: [e for e in (estimate(shape, setup, m, ckpt) for m in candidates) if e.peak_bytes <= budget_bytes]
        for ckpt in options
    }
    plain, recomputed = fitting.get(False, []), fitting.get(True, [])
    chosen: MemoryEstimate | None = None
    if plain and (
        plain[0].micro_batch_size == candidates[0]
        or plain[0].tokens >= EFFICIENT_MICRO_TOKENS
        or not recomputed
        or recomputed[0].micro_batch_size <= plain[0].micro_batch_size
    ):
        chosen = plain[0]
    elif recomputed:
        chosen = recomputed[0]
    if chosen is not None:
        return MemoryPlan(chosen, budget_bytes, True, setup.batch_size, pinned=micro_batch_size is not None)
    smallest = min((estimate(shape, setup, candidates[-1], ckpt) for ckpt in options), key=lambda e: e.peak_bytes)
    if micro_batch_size is not None:  # another mode or length would not resume this checkpoint: no suggestions
        return MemoryPlan(smallest, budget_bytes, False, setup.batch_size, pinned=True)
    return MemoryPlan(smallest, budget_bytes, False, setup.batch_size, suggest(shape, setup, budget_bytes))


def fits(shape: ModelShape, setup: TrainingSetup, budget_bytes: int) -> bool:
    """Whether some micro-batch (1 at least) fits `budget_bytes` with the checkpointing the job allows."""
    return any(estimate(shape, setup, 1, ckpt).peak_bytes <= budget_bytes for ckpt in _checkpointing_options(setup))


def suggest(shape: ModelShape, setup: TrainingSetup, budget_bytes: int) -> list[str]:
    """What would fit, in the order worth trying: checkpointing (when the job turned it off), LoRA instead of full
    fine-tuning, QLoRA, then the longest `max_seq_length` (halving) that fits as the job is."""
    found = []
    if setup.gradient_checkpointing is False and fits(shape, replace(setup, gradient_checkpointing=True), budget_bytes):
        found.append("gradient_checkpointing true")
    if setup.mode == "full" and fits(shape, replace(setup, mode="lora"), budget_bytes):
        found.append("fine_tuning_mode lora")
    if setup.mode != "qlora" and fits(shape, replace(setup, mode="qlora"), budget_bytes):
        found.append("fine_tuning_mode qlora")
    seq_len = setup.seq_len // 2
    while seq_len >= MIN_SEQ_LEN:
        if fits(shape, replace(setup, seq_len=seq_len), budget_bytes):
            found.append(f"max_seq_length {seq_len}")
            break
        seq_len //= 2
    return found


def gib(n_bytes: int) -> str:
    """`31.2 GiB` (`512 MiB` below one GiB)."""
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / (1 << 20):.0f} MiB"


MODE_NAMES: dict[Mode, str] = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}


def largest_parts(estimate: MemoryEstimate, n: int = 4) -> str:
    """`weights 14.2 GiB, activations 6.1 GiB, ...`: the `n` largest parts of an estimate."""
    big = sorted(((name, b) for name, b in estimate.parts.items() if b), key=lambda item: -item[1])[:n]
    return ", ".join(f"{name.replace('_', ' ')} {gib(b)}" for name, b in big)


def _job(setup: TrainingSetup) -> str:
    return f"{MODE_NAMES[setup.mode]}, sequences of up to {setup.seq_len} tokens"


def describe(plan: MemoryPlan, setup: TrainingSetup) -> str:
    """One line for a `log` event: what was picked, the estimate and what it was checked against."""
    e = plan.estimate
    parts = largest_parts(e)
    budget = "memory free unknown" if plan.budget_bytes is None else f"{gib(plan.budget_bytes)} available"
    steps = plan.accumulation_steps
    return (
        f"Memory plan: micro-batch {e.micro_batch_size} ({steps} per step of batch {plan.batch_size}), gradient "
        f"checkpointing {'on' if e.gradient_checkpointing else 'off'}; ~{gib(e.peak_bytes)} peak estimated for "
        f"{_job(setup)}, {setup.precision} ({parts}); {budget}"
    )


def failure_message(plan: MemoryPlan, setup: TrainingSetup, where: str) -> str:
    """The `out_of_memory` message of a job that cannot fit: what it needs, what there is, what would fit."""
    e = plan.estimate
    how = f"{_job(setup)}, micro-batch {e.micro_batch_size}"
    if e.gradient_checkpointing:
        how += ", gradient checkpointing"
    budget = plan.budget_bytes or 0
    text = f"the job needs ~{gib(e.peak_bytes)} ({how}; {largest_parts(e, 3)}), {gib(budget)} available on {where}"
    if plan.pinned:
        kept = "a resume keeps its checkpoint's micro-batch (the results depend on it)"
        return f"{text}: {kept}; resume it where more memory is free"
    if plan.suggestions:
        return f"{text}: use {' or '.join(plan.suggestions)}"
    return f"{text}: no smaller setting fits; use a device with more memory or a smaller model"
