"""What a worker's leased work is answered with on the service side: one home for the common part.

A worker answers a batch's lines (services/batches.py `BatchLineAnswerer`) and samples an eval run's items
(services/evals.py `EvalItemSampler`) in-process, through the same inference service the API serves, as the
organization the claimed work belongs to. `jobs` may not import the inference engine, so the worker is given
a factory and builds its answerer when it first claims such work (jobs/leased_work.py `LeasedRunner`): a
worker that never gets any never loads a model.

Both answerers first check that the organization may still use the work's model (it may have been deleted
or its permission revoked since the work was accepted), the same way; that check lives here.
"""

from __future__ import annotations

from openft.errors import OpenFTError
from openft.services.inference import InferenceService
from openft.services.models import Caller, ModelService


class WorkAnswerer:
    """The base of the answerers a worker builds on its first claim: the inference service and the model
    check they share."""

    def __init__(self, inference: InferenceService, models: ModelService):
        self._inference = inference
        self._models = models

    def model_problem(self, org_id: str, model: str) -> str | None:
        """Why the organization may not use `model` now (None: it may), as the API would refuse it."""
        try:
            self._models.target(Caller.of(org_id), model)
        except OpenFTError as exc:
            return exc.message
        return None
