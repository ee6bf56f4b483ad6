"""`openft import`'s rules without a network: model mapping, hyperparameter scaling, metadata, the plan."""

from __future__ import annotations

from typing import Any

import pytest

from openft.client.import_plan import (
    DEFAULT_MAP,
    MODEL_KEY,
    SOURCE_KEY,
    PlanError,
    VendorFile,
    create_request,
    duration,
    import_metadata,
    map_model,
    method_of,
    openft_hyperparameters,
    parse_map,
    parse_since,
    plan_job,
    scale_lr,
    suffix_of,
    tokens_per_second,
)


def _job(**overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": "ftjob-abc",
        "model": "gpt-4o-mini-2024-07-18",
        "status": "succeeded",
        "created_at": 1_700_000_000,
        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123",
        "training_file": "file-train",
        "validation_file": "file-valid",
        "seed": 42,
        "metadata": {"team": "support"},
        "trained_tokens": 100_000,
        "user_provided_suffix": "support-bot",
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}},
        },
    }
    return job | overrides


FILES = {
    "file-train": VendorFile("file-train", "train.jsonl", 4000),
    "file-valid": VendorFile("file-valid", "v.jsonl", 400),
}


def test_map_exact_then_longest_prefix() -> None:
    mapping = parse_map(["gpt-4o-mini-2024-07-18=Exact", "my-model=Mine"])
    assert map_model("gpt-4o-mini-2024-07-18", mapping) == "Exact"
    assert map_model("gpt-4o-mini-2025-01-01", mapping) == "Qwen2.5-7B-Instruct"  # the longer prefix beats gpt-4o
    assert map_model("gpt-4o-2024-08-06", mapping) == "Llama-3.1-8B-Instruct"
    assert map_model("gpt-4.1-nano-2025-04-14", mapping) == "Qwen2.5-7B-Instruct"
    assert map_model("gpt-4.1-2025-04-14", mapping) == "Llama-3.1-8B-Instruct"
    assert map_model("gpt-3.5-turbo-0125", mapping) == "Qwen2.5-7B-Instruct"
    assert map_model("my-model", mapping) == "Mine"
    assert map_model("gpt-4omni", mapping) is None  # a prefix must end at a '-'
    assert map_model("davinci-002", mapping) is None
    assert map_model("ft:gpt-4o-2024-08-06:acme:x:1", mapping) == "Llama-3.1-8B-Instruct"  # a continued job's base


def test_user_map_replaces_a_default_and_bad_pairs_are_errors() -> None:
    assert parse_map(["gpt-4o=Other"])["gpt-4o"] == "Other"
    assert parse_map(None) == DEFAULT_MAP
    for bad in ("gpt-4o", "=x", "x="):
        with pytest.raises(PlanError):
            parse_map([bad])


def test_since_accepts_dates_and_unix_seconds() -> None:
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2024-01-01") == 1_704_067_200
    assert parse_since("2024-01-01T01:00:00Z") == 1_704_070_800
    with pytest.raises(PlanError):
        parse_since("yesterday")


def test_learning_rate_scaling_keeps_auto_and_caps() -> None:
    assert scale_lr(2) == 1.0
    assert scale_lr(1.8) == 0.9
    assert scale_lr("auto") == "auto" and scale_lr(None) == "auto" and scale_lr(-1) == "auto"
    assert scale_lr(1000) == 100.0
    assert scale_lr(0.3, 1.0) == 0.3


def test_hyperparameters_from_method_or_legacy_field() -> None:
    kind, hyper = method_of(_job())
    assert kind == "supervised" and hyper["batch_size"] == 1
    assert openft_hyperparameters(kind, hyper) == {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 0.9}
    legacy = _job(method=None, hyperparameters={"n_epochs": -1, "batch_size": "auto", "learning_rate_multiplier": 2})
    kind, hyper = method_of(legacy)
    assert kind == "supervised"
    assert openft_hyperparameters(kind, hyper) == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": 1.0,
    }
    dpo = _job(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}})
    kind, hyper = method_of(dpo)
    assert kind == "dpo"
    assert openft_hyperparameters(kind, hyper) == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "beta": 0.2,
    }


def test_metadata_keeps_the_import_keys_and_drops_the_last_vendor_keys() -> None:
    metadata, dropped = import_metadata({"a": "1"}, "openai:ftjob-1", "ft:x:y::z")
    assert metadata == {"a": "1", SOURCE_KEY: "openai:ftjob-1", MODEL_KEY: "ft:x:y::z"} and dropped == []
    full = {f"k{i:02d}": str(i) for i in range(16)}
    metadata, dropped = import_metadata(full, "azure:ftjob-2", "ft:m")
    assert len(metadata) == 16 and dropped == ["k14", "k15"] and metadata[SOURCE_KEY] == "azure:ftjob-2"
    metadata, dropped = import_metadata(full, "azure:ftjob-2", None)
    assert len(metadata) == 16 and dropped == ["k15"] and MODEL_KEY not in metadata
    # a job imported before (vendor = another openft) carries old import keys: ours replace them
    metadata, _ = import_metadata({SOURCE_KEY: "openai:old", MODEL_KEY: "old"}, "openai:new", None)
    assert metadata == {SOURCE_KEY: "openai:new"}


def test_suffix_from_field_or_model_name() -> None:
    assert suffix_of(_job()) == "support-bot"
    assert suffix_of(_job(user_provided_suffix=None)) == "support-bot"  # from ft:base:org:suffix:id
    assert suffix_of(_job(user_provided_suffix=None, suffix="az")) == "az"  # Azure's field
    assert suffix_of(_job(user_provided_suffix="my bot!")) == "my-bot-"
    assert suffix_of(_job(user_provided_suffix=None, fine_tuned_model="ft:gpt-4o-mini:acme::id")) is None


def test_plan_of_a_job_to_create() -> None:
    planned = plan_job(_job(), provider="openai", mapping=DEFAULT_MAP, files=FILES, existing={}, known_bases=set())
    assert planned.action == "create" and planned.base == "Qwen2.5-7B-Instruct"
    assert planned.suffix == "support-bot" and planned.seed == 42
    assert planned.metadata == {
        "team": "support",
        SOURCE_KEY: "openai:ftjob-abc",
        MODEL_KEY: "ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123",
    }
    assert planned.estimate is not None and planned.estimate.tokens == 100_000
    assert planned.estimate.seconds == 40.0 and "trained_tokens" in planned.estimate.basis
    assert any("does not list" in note for note in planned.notes)
    body = create_request(planned, "file-new", "file-new-valid")
    assert body == {
        "model": "Qwen2.5-7B-Instruct",
        "training_file": "file-new",
        "validation_file": "file-new-valid",
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 0.9}},
        },
        "metadata": planned.metadata,
        "suffix": "support-bot",
        "seed": 42,
    }


def test_estimate_from_file_size_when_no_trained_tokens() -> None:
    planned = plan_job(_job(trained_tokens=None), provider="openai", mapping=DEFAULT_MAP, files=FILES, existing={})
    assert planned.estimate is not None and planned.estimate.tokens == 4000 // 4 * 3
    assert planned.estimate.seconds == round(3000 / 2500, 1)


def test_skips() -> None:
    common: dict[str, Any] = {"provider": "azure", "mapping": DEFAULT_MAP, "files": FILES}
    done = plan_job(_job(), existing={"azure:ftjob-abc": "ftjob-new"}, **common)
    assert (done.action, done.existing_job, done.reason) == ("skip", "ftjob-new", "already imported as ftjob-new")
    rft = plan_job(_job(method={"type": "reinforcement"}), existing={}, **common)
    assert rft.action == "skip" and "not imported" in rft.reason
    unmapped = plan_job(_job(model="davinci-002"), existing={}, **common)
    assert unmapped.action == "skip" and "--map davinci-002=" in unmapped.reason
    gone = plan_job(_job(validation_file="file-gone"), existing={}, **common)
    assert gone.action == "skip" and "file-gone" in gone.reason


def test_throughput_assumption_scales_with_the_size_in_the_name() -> None:
    assert tokens_per_second("Qwen2.5-7B-Instruct") == 2500
    assert tokens_per_second("meta-llama/Llama-3.1-8B-Instruct") == pytest.approx(2500 * 7 / 8)
    assert tokens_per_second("Qwen2.5-0.5B-Instruct") == pytest.approx(25_000)  # capped at 10×
    assert tokens_per_second("tiny-llama") == 2500  # no size in the name: a 7B is assumed


def test_duration_text() -> None:
    assert (duration(None), duration(40), duration(125), duration(3900)) == ("unknown", "~40s", "~2m", "~1h 05m")
