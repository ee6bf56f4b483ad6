"""Text generation for `/v1/chat/completions`: base models, LoRA adapters and full fine-tunes.

Stands alone: the service resolves model names to folders (`ModelTarget`) and this package never sees
the database, the API or the trainer.
"""

from openft.inference.engine import DEFAULT_MAX_TOKENS, InferenceEngine
from openft.inference.types import GenerationChoice, GenerationParams, GenerationResult, ModelTarget

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "GenerationChoice",
    "GenerationParams",
    "GenerationResult",
    "InferenceEngine",
    "ModelTarget",
]
