"""Per-token cost of constrained decoding: free text vs json_object vs a strict json_schema.

    python benchmarks/structured_outputs_overhead.py [--model-dir DIR] [--max-tokens 200] [--repeats 3]

Greedy chat requests on one engine, each mode run `repeats` times after a warm-up; prints the median
milliseconds per generated token of each mode, the difference to free text, and the time spent in the
JSON checker itself per token (timed around `ChoiceState.acceptable` and `RequestDecoder._constrained`:
a token the model picks is checked once; a refused one makes the decoder try its next candidates) — the
checker time is the number to trust on a busy machine, the end-to-end difference is noisy.
Default model: the tiny test model (tests/support/tiny_model.py) with random weights, whose free text is
never JSON, so constrained modes refuse often — the worst case. `--model-dir` takes any HF causal-LM folder
with a chat template, e.g. SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support.tiny_model

MESSAGES = [{"role": "user", "content": "Give a person's profile as JSON: name, age, city, hobbies and pets."}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "status": {"enum": ["active", "inactive"]},
        "hobbies": {"type": "array", "items": {"type": "string"}},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}},
    },
    "required": ["name", "age", "city", "status", "hobbies", "pets"],
    "additionalProperties": False,
    "$defs": {
        "pet": {
            "type": "object",
            "properties": {"kind": {"enum": ["cat", "dog"]}, "name": {"type": "string"}},
            "required": ["kind", "name"],
            "additionalProperties": False,
        }
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from openft.inference import GenerationParams, InferenceEngine, ModelTarget, decoding

    checker = {"seconds": 0.0, "depth": 0}

    def timed(method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            checker["depth"] += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                checker["depth"] -= 1
                if checker["depth"] == 0:  # `_constrained` calls `acceptable`: count the outer call only
                    checker["seconds"] += time.perf_counter() - start

        return wrapper

    decoding.ChoiceState.acceptable = timed(decoding.ChoiceState.acceptable)  # type: ignore[method-assign]
    decoding.RequestDecoder._constrained = timed(decoding.RequestDecoder._constrained)  # type: ignore[method-assign]

    model_dir = args.model_dir
    if model_dir is None:
        from tests.support.tiny_model import build_tiny_model

        model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    target = ModelTarget(base_path=model_dir)
    engine = InferenceEngine()
    modes: dict[str, dict[str, Any]] = {
        "free": {},
        "json_object": {"json_object": True},
        "json_schema": {"json_object": True, "json_schema": SCHEMA},
    }
    results: dict[str, float] = {}
    for name, extra in modes.items():
        params = GenerationParams(temperature=0, max_tokens=args.max_tokens, **extra)
        engine.chat(target, MESSAGES, params)  # warm-up (loads the model, fills caches)
        per_token, checking = [], []
        for _ in range(args.repeats):
            checker["seconds"] = 0.0
            start = time.perf_counter()
            result = engine.chat(target, MESSAGES, params)
            tokens = max(1, result.completion_tokens)
            per_token.append((time.perf_counter() - start) * 1000 / tokens)
            checking.append(checker["seconds"] * 1000 / tokens)
        results[name] = statistics.median(per_token)
        choice = result.choices[0]
        print(
            f"{name:12s} {results[name]:7.2f} ms/token, checker {statistics.median(checking):5.2f} ms/token"
            f"  ({result.completion_tokens} tokens, {choice.finish_reason}): {(choice.text or '')[:70]!r}"
        )
    for name in ("json_object", "json_schema"):
        print(f"{name} overhead vs free: {results[name] - results['free']:+.2f} ms/token")
    engine.close()


if __name__ == "__main__":
    main()
