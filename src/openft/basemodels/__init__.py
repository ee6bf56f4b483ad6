"""The base-model catalog: which models `model` may name, and a local folder to load each from.

Used by the server (validate `model` at job creation, list models), the inference engine and the
trainer. Imports no torch at module level, so listing models stays cheap.
"""

from openft.basemodels.catalog import (
    BaseModelInfo,
    BaseModelUnavailable,
    HubDownloadPlan,
    ModelCatalog,
    cached_hub_snapshot,
    download_hub_model,
    hub_id_allowed,
    is_causal_lm_folder,
    is_hub_id,
    is_safe_name,
    materialize_spec,
    plan_hub_download,
)
from openft.basemodels.smollm2 import NAME as BUILTIN_MODEL_NAME

__all__ = [
    "BUILTIN_MODEL_NAME",
    "BaseModelInfo",
    "BaseModelUnavailable",
    "HubDownloadPlan",
    "ModelCatalog",
    "cached_hub_snapshot",
    "download_hub_model",
    "hub_id_allowed",
    "is_causal_lm_folder",
    "is_hub_id",
    "is_safe_name",
    "materialize_spec",
    "plan_hub_download",
]
