"""The base-model catalog: which models `model` may name, and a local folder to load each from.

Used by the server (validate `model` at job creation, list models), the inference engine and the
trainer. Imports no torch at module level, so listing models stays cheap.
"""

from openft.basemodels.catalog import (
    BaseModelInfo,
    BaseModelUnavailable,
    ModelCatalog,
    download_hub_model,
    is_causal_lm_folder,
    is_safe_name,
    materialize_spec,
)
from openft.basemodels.smollm2 import NAME as BUILTIN_MODEL_NAME

__all__ = [
    "BUILTIN_MODEL_NAME",
    "BaseModelInfo",
    "BaseModelUnavailable",
    "ModelCatalog",
    "download_hub_model",
    "is_causal_lm_folder",
    "is_safe_name",
    "materialize_spec",
]
