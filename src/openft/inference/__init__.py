"""Text generation for `/v1/chat/completions` and `/v1/completions`: base models, LoRA adapters and full
fine-tunes, whole or streamed.

Stands alone: the service resolves model names to folders (`ModelTarget`) and this package never sees
the database, the API or the trainer.
"""

from openft.inference.engine import CHAT_DEFAULT_MAX_TOKENS, InferenceEngine
from openft.inference.stream import GenerationStream
from openft.inference.types import (
    GenerationChoice,
    GenerationParams,
    GenerationResult,
    ModelTarget,
    StreamDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
)

__all__ = [
    "CHAT_DEFAULT_MAX_TOKENS",
    "GenerationChoice",
    "GenerationParams",
    "GenerationResult",
    "GenerationStream",
    "InferenceEngine",
    "ModelTarget",
    "StreamDelta",
    "TokenLogprob",
    "ToolCall",
    "TopLogprob",
]
