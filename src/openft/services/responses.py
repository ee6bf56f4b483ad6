"""The Responses API (`POST /responses`, stored responses), served by the chat path.

A Responses request is translated into a `ChatCompletionRequest` (input items → chat messages, function
tools → chat tools, `text.format` → `response_format`, `max_output_tokens` → `max_completion_tokens`) and
handed to `InferenceService.chat` / `chat_stream`: one generation engine, one admission line, one set of
checks. The chat answer (or its chunks) is then rewritten as a `Response` (or as the Responses stream's
typed events).

Stored responses (`store`, default true) keep the response, its own input items, and its whole conversation
before its output (predecessors' items and outputs, then its input), so `previous_response_id` continues a
conversation without walking a chain. Everything is per organization: another organization's response is the
same 404 as one that never existed.

Background responses (`background: true`) are stored `queued` and answered by a task of this server
(services/background_responses.py says how they end when that server stops or dies).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import responses as db
from openft.db.tables import ResponseRow
from openft.errors import InvalidRequest, NotFound
from openft.protocol.chat import ChatCompletion, ChatCompletionRequest
from openft.protocol.responses import (
    CreateResponseRequest,
    DeletedResponse,
    IncompleteDetails,
    ResponseError,
    ResponseItemList,
    ResponseObject,
    ResponseUsage,
)
from openft.services.admission import Disconnected
from openft.services.background_responses import STOPPED, BackgroundResponses
from openft.services.inference import DONE, InferenceService
from openft.services.models import Caller

MAX_LIST_LIMIT = 100
_TEXT_PARTS = {"input_text", "output_text", "text"}


def new_id(prefix: str) -> str:
    """`resp_…`, `msg_…`, `fc_…`: OpenAI's item id shapes."""
    return f"{prefix}_{ids.random_token(32)}"


# input items → normalized items → chat messages ------------------------------------------------------
def _text_of(content: Any, param: str) -> str:
    """Text of a message's content: a string, or parts of which only text parts are served."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("A message's content must be a string or a list of content parts.", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"Content part type {kind!r} is not supported by openft; only input_text and output_text are.",
                param=f"{param}[{j}].type",
            )
        texts.append(part["text"])
    return "".join(texts)


def _normalize(raw: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The request's input as stored input items (each with an id and a type), checked item by item."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    items: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        kind = item.get("type", "message")
        param = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(
                    "A message's role must be user, system, developer or assistant.", param=f"{param}.role"
                )
            text = _text_of(item.get("content"), f"{param}.content")
            part = "output_text" if role == "assistant" else "input_text"
            content: dict[str, Any] = {"type": part, "text": text}
            if part == "output_text":
                content.update(annotations=[], logprobs=[])
            items.append(
                {
                    "id": item.get("id") or new_id("msg"),
                    "type": "message",
                    "role": role,
                    "status": "completed",
                    "content": [content],
                }
            )
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise InvalidRequest(f"A function_call item needs a string {key}.", param=f"{param}.{key}")
            items.append(
                {
                    "id": item.get("id") or new_id("fc"),
                    "type": "function_call",
                    "call_id": item["call_id"],
                    "name": item["name"],
                    "arguments": item["arguments"],
                    "status": "completed",
                }
            )
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest("A function_call_output item needs its call_id.", param=f"{param}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, f"{param}.output")
            items.append(
                {
                    "id": item.get("id") or new_id("fco"),
                    "type": "function_call_output",
                    "call_id": item["call_id"],
                    "output": text,
                    "status": "completed",
                }
            )
        else:
            raise InvalidRequest(
                f"Input item type {kind!r} is not supported by openft; use message, function_call or "
                "function_call_output items.",
                param=f"{param}.type",
            )
    return items


def _messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for the conversation: instructions first, consecutive function calls merged into one
    assistant message with several tool calls (as chat templates expect them)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if item["type"] == "message":
            text = "".join(part["text"] for part in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif item["type"] == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequest(
                f"Tool type {kind!r} is not supported by openft: only function tools are (openft runs no "
                "built-in tools such as web_search, file_search or code_interpreter).",
                param=f"tools[{i}].type",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidRequest("A function tool needs a name.", param=f"tools[{i}].name")
        function = {
            key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None
        }
        out.append({"type": "function", "function": function})
    return out


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A (checked) function tool as a response echoes it: `parameters` and `strict` always present."""
    echoed = {
        "type": "function",
        "name": tool["name"],
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }
    if tool.get("description") is not None:
        echoed["description"] = tool["description"]
    return echoed


def _tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or isinstance(choice, str):
        if choice not in (None, "none", "auto", "required"):
            raise InvalidRequest("tool_choice must be none, auto, required or a function.", param="tool_choice")
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise InvalidRequest(
            "tool_choice must be none, auto, required or {type: function, name}; openft has no built-in tools.",
            param="tool_choice",
        )
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("text.format.type must be text, json_object or json_schema.", param="text.format.type")


# chat answer → Response -------------------------------------------------------------------------------
def _output_items(completion: ChatCompletion) -> list[dict[str, Any]]:
    message = completion.choices[0].message
    items: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        items.append(_message_item(new_id("msg"), message.content or "", "completed"))
    for call in message.tool_calls or []:
        items.append(_call_item(new_id("fc"), call.id, call.function.name, call.function.arguments, "completed"))
    return items


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = (
        [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    )
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=prompt_tokens, output_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


class _Prepared:
    """A Responses request read and checked: the chat request that serves it, and what the answer echoes."""

    def __init__(
        self,
        request: CreateResponseRequest,
        chat: ChatCompletionRequest,
        context: list[dict[str, Any]],
        input_items: list[dict[str, Any]],
    ):
        self.request = request
        self.chat = chat
        self.input_items = input_items
        self.context = context
        self.id = new_id("resp")
        self.created_at = int(time.time())

    def response(
        self,
        status: Any,
        output: list[dict[str, Any]],
        usage: ResponseUsage | None = None,
        *,
        incomplete: bool = False,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        request = self.request
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if incomplete else None,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            metadata=request.metadata or {},
            model=request.model,
            output=output,
            background=request.background is True,
            parallel_tool_calls=True if request.parallel_tool_calls is None else request.parallel_tool_calls,
            previous_response_id=request.previous_response_id,
            store=request.store is not False,
            temperature=1.0 if request.temperature is None else request.temperature,
            text={"format": (request.text or {}).get("format") or {"type": "text"}},
            tool_choice=request.tool_choice if request.tool_choice is not None else "auto",
            tools=[_echo_tool(tool) for tool in request.tools or []],
            top_p=1.0 if request.top_p is None else request.top_p,
            usage=usage,
            user=request.user,
        )


class ResponseService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        inference: InferenceService,
        background: BackgroundResponses | None = None,
    ):
        """`background` runs `background: true` requests; without it (a batch worker's answerer) they are a 400."""
        self._sessions = sessions
        self._inference = inference
        self._background = background

    # create -------------------------------------------------------------------------------------------
    def _check_background(self, request: CreateResponseRequest) -> None:
        if not request.background:
            return
        if self._background is None:
            raise InvalidRequest("background responses are not available here.", param="background")
        if request.store is False:
            raise InvalidRequest("background responses must be stored: remove store=false.", param="store")
        if request.stream:
            raise InvalidRequest(
                "openft does not stream background responses: send stream=false and poll GET /responses/{id}.",
                param="stream",
            )

    def _prepare(self, org_id: str, request: CreateResponseRequest, *, stream: bool) -> _Prepared:
        self._check_background(request)
        previous: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            with self._sessions() as session:
                row = db.get_response(session, org_id, request.previous_response_id)
                if row is None:
                    raise NotFound(
                        f"Previous response with id '{request.previous_response_id}' not found.",
                        param="previous_response_id",
                    )
                if row.background_status in db.OPEN:
                    raise InvalidRequest(
                        f"Previous response '{request.previous_response_id}' is still {row.background_status}.",
                        param="previous_response_id",
                    )
                previous = list(row.context_items) + [
                    item for item in row.response.get("output", []) if item.get("type") in ("message", "function_call")
                ]
        own = _normalize(request.input)
        items = previous + own
        if not items:
            raise InvalidRequest("input must give at least one item.", param="input")
        body: dict[str, Any] = {
            "model": request.model,
            "messages": _messages(request.instructions, items),
            "max_completion_tokens": request.max_output_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "tools": _tools(request.tools),
            "tool_choice": _tool_choice(request.tool_choice),
            "parallel_tool_calls": request.parallel_tool_calls,
            "response_format": _response_format(request.text),
            "user": request.user,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        try:
            chat = ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
        except ValueError as exc:
            raise InvalidRequest(f"The request cannot be served: {exc}", param="input") from exc
        return _Prepared(request, chat, items, own)

    async def create(
        self, who: Caller, org_id: str, request: CreateResponseRequest, disconnected: Disconnected | None = None
    ) -> ResponseObject:
        prepared = await anyio.to_thread.run_sync(functools.partial(self._prepare, org_id, request, stream=False))
        if request.background:
            return await self._start_background(who, org_id, prepared)
        response = await self._answer(who, prepared, disconnected)
        await anyio.to_thread.run_sync(self.store, org_id, prepared, response)
        return response

    async def _answer(self, who: Caller, prepared: _Prepared, disconnected: Disconnected | None) -> ResponseObject:
        completion = await self._inference.chat(who, prepared.chat, disconnected)
        usage = completion.usage
        incomplete = completion.choices[0].finish_reason == "length"
        return prepared.response(
            "incomplete" if incomplete else "completed",
            _output_items(completion),
            _usage(usage.prompt_tokens, usage.completion_tokens),
            incomplete=incomplete,
        )

    async def _start_background(self, who: Caller, org_id: str, prepared: _Prepared) -> ResponseObject:
        """Check what a foreground request would refuse at once (options, the model), store the response as
        `queued`, and hand it to this server's runner."""
        assert self._background is not None
        runner = self._background
        await self._inference.check_chat(who, prepared.chat)

        def snapshot(status: str, error: tuple[str, str] | None = None) -> dict[str, Any]:
            failure = ResponseError(code=error[0], message=error[1]) if error else None
            return prepared.response(status, [], error=failure).model_dump(mode="json")

        async def answer(stop: Disconnected) -> dict[str, Any]:
            return (await self._answer(who, prepared, stop)).model_dump(mode="json")

        queued = prepared.response("queued", [])
        await anyio.to_thread.run_sync(
            functools.partial(self.store, org_id, prepared, queued, lease_expires_at=runner.lease_until())
        )
        runner.start(org_id, queued.id, answer, snapshot)
        return queued

    async def create_stream(
        self, who: Caller, org_id: str, request: CreateResponseRequest, disconnected: Disconnected | None = None
    ) -> AsyncIterator[dict[str, str]]:
        """Server-sent events (`event` + `data`) in the order OpenAI sends them. The request is admitted (and
        any 4xx raised) before this returns, like `chat_stream`."""
        prepared = await anyio.to_thread.run_sync(functools.partial(self._prepare, org_id, request, stream=True))
        chunks = await self._inference.chat_stream(who, prepared.chat, disconnected)
        return _ResponseEvents(self, org_id, prepared).events(chunks)

    def store(
        self, org_id: str, prepared: _Prepared, response: ResponseObject, *, lease_expires_at: int | None = None
    ) -> None:
        """Keep the response (unless `store: false`); blocking, so callers on the event loop use a thread."""
        if prepared.request.store is False:
            return
        with self._sessions.begin() as session:
            session.add(
                ResponseRow(
                    id=response.id,
                    organization_id=org_id,
                    created_at=response.created_at,
                    response=response.model_dump(mode="json"),
                    input_items=prepared.input_items,
                    context_items=prepared.context,
                    background_status=response.status if response.background else None,
                    lease_expires_at=lease_expires_at,
                )
            )

    # stored responses ---------------------------------------------------------------------------------
    def _row(self, session: Session, org_id: str, response_id: str) -> ResponseRow:
        """The stored response; a background one whose runner's lease ran out (its server died) is failed first,
        so nobody polls a response that nobody runs."""
        row = db.get_response(session, org_id, response_id)
        if row is None:
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        if row.background_status in db.OPEN and (row.lease_expires_at or 0) < time.time():
            failed = {**row.response, "status": "failed", "error": {"code": "server_error", "message": STOPPED}}
            if db.update_background(session, org_id, response_id, failed, only_from=db.OPEN):
                session.refresh(row)
        return row

    def retrieve(self, org_id: str, response_id: str) -> ResponseObject:
        with self._sessions.begin() as session:
            return ResponseObject.model_validate(self._row(session, org_id, response_id).response)

    def delete(self, org_id: str, response_id: str) -> DeletedResponse:
        with self._sessions.begin() as session:
            if not db.delete_response(session, org_id, response_id):
                raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        if self._background is not None:
            self._background.stop_local(response_id)  # a running one stops (on another server: at its heartbeat)
        return DeletedResponse(id=response_id)

    def cancel(self, org_id: str, response_id: str) -> ResponseObject:
        """Cancel a background response that has not ended; cancelling a cancelled one returns it again."""
        with self._sessions.begin() as session:
            row = self._row(session, org_id, response_id)
            status = row.background_status
            if status is None:
                raise InvalidRequest("Cannot cancel a synchronous response.", param="response_id")
            if status in db.OPEN:
                cancelled = {**row.response, "status": "cancelled"}
                if db.update_background(session, org_id, response_id, cancelled, only_from=db.OPEN):
                    session.refresh(row)
            elif status != "cancelled":
                raise InvalidRequest(f"Cannot cancel a response that is {status}.", param="response_id")
            response = ResponseObject.model_validate(row.response)
        if response.status != "cancelled":  # it ended between the read and the write: say how
            raise InvalidRequest(f"Cannot cancel a response that is {response.status}.", param="response_id")
        if self._background is not None:
            self._background.stop_local(response_id)
        return response

    async def stop_background(self) -> None:
        """On a graceful stop: fail this server's running background responses (they are not resumed)."""
        if self._background is not None:
            await self._background.stop_all()

    def input_items(
        self, org_id: str, response_id: str, *, limit: int = 20, order: str = "desc", after: str | None = None
    ) -> ResponseItemList:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}.", param="limit")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be asc or desc.", param="order")
        with self._sessions.begin() as session:
            items = list(self._row(session, org_id, response_id).input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            position = next((i for i, item in enumerate(items) if item.get("id") == after), None)
            if position is None:
                raise InvalidRequest(f"No input item with id '{after}' in this response.", param="after")
            items = items[position + 1 :]
        page = items[:limit]
        return ResponseItemList(
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=len(items) > limit,
        )


class _ResponseEvents:
    """Rewrites one streamed chat completion's chunks as the Responses stream's typed events."""

    def __init__(self, service: ResponseService, org_id: str, prepared: _Prepared):
        self._service = service
        self._org_id = org_id
        self._prepared = prepared
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None  # the output message being streamed
        self._text = ""

    def _event(self, kind: str, **fields: Any) -> dict[str, str]:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return {"event": kind, "data": json.dumps(data, ensure_ascii=False, separators=(",", ":"))}

    def _snapshot(self, status: str, **kwargs: Any) -> dict[str, Any]:
        return self._prepared.response(status, list(self._output), **kwargs).model_dump(mode="json")

    def _open_message(self) -> list[dict[str, str]]:
        item = _message_item(new_id("msg"), "", "in_progress")
        self._message, self._text = item, ""
        index = len(self._output)
        self._output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=index, item=item),
            self._event(
                "response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part
            ),
        ]

    def _close_message(self) -> list[dict[str, str]]:
        if self._message is None:
            return []
        item_id, index = self._message["id"], len(self._output) - 1
        done = _message_item(item_id, self._text, "completed")
        self._output[index] = done
        self._message = None
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **where, text=self._text, logprobs=[]),
            self._event("response.content_part.done", **where, part=done["content"][0]),
            self._event("response.output_item.done", output_index=index, item=done),
        ]

    def _call(self, call_id: str, name: str, arguments: str) -> list[dict[str, str]]:
        events = self._close_message()
        item_id, index = new_id("fc"), len(self._output)
        self._output.append(_call_item(item_id, call_id, name, "", "in_progress"))
        events.append(self._event("response.output_item.added", output_index=index, item=self._output[index]))
        where = {"item_id": item_id, "output_index": index}
        events.append(self._event("response.function_call_arguments.delta", **where, delta=arguments))
        events.append(self._event("response.function_call_arguments.done", **where, name=name, arguments=arguments))
        self._output[index] = _call_item(item_id, call_id, name, arguments, "completed")
        events.append(self._event("response.output_item.done", output_index=index, item=self._output[index]))
        return events

    async def events(self, chunks: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
        yield self._event("response.created", response=self._snapshot("in_progress"))
        yield self._event("response.in_progress", response=self._snapshot("in_progress"))
        usage: ResponseUsage | None = None
        finish: str | None = None
        try:
            async for payload in chunks:
                if payload == DONE:
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    error = ResponseError(code="server_error", message=chunk["error"].get("message") or "error")
                    yield self._event("response.failed", response=self._snapshot("failed", error=error))
                    return
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta", {})
                    if delta.get("content"):
                        if self._message is None:
                            for event in self._open_message():
                                yield event
                        assert self._message is not None
                        self._text += delta["content"]
                        yield self._event(
                            "response.output_text.delta",
                            item_id=self._message["id"],
                            output_index=len(self._output) - 1,
                            content_index=0,
                            delta=delta["content"],
                            logprobs=[],
                        )
                    for call in delta.get("tool_calls") or []:
                        function = call.get("function") or {}
                        for event in self._call(call["id"], function.get("name", ""), function.get("arguments", "")):
                            yield event
                    finish = choice.get("finish_reason") or finish
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()  # the client left, or the stream ended: stop generating
        if not self._output:  # an empty reply is still one (empty) message, as non-streamed
            for event in self._open_message():
                yield event
        for event in self._close_message():
            yield event
        incomplete = finish == "length"
        response = self._prepared.response(
            "incomplete" if incomplete else "completed", list(self._output), usage, incomplete=incomplete
        )
        await anyio.to_thread.run_sync(self._service.store, self._org_id, self._prepared, response)
        kind = "response.incomplete" if incomplete else "response.completed"
        yield self._event(kind, response=response.model_dump(mode="json"))
