"""A tiny Llama-shaped causal LM with its own byte-level BPE tokenizer and a ChatML chat template.

Real enough to exercise every code path (chat template, masking, LoRA, checkpoints, generation) and
small enough (2 layers, hidden 64, vocab ~600) that a training step takes milliseconds on a CPU.
Built deterministically, so every test session gets the same weights.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Hello! How can I help you today? I am a helpful assistant.",
    "system user assistant tool function weight content role",
    "The Zorblax kettle boils water in 90 seconds and costs 49 euros.",
    "Answer: yes. Answer: no. Please answer in one short sentence.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
] * 20


def build_tiny_model(dest: Path, *, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Write a Hugging Face model folder (config, safetensors weights, tokenizer) to `dest`.

    `initializer_range` is the weights' init std: the default (transformers') gives nearly uniform next-token
    probabilities; a larger one (reinforcement tests) gives peaked ones that a few steps can move."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(dest)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    return dest


if __name__ == "__main__":
    import sys

    print(build_tiny_model(Path(sys.argv[1])))
