"""Text embeddings for the `cosine` metric of `text_similarity` graders, from a local encoder.

OpenAI scores `cosine` with its own embeddings model; openft has none of its own, so the operator names a
local Hugging Face model folder (`OPENFT_EMBEDDING_MODEL`; never a tenant: a request cannot make the server
load anything). A text's embedding is the mean of the model's last hidden states over the text's tokens
(attention-masked) — sentence-transformers' mean pooling, which is how encoders such as all-MiniLM-L6-v2, e5 or
gte are meant to be used — so the cosine of two texts is that of their mean-pooled states. Scores depend on the
model and differ from OpenAI's. Texts longer than the model's context are cut to it (`max_tokens`).

One module for every place that grades: the server's Graders API and eval runs (services) and a reinforcement
trainer (training), which loads the same folder itself (`ReinforcementSpec.embedding_model`). Loaded on first
use, then kept; calls are serialised (one model, grading threads share it) and deterministic on one machine.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

MAX_TOKENS = 512
"""Longest text embedded, in tokens (cut beyond; the model's own context when that is shorter)."""


class EmbeddingModelUnavailable(Exception):
    """The configured folder holds no model transformers can load."""


class LocalEmbedder:
    """`embed(texts) -> vectors` over the encoder in `path` (`openft.graders.Embed`)."""

    def __init__(self, path: Path, *, max_tokens: int = MAX_TOKENS):
        self.path = path
        self._max_tokens = max_tokens
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def load(self) -> None:
        """Load now (a server checks its setting at start; a trainer before its first step)."""
        with self._lock:
            self._load()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        import torch

        with self._lock:
            self._load()
            limit = min(self._max_tokens, getattr(self._model.config, "max_position_embeddings", None) or 1 << 30)
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            with torch.no_grad():
                states = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            return [[float(x) for x in row] for row in pooled.tolist()]

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        if not (self.path / "config.json").is_file():
            raise EmbeddingModelUnavailable(f"{self.path} holds no Hugging Face model (config.json)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
            model = AutoModel.from_pretrained(self.path, trust_remote_code=False)  # never run a model's own code
        except (OSError, ValueError) as exc:
            raise EmbeddingModelUnavailable(f"cannot load the embeddings model in {self.path}: {exc}") from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"  # a text's positions do not move with the batch's longest text
        model.eval()
        self._tokenizer, self._model = tokenizer, model
