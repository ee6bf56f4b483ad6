"""text_similarity's `cosine` on a local encoder (openft/embeddings.py): a text's vector is the attention-masked
mean of the model's last hidden states (sentence-transformers' mean pooling), whatever else shares its batch;
a long text is cut to `max_tokens`; a folder without a model is refused, by the settings at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from openft.embeddings import EmbeddingModelUnavailable, LocalEmbedder
from openft.graders import grade, text_sample
from openft.settings import Settings
from tests.conftest import TINY_MODEL_NAME


def _mean_pooled(folder: Path, text: str) -> list[float]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        states = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
    return [float(x) for x in states.mean(dim=0)]


def _cosine(a: list[float], b: list[float]) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.tensor([a]), torch.tensor([b]))[0])


def test_vectors_are_mean_pooled_states_whatever_shares_the_batch(models_dir: Path) -> None:
    folder = models_dir / TINY_MODEL_NAME
    embed = LocalEmbedder(folder)
    short, long = "the cat sat", "the cat sat on the mat and looked at the dog for a while"
    together = embed([short, long])  # the short one is padded in this batch
    assert together[0] == pytest.approx(embed([short])[0], abs=1e-5)
    assert together[0] == pytest.approx(_mean_pooled(folder, short), abs=1e-5)
    assert together[1] == pytest.approx(_mean_pooled(folder, long), abs=1e-5)


def test_the_cosine_grader_scores_with_it(models_dir: Path) -> None:
    folder = models_dir / TINY_MODEL_NAME
    embed = LocalEmbedder(folder)
    grader = {"type": "text_similarity", "name": "g", "input": "{{ sample.output_text }}",
              "reference": "{{ item.want }}", "evaluation_metric": "cosine"}  # fmt: skip
    same = grade(grader, text_sample("a red apple"), {"want": "a red apple"}, embed=embed)
    assert same.reward == pytest.approx(1.0, abs=1e-6) and same.error_message is None
    other = grade(grader, text_sample("a red apple"), {"want": "quantum field theory"}, embed=embed)
    want = _cosine(_mean_pooled(folder, "a red apple"), _mean_pooled(folder, "quantum field theory"))
    assert other.reward == pytest.approx(want, abs=1e-5) and other.reward < 0.999


def test_long_texts_are_cut_to_max_tokens(models_dir: Path) -> None:
    folder = models_dir / TINY_MODEL_NAME
    cut = LocalEmbedder(folder, max_tokens=4)
    assert cut(["one two three four five six seven eight nine ten"]) == cut(["one two three four five six seven"])


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelUnavailable, match=r"config\.json"):
        LocalEmbedder(tmp_path).load()
    with pytest.raises(ValidationError, match="not a Hugging Face model folder"):
        Settings(data_dir=tmp_path / "data", embedding_model=tmp_path)
