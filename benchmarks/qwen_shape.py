"""A random-init Qwen2.5-1.5B-shaped model folder, shared by the memory benchmarks (`lora_memory.py`,
`memory_plan.py`): the same shape in both, so their figures describe the same model."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(dest: Path, layers: int) -> Path:
    """A random-init Qwen2.5-1.5B-shaped model (hidden 1536, 12 heads / 2 KV heads, MLP 8960, vocab 151,936,
    tied embeddings), stored in bf16, with the tiny test model's tokenizer (the vocabulary size of the
    tokenizer does not matter for memory)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT))
    from tests.support.tiny_model import build_tiny_model

    tokenizer_dir = build_tiny_model(dest.parent / "tokenizer-source")
    config = Qwen2Config(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=layers,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151_936,
        max_position_embeddings=32_768,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    model.tie_weights()  # `to_empty` gave the LM head its own tensor: share the embeddings' again, as Qwen2.5-1.5B does
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            (dest / name).write_bytes((tokenizer_dir / name).read_bytes())
    return dest
