"""Export a model as a plain Hugging Face folder that `transformers` (and vLLM, TGI, llama.cpp's
converters, …) load without openft: the LoRA adapter as a PEFT folder, or merged into the base weights.

The folder is assembled under a temporary name and renamed into place, so a crash never leaves a
half-written export behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from openft.fsutil import commit_dir, temp_sibling
from openft.inference.types import ModelTarget

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


def _copy_tokenizer(source: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (dest / name).exists():
            shutil.copy2(source / name, dest / name)


def export_weights(target: ModelTarget, out: Path, *, merged: bool) -> Path:
    """Write `target` to `out` (which must not exist yet); returns `out`.

    - a base model or a full fine-tune: a copy of its folder;
    - an adapter, `merged=False`: the PEFT folder (adapter_config.json + adapter_model.safetensors) with
      the tokenizer; `base_model_name_or_path` points at the base folder it was trained on;
    - an adapter, `merged=True`: base + adapter merged (`merge_and_unload`) and saved as a full model.
    """
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        if target.adapter_path is None:
            shutil.copytree(target.weights_path, tmp)
            _copy_tokenizer(target.base_path, tmp)
        elif not merged:
            shutil.copytree(target.adapter_path, tmp)
            _copy_tokenizer(target.base_path, tmp)
            config_path = tmp / "adapter_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = str(target.base_path)
            config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        else:
            _merge(target, tmp)
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _merge(target: ModelTarget, dest: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(target.weights_path, dtype=torch.float32, trust_remote_code=False)
    assert target.adapter_path is not None
    merged = PeftModel.from_pretrained(base, target.adapter_path).merge_and_unload()
    merged.save_pretrained(dest)
    tokenizer_source = (
        target.adapter_path if (target.adapter_path / "tokenizer_config.json").exists() else target.base_path
    )
    AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=False).save_pretrained(dest)
