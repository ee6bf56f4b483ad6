"""The judge models of a reinforcement job's model graders (score_model, label_model), run in the trainer.

Through the Graders and Evals APIs a judge is a model the server serves; the trainer reaches no server, so
it loads each judge itself, once, on first use: the server resolved the grader's model name when the job
was created (aliases included, for the caller's organization) and the worker wrote where its weights are
into `job.json` (`ReinforcementSpec.judges`: a base model, or the job's own copy of a fine-tuned model).
See docs/design.md, "Judges in reinforcement jobs", for why not through the serving engine.

**Exact resume.** A judge's answer is a pure function of its inputs and a seed: greedy at temperature 0,
else sampled from a generator seeded by the answer being graded — (job seed, step or validation stream,
prompt index, answer index) — the call's place in that grading (a multi grader asks its judges one after
another, always in the same order) and the grader's own `sampling_params.seed`. Sampling runs inside
`torch.random.fork_rng`, so the trainer's random stream is untouched, and one call runs at a time (the
grading threads share the global generator), so a resumed run's judges answer what a straight run's did.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from openft.datasets.template import render_chat
from openft.graders import Judge
from openft.trainer_contract import BaseModelSpec
from openft.training.data import sampling_seed
from openft.training.model import end_tokens, load_tokenizer, resolve_weights

DEFAULT_MAX_TOKENS = 512
"""A judge's longest answer when its grader's `sampling_params` give none: the serving engine's chat
default, so a judge answers as long here as through the Graders API."""


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    eos: list[int]
    context_length: int | None


class LocalJudges:
    """The job's judge models, loaded on first use and kept (eval mode, no gradients)."""

    def __init__(self, specs: dict[str, BaseModelSpec], cache_dir: Path, *, max_bytes: int | None, device: Any):
        self._specs = specs
        self._cache_dir = cache_dir
        self._max_bytes = max_bytes
        self._device = device
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        for name in self._specs:
            self._load(name)

    def for_answer(self, *words: int) -> Judge:
        """The judge function of one answer's grading: `words` say which answer; each call within it is
        numbered, so a multi grader's second judge call draws from its own seed."""
        calls = itertools.count()

        def judge(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
            seed = sampling_seed(*words, next(calls), int(params.get("seed") or 0))
            return self.ask(model, messages, params, seed)

        return judge

    def ask(self, name: str, messages: list[dict[str, Any]], params: dict[str, Any], seed: int) -> str:
        """The judge `name`'s answer to `messages` (its chat template, generation prompt added)."""
        with self._lock:
            judge = self._load(name)
            text = render_chat(judge.tokenizer, messages, add_generation_prompt=True).text
            prompt = list(judge.tokenizer(text, add_special_tokens=False)["input_ids"])
            limit = int(params.get("max_completion_tokens") or DEFAULT_MAX_TOKENS)
            if judge.context_length is not None:
                limit = min(limit, judge.context_length - len(prompt))
            if limit < 1:
                raise ValueError(f"the judge's prompt ({len(prompt)} tokens) leaves no room for an answer")
            temperature = float(params.get("temperature", 1.0))
            ids = torch.tensor([prompt], device=self._device)
            sampling: dict[str, Any] = (
                {"do_sample": True, "temperature": temperature, "top_p": float(params.get("top_p", 1.0)), "top_k": 0}
                if temperature > 0
                else {"do_sample": False}
            )
            devices = [self._device] if self._device.type == "cuda" else []
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = judge.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=limit,
                    eos_token_id=judge.eos,
                    pad_token_id=judge.tokenizer.pad_token_id,
                    **sampling,
                )
            answer = [t for t in out[0, len(prompt) :].tolist() if t not in judge.eos]
            return str(judge.tokenizer.decode(answer, skip_special_tokens=True))

    def _load(self, name: str) -> _Loaded:
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        spec = self._specs.get(name)
        if spec is None:  # the server resolves every judge a grader names; a job file without one is not ours
            raise LookupError(f"the judge model {name!r} is not in this job's file")
        from transformers import AutoModelForCausalLM

        folder, adapter = resolve_weights(spec, self._cache_dir, max_bytes=self._max_bytes)
        dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=False)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        tokenizer, _ = load_tokenizer(adapter if adapter is not None else folder)
        model.to(self._device).eval()
        context = getattr(model.config, "max_position_embeddings", None)
        loaded = _Loaded(model, tokenizer, end_tokens(model, tokenizer), context)
        self._loaded[name] = loaded
        return loaded
