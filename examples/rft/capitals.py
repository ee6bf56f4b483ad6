"""The RFT demo's data: "What is the capital of X? Answer with only the city name." and its grader.

SmolLM2-135M-Instruct knows many capitals but keeps the format only half the time, even with one worked example
in the prompt (the Norway → "Oslo" turn every prompt starts with): "Cuba is the capital of Cuba.", "Aleppo",
"The capital of Malaysia is Kuala Lumpur." An exact check passes about half of its greedy answers. Reinforcement
fine-tuning with a grader that pays for the right city and for every word less around it raises that.

Why the worked example (measured on 2 CPU cores, 24–48 steps of this trainer): without it the model answers
in a sentence every time, no sampled answer is exactly the name, and GRPO climbs only as far as "the capital is
Paris" or "the Paris" — its first token stays an article, which neither a similarity score nor a bonus for
naming the city first moved within the demo's budget. With it, about one sampled answer in five is already
exactly right, and those are what the policy learns from.

Run it to rewrite `train.jsonl` and `heldout.jsonl` (the committed files are its output).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TRAIN = HERE / "train.jsonl"
HELDOUT = HERE / "heldout.jsonl"
INSTRUCTION = "Answer with only the city name."

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Greece", "Athens"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Estonia", "Tallinn"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"),
    ("South Korea", "Seoul"), ("India", "New Delhi"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
    ("Colombia", "Bogota"), ("Cuba", "Havana"), ("Mexico", "Mexico City"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Afghanistan", "Kabul"), ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"), ("Vietnam", "Hanoi"), ("Ukraine", "Kyiv"), ("Czech Republic", "Prague"),
    ("Netherlands", "Amsterdam"), ("United Kingdom", "London"), ("Scotland", "Edinburgh"), ("Iceland", "Reykjavik"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Uruguay", "Montevideo"), ("Nigeria", "Abuja"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Saudi Arabia", "Riyadh"), ("Israel", "Jerusalem"),
    ("Lebanon", "Beirut"), ("Syria", "Damascus"), ("Jordan", "Amman"), ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"), ("Malaysia", "Kuala Lumpur"), ("Singapore", "Singapore"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("United States", "Washington"),
    ("Brazil", "Brasilia"), ("Switzerland", "Bern"), ("Qatar", "Doha"), ("Libya", "Tripoli"),
]  # fmt: skip
HELDOUT_COUNT = 24
EXAMPLE = ("Norway", "Oslo")
"""The one worked example every prompt shows (a turn before the question); in no prompt's question."""

REWARD_GRADER: dict[str, Any] = {
    "type": "multi",
    "name": "the right city, and only it",
    "graders": {
        "right": {
            "type": "string_check",
            "name": "names the capital",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.answer }}",
            "operation": "like",
        },
        "close": {
            "type": "text_similarity",
            "name": "close to the bare name",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.answer }}",
            "evaluation_metric": "fuzzy_match",
        },
    },
    "calculate_output": "0.5 * right + 0.5 * close",
}
"""What training maximises: half for naming the right city anywhere, half for how close the whole answer is to
the bare name (rapidfuzz ratio), so every word less pays: "The capital of France is Paris." 0.64, "Paris." 0.95,
"Paris" 1, a wrong city 0 to 0.2. Partial credit matters: where few sampled answers are exactly right, a group
that scores all alike teaches GRPO nothing."""

PASS_GRADER: dict[str, Any] = {
    "type": "python",
    "name": "exactly the capital",
    "source": (
        "def grade(sample, item):\n    return 1.0 if sample['output_text'].strip() == item['answer'] else 0.0\n"
    ),
    "pass_threshold": 1.0,
}
"""What counts as a pass (the demo's eval): the answer is the city name and nothing else, surrounding whitespace
aside. Aside, because the tuned model writes the name as the word-start token (" Paris", with its leading
space) and chat completions show it stripped, while an eval's completions sample (and string_check) keep it:
a bare `string_check eq` failed every tuned answer on that space alone."""


def question(country: str) -> str:
    return f"What is the capital of {country}? {INSTRUCTION}"


def task(country: str, capital: str) -> dict[str, Any]:
    shown_country, shown_capital = EXAMPLE
    messages = [
        {"role": "user", "content": question(shown_country)},
        {"role": "assistant", "content": shown_capital},
        {"role": "user", "content": question(country)},
    ]
    return {"messages": messages, "answer": capital}


def split(seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pairs = list(CAPITALS)
    random.Random(seed).shuffle(pairs)
    tasks = [task(country, capital) for country, capital in pairs]
    return tasks[HELDOUT_COUNT:], tasks[:HELDOUT_COUNT]


def write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


if __name__ == "__main__":
    train, heldout = split()
    write(TRAIN, train)
    write(HELDOUT, heldout)
    print(f"{TRAIN.name}: {len(train)} prompts, {HELDOUT.name}: {len(heldout)} prompts")
