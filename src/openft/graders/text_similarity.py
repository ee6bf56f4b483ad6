"""`text_similarity`: a similarity score in [0, 1] between the rendered input and the rendered reference.

OpenAI's guide names each metric's family; openft's exact choice:

- `fuzzy_match`: rapidfuzz `fuzz.ratio` / 100, the normalised Indel (insert/delete) similarity of the two
  strings (the guide says "using rapidfuzz" and names no scorer).
- `bleu`: NLTK `sentence_bleu`, uniform 1- to 4-gram weights, smoothing method 1 (a short text with no
  4-gram in common does not score a flat 0).
- `gleu`: NLTK `sentence_gleu` (Google BLEU), 1- to 4-grams.
- `meteor`: NLTK `meteor_score` with exact and Porter-stem matching only. WordNet synonym matching is off:
  WordNet's data is not part of NLTK's package and openft downloads nothing at run time, so a text that uses
  synonyms of the reference's words ("sat" for "sit" is a stem match, "seated" is not) scores lower than
  METEOR with WordNet would give.
- `rouge_1` … `rouge_5`, `rouge_l`: Google's `rouge-score` F-measure, no stemming. Its tokenizer keeps only
  ASCII letters and digits, so text in other scripts scores 0.
- `cosine`: the cosine of two embeddings, only when the server has an embeddings function; without one the
  grader is invalid (OpenAI offers it only in evals).

BLEU, GLEU and METEOR tokenise lower-cased text into `\\w+` runs and single punctuation marks.
"""

from __future__ import annotations

import math
import re
from typing import Any

from openft.graders import templates
from openft.graders.base import Embed, GraderInvalid, SampleError, require_str

METRICS = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def validate(grader: dict[str, Any], param: str, embed: Embed | None) -> None:
    for key in ("input", "reference"):
        templates.check(require_str(grader, key, param), f"{param}.{key}")
    metric = grader.get("evaluation_metric")
    if metric not in METRICS:
        raise GraderInvalid(
            f"`evaluation_metric` must be one of {', '.join(METRICS)}", param=f"{param}.evaluation_metric"
        )
    if metric == "cosine" and embed is None:
        raise GraderInvalid(
            "`cosine` needs an embeddings model, and none is configured on this server; "
            "use another evaluation_metric (fuzzy_match, bleu, gleu, meteor, rouge_*)",
            param=f"{param}.evaluation_metric",
        )


def grade(grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any], embed: Embed | None) -> float:
    text = templates.render(grader["input"], sample, item)
    reference = templates.render(grader["reference"], sample, item)
    return similarity(grader["evaluation_metric"], text, reference, embed)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def similarity(metric: str, text: str, reference: str, embed: Embed | None = None) -> float:
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.ratio(text, reference)) / 100.0
    if metric == "bleu":
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        hyp, ref = tokens(text), tokens(reference)
        if not hyp or not ref:
            return 0.0
        return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1))
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        hyp, ref = tokens(text), tokens(reference)
        return float(sentence_gleu([ref], hyp)) if hyp and ref else 0.0
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        hyp, ref = tokens(text), tokens(reference)
        if not hyp or not ref:
            return 0.0
        return float(meteor_score([ref], hyp, wordnet=_NoSynonyms()))
    if metric == "rouge_l":
        return _rouge_l(text, reference)
    if metric.startswith("rouge_"):
        from rouge_score import rouge_scorer

        key = "rouge" + metric[-1]
        scorer = rouge_scorer.RougeScorer([key], use_stemmer=False)
        return float(scorer.score(reference, text)[key].fmeasure)
    if metric == "cosine":
        assert embed is not None  # validate() refused cosine without one
        return _cosine(embed, text, reference)
    raise AssertionError(metric)


def _cosine(embed: Embed, text: str, reference: str) -> float:
    try:
        a, b = embed([text, reference])
    except Exception as exc:  # the embeddings model failed on this sample, not the grader
        raise SampleError("other_error", f"the embeddings model failed: {exc}") from exc
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _rouge_l(text: str, reference: str) -> float:
    """ROUGE-L F-measure on rouge-score's tokens, with the longest common subsequence from rapidfuzz: the same
    number as rouge-score's `rougeL`, whose pure-Python LCS table took minutes on the largest samples a request
    may carry (64 Ki characters against 256 KiB)."""
    from rapidfuzz.distance import LCSseq
    from rouge_score import tokenize

    hyp, ref = tokenize.tokenize(text, None), tokenize.tokenize(reference, None)
    if not hyp or not ref:
        return 0.0
    common = LCSseq.similarity(hyp, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class _NoSynonyms:
    """Stands where NLTK's METEOR wants WordNet: no synsets for any word, so only exact and stem matches count."""

    def synsets(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []
