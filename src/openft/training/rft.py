"""Reinforcement fine-tuning (method `reinforcement`): GRPO with the job's grader.

Each step takes `batch_size` prompts. For each prompt the current policy samples `group_size` answers, the
grader (`openft.graders`, the same code as `/fine_tuning/alpha/graders/run`) scores them, and each answer's
advantage is its reward normalised within its group: `(r − mean) / (std + 1e-4)`, 0 when all score alike.
The loss per answer token is the clipped policy-gradient term plus β · KL to the reference policy (the
starting weights: the base with the adapter off under LoRA, as DPO's reference):

    ratio = π(t) / π_old(t)      (π_old = the policy that sampled: one update per batch, so ratio = 1 in value,
                                  and its gradient is that of log π)
    loss(t) = −min(ratio · A, clip(ratio, 1 − ε, 1 + ε) · A) + β · (π_ref/π − log(π_ref/π) − 1)

averaged over each answer's tokens, then over its group: one unit per prompt, so gradient accumulation over
micro-batches is exact like the other objectives' (objectives.py).

**Exact resume.** Sampling draws from a generator seeded by (job seed, step, prompt index) inside
`torch.random.fork_rng`, never from the training generator, and runs in eval mode (no dropout): a resumed
run samples exactly the answers a straight run sampled at the same step, whatever happened before. The
grader must be deterministic for the run to be (a python grader that reads the clock is not); a grader that
cannot score an answer gives it 0 and is counted (`grader_error_rate`, and a warn event), never a failure.
Validation samples each prompt from a generator seeded by (job seed, prompt index) alone, so the
`valid_reward_mean` curve compares policies, not sampling luck. Model graders' judges run here too, loaded
when the run starts and seeded per answer (training/judges.py).

**Why the trainer samples, not the serving engine.** The policy changes at every step; the engine serves
frozen checkpoints from disk. Sampling with the live weights in the trainer is on-policy by construction,
needs no weight transfer, and is exact; `model.generate` (transformers) does the decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from openft import graders
from openft.datasets.reinforcement import RftTask, read_rft_tasks
from openft.datasets.template import render_chat
from openft.embeddings import LocalEmbedder
from openft.trainer_contract import RFT_RESULT_COLUMNS, ReinforcementSpec, TrainJobSpec
from openft.training.data import PreparedData, TokenizedExample, sampling_seed
from openft.training.forward import ForwardPass
from openft.training.judges import LocalJudges
from openft.training.model import LoadedModel, Reference, build_reference, end_tokens, pick_device

EVAL_STREAM = 0x5EED_E7A1
"""Seed-sequence word of validation sampling (not a step number: steps are ≥ 0 and far below it)."""
JUDGE_STREAM = 0x5EED_1D6E
"""Seed-sequence word of the judge models' sampling (training/judges.py)."""
GRADER_THREADS = 8
"""Answers graded at once (python graders run in subprocesses, so threads suffice)."""


@dataclass(frozen=True)
class TokenizedPrompt:
    line: int
    index: int
    """Position in the prepared list: with the step, what seeds this prompt's sampling."""
    prompt_ids: list[int]
    item: dict[str, Any]
    """The data line, the grader's `item`."""


def prepare_prompts(
    tokenizer: Any, tasks: Sequence[RftTask], *, max_seq_len: int, max_completion_tokens: int
) -> PreparedData[TokenizedPrompt]:
    """The prompts rendered with the model's chat template and its generation prompt; a prompt that leaves
    no room for a `max_completion_tokens` answer within `max_seq_len` is set aside (`skipped_lines`)."""
    prepared: PreparedData[TokenizedPrompt] = PreparedData()
    for task in tasks:
        ids = prompt_ids(tokenizer, task)
        if len(ids) + max_completion_tokens > max_seq_len:
            prepared.skipped_lines.append(task.line)
            continue
        prepared.examples.append(TokenizedPrompt(task.line, len(prepared.examples), ids, task.item))
    return prepared


def prompt_ids(tokenizer: Any, task: RftTask) -> list[int]:
    """A task's prompt as the policy reads it: the chat template with its generation prompt (the data check
    counts these too)."""
    text = render_chat(tokenizer, task.prompt_messages, tools=task.tools, add_generation_prompt=True).text
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO's advantages: rewards normalised within their group (0 for all when the group scored alike)."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-4)


def grpo_token_loss(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor, *, beta: float, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per answer token: the clipped policy-gradient loss plus β·KL (k3 estimator), and the KL alone."""
    ratio = torch.exp(logprobs - logprobs.detach())
    policy = -torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    log_ratio = ref_logprobs - logprobs
    kl = torch.exp(log_ratio) - log_ratio - 1
    return policy + beta * kl, kl


class ReinforcementObjective:
    """GRPO over prompts (see the module docstring); `units` are prompts."""

    columns: tuple[str, ...] = RFT_RESULT_COLUMNS

    def __init__(self, settings: ReinforcementSpec, seed: int):
        self.settings = settings
        self.seed = seed
        self.step = 0
        self.reference: Reference | None = None
        self.judges: LocalJudges | None = None
        self.embed: LocalEmbedder | None = None
        self.tokenizer: Any = None
        self.eos: list[int] = []
        self._notes: list[str] = []
        self._fed_tokens = 0

    # the Objective protocol ----------------------------------------------------------------------
    def read(self, path: Path) -> list[Any]:
        return read_rft_tasks(path)

    def tokenize(self, tokenizer: Any, examples: list[Any], *, max_seq_len: int) -> PreparedData[Any]:
        return prepare_prompts(
            tokenizer, examples, max_seq_len=max_seq_len, max_completion_tokens=self.settings.max_completion_tokens
        )

    def attach(self, loaded: LoadedModel, spec: TrainJobSpec) -> None:
        self.reference = build_reference(loaded, spec)
        self.tokenizer = loaded.tokenizer
        self.eos = end_tokens(loaded.model, loaded.tokenizer)
        self.judges = LocalJudges(
            self.settings.judges, Path(spec.cache_dir), max_bytes=spec.max_model_bytes, device=pick_device()
        )
        self.judges.load_all()  # a judge that cannot load fails the job now, not every answer's grading later
        if self.settings.embedding_model is not None:  # text_similarity's cosine (openft/embeddings.py)
            self.embed = LocalEmbedder(Path(self.settings.embedding_model))
            self.embed.load()

    def at_step(self, step: int) -> None:
        self.step = step

    def notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes

    def units(self, item: TokenizedPrompt) -> int:
        return 1

    def n_tokens(self, item: TokenizedPrompt) -> int:
        """The longest sequence a prompt can make (prompt + a full-length answer): the memory plan's bound, which
        counts `group_size` of them per prompt (memory_plan.TrainingSetup.group_size)."""
        return len(item.prompt_ids) + self.settings.max_completion_tokens

    def step_tokens(self, batch: Sequence[TokenizedPrompt]) -> int:
        """Tokens this step really fed the policy (prompts + sampled answers), not the bound of `n_tokens`."""
        fed, self._fed_tokens = self._fed_tokens, 0
        return fed

    def sums(self, model: Any, micro: Sequence[TokenizedPrompt], forward: ForwardPass) -> dict[str, torch.Tensor]:
        training = torch.is_grad_enabled()
        device = forward.device
        answers = [self._sample(model, prompt, device, training) for prompt in micro]
        graded = self._grade(micro, answers, training)
        k = self.settings.group_size
        rewards = torch.tensor([[r for r, _ in group] for group in graded], dtype=torch.float32, device=device)
        errors = torch.tensor([[e for _, e in group] for group in graded], dtype=torch.float32, device=device)
        out = {"reward_mean": rewards.mean(dim=1).sum(), "grader_error_rate": errors.mean(dim=1).sum()}
        if not training:
            return out
        assert self.reference is not None, "attach() first"
        sequences = [
            TokenizedExample(
                prompt.line, prompt.prompt_ids + answer, [False] * len(prompt.prompt_ids) + [True] * len(answer)
            )
            for prompt, group in zip(micro, answers, strict=True)
            for answer in group
        ]
        self._fed_tokens += sum(len(s.input_ids) for s in sequences)
        advantages = torch.cat([group_advantages(row) for row in rewards])  # [prompts × k], prompt-major
        with torch.no_grad(), self.reference.model() as reference:
            ref = forward(reference, sequences).logprobs
        scores = forward(model, sequences)
        token_loss, kl = grpo_token_loss(
            scores.logprobs,
            ref,
            advantages[scores.sequence_index],
            beta=self.settings.beta,
            clip=self.settings.clip_epsilon,
        )
        lengths = scores.per_sequence(torch.ones_like(scores.logprobs))
        per_answer_loss = scores.per_sequence(token_loss) / lengths
        per_answer_kl = scores.per_sequence(kl.detach()) / lengths
        out["loss"] = per_answer_loss.view(len(micro), k).mean(dim=1).sum()
        out["kl"] = per_answer_kl.view(len(micro), k).mean(dim=1).sum()
        out["completion_tokens"] = lengths.view(len(micro), k).mean(dim=1).sum()
        return out

    def metrics(self, sums: dict[str, float], units: int, prefix: str) -> dict[str, float]:
        return {prefix + name: value / units for name, value in sums.items() if prefix + name in self.columns}

    # sampling and grading ------------------------------------------------------------------------
    def _sample(self, model: Any, prompt: TokenizedPrompt, device: torch.device, training: bool) -> list[list[int]]:
        """`group_size` answers (token ids, ending with the end-of-turn token when the model wrote one)."""
        settings = self.settings
        seed = (
            sampling_seed(self.seed, self.step, prompt.index)
            if training
            else sampling_seed(self.seed, EVAL_STREAM, prompt.index)
        )
        eos = self.eos
        ids = torch.tensor([prompt.prompt_ids] * settings.group_size, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=settings.temperature,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=settings.max_completion_tokens,
                    eos_token_id=eos,
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0],
                )
        finally:
            model.train(was_training)
        answers = []
        for row in out[:, len(prompt.prompt_ids) :].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), None)
            answers.append(row if end is None else row[: end + 1])
        return answers

    def _grade(
        self, micro: Sequence[TokenizedPrompt], answers: list[list[list[int]]], training: bool
    ) -> list[list[tuple[float, float]]]:
        """(reward, 1.0 if the grader could not score it) per answer; errors become notes (warn events)."""
        assert self.judges is not None, "attach() first"
        eos = set(self.eos)
        stream = [self.step] if training else [EVAL_STREAM]
        jobs: list[Callable[[], graders.GradeResult]] = []
        for prompt, group in zip(micro, answers, strict=True):
            for i, answer in enumerate(group):
                text = self.tokenizer.decode([t for t in answer if t not in eos], skip_special_tokens=True)
                judge = self.judges.for_answer(self.seed, JUDGE_STREAM, *stream, prompt.index, i)
                sample = graders.text_sample(text)
                jobs.append(_grading(self.settings.grader, sample, prompt.item, judge, self.embed))
        with ThreadPoolExecutor(max_workers=min(GRADER_THREADS, len(jobs))) as pool:
            results = list(pool.map(lambda job: job(), jobs))
        failed = [r for r in results if r.error_message is not None]
        if failed:
            self._notes.append(
                f"step {self.step + 1}: the grader could not score {len(failed)} of {len(results)} answers "
                f"(each scored 0), e.g.: {failed[0].error_message}"
            )
        k = self.settings.group_size
        flat = [(r.reward, 1.0 if r.error_message is not None else 0.0) for r in results]
        return [flat[i * k : (i + 1) * k] for i in range(len(micro))]


def _grading(
    grader: dict[str, Any],
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: graders.Judge,
    embed: graders.Embed | None,
) -> Callable[[], graders.GradeResult]:
    return lambda: graders.grade(grader, sample, item, judge, embed=embed)
