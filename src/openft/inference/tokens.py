"""Token ids → text, one token at a time, and the bytes of single tokens (for logprobs)."""

from __future__ import annotations

import functools
import re

from transformers import PreTrainedTokenizerBase

_REPLACEMENT = "\ufffd"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte fallback


class IncrementalDecoder:
    """Decodes a growing list of token ids into text that only ever grows.

    Decoding a token alone can be wrong (SentencePiece drops a leading space, a token may hold half a
    UTF-8 character), and decoding everything again per token costs O(length) each time. So, like
    vLLM, each step decodes a short window of recent tokens and keeps the text past what the window's
    earlier tokens already gave; text ending in an incomplete character (U+FFFD) waits for the next
    token. `flush()` gives that incomplete tail when generation ends there.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0  # window start
        self._read_offset = 0  # ids before this are in `text`

    def _decode(self, ids: list[int]) -> str:
        text = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert isinstance(text, str)  # one sequence of ids decodes to one string (a batch gives a list)
        return text

    def peek(self, token_id: int) -> tuple[str, bool]:
        """(text `token_id` would add now, whether an incomplete character is left waiting) — no change."""
        window = self.ids[self._prefix_offset :]
        prefix = self._decode(window[: self._read_offset - self._prefix_offset])
        new = self._decode([*window, token_id])
        if new.endswith(_REPLACEMENT):
            stable = new.rstrip(_REPLACEMENT)
            return (stable[len(prefix) :] if len(stable) > len(prefix) else ""), True
        return new[len(prefix) :], False

    def add(self, token_id: int) -> str:
        """Append `token_id`; returns the text it completes (possibly "", e.g. half a character)."""
        window = self.ids[self._prefix_offset :]
        prefix = self._decode(window[: self._read_offset - self._prefix_offset])
        self.ids.append(token_id)
        new = self._decode([*window, token_id])
        if new.endswith(_REPLACEMENT) or len(new) <= len(prefix):
            return ""
        delta = new[len(prefix) :]
        self.text += delta
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """All the text, including an incomplete character left at the end (as U+FFFD)."""
        window = self.ids[self._prefix_offset :]
        prefix = self._decode(window[: self._read_offset - self._prefix_offset])
        return self.text + self._decode(window)[len(prefix) :]


class TokenVocabulary:
    """Per-tokenizer facts about single tokens, computed on first use and cached."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self._byte_level = "ByteLevel" in type(decoder).__name__ or "ByteLevel" in repr(decoder)
        self._special = set(tokenizer.all_special_ids)

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one vocabulary per loaded model, which lives as long)
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a special token: its name)."""
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        assert isinstance(piece, str)  # one id gives one token (a list of ids gives a list)
        if self._byte_level and token_id not in self._special:
            decoder = _byte_decoder()
            if all(c in decoder for c in piece):
                return bytes(decoder[c] for c in piece)
        match = _BYTE_TOKEN.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if token_id in self._special:
            return piece.encode()
        return piece.replace("\u2581", " ").encode()

    def token_text(self, token_id: int) -> str:
        """OpenAI's `token` field: the text, or `bytes:\\xNN…` for a token that is part of a character."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    @functools.cached_property
    def single_character_ids(self) -> list[int]:
        """Ids of tokens that are exactly one printable ASCII character or whitespace: a token for every
        character a JSON text can continue with, whatever the tokenizer merged (json_object's fallback)."""
        ids = []
        for token_id in range(len(self._tokenizer)):
            if token_id in self._special:
                continue
            raw = self.token_bytes(token_id)
            if len(raw) == 1 and (32 <= raw[0] < 127 or raw in (b"\n", b"\t", b"\r")):
                ids.append(token_id)
        return ids


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}
