"""Weights & Biases tracking (`TrainJobSpec.wandb`), all offline: no API key, so runs are written to
`output_dir/wandb/` and read back from their `.wandb` transaction logs.

One chain of real trainer processes runs with W&B: paused at step 3 (SIGUSR1), resumed and killed at step 5
(kill -9, after the step-3 checkpoint), resumed to the end. Beside it, the same job without W&B, for the
proof that tracking does not change training. The rest are in-process tests of the failure paths.
"""

from __future__ import annotations

import json
import signal
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openft.trainer_contract import ExitCode, TrainJobSpec
from openft.training import tracking
from openft.training.tracking import RUN_ID_FILE, Tracker
from tests.support.waiting import wait_for
from tests.training.conftest import (
    TrainerRun,
    assert_same_tensors,
    job_spec,
    results_rows,
    run_in_process,
    run_subprocess,
    train_losses,
    write_job,
)

WANDB = {"project": "openft-tests", "tags": ["mine"]}
LEGS = ("3:SIGUSR1", "5:SIGKILL", "")


# Reading a .wandb file -------------------------------------------------------------------------------
# The transaction log is W&B's `Record` protobufs in LevelDB's log format: a 7-byte header (":W&B", magic
# 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header (crc32c, length, type).


def wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    if not data:
        return  # created, nothing written yet
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    block, pos, pending = 32 * 1024, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # zeros, or cut off by a kill
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    folder: Path
    run_ids: set[str] = field(default_factory=set)
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @classmethod
    def read(cls, folder: Path) -> OfflineRun:
        files = list(folder.glob("*.wandb"))
        assert len(files) == 1, files
        run = cls(folder)
        for record in wandb_records(files[0]):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.run_ids.add(record.run.run_id)
                run.tags = list(record.run.tags)
                run.config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "config":
                run.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
            elif kind == "history":
                row = {_key(i): json.loads(i.value_json) for i in record.history.item if not _key(i).startswith("_")}
                run.history.setdefault(record.history.step.num, {}).update(row)
            elif kind == "summary":
                run.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        return run

    @classmethod
    def read_finished(cls, folder: Path) -> OfflineRun:
        """`read` once the run's exit record is in the file. `run.finish()` returns when W&B's service has the
        records, which writes the file itself a moment later (a trainer's process exit waits for it; a test
        that reads the file from the same process must too)."""
        return wait_for(
            lambda: (run := cls.read(folder)).exit_code is not None and run,
            timeout=30,
            interval=0.1,
            what=f"W&B to write the exit record into {folder}",
        )


# The chain -----------------------------------------------------------------------------------------


@dataclass
class Chain:
    output_dir: Path
    plain_dir: Path
    legs: list[TrainerRun]
    plain: TrainerRun

    @property
    def run_id(self) -> str:
        return (self.output_dir / RUN_ID_FILE).read_text().strip()

    def folders(self) -> list[Path]:
        return sorted((self.output_dir / "wandb").glob("offline-run-*"))


def offline_env(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """No W&B credentials of the machine's (so: offline), W&B's own folders under `tmp`."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp / "netrc"))  # none there
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp / name.lower()))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, data_files: dict[str, Path]) -> Chain:
    tmp = tmp_path_factory.mktemp("tracking")
    tracked = job_spec(tmp, tiny_model_dir, data_files, name="tracked", wandb=WANDB)
    plain = job_spec(tmp, tiny_model_dir, data_files, name="plain")

    def legs() -> list[TrainerRun]:
        return [
            run_subprocess(write_job(tmp / f"tracked-{i}.json", tracked), debug_signals=s) for i, s in enumerate(LEGS)
        ]

    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_env(monkeypatch, tmp)
        with ThreadPoolExecutor(max_workers=2) as pool:
            plain_run = pool.submit(run_subprocess, write_job(tmp / "plain.json", plain))
            tracked_runs = pool.submit(legs)
            return Chain(
                Path(tracked["output_dir"]), Path(plain["output_dir"]), tracked_runs.result(), plain_run.result()
            )


def test_legs_end_as_asked_and_say_they_log_offline(chain: Chain) -> None:
    paused, killed, last = chain.legs
    assert paused.rc == ExitCode.STOPPED and paused.last["step"] == 3, paused.stderr[-3000:]
    assert killed.rc == -signal.SIGKILL
    assert last.rc == ExitCode.COMPLETED, last.stderr[-3000:]
    assert last.of("started")[0]["start_step"] == 3  # from the epoch checkpoint; steps 4, 5 are trained again
    for run in chain.legs:
        assert run.stray_lines == []  # W&B printed nothing on the progress channel
        warnings = [m["message"] for m in run.of("log") if m["level"] == "warn" and m["message"].startswith("W&B")]
        assert len(warnings) == 1, warnings
        assert "no API key" in warnings[0] and "logging offline into the job's folder" in warnings[0]
        assert f"`wandb sync wandb/offline-run-*-{chain.run_id}` in the job folder" in warnings[0]
        assert "[server path]" not in warnings[0]  # the message names no server path to redact
        assert str(chain.output_dir) not in warnings[0]  # the job's owner does not learn the server's paths
    assert chain.plain.rc == ExitCode.COMPLETED and not (chain.plain_dir / "wandb").exists()


def test_one_run_id_across_pause_kill_and_resume(chain: Chain) -> None:
    run_id = chain.run_id
    assert len(run_id) == 8 and run_id.isalnum()
    folders = chain.folders()
    # W&B's layout for a resumed offline run: one folder per process, all with the run's id.
    assert len(folders) == len(LEGS) and all(f.name.endswith(f"-{run_id}") for f in folders), folders
    runs = [OfflineRun.read(f) for f in folders]
    assert runs[0].run_ids == runs[2].run_ids == {run_id}
    assert runs[1].run_ids <= {run_id}  # killed: only what W&B had flushed to disk survives


def test_metrics_config_tags_and_summary_are_logged(chain: Chain) -> None:
    paused_msgs, _, last_msgs = chain.legs
    first, killed, last = (OfflineRun.read(f) for f in chain.folders())

    # Every metrics message, at its step, with all its numeric fields; checkpoints under checkpoint/.
    for run, messages in ((first, paused_msgs), (last, last_msgs)):
        expected = {
            m["step"]: {k: v for k, v in m.items() if k not in ("type", "step", "total_steps")}
            for m in messages.of("metrics")
        }
        assert sorted(run.history) == sorted(expected)
        for step, fields in expected.items():
            assert {k: v for k, v in run.history[step].items() if not k.startswith("checkpoint/")} == fields
    assert sorted(first.history) == [1, 2, 3] and sorted(last.history) == [4, 5, 6]  # true steps, none backwards
    assert first.history[3]["checkpoint/train_loss"] == first.history[3]["train_loss"]
    assert first.history[3]["checkpoint/epoch"] == 1 and last.history[6]["checkpoint/epoch"] == 2
    assert "checkpoint/valid_loss" not in first.history[3]  # null metrics are left out
    assert {k for step in killed.history for k in killed.history[step]} <= set(last.history[4])
    losses = train_losses(chain.output_dir)
    assert {s: r["train_loss"] for run in (first, last) for s, r in run.history.items()} == losses

    # Config: the spec without paths, the resolved plan; tags: the job's plus the defaults; summary.
    for run in (first, last):
        config = run.config
        assert config["job_id"] == "ftjob-test" and config["seed"] == 1234 and config["method"] == "supervised"
        assert config["base_model"] == {"name": "tiny", "source": "local", "hub_id": None}
        assert config["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}
        assert config["lora"]["r"] == 4 and config["learning_rate"] == pytest.approx(1e-2)
        assert (config["total_steps"], config["n_examples"], config["num_threads"]) == (6, 12, 1)
        assert not {"output_dir", "training_file", "validation_file", "cache_dir", "wandb"} & set(config)
        assert str(chain.output_dir.parent) not in json.dumps(config)
        assert run.tags == ["mine", "openft/finetune", "openft/tiny", "openft/ftjob-test"]
    assert first.summary["status"] == "stopped" and first.summary["step"] == 3 and first.exit_code == 0
    assert last.summary["status"] == "completed" and last.exit_code == 0
    assert last.summary["trained_tokens"] == last_msgs.last["trained_tokens"] and last.summary["total_steps"] == 6


def test_training_is_unchanged_by_wandb(chain: Chain) -> None:
    assert train_losses(chain.output_dir) == train_losses(chain.plain_dir)  # float ==: bit for bit
    assert results_rows(chain.output_dir) == results_rows(chain.plain_dir)
    assert_same_tensors(chain.plain_dir / "model", chain.output_dir / "model")


# Failures never stop training ----------------------------------------------------------------------


def test_wandb_init_failure_warns_and_training_completes(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    offline_env(monkeypatch, tmp_path)

    def broken_init(**kwargs: Any) -> Any:
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    spec = job_spec(
        tmp_path,
        tiny_model_dir,
        data_files,
        wandb=WANDB,
        validation_file=None,
        hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0},
    )
    run = run_in_process(write_job(tmp_path / "job.json", spec))
    assert run.rc == ExitCode.COMPLETED, run.last
    warnings = [m["message"] for m in run.of("log") if m["level"] == "warn" and "W&B" in m["message"]]
    assert warnings == ["W&B: RuntimeError: W&B is down; continuing without W&B tracking"]
    assert [m["step"] for m in run.of("metrics")] == [1, 2, 3]


def _spec(tmp: Path, **wandb: Any) -> TrainJobSpec:
    body = job_spec(tmp, tmp / "model", {"train": tmp / "t.jsonl", "valid": tmp / "v.jsonl"}, wandb={**WANDB, **wandb})
    return TrainJobSpec.model_validate(body)


def test_online_failure_falls_back_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "can_reach", lambda url: True)
    real_init, modes = wandb.init, []

    def online_fails(**kwargs: Any) -> Any:
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("timed out")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", online_fails)
    warnings: list[str] = []
    tracker = Tracker(_spec(tmp_path, name="my-run"), warn=warnings.append)
    tracker.start()
    assert modes == ["online", "offline"] and tracker.mode == "offline" and tracker.active
    assert len(warnings) == 1 and "cannot start the run online (CommError: timed out)" in warnings[0]
    tracker.log({"train_loss": 1.5}, step=1)
    tracker.finish()
    [folder] = (tmp_path / "out" / "wandb").glob("offline-run-*")
    assert OfflineRun.read_finished(folder).history == {1: {"train_loss": 1.5}}


def test_no_network_goes_offline_without_trying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline_env(monkeypatch, tmp_path)
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    assert tracking.has_api_key("https://api.wandb.ai") and not tracking.has_api_key("https://wandb.example.com")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: connection refused at once
    assert not tracking.can_reach("http://127.0.0.1:9")
    monkeypatch.setattr(tracking, "has_api_key", lambda url: True)
    warnings: list[str] = []
    tracker = Tracker(_spec(tmp_path), warn=warnings.append)
    tracker.start()
    tracker.finish()
    assert tracker.mode == "offline" and len(warnings) == 1
    assert "no network (cannot reach the W&B server)" in warnings[0] and "127.0.0.1" not in warnings[0]


def test_a_job_chosen_entity_is_never_written_with_the_operators_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is the server's: a job naming another team's entity must not make W&B write there with it."""
    import wandb

    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # the operator's key
    monkeypatch.setattr(tracking, "can_reach", lambda url: True)
    asked: list[Any] = []

    def record(**kwargs: Any) -> Any:
        asked.append(kwargs.get("entity"))
        raise wandb.errors.CommError("not really online in tests")

    monkeypatch.setattr(wandb, "init", record)
    warnings: list[str] = []
    tracker = Tracker(_spec(tmp_path, entity="someone-elses-team"), warn=warnings.append)
    tracker.start()
    assert asked and all(entity is None for entity in asked)  # online, then the offline fallback
    assert any("entity 'someone-elses-team' is not used" in w for w in warnings)


class _BrokenRun:
    def __init__(self) -> None:
        self.calls = 0
        self.finished: list[int] = []

    def log(self, data: dict[str, Any], step: int) -> None:
        self.calls += 1
        raise OSError("socket closed")

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


def test_a_logging_error_warns_once_and_stops_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "can_reach", lambda url: True)
    broken = _BrokenRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: broken)  # the run starts online, then its connection breaks
    warnings: list[str] = []
    tracker = Tracker(_spec(tmp_path), warn=warnings.append)
    tracker.start()
    assert tracker.active
    for step in (1, 2, 3):
        tracker.log({"train_loss": 1.0}, step=step)
    tracker.summarize({"status": "completed"})
    tracker.finish()
    assert broken.calls == 1 and broken.finished == [1] and not tracker.active
    assert warnings == ["W&B: OSError: socket closed; continuing without W&B tracking"]


def test_run_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = tracking.read_or_create_run_id(tmp_path)
    assert tracking.read_or_create_run_id(tmp_path) == first
    assert (tmp_path / RUN_ID_FILE).read_text() == first + "\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
