"""`trust_remote_code` stays off: a model folder (an allowed hub model, say) that ships Python code in its
`auto_map` never gets that code run, by inference, the trainer's loaders or the data check's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from openft.errors import ModelNotFound
from openft.inference import GenerationParams, InferenceEngine, ModelTarget
from openft.inference.registry import ModelRegistry
from openft.training.model import load_tokenizer

MESSAGES = [{"role": "user", "content": "hi"}]
GREEDY = GenerationParams(temperature=0, max_tokens=2)
EVIL_CODE = """
from pathlib import Path

Path(__file__).with_name("CODE_RAN").write_text("the model's own code ran")

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class EvilConfig(LlamaConfig):
    model_type = "evil-arch"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _with_custom_code(base_dir: Path, dest: Path, model_type: str) -> Path:
    folder = Path(shutil.copytree(base_dir, dest))
    (folder / "evil.py").write_text(EVIL_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def test_a_known_architecture_that_ships_code_loads_without_running_it(base_dir: Path, tmp_path: Path) -> None:
    folder = _with_custom_code(base_dir, tmp_path / "model", model_type="llama")
    assert InferenceEngine().chat(ModelTarget(base_path=folder), MESSAGES, GREEDY).choices
    with ModelRegistry(max_adapters=1).use(ModelTarget(base_path=folder)) as active:
        assert type(active.model).__name__ == "LlamaForCausalLM"
    load_tokenizer(folder)  # the trainer's (and the data check's) tokenizer
    assert not (folder / "CODE_RAN").exists()


def test_an_architecture_that_exists_only_as_shipped_code_is_refused(base_dir: Path, tmp_path: Path) -> None:
    folder = _with_custom_code(base_dir, tmp_path / "model", model_type="evil-arch")
    with pytest.raises(ModelNotFound, match="never runs a model's code"):
        InferenceEngine().chat(ModelTarget(base_path=folder), MESSAGES, GREEDY)
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)  # what the trainer's loader passes
    assert not (folder / "CODE_RAN").exists()
