"""`openft files|jobs|models|chat` against a real server: the demo flow, --json, one-line errors, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from openai import OpenAI

from tests.cli.conftest import Cli
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import malformed_cases, valid_examples, write_jsonl
from tests.support.server import RunningServer
from tests.support.waiting import wait_for, wait_for_status

pytestmark = pytest.mark.e2e


def _upload(cli: Cli, path: Path) -> str:
    return cli.json("files", "upload", str(path), "--purpose", "fine-tune")["id"]


def test_files_commands(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", valid_examples(12))
    text = cli("files", "upload", str(path)).stdout
    assert text.startswith("uploaded file-") and "train.jsonl" in text and "fine-tune" in text
    file_id = text.split()[1]

    created = cli.json("files", "upload", str(path))
    assert created["object"] == "file" and created["bytes"] == path.stat().st_size and created["purpose"] == "fine-tune"
    listed = cli.json("files", "list", "--purpose", "fine-tune")
    assert {file_id, created["id"]} <= {f["id"] for f in listed}
    assert file_id in cli("files", "list").stdout  # the table
    assert cli.json("files", "get", file_id)["filename"] == "train.jsonl"
    assert f"id:        {file_id}" in cli("files", "get", file_id).stdout

    out = tmp_path / "copy.jsonl"
    assert cli.json("files", "download", file_id, "--out", str(out)) == {
        "id": file_id,
        "path": str(out),
        "bytes": path.stat().st_size,
    }
    assert out.read_bytes() == path.read_bytes()
    refused = cli("files", "download", file_id, "--out", str(out), code=1)
    assert "exists" in refused.stderr and "--force" in refused.stderr
    assert cli("files", "download", file_id, "--out", "-").stdout_bytes == path.read_bytes()

    assert cli.json("files", "delete", file_id) == {"id": file_id, "object": "file", "deleted": True}
    missing = cli("files", "get", file_id, code=1)
    assert missing.stderr == f"error: No such File object: {file_id} (param: file_id, code: not_found)\n"
    assert "Traceback" not in missing.output
    envelope = json.loads(cli("files", "get", file_id, "--json", code=1).stdout)
    assert envelope["error"]["code"] == "not_found" and envelope["error"]["param"] == "file_id"


def test_missing_local_file_and_bad_metadata(cli: Cli, tmp_path: Path) -> None:
    assert cli("files", "upload", str(tmp_path / "nope.jsonl"), code=1).stderr.startswith("error: no such file")
    bad = cli("jobs", "create", "--model", "m", "--training-file", "f", "--metadata", "novalue", code=1)
    assert bad.stderr.startswith("error: --metadata takes key=value")


def test_a_reinforcement_job_takes_its_grader_from_a_file_or_inline(cli: Cli, tmp_path: Path) -> None:
    lines = [{"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(10)]
    training = _upload(cli, write_jsonl(tmp_path / "rft.jsonl", lines))
    grader = {
        "type": "string_check",
        "name": "exact",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "operation": "eq",
    }
    (tmp_path / "grader.json").write_text(json.dumps(grader))
    base = ["jobs", "create", "--model", TINY_MODEL_NAME, "--training-file", training, "--method", "reinforcement"]
    job = cli.json(*base, "--grader", str(tmp_path / "grader.json"), "--n-epochs", "1")
    assert job["method"]["reinforcement"]["grader"] == grader
    assert job["method"]["reinforcement"]["hyperparameters"]["n_epochs"] == 1
    cli("jobs", "cancel", job["id"])
    inline = cli.json(*base, "--grader", json.dumps(grader))
    assert inline["method"]["type"] == "reinforcement"
    cli("jobs", "cancel", inline["id"])
    assert "goes with --method reinforcement" in cli(*base, code=1).stderr
    bad = cli(*base, "--grader", json.dumps({**grader, "operation": "regex"}), code=1).stderr
    assert "param: method.reinforcement.grader.operation" in bad
    assert "neither" in cli(*base, "--grader", str(tmp_path / "missing.json"), code=1).stderr


def test_key_comes_from_the_data_folder(
    server: RunningServer, tmp_path: Path, make_cli: Callable[[dict[str, str]], Cli]
) -> None:
    """No OPENFT_API_KEY: a local server's DATA_DIR/api_key is used; with neither, one clear line."""
    (tmp_path / "api_key").write_text(server.api_key + "\n")
    found = make_cli({"OPENFT_BASE_URL": server.url, "OPENFT_DATA_DIR": str(tmp_path)})
    assert isinstance(found.json("models", "list"), list)
    (tmp_path / "api_key").unlink()
    missing = found("models", "list", code=1)
    assert missing.stderr.startswith("error: no API key") and missing.stderr.count("\n") == 1
    wrong = make_cli({"OPENFT_BASE_URL": server.url, "OPENFT_API_KEY": "sk-wrong", "OPENFT_DATA_DIR": str(tmp_path)})
    assert "(code: invalid_api_key)" in wrong("models", "list", code=1).stderr


def test_unreachable_server_is_one_line(tmp_path: Path, make_cli: Callable[[dict[str, str]], Cli]) -> None:
    from tests.support.server import free_port

    gone = make_cli({"OPENFT_BASE_URL": f"http://127.0.0.1:{free_port()}", "OPENFT_API_KEY": "k"})
    result = gone("models", "list", code=1)
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:") and result.stderr.count("\n") == 1


def test_demo_flow_succeeds(cli: Cli, tmp_path: Path) -> None:
    """upload → jobs create → jobs follow (exit 0) → models list → chat, and every job command's output."""
    training = _upload(cli, write_jsonl(tmp_path / "train.jsonl", valid_examples(12)))
    args = ["jobs", "create", "--model", TINY_MODEL_NAME, "--training-file", training, "--suffix", "cli"]
    args += ["--seed", "5", "--n-epochs", "2", "--batch-size", "4", "--lr-multiplier", "2", "--metadata", "team=cli"]
    job = cli.json(*args)
    assert job["status"] == "validating_files" and job["seed"] == 5 and job["metadata"] == {"team": "cli"}
    hyper = job["method"]["supervised"]["hyperparameters"]
    assert (hyper["n_epochs"], hyper["batch_size"], hyper["learning_rate_multiplier"]) == (2, 4, 2.0)

    followed = cli("jobs", "follow", job["id"], "--interval", "0.2")
    assert "succeeded: ft:" in followed.stdout and "Fine-tuning job started" not in followed.stderr
    assert f"openft chat ft:{TINY_MODEL_NAME}:openft:cli:" in followed.stdout
    done = cli.json("jobs", "get", job["id"])
    assert done["status"] == "succeeded" and done["fine_tuned_model"].startswith(f"ft:{TINY_MODEL_NAME}:openft:cli:")
    model = done["fine_tuned_model"]
    assert (done["completed_steps"], done["total_steps"]) == (6, 6)  # 12 examples / 4 × 2 epochs
    shown = cli("jobs", "get", job["id"]).stdout
    assert "status:            succeeded" in shown and "progress:          6/6 steps" in shown

    lines = cli("jobs", "follow", job["id"], "--json").stdout.splitlines()  # again, when already finished
    events = [json.loads(line) for line in lines[:-1]]
    assert json.loads(lines[-1])["id"] == job["id"]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(e["data"]["trained_tokens"] > 0 and e["data"]["step_seconds"] > 0 for e in metrics)

    listed = cli.json("jobs", "list", "--metadata", "team=cli")
    assert [j["id"] for j in listed] == [job["id"]]
    table = cli("jobs", "list").stdout
    assert job["id"] in table and "6/6 steps" in table
    event_list = cli.json("jobs", "events", job["id"])
    assert event_list[0]["created_at"] <= event_list[-1]["created_at"] and len(event_list) == len(events)
    assert "Step 6/6: training loss=" in cli("jobs", "events", job["id"]).stdout
    checkpoints = cli.json("jobs", "checkpoints", job["id"])
    assert checkpoints and all(c["fine_tuned_model_checkpoint"].startswith(model) for c in checkpoints)
    assert checkpoints[0]["fine_tuned_model_checkpoint"] in cli("jobs", "checkpoints", job["id"]).stdout
    assert model in {m["id"] for m in cli.json("models", "list")}
    assert model in cli("models", "list").stdout

    reply = cli("chat", model, "--message", "How fast does the kettle boil?", "--max-tokens", "8", "--seed", "1")
    assert reply.stdout.strip()
    completion = cli.json("chat", model, "-m", "hi", "--max-tokens", "4", "--temperature", "0")
    assert completion["object"] == "chat.completion" and completion["model"] == model
    greedy = ["--max-tokens", "4", "--temperature", "0"]
    first = cli("chat", model, "-m", "hello", *greedy).stdout
    conversation = cli("chat", model, *greedy, input="hello\nagain\n\nnever sent\n").stdout
    assert conversation.startswith(first) and len(conversation) > len(first)  # two turns; the empty line ends it

    refused = cli("jobs", "cancel", job["id"], code=1)  # a finished job: 409, one line
    assert refused.stderr.startswith("error: ") and "(code: invalid_job_state)" in refused.stderr
    unknown = cli("chat", "no-such-model", "-m", "hi", code=1)
    assert "(param: model, code: model_not_found)" in unknown.stderr


def test_follow_a_failed_job_exits_1(cli: Cli, tmp_path: Path) -> None:
    content, code, line = malformed_cases()["not_json"]
    (tmp_path / "bad.jsonl").write_bytes(content)
    training = _upload(cli, tmp_path / "bad.jsonl")
    job = cli.json("jobs", "create", "--model", TINY_MODEL_NAME, "--training-file", training)
    followed = cli("jobs", "follow", job["id"], "--interval", "0.2", code=1)
    outcome = followed.stdout.splitlines()[-1]
    assert outcome.startswith("failed: ") and f"line {line}: not valid JSON" in outcome
    assert outcome.endswith(f"(param: training_file, code: {code})")


def _interrupt(_seconds: float) -> None:
    raise KeyboardInterrupt


def test_pause_resume_cancel_and_follow_exits_2(
    cli: Cli, sdk: OpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    training = _upload(cli, write_jsonl(tmp_path / "train.jsonl", valid_examples(12)))
    job = cli.json("jobs", "create", "--model", TINY_MODEL_NAME, "--training-file", training, "--n-epochs", "50")
    wait_for(
        lambda: any(e.type == "metrics" for e in sdk.fine_tuning.jobs.list_events(job["id"], limit=5)),
        what="a first training step",
    )
    with monkeypatch.context() as patched:  # Ctrl-C while following: exit 130, the job goes on
        patched.setattr("openft.client.follow.time.sleep", _interrupt)
        stopped = cli("jobs", "follow", job["id"], code=130)
    assert f"stopped following; {job['id']} continues" in stopped.stderr
    assert sdk.fine_tuning.jobs.retrieve(job["id"]).status == "running"
    assert cli("jobs", "pause", job["id"]).stdout.strip() in (f"{job['id']}: pausing", f"{job['id']}: paused")
    wait_for_status(sdk, job["id"], {"paused"})
    assert cli.json("jobs", "resume", job["id"])["status"] == "queued"
    assert cli.json("jobs", "cancel", job["id"])["status"] == "cancelled"
    followed = cli("jobs", "follow", job["id"], code=2)
    assert followed.stdout.splitlines()[-1] == "cancelled"
    assert "paused" in followed.stdout.lower()  # the events printed along the way


def test_files_check_asks_the_server(cli: Cli, tmp_path: Path) -> None:
    content, code, line = malformed_cases()["not_json"]
    (tmp_path / "bad.jsonl").write_bytes(content)
    file_id = _upload(cli, tmp_path / "bad.jsonl")
    report = cli.json("files", "check", file_id, code=1)
    assert report["file"] == file_id and report["model"] == TINY_MODEL_NAME and report["ok"] is False
    assert (report["problems"][0]["line"], report["problems"][0]["code"]) == (line, code)
    assert report["estimate"]["source"] == "table" and report["stats"]["examples"] == 12
    assert f"line {line}: not valid JSON" in cli("files", "check", file_id, code=1).stdout
    good = _upload(cli, write_jsonl(tmp_path / "good.jsonl", valid_examples(12)))
    assert cli.json("files", "check", good, "--method", "supervised")["ok"] is True
    assert cli.json("files", "check", good, "--mode", "full")["memory"]["fine_tuning_mode"] == "full"
    assert "fits on: cpu, 24 GB, 80 GB" in cli("files", "check", good).stdout  # the memory planner's line
    unknown = cli("files", "check", good, "--model", "nope", code=1)
    assert unknown.stderr.startswith("error: The model 'nope' is not a model of this server")
    assert unknown.stderr.endswith("(param: model, code: model_not_found)\n")
    missing = cli("files", "check", "file-nope", code=1)
    assert missing.stderr == "error: No such File object: file-nope (param: file_id, code: not_found)\n"
