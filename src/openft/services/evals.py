"""The Evals API: evals (an item schema and testing criteria) and their runs, graded by the workers.

The API side records an eval, checks a run's request completely before accepting it (its data source's items
against the eval's `item_schema`, its model, its input template), and answers for it; a worker claims the run
(`queued`) and carries it out (jobs/eval_runs.py) through this module's `EvalItemSampler`: samples from the
same inference service the API serves, and grades with the Graders API's service (services/graders.py), both
as the run's organization. Everything is per organization: another organization's eval or run is a 404.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from openft.db import evals as eval_repo
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import EvalRow, EvalRunItemRow, EvalRunRow
from openft.errors import InvalidRequest, NotFound, OpenFTError, RateLimited, ServiceUnavailable
from openft.graders import Embed, GraderInvalid, validate
from openft.jobs.eval_runs import (
    Graded,
    RunItem,
    Sampled,
    check_item_schema,
    check_items,
    check_template,
    parse_content,
    parse_jsonl,
)
from openft.protocol.chat import ChatCompletionRequest
from openft.protocol.evals import (
    MAX_CRITERIA,
    MAX_FILE_BYTES,
    CreateEvalRequest,
    CreateEvalRunRequest,
    DeleteEvalResponse,
    DeleteEvalRunResponse,
    Eval,
    EvalApiError,
    EvalList,
    EvalRun,
    EvalRunCriteriaResult,
    EvalRunList,
    EvalRunModelUsage,
    EvalRunOutputItem,
    EvalRunOutputItemList,
    EvalRunOutputItemResult,
    EvalRunResultCounts,
    UpdateEvalRequest,
)
from openft.protocol.graders import RunGraderRequest
from openft.services.files import FileService
from openft.services.graders import GraderService, resolve_judges
from openft.services.inference import InferenceService
from openft.services.models import Caller, ModelService
from openft.services.work_answerer import WorkAnswerer

SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
    },
    "required": ["model", "choices"],
}
"""The `sample` namespace's schema an eval with `include_sample_schema` reports (as OpenAI's)."""
SAMPLING_PARAMS = ("temperature", "max_completion_tokens", "top_p", "seed")
MAX_METADATA_KEYS = 16


def _metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if metadata is not None and len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequest(f"metadata holds at most {MAX_METADATA_KEYS} keys.", param="metadata")
    return metadata


def eval_object(row: EvalRow) -> Eval:
    return Eval(
        id=row.id,
        name=row.name,
        data_source_config=row.data_source_config,
        testing_criteria=row.testing_criteria,
        created_at=row.created_at,
        metadata=row.metadata_ or {},
    )


def run_object(row: EvalRunRow) -> EvalRun:
    return EvalRun(
        id=row.id,
        eval_id=row.eval_id,
        status=row.status,  # type: ignore[arg-type]
        model=row.model,
        name=row.name,
        created_at=row.created_at,
        report_url=row.report_url,
        result_counts=EvalRunResultCounts(**row.result_counts),
        per_model_usage=[EvalRunModelUsage(**u) for u in row.per_model_usage.values()],
        per_testing_criteria_results=[EvalRunCriteriaResult(**c) for c in row.per_testing_criteria_results],
        data_source=row.data_source,
        metadata=row.metadata_ or {},
        error=EvalApiError(**row.error) if row.error else None,
    )


def item_object(row: EvalRunItemRow, eval_id: str) -> EvalRunOutputItem:
    record = row.record
    return EvalRunOutputItem(
        id=row.id,
        run_id=row.run_id,
        eval_id=eval_id,
        created_at=row.created_at,
        status=row.status,
        datasource_item_id=row.item_index,
        datasource_item=record["datasource_item"],
        results=[EvalRunOutputItemResult(**r) for r in record["results"]],
        sample=record["sample"],
    )


def _limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")


def _ascending(order: str) -> bool:
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    return order == "asc"


class EvalService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        files: FileService,
        models: ModelService,
        *,
        notify_worker: Callable[[], None] | None = None,
        embed: Embed | None = None,
    ):
        """`embed`: the server's `cosine` embeddings (a cosine criterion is a 400 without)."""
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)
        self._files = files
        self._models = models
        self._notify = notify_worker or (lambda: None)
        self._embed = embed

    # evals -------------------------------------------------------------------------------------------
    def create(self, who: Caller, org_id: str, request: CreateEvalRequest) -> Eval:
        config = request.data_source_config
        kind = config.get("type")
        if kind in ("logs", "stored_completions"):
            raise InvalidRequest(
                f"data_source_config type '{kind}' is not supported: openft stores no completions. "
                "Use 'custom' with an item_schema, and jsonl or completions runs.",
                param="data_source_config.type",
            )
        if kind != "custom":
            raise InvalidRequest("data_source_config.type must be 'custom'.", param="data_source_config.type")
        item_schema = config.get("item_schema")
        check_item_schema(item_schema, "data_source_config.item_schema")
        include_sample = config.get("include_sample_schema", False)
        if not isinstance(include_sample, bool):
            raise InvalidRequest(
                "include_sample_schema must be a boolean.", param="data_source_config.include_sample_schema"
            )
        schema: dict[str, Any] = {"type": "object", "properties": {"item": item_schema}, "required": ["item"]}
        if include_sample:
            schema["properties"]["sample"] = SAMPLE_SCHEMA
            schema["required"].append("sample")
        criteria = self._criteria(who, request.testing_criteria)
        row = EvalRow(
            id=f"eval_{uuid.uuid4().hex}",
            organization_id=org_id,
            name=request.name or "",
            data_source_config={"type": "custom", "schema": schema},
            testing_criteria=criteria,
            metadata_=_metadata(request.metadata),
            created_at=int(time.time()),
        )
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return eval_object(row)

    def _criteria(self, who: Caller, criteria: list[Any]) -> list[dict[str, Any]]:
        """Each criterion is a grader `openft.graders.validate` accepts (a 400 naming the field otherwise),
        with a unique name (the run's per-criterion results are named by it), a usable pass threshold, and
        judge models (score_model, label_model) the caller may use."""
        if not criteria:
            raise InvalidRequest("testing_criteria must hold at least one grader.", param="testing_criteria")
        if len(criteria) > MAX_CRITERIA:
            raise InvalidRequest(f"An eval may have at most {MAX_CRITERIA} testing criteria.", param="testing_criteria")
        names: set[str] = set()
        for i, criterion in enumerate(criteria):
            param = f"testing_criteria[{i}]"
            try:
                validate(criterion, embed=self._embed, param=param)
            except GraderInvalid as exc:
                raise InvalidRequest(exc.message, param=exc.param) from None
            threshold = criterion.get("pass_threshold")
            if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
                raise InvalidRequest("pass_threshold must be a number.", param=f"{param}.pass_threshold")
            if criterion["type"] == "text_similarity" and threshold is None:
                raise InvalidRequest(
                    "A text_similarity criterion needs a pass_threshold.", param=f"{param}.pass_threshold"
                )
            if criterion["name"] in names:
                raise InvalidRequest(
                    f"Two testing criteria are named {criterion['name']!r}; names must be unique.",
                    param=f"{param}.name",
                )
            names.add(criterion["name"])
            resolve_judges(self._models, who, criterion, param, load=False)
        return [dict(c) for c in criteria]

    def retrieve(self, org_id: str, eval_id: str) -> Eval:
        with self._reads.begin() as session:
            return eval_object(self._eval(session, org_id, eval_id))

    @staticmethod
    def _eval(session: Session, org_id: str, eval_id: str) -> EvalRow:
        row = eval_repo.get_eval(session, org_id, eval_id)
        if row is None:
            raise NotFound(f"No such eval: {eval_id}", param="eval_id")
        return row

    def list(self, org_id: str, *, after: str | None, limit: int, order: str, order_by: str) -> EvalList:
        _limit(limit)
        ascending = _ascending(order)
        if order_by not in ("created_at", "updated_at"):
            raise InvalidRequest("order_by must be 'created_at' or 'updated_at'.", param="order_by")
        with self._reads.begin() as session:
            rows, more = eval_repo.list_evals(session, org_id, after=after, limit=limit, ascending=ascending)
            data = [eval_object(r) for r in rows]
        return EvalList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    def update(self, org_id: str, eval_id: str, request: UpdateEvalRequest) -> Eval:
        with self._sessions.begin() as session:
            row = self._eval(session, org_id, eval_id)
            if request.name is not None:
                row.name = request.name
            if request.metadata is not None:
                row.metadata_ = _metadata(request.metadata)
            session.flush()
            return eval_object(row)

    def delete(self, org_id: str, eval_id: str) -> DeleteEvalResponse:
        with self._sessions.begin() as session:
            if not eval_repo.delete_eval(session, org_id, eval_id):
                raise NotFound(f"No such eval: {eval_id}", param="eval_id")
        return DeleteEvalResponse(eval_id=eval_id)

    # runs --------------------------------------------------------------------------------------------
    def create_run(
        self, who: Caller, org_id: str, eval_id: str, request: CreateEvalRunRequest, *, base_url: str
    ) -> EvalRun:
        """Check the run completely (a 400 naming the field), then queue it for a worker."""
        with self._reads.begin() as session:
            parent = self._eval(session, org_id, eval_id)
            item_schema = parent.data_source_config["schema"]["properties"]["item"]
            criteria = list(parent.testing_criteria)
        source, model = self._data_source(who, org_id, request.data_source, item_schema)
        run_id = f"evalrun_{uuid.uuid4().hex}"
        row = EvalRunRow(
            id=run_id,
            eval_id=eval_id,
            organization_id=org_id,
            name=request.name or (f"{model} run" if model else "jsonl run"),
            status="queued",
            model=model,
            data_source=source,
            metadata_=_metadata(request.metadata),
            report_url=f"{base_url.rstrip('/')}/v1/evals/{eval_id}/runs/{run_id}",
            error=None,
            result_counts={"total": 0, "errored": 0, "failed": 0, "passed": 0},
            per_testing_criteria_results=[
                {"testing_criteria": str(c.get("name", "")), "passed": 0, "failed": 0} for c in criteria
            ],
            per_model_usage={},
            created_at=int(time.time()),
            attempt=0,
        )
        with self._sessions.begin() as session:
            self._eval(session, org_id, eval_id)  # not deleted meanwhile
            session.add(row)
            session.flush()
            run = run_object(row)
        self._notify()
        return run

    def _data_source(
        self, who: Caller, org_id: str, data_source: dict[str, Any], item_schema: dict[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        kind = data_source.get("type")
        if kind not in ("jsonl", "completions"):
            if kind == "responses":
                message = "data_source type 'responses' is not supported; use 'completions' or 'jsonl'."
            else:
                message = "data_source.type must be 'jsonl' or 'completions'."
            raise InvalidRequest(message, param="data_source.type")
        model = None
        if kind == "completions":
            model = data_source.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest("A completions run needs a model.", param="data_source.model")
            try:
                self._models.resolve(who, model)
            except OpenFTError as exc:
                raise InvalidRequest(exc.message, param="data_source.model") from None
            check_template(data_source.get("input_messages"), "data_source.input_messages")
            self._sampling_params(data_source.get("sampling_params"))
        source = data_source.get("source")
        if not isinstance(source, dict):
            raise InvalidRequest("data_source.source is required.", param="data_source.source")
        items = self._items(org_id, source)
        check_items(
            items,
            item_schema,
            "data_source.source." + ("id" if source["type"] == "file_id" else "content"),
            from_file=source["type"] == "file_id",
        )
        return dict(data_source), model

    @staticmethod
    def _sampling_params(params: Any) -> None:
        if params is None:
            return
        if not isinstance(params, dict):
            raise InvalidRequest("sampling_params must be an object.", param="data_source.sampling_params")
        for key in params:
            if key not in SAMPLING_PARAMS:
                raise InvalidRequest(
                    f"sampling_params.{key} is not supported; openft samples with {', '.join(SAMPLING_PARAMS)}.",
                    param=f"data_source.sampling_params.{key}",
                )
        body = {"model": "m", "messages": [{"role": "user", "content": ""}], **params}
        try:
            ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first.get("loc") else ""
            raise InvalidRequest(
                f"Invalid sampling parameter: {first.get('msg', 'invalid value')}.",
                param=f"data_source.sampling_params.{name}"
                if name in SAMPLING_PARAMS
                else "data_source.sampling_params",
            ) from None

    def _items(self, org_id: str, source: dict[str, Any]) -> builtins.list[RunItem]:
        kind = source.get("type")
        if kind == "file_content":
            return parse_content(source.get("content"), "data_source.source.content")
        if kind == "stored_completions":
            raise InvalidRequest(
                "source type 'stored_completions' is not supported: openft stores no completions.",
                param="data_source.source.type",
            )
        if kind != "file_id":
            raise InvalidRequest(
                "data_source.source.type must be 'file_content' or 'file_id'.", param="data_source.source.type"
            )
        file_id = source.get("id")
        if not isinstance(file_id, str):
            raise InvalidRequest("data_source.source.id must be a file id.", param="data_source.source.id")
        with self._reads.begin() as session:
            file = repo.get_file(session, org_id, file_id)
        if file is None:
            raise NotFound(f"No such File object: {file_id}", param="data_source.source.id")
        if file.bytes > MAX_FILE_BYTES:
            raise InvalidRequest(
                f"The file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, the limit for an eval run.",
                param="data_source.source.id",
            )
        data = b"".join(self._files.content(org_id, file_id).chunks)
        return parse_jsonl(data, "data_source.source.id")

    def _run(self, session: Session, org_id: str, eval_id: str, run_id: str) -> EvalRunRow:
        row = eval_repo.get_run(session, org_id, eval_id, run_id)
        if row is None:
            raise NotFound(f"No such run: {run_id}", param="run_id")
        return row

    def retrieve_run(self, org_id: str, eval_id: str, run_id: str) -> EvalRun:
        with self._reads.begin() as session:
            return run_object(self._run(session, org_id, eval_id, run_id))

    def list_runs(
        self, org_id: str, eval_id: str, *, after: str | None, limit: int, order: str, status: str | None
    ) -> EvalRunList:
        _limit(limit)
        ascending = _ascending(order)
        if status is not None and status not in (*eval_repo.WORKING_STATUSES, *eval_repo.FINAL_STATUSES):
            raise InvalidRequest("status must be queued, in_progress, completed, canceled or failed.", param="status")
        with self._reads.begin() as session:
            self._eval(session, org_id, eval_id)
            rows, more = eval_repo.list_runs(
                session, org_id, eval_id, status=status, after=after, limit=limit, ascending=ascending
            )
            data = [run_object(r) for r in rows]
        return EvalRunList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    def cancel_run(self, org_id: str, eval_id: str, run_id: str) -> EvalRun:
        """`canceled` at once (OpenAI's cancel answers the run cancelled); the worker holding it stops taking
        items at its next lease renewal, and the items graded so far stay."""
        with self._sessions.begin() as session:
            row = self._run(session, org_id, eval_id, run_id)
            if row.status in eval_repo.WORKING_STATUSES:
                row.status = "canceled"
            session.flush()
            run = run_object(row)
        self._notify()
        return run

    def delete_run(self, org_id: str, eval_id: str, run_id: str) -> DeleteEvalRunResponse:
        with self._sessions.begin() as session:
            self._run(session, org_id, eval_id, run_id)
            eval_repo.delete_run(session, run_id)
        return DeleteEvalRunResponse(run_id=run_id)

    # output items ------------------------------------------------------------------------------------
    def list_items(
        self,
        org_id: str,
        eval_id: str,
        run_id: str,
        *,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
    ) -> EvalRunOutputItemList:
        _limit(limit)
        ascending = _ascending(order)
        if status is not None and status not in ("pass", "fail", "error"):
            raise InvalidRequest("status must be 'pass' or 'fail' (or openft's 'error').", param="status")
        with self._reads.begin() as session:
            self._run(session, org_id, eval_id, run_id)
            rows, more = eval_repo.list_items(
                session, run_id, status=status, after=after, limit=limit, ascending=ascending
            )
            data = [item_object(r, eval_id) for r in rows]
        return EvalRunOutputItemList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    def retrieve_item(self, org_id: str, eval_id: str, run_id: str, item_id: str) -> EvalRunOutputItem:
        with self._reads.begin() as session:
            self._run(session, org_id, eval_id, run_id)
            row = eval_repo.get_item(session, run_id, item_id)
            if row is None:
                raise NotFound(f"No such output item: {item_id}", param="output_item_id")
            return item_object(row, eval_id)


class EvalItemSampler(WorkAnswerer):
    """Samples and grades one item of a run in-process (jobs/eval_runs.py `EvalSampler`; built on a worker's
    first run, services/work_answerer.py): the model through the inference service, the criteria through the
    Graders API's service (its judge included), both as the run's organization."""

    def __init__(self, inference: InferenceService, models: ModelService, graders: GraderService):
        super().__init__(inference, models)
        self._graders = graders

    async def sample(self, org_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> Sampled:
        request = ChatCompletionRequest.model_validate({"model": model, "messages": messages, **params})
        completion = await self._inference.chat(Caller.of(org_id), request)
        choice = completion.choices[0]
        return Sampled(
            text=choice.message.content or "",
            finish_reason=str(choice.finish_reason or ""),
            model=completion.model,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
        )

    async def grade(
        self, org_id: str, criterion: dict[str, Any], sample: dict[str, Any], item: dict[str, Any]
    ) -> Graded:
        grader = {k: v for k, v in criterion.items() if k != "pass_threshold"}
        try:
            request = RunGraderRequest(grader=grader, model_sample=str(sample.get("output_text", "")), item=item)
            response = await self._graders.run(Caller.of(org_id), request)
        except (RateLimited, ServiceUnavailable) as exc:
            return Graded(0.0, f"the judge model was busy: {exc.message}")
        except OpenFTError as exc:
            return Graded(0.0, exc.message)
        except ValidationError as exc:
            return Graded(0.0, f"the sample cannot be graded: {exc.errors()[0].get('msg')}")
        errors = response.metadata.errors.model_dump()
        failed = [flag for flag, value in errors.items() if value is True]
        usage = {
            model: (u.prompt_tokens, u.completion_tokens)
            for model, u in response.model_grader_token_usage_per_model.items()
        }
        if failed:
            detail = next((v for k, v in errors.items() if isinstance(v, str) and v), None)
            return Graded(0.0, ", ".join(failed) + (f": {detail}" if detail else ""), usage)
        return Graded(float(response.reward), None, usage)
