"""`openft data check FILE`: problems with their line numbers, statistics, "auto" values, steps, time, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from openft.cli import app
from openft.datasets import auto
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import malformed_cases, preference_examples, qa_example, valid_examples, write_jsonl


def _check(path: Path, models_dir: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(
        app,
        ["data", "check", str(path), "--model", TINY_MODEL_NAME, "--models-dir", str(models_dir), *args],
        env={"OPENFT_DATA_DIR": str(path.parent / "data")},
    )
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def _report(path: Path, models_dir: Path, *args: str, code: int = 0) -> dict[str, Any]:
    return json.loads(_check(path, models_dir, "--json", *args, code=code).stdout)


def test_valid_chat_data_json(tmp_path: Path, models_dir: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", valid_examples(30))
    report = _report(path, models_dir)
    assert report["object"] == "openft.data_check" and report["ok"] is True and report["problems"] == []
    assert (report["file"], report["filename"], report["method"], report["model"]) == (
        None,
        "train.jsonl",
        "supervised",
        TINY_MODEL_NAME,
    )
    stats = report["stats"]
    assert stats["examples"] == 30 and stats["over_context"] == 0
    assert 0 < stats["tokens"]["min"] <= stats["tokens"]["mean"] <= stats["tokens"]["max"]
    assert stats["total_tokens"] == pytest.approx(stats["tokens"]["mean"] * 30, abs=30)
    resolved = auto.resolve(30)
    assert report["auto"] == {
        "n_epochs": resolved.n_epochs,
        "batch_size": resolved.batch_size,
        "learning_rate_multiplier": resolved.learning_rate_multiplier,
    }
    assert report["steps"] == resolved.steps(30)
    estimate = report["estimate"]
    assert estimate["source"] == "measured" and estimate["device"] in ("cpu", "cuda")
    assert estimate["tokens_per_second"] > 0 and estimate["seconds"] > 0
    expected = stats["total_tokens"] * resolved.n_epochs / estimate["tokens_per_second"]
    assert estimate["seconds"] == pytest.approx(expected, rel=0.01, abs=0.1)  # both rounded to 0.1


def test_text_output_and_options(tmp_path: Path, models_dir: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", valid_examples(12))
    text = _check(path, models_dir, "--estimate", "table").stdout
    for expected in ("no problems found", "examples", "12", "tokens per example", "steps", "estimated time", "table"):
        assert expected in text
    report = _report(path, models_dir, "--n-epochs", "2", "--batch-size", "4", "--estimate", "none")
    assert report["steps"] == 6 and report["auto"]["n_epochs"] == 2 and report["estimate"] is None


@pytest.mark.parametrize("name", sorted(malformed_cases()))
def test_every_malformed_case_names_its_line(name: str, tmp_path: Path, models_dir: Path) -> None:
    content, code, line = malformed_cases()[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(content)
    report = _report(path, models_dir, "--estimate", "none", code=1)
    assert report["ok"] is False and report["n_problems"] >= 1
    first = report["problems"][0]
    assert (first["line"], first["code"]) == (line, code)
    text = _check(path, models_dir, "--estimate", "none", code=1).stdout
    assert (f"line {line}: " if line is not None else "file: ") + first["message"][:40] in text


def test_stats_of_a_partly_broken_file_cover_its_valid_lines(tmp_path: Path, models_dir: Path) -> None:
    content, _code, _line = malformed_cases()["bad_role"]
    (tmp_path / "x.jsonl").write_bytes(content)
    report = _report(tmp_path / "x.jsonl", models_dir, "--estimate", "none", code=1)
    assert report["stats"]["examples"] == 11 and report["notes"] == ["statistics cover the 11 valid example(s) only"]


def test_preference_data_is_detected(tmp_path: Path, models_dir: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_examples(12))
    report = _report(path, models_dir, "--estimate", "table")
    assert report["method"] == "dpo" and report["ok"] and report["stats"]["examples"] == 12
    as_chat = _report(path, models_dir, "--method", "supervised", "--estimate", "none", code=1)
    assert as_chat["problems"][0]["line"] == 1 and "preference (DPO) data" in as_chat["problems"][0]["message"]


def test_examples_over_the_context(tmp_path: Path, models_dir: Path) -> None:
    long = qa_example(99)
    long["messages"][1]["content"] = "kettle " * 3000
    path = write_jsonl(tmp_path / "long.jsonl", [*valid_examples(11)[:4], long, *valid_examples(11)[4:]])
    report = _report(path, models_dir, "--estimate", "none")
    stats = report["stats"]
    assert stats["over_context"] == 1 and stats["over_context_lines"] == [5]
    assert stats["tokens"]["max"] > stats["context_length"]


def test_reinforcement_prompts(tmp_path: Path, models_dir: Path) -> None:
    """Prompts with grader fields: format problems by line, the prompts' tokens (as the policy reads them, with
    the generation prompt), "auto" and steps; no memory or time estimate (sampling and grading cost it)."""
    prompts = [
        {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)} for i in range(12)
    ]
    answered = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "x"}
    path = write_jsonl(tmp_path / "rft.jsonl", [*prompts[:3], answered, *prompts[3:]])
    report = _report(path, models_dir, "--method", "reinforcement", code=1)
    assert report["method"] == "reinforcement" and report["n_problems"] == 1
    assert report["problems"][0]["line"] == 4 and "assistant" in report["problems"][0]["message"]
    stats = report["stats"]
    assert stats["examples"] == 12 and stats["over_context"] == 0 and 10 < stats["tokens"]["min"] < 40
    assert report["steps"] == auto.resolve(12).steps(12)
    assert report["memory"] is None and report["estimate"] is None
    assert any("reinforcement data" in note for note in report["notes"])


def test_cannot_check_exits_2(tmp_path: Path, models_dir: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", valid_examples(12))
    unknown = CliRunner().invoke(app, ["data", "check", str(path), "--model", "nope", "--models-dir", str(models_dir)])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: no base model 'nope' here")
    missing = _check(tmp_path / "absent.jsonl", models_dir, code=2)
    assert missing.stderr.startswith("error: no such file")


def test_a_report_cut_short_by_the_servers_budget_says_so(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`openft files check` prints the server's report: a truncated one must not read as a clean bill."""
    from openft.client.data import print_report
    from openft.datacheck import CheckBudget, check_file

    path = write_jsonl(tmp_path / "train.jsonl", valid_examples(30))
    report = check_file(
        path,
        model=TINY_MODEL_NAME,
        tokenizer_folder=models_dir / TINY_MODEL_NAME,
        context_length=512,
        budget=CheckBudget(max_bytes=path.stat().st_size // 3),
    ).to_json()
    assert report["truncated"] is True and 0 < report["checked_examples"] < 30
    print_report(report)
    out = capsys.readouterr().out
    assert "checked only part of the file" in out and "stopped early" in out
    whole = check_file(path, model=TINY_MODEL_NAME, tokenizer_folder=models_dir / TINY_MODEL_NAME, context_length=512)
    assert whole.to_json()["truncated"] is False and whole.to_json()["checked_examples"] is None


def _planned_peak(models_dir: Path, memory: dict[str, Any], *, batch_size: int, mode: str, dpo: bool = False) -> int:
    """The peak the trainer's planner gives for the report's choice (the check must not have its own estimate)."""
    import torch

    from openft.training import memory_plan as mp
    from openft.training.precision import resolve_precision

    config = json.loads((models_dir / TINY_MODEL_NAME / "config.json").read_text(encoding="utf-8"))
    shape = mp.ModelShape.from_config(config)
    assert shape is not None
    setup = mp.TrainingSetup(
        mode=mode,  # type: ignore[arg-type]
        precision=resolve_precision("auto", torch.device("cpu")),
        seq_len=memory["longest_sequence"],
        batch_size=batch_size,
        dpo=dpo,
    )
    return mp.estimate(shape, setup, memory["micro_batch_size"], memory["gradient_checkpointing"]).peak_bytes


def test_memory_estimate_and_where_it_fits(tmp_path: Path, models_dir: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", valid_examples(40))
    report = _report(path, models_dir, "--estimate", "none", "--batch-size", "4")
    memory = report["memory"]
    assert (memory["fine_tuning_mode"], memory["max_seq_length"]) == ("lora", report["stats"]["context_length"])
    assert memory["longest_sequence"] == report["stats"]["tokens"]["max"]  # planned for the file's longest example
    assert (memory["micro_batch_size"], memory["gradient_checkpointing"], memory["fits"]) == (4, False, True)
    assert memory["fits_on"] == ["cpu", "24 GB", "80 GB"] and memory["device"] == "cpu"
    assert memory["peak_bytes"] == _planned_peak(models_dir, memory, batch_size=4, mode="lora")
    assert 0 < memory["peak_bytes"] < memory["available_bytes"] and "available" in memory["detail"]
    full = _report(path, models_dir, "--estimate", "none", "--batch-size", "4", "--mode", "full")["memory"]
    assert full["fine_tuning_mode"] == "full" and full["peak_bytes"] != memory["peak_bytes"]
    assert full["peak_bytes"] == _planned_peak(models_dir, full, batch_size=4, mode="full")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_examples(12))
    dpo = _report(pairs, models_dir, "--estimate", "none", "--batch-size", "4")["memory"]
    assert dpo["peak_bytes"] == _planned_peak(models_dir, dpo, batch_size=4, mode="lora", dpo=True)

    text = _check(path, models_dir, "--estimate", "none", "--batch-size", "4").stdout
    gib = memory["peak_bytes"] / 2**30
    tokens = memory["longest_sequence"]
    line = f"memory              ~{gib:.1f} GiB peak (LoRA, sequences of up to {tokens} tokens, micro-batch 4)"
    assert f"{line} — fits on: cpu, 24 GB, 80 GB" in text
    bad = _check(path, models_dir, "--mode", "int8", code=2)
    assert bad.stderr.startswith("error: --mode must be lora, qlora or full")


def test_memory_that_does_not_fit_here_says_what_would(tmp_path: Path, models_dir: Path) -> None:
    """With the trainer's memory capped below any job's needs (`OPENFT_TRAIN_MEMORY_GB`), this machine is out."""
    path = write_jsonl(tmp_path / "train.jsonl", valid_examples(12))
    result = CliRunner().invoke(
        app,
        [
            "data",
            "check",
            str(path),
            "--model",
            TINY_MODEL_NAME,
            "--models-dir",
            str(models_dir),
            "--json",
            "--estimate",
            "none",
        ],
        env={"OPENFT_DATA_DIR": str(tmp_path / "data"), "OPENFT_TRAIN_MEMORY_GB": "0.5"},
    )
    memory = json.loads(result.stdout)["memory"]
    assert memory["fits"] is False and memory["fits_on"] == ["24 GB", "80 GB"]
    assert memory["available_bytes"] == 2**29
    assert "the job needs ~" in memory["detail"] and "512 MiB available on cpu" in memory["detail"]
