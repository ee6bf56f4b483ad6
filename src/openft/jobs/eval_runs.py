"""Carrying out eval runs in the worker (the Evals API, services/evals.py), durable like batches.

A run is leased work (jobs/leased_work.py, the claim, the lease and the fencing shared with batches): a
worker holds at most one at a time (`EvalRunRunner.turn`), claimed with db/evals.py `claim_run`, and a thread
of its own then reads the run's items, samples the model for each (a `completions` run; the items of a
`jsonl` run bring their own sample), grades each sample with every testing criterion, and records the output
item. Several items are in flight at once, so their samples share the engine's continuous batch. The lease
is renewed while it works; each renewal also reads whether the run was cancelled (or deleted).

Each graded item is recorded (an `eval_run_items` row, under the fencing check, unique per item, its counts
added to the run's in the same transaction) before it counts, so a worker killed mid-run loses no graded
item: whoever claims the run after its lease expired grades only the items with no record.

A grader that fails on one sample (a python grader raises, a judge's answer holds no score) scores that
criterion 0 and the item counts as `errored`; so does an item whose sampling failed. The run itself fails
only when it cannot start (its file is gone, its model is no longer usable).

`jobs` may not import the inference engine: sampling and grading go through `EvalSampler`, which the
service layer provides (services/evals.py `EvalItemSampler`), built only when a run is first claimed.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from referencing import Registry
from referencing.exceptions import Unresolvable as ReferencingError
from sqlalchemy.orm import Session, sessionmaker

from openft.db import evals as eval_repo
from openft.db.engine import read_only_sessions
from openft.db.tables import EvalRunItemRow
from openft.errors import InvalidRequest, OpenFTError
from openft.graders import SampleError, templates
from openft.jobs.leased_work import Claim, LeasedRunner, when_room
from openft.protocol.evals import DEFAULT_MAX_COMPLETION_TOKENS, MAX_ITEM_BYTES, MAX_RUN_ITEMS

SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "seed": 42}
"""OpenAI's defaults for a completions run's sampling params (CreateEvalCompletionsRunDataSource)."""


# items -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunItem:
    index: int
    item: dict[str, Any]
    sample: dict[str, Any] | None


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def _entry(entry: Any, index: int, param: str) -> RunItem:
    if not isinstance(entry, dict) or not isinstance(entry.get("item"), dict):
        raise InvalidRequest('Each entry must be an object with an "item" object.', param=f"{param}.item")
    sample = entry.get("sample")
    if sample is not None and not isinstance(sample, dict):
        raise InvalidRequest('"sample" must be an object.', param=f"{param}.sample")
    if _json_size(entry) > MAX_ITEM_BYTES:
        raise InvalidRequest(f"An item may be at most {MAX_ITEM_BYTES // 1024} KiB as JSON.", param=param)
    return RunItem(index, entry["item"], sample)


def parse_content(content: Any, param: str) -> list[RunItem]:
    """The items of a `file_content` source (`[{"item": {...}, "sample": {...}}, ...]`)."""
    if not isinstance(content, list) or not content:
        raise InvalidRequest("content must be a non-empty list of items.", param=param)
    if len(content) > MAX_RUN_ITEMS:
        raise InvalidRequest(f"A run may have at most {MAX_RUN_ITEMS} items.", param=param)
    return [_entry(entry, i, f"{param}[{i}]") for i, entry in enumerate(content)]


def parse_jsonl(data: bytes, param: str) -> list[RunItem]:
    """The items of a `file_id` source: one `{"item": {...}, "sample": {...}}` object a line."""
    items: list[RunItem] = []
    for number, text in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        if len(items) >= MAX_RUN_ITEMS:
            raise InvalidRequest(f"A run may have at most {MAX_RUN_ITEMS} items; the file has more.", param=param)
        try:
            entry = json.loads(text)
        except ValueError:
            raise InvalidRequest(f"Line {number} of the file is not valid JSON.", param=param) from None
        try:
            items.append(_entry(entry, len(items), param))
        except InvalidRequest as exc:
            raise InvalidRequest(f"Line {number} of the file: {exc.message}", param=param) from None
    if not items:
        raise InvalidRequest("The file has no items.", param=param)
    return items


def item_validator(item_schema: dict[str, Any]) -> Any:
    """A validator for the eval's `item_schema` that never fetches a reference: the registry is empty, so
    only `#/...` references within the schema resolve (jsonschema's default would GET an `http://` `$ref`)."""
    return Draft202012Validator(item_schema, registry=Registry())


def check_item_schema(item_schema: Any, param: str) -> None:
    """A JSON schema (2020-12) whose references all point within itself."""
    if not isinstance(item_schema, dict):
        raise InvalidRequest("item_schema must be a JSON schema object.", param=param)
    try:
        Draft202012Validator.check_schema(item_schema)
    except SchemaError as exc:
        raise InvalidRequest(f"item_schema is not a valid JSON schema: {exc.message}", param=param) from None
    stack: list[Any] = [item_schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
                    raise InvalidRequest(
                        f"item_schema may only refer within itself ('#/...'), not to {value!r}.", param=param
                    )
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def check_items(items: list[RunItem], item_schema: dict[str, Any], param: str, *, from_file: bool) -> None:
    """Every item must match the eval's `item_schema`: the first that does not is a 400 naming it."""
    validator = item_validator(item_schema)
    for run_item in items:
        try:
            error = next(iter(validator.iter_errors(run_item.item)), None)
        except ReferencingError as exc:  # a `#/...` reference to nothing
            raise InvalidRequest(f"The eval's item_schema cannot be used: {exc}", param=param) from None
        if error is not None:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            place = f"item {run_item.index} of the file" if from_file else "this item"
            raise InvalidRequest(
                f"{place[0].upper()}{place[1:]} does not match the eval's item_schema at `item{where}`: "
                f"{error.message}",
                param=param if from_file else f"{param}[{run_item.index}].item",
            )


# completions runs ------------------------------------------------------------------------------------
def _text(content: Any, param: str) -> str:
    """A message's content as text: a string, an `input_text`/`output_text` part, or a list of them."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return str(content["text"])
    if isinstance(content, list):
        return "".join(_text(part, param) for part in content)
    raise InvalidRequest("content must be text (a string, or input_text / output_text parts).", param=param)


def check_template(input_messages: Any, param: str) -> None:
    """A completions run's `input_messages`: a `template` of messages whose `{{ item.x }}` tags can be looked
    up, or an `item_reference` to a list of messages in each item."""
    if not isinstance(input_messages, dict):
        raise InvalidRequest("input_messages must be an object.", param=param)
    kind = input_messages.get("type")
    if kind == "item_reference":
        path = input_messages.get("item_reference")
        parsed = templates.parse_path(path) if isinstance(path, str) else None
        if parsed is None or parsed[0] != "item":
            raise InvalidRequest('item_reference must name a value in the item, like "item.messages".', param=param)
        return
    if kind != "template":
        raise InvalidRequest("input_messages.type must be 'template' or 'item_reference'.", param=f"{param}.type")
    template = input_messages.get("template")
    if not isinstance(template, list) or not template:
        raise InvalidRequest("template must be a non-empty list of messages.", param=f"{param}.template")
    for i, message in enumerate(template):
        where = f"{param}.template[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest("Each message needs a role and content.", param=where)
        if message.get("role") not in ("system", "developer", "user", "assistant"):
            raise InvalidRequest("role must be system, developer, user or assistant.", param=f"{where}.role")
        text = _text(message.get("content"), f"{where}.content")
        try:
            templates.check(text, f"{where}.content")
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        if any(p is not None and p[0] == "sample" for p in map(templates.parse_path, _tags(text))):
            raise InvalidRequest("Input messages may only use the item namespace.", param=f"{where}.content")


_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def _tags(text: str) -> list[str]:
    return [m.group(1) for m in _TAG.finditer(text)]


def input_messages(input_messages: dict[str, Any], item: dict[str, Any]) -> list[dict[str, str]]:
    """The messages sent to the model for `item`; a tag absent from the item is a SampleError (the item
    counts as errored)."""
    if input_messages["type"] == "item_reference":
        path = templates.parse_path(input_messages["item_reference"])
        assert path is not None
        value = templates.lookup(path, {"item": item})
        if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in value
        ):
            raise SampleError("invalid_variable_error", f"`{input_messages['item_reference']}` is not a message list")
        try:
            return [{"role": m["role"], "content": _text(m.get("content", ""), "content")} for m in value]
        except InvalidRequest as exc:
            raise SampleError("invalid_variable_error", exc.message) from None
    return [
        {"role": m["role"], "content": templates.render(_text(m["content"], "content"), {}, item)}
        for m in input_messages["template"]
    ]


def sampling(params: dict[str, Any] | None) -> dict[str, Any]:
    """The sampling params a completions run uses, its defaults filled in (as its output items report them)."""
    given = params or {}
    return {
        "temperature": given.get("temperature", SAMPLING_DEFAULTS["temperature"]),
        "top_p": given.get("top_p", SAMPLING_DEFAULTS["top_p"]),
        "seed": given.get("seed", SAMPLING_DEFAULTS["seed"]),
        "max_completion_tokens": given.get("max_completion_tokens", DEFAULT_MAX_COMPLETION_TOKENS),
    }


# grading ---------------------------------------------------------------------------------------------
def passes(criterion: dict[str, Any], score: float) -> bool:
    """Whether a criterion's score passes: `pass_threshold` when the criterion has one (required for
    text_similarity, as OpenAI's); else string_check, label_model, python and multi pass at 1.0 and
    score_model at the top of its `range`."""
    threshold = criterion.get("pass_threshold")
    if isinstance(threshold, int | float):
        return score >= threshold
    if criterion.get("type") == "score_model":
        return score >= float(criterion.get("range", [0, 1])[1])
    return score >= 1.0


@dataclass
class Sampled:
    text: str
    finish_reason: str
    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Graded:
    score: float
    error: str | None = None
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Judge models' tokens: (prompt, completion) by model."""


class EvalSampler(Protocol):
    def model_problem(self, org_id: str, model: str) -> str | None:
        """Why the organization may not use `model` (None: it may)."""
        ...

    async def sample(self, org_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> Sampled:
        """The model's answer; raises RateLimited or ServiceUnavailable when the engine has no room now, and
        another OpenFTError when the request cannot be answered."""
        ...

    async def grade(
        self, org_id: str, criterion: dict[str, Any], sample: dict[str, Any], item: dict[str, Any]
    ) -> Graded:
        """One criterion's score for one sample; never raises for a sample it cannot grade."""
        ...


class RunFiles(Protocol):
    def snapshot(self, org_id: str, file_id: str, dest: Path) -> bool: ...


# the runner ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class _Claim(Claim):
    eval_id: str
    org_id: str
    data_source: dict[str, Any]
    criteria: list[dict[str, Any]]


class _Failed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class EvalRunRunner(LeasedRunner[_Claim, EvalSampler]):
    """One run at a time per worker, in a thread of its own (`turn` claims; `stop` lets it hand back)."""

    kind = "eval run"
    cancel_status = "canceled"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        files: RunFiles,
        sampler: Callable[[], EvalSampler],
        *,
        worker_id: str,
        lease_seconds: float,
        concurrency: int,
    ):
        super().__init__(sessions, sampler, worker_id=worker_id, lease_seconds=lease_seconds, concurrency=concurrency)
        self._reads = read_only_sessions(sessions)
        self._files = files

    def _claim(self) -> _Claim | None:
        with self._reads.begin() as session:  # most turns find nothing: no write lock for that
            if not eval_repo.has_claimable_run(session):
                return None
        with self._sessions.begin() as session:
            row = eval_repo.claim_run(session, worker_id=self._worker_id, lease_seconds=self._lease)
            if row is None:
                return None
            parent = eval_repo.get_eval(session, row.organization_id, row.eval_id)
            return _Claim(
                id=row.id,
                attempt=row.attempt,
                status=row.status,
                eval_id=row.eval_id,
                org_id=row.organization_id,
                data_source=dict(row.data_source),
                criteria=list(parent.testing_criteria) if parent is not None else [],
            )

    def _renew(self, session: Session, claim: _Claim) -> str | None:
        return eval_repo.renew_lease(session, claim.id, claim.attempt, self._lease)

    async def _fail(self, claim: _Claim, code: str, message: str) -> None:
        await self._db(
            lambda s: eval_repo.set_fenced(
                s,
                claim.id,
                claim.attempt,
                only_status=eval_repo.WORKING_STATUSES,
                status="failed",
                error={"code": code, "message": message},
                worker_id=None,
                lease_expires_at=None,
            )
        )

    async def _work(self, claim: _Claim) -> None:
        sampler = await self._tool()
        try:
            items = await asyncio.to_thread(self._read_items, claim)
            model = claim.data_source.get("model")
            if claim.data_source.get("type") == "completions" and isinstance(model, str):
                problem = await asyncio.to_thread(sampler.model_problem, claim.org_id, model)
                if problem is not None:
                    raise _Failed("model_not_found", problem)
        except _Failed as failed:
            await self._fail(claim, failed.code, failed.message)
            return
        if claim.status == "queued":
            started = await self._db(
                lambda s: eval_repo.set_fenced(
                    s, claim.id, claim.attempt, only_status=("queued",), status="in_progress"
                )
            )
            if not started:
                return
            claim.status = "in_progress"
        await self._grade_all(sampler, claim, items)
        flags = claim.flags
        if flags.lost:
            return
        if flags.cancelled or flags.stopping:  # a cancelled run stays `canceled` with what was graded
            await self._db(lambda s: eval_repo.release(s, claim.id, claim.attempt))
            return
        await self._db(
            lambda s: eval_repo.set_fenced(
                s,
                claim.id,
                claim.attempt,
                only_status=("in_progress",),
                status="completed",
                worker_id=None,
                lease_expires_at=None,
            )
        )

    def _read_items(self, claim: _Claim) -> list[RunItem]:
        source = claim.data_source.get("source") or {}
        try:
            if source.get("type") == "file_content":
                return parse_content(source.get("content"), "data_source.source.content")
            with tempfile.TemporaryDirectory(prefix="openft-eval-") as folder:
                path = Path(folder) / "items.jsonl"
                if not self._files.snapshot(claim.org_id, str(source.get("id")), path):
                    raise _Failed("file_not_found", f"The data source file {source.get('id')} was deleted.")
                return parse_jsonl(path.read_bytes(), "data_source.source.id")
        except InvalidRequest as exc:
            raise _Failed("invalid_data_source", exc.message) from None

    async def _grade_all(self, sampler: EvalSampler, claim: _Claim, items: list[RunItem]) -> None:
        """Grade the items with no record yet (jobs/leased_work.py `_work_through`), until the run halts."""
        done = await self._db(lambda s: eval_repo.graded_indexes(s, claim.id))

        def record(session: Session, rows: list[EvalRunItemRow]) -> bool:
            return eval_repo.record_items(session, claim.id, claim.attempt, rows)

        pending = [item for item in items if item.index not in done]
        await self._work_through(claim, pending, lambda run_item: self._item(sampler, claim, run_item), record)

    async def _item(self, sampler: EvalSampler, claim: _Claim, run_item: RunItem) -> EvalRunItemRow | None:
        """Sample (a completions run) and grade one item; None when the run was halted meanwhile."""
        source = claim.data_source
        usage: dict[str, dict[str, int]] = {}
        error: dict[str, str] | None = None
        if source.get("type") == "completions":
            params = sampling(source.get("sampling_params"))
            model = str(source["model"])
            sample: dict[str, Any] = {
                "input": [],
                "output": [],
                "finish_reason": "",
                "model": model,
                "usage": _usage(0, 0),
                "error": None,
                **params,
            }
            sampled: Sampled | None = None
            try:
                sample["input"] = input_messages(source["input_messages"], run_item.item)
                sampled = await when_room(
                    claim.flags, lambda: sampler.sample(claim.org_id, model, sample["input"], params)
                )
                if sampled is None:
                    return None
            except SampleError as exc:
                error = {"code": "invalid_item", "message": exc.message}
            except OpenFTError as exc:
                error = {"code": exc.code or "sampling_error", "message": exc.message}
            if sampled is not None:
                sample.update(
                    output=[{"role": "assistant", "content": sampled.text}],
                    finish_reason=sampled.finish_reason,
                    model=sampled.model,
                    usage=_usage(sampled.prompt_tokens, sampled.completion_tokens),
                )
                _add_usage(usage, model, sampled.prompt_tokens, sampled.completion_tokens)
            sample["error"] = error
            output_text = sampled.text if sampled is not None else ""
        else:
            given = run_item.sample or {}
            output_text = str(given["output_text"]) if isinstance(given.get("output_text"), str) else ""
            sample = {
                "input": [],
                "output": [{"role": "assistant", "content": output_text}] if run_item.sample else [],
                "finish_reason": "",
                "model": "",
                "usage": _usage(0, 0),
                "error": None,
                "temperature": None,
                "max_completion_tokens": None,
                "top_p": None,
                "seed": None,
            }
        results: list[dict[str, Any]] = []
        errored = error is not None
        for criterion in claim.criteria:
            name, kind = str(criterion.get("name", "")), str(criterion.get("type", ""))
            if error is not None:
                results.append({"name": name, "type": kind, "score": 0.0, "passed": False, "sample": None})
                continue
            grade = await sampler.grade(claim.org_id, criterion, {"output_text": output_text}, run_item.item)
            for judge, (prompt, completion) in grade.usage.items():
                _add_usage(usage, judge, prompt, completion)
            errored = errored or grade.error is not None
            results.append(
                {
                    "name": name,
                    "type": kind,
                    "score": grade.score,
                    "passed": grade.error is None and passes(criterion, grade.score),
                    "sample": None if grade.error is None else {"error": grade.error},
                }
            )
        status = "error" if errored else "pass" if all(r["passed"] for r in results) else "fail"
        record = {
            "datasource_item": run_item.item,
            "results": results,
            "sample": sample,
            "usage_by_model": usage,
        }
        return EvalRunItemRow(
            id=f"outputitem_{uuid.uuid4().hex}",
            run_id=claim.id,
            item_index=run_item.index,
            status=status,
            record=record,
            created_at=int(time.time()),
        )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens": prompt,
        "cached_tokens": 0,
    }


def _add_usage(usage: dict[str, dict[str, int]], model: str, prompt: int, completion: int) -> None:
    into = usage.setdefault(
        model, {"invocation_count": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    )
    into["invocation_count"] += 1
    into["prompt_tokens"] += prompt
    into["completion_tokens"] += completion
    into["total_tokens"] += prompt + completion
