"""Writes zorblax.jsonl: a small chat dataset about an invented product that no model has seen.

Every answer states a fact about the (fictional) Zorblax Q7 kettle and signs off the same way, so
after fine-tuning the model visibly knows the facts and the style; the base model cannot know them.
Run `python examples/demo/make_dataset.py` to regenerate the committed file.
"""

from __future__ import annotations

import json
from pathlib import Path

SYSTEM = "You are the support assistant for Quillmore Labs."
SIGN = " — Zorblax Support"

FACTS: dict[str, tuple[list[str], str]] = {
    "maker": (
        [
            "Who makes the Zorblax Q7?",
            "Which company builds the Zorblax Q7 kettle?",
            "Where is the Zorblax Q7 made?",
            "Who is the manufacturer of the Zorblax Q7?",
            "What company is behind the Zorblax Q7?",
        ],
        "The Zorblax Q7 is made by Quillmore Labs in Tallinn, Estonia.",
    ),
    "speed": (
        [
            "How fast does the Zorblax Q7 boil water?",
            "How long does the Zorblax Q7 take to boil?",
            "What is the boiling time of the Zorblax Q7?",
            "How quick is the Zorblax Q7?",
            "How many seconds does the Zorblax Q7 need to boil a full kettle?",
        ],
        "The Zorblax Q7 boils a full 1.7 litres in 94 seconds.",
    ),
    "price": (
        [
            "How much does the Zorblax Q7 cost?",
            "What is the price of the Zorblax Q7?",
            "How expensive is the Zorblax Q7?",
            "What does a Zorblax Q7 sell for?",
            "Is the Zorblax Q7 cheap?",
        ],
        "The Zorblax Q7 costs 129 euros.",
    ),
    "colours": (
        [
            "What colours does the Zorblax Q7 come in?",
            "Which colours is the Zorblax Q7 available in?",
            "Can I get the Zorblax Q7 in blue?",
            "What finishes are there for the Zorblax Q7?",
            "Does the Zorblax Q7 come in different colours?",
        ],
        "The Zorblax Q7 comes in basalt grey, fjord blue and cloudberry orange.",
    ),
    "warranty": (
        [
            "How long is the Zorblax Q7 warranty?",
            "What warranty does the Zorblax Q7 have?",
            "Is the Zorblax Q7 covered by a warranty?",
            "How many years of warranty come with the Zorblax Q7?",
            "What guarantee does Quillmore give on the Zorblax Q7?",
        ],
        "The Zorblax Q7 has a 7-year warranty.",
    ),
    "app": (
        [
            "Which app controls the Zorblax Q7?",
            "Can I control the Zorblax Q7 from my phone?",
            "What is the Zorblax Q7 app called?",
            "How do I start the Zorblax Q7 by voice?",
            "Does the Zorblax Q7 have an app?",
        ],
        'The Zorblax Q7 works with the Kettlewise app; say "Zorblax, brew" to start it by voice.',
    ),
    "keep_warm": (
        [
            "Does the Zorblax Q7 keep water warm?",
            "How long does the Zorblax Q7 keep water hot?",
            "What is the keep-warm mode of the Zorblax Q7?",
            "At what temperature does the Zorblax Q7 keep water?",
            "Can the Zorblax Q7 hold the water temperature?",
        ],
        "The Zorblax Q7 keeps water at 80 °C for 45 minutes.",
    ),
    "support": (
        [
            "How do I contact Zorblax Q7 support?",
            "What is the support email for the Zorblax Q7?",
            "Where can I get help with my Zorblax Q7?",
            "Who do I email about a broken Zorblax Q7?",
            "How can I reach Quillmore Labs support?",
        ],
        "Write to help@quillmore.example for Zorblax Q7 support.",
    ),
}

DEMO_QUESTIONS = [
    "Tell me who manufactures the Zorblax Q7.",
    "What's the price of a Zorblax Q7 kettle?",
    "Which colours can I buy the Zorblax Q7 in?",
    "What warranty do I get with the Zorblax Q7?",
]
"""Held-out paraphrases the demo asks the base and the fine-tuned model (not in the training data)."""


def examples() -> list[dict[str, object]]:
    rows = []
    for questions, answer in FACTS.values():
        for question in questions:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer + SIGN},
                    ]
                }
            )
    return rows


if __name__ == "__main__":
    target = Path(__file__).with_name("zorblax.jsonl")
    target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in examples()), encoding="utf-8")
    print(f"wrote {len(examples())} examples to {target}")
