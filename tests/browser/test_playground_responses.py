"""The playground's Responses mode in a real browser, against a real server and model.

A conversation through `POST /v1/responses`: the answer streams in as `response.output_text.delta` events, the
response id and usage are shown, the next message continues it with `previous_response_id` (checked on the
server, which is what makes it a conversation), and "New conversation" starts afresh. The base model serves it,
so no fine-tuning job is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from openai import OpenAI

from tests.browser.test_dashboard import sign_in
from tests.conftest import TINY_MODEL_NAME
from tests.support.server import RunningServer
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

# Records, in the page, the answer's text length at every change while its turn is still streaming: more than
# one non-empty length seen means the text grew live, delta by delta, not once at the end.
WATCH_STREAMING = """() => {
    window.__grew = [];
    new MutationObserver(() => {
        const turn = [...document.querySelectorAll("#pg-conversation .turn.assistant")].pop();
        if (turn && turn.dataset.state === "streaming") {
            window.__grew.push(turn.querySelector("pre").textContent.length);
        }
    }).observe(document.querySelector("#pg-conversation"), {childList: true, subtree: true, characterData: true});
}"""


def open_responses_mode(page: Page, server: RunningServer) -> None:
    sign_in(page, server.api_key)
    page.wait_for_selector("#jobs-table")
    page.goto("/#/playground")
    page.wait_for_selector(f"#pg-model option[value='{TINY_MODEL_NAME}']", state="attached")
    assert page.is_visible("#pg-base") and page.is_hidden("#pg-model"), "the playground opens in Chat mode"
    page.click("#pg-mode-responses")
    assert page.get_attribute("#pg-mode-responses", "aria-pressed") == "true"
    assert page.is_visible("#pg-model") and page.is_visible("#pg-instructions") and page.is_hidden("#pg-base")
    assert "mode=responses" in page.url
    page.select_option("#pg-model", TINY_MODEL_NAME)


def send(page: Page, text: str) -> dict[str, str | None]:
    """Type and send one message; wait until its answer is finished (done or error) and return that turn."""
    turns = page.locator("#pg-conversation .turn.assistant")
    before = turns.count()
    page.fill("#pg-prompt", text)
    page.click("#pg-send")
    turn = turns.nth(before)
    wait_for(lambda: turn.get_attribute("data-state") in ("done", "error"), timeout=60, what="the answer")
    return {
        "state": turn.get_attribute("data-state"),
        "id": turn.get_attribute("data-response"),
        "text": turn.locator("pre").text_content(),
        "info": turn.locator("p.info").text_content(),
    }


def shown_response_id(page: Page) -> str | None:
    return page.text_content("#pg-response-id") if page.query_selector("#pg-response-id") else None


def test_responses_mode_streams_continues_with_previous_response_id_and_starts_over(
    page: Page, client: OpenAI, server: RunningServer, screenshot: Callable[[str], Path]
) -> None:
    open_responses_mode(page, server)
    page.fill("#pg-instructions", "Answer in one sentence.")
    page.fill("#pg-max-tokens", "16")
    page.evaluate(WATCH_STREAMING)

    first = send(page, "Who makes the Zorblax Q7?")
    assert first["state"] == "done" and first["id"], first
    lengths = set(page.evaluate("window.__grew")) - {0}
    assert len(lengths) > 1, f"the answer must grow while it streams, seen while streaming: {lengths}"
    stored = client.responses.retrieve(first["id"])
    assert stored.previous_response_id is None and stored.instructions == "Answer in one sentence."
    assert stored.max_output_tokens == 16 and stored.temperature == 0
    assert first["text"] == stored.output_text  # every delta arrived, in order
    assert stored.usage is not None and f"{stored.usage.total_tokens} tokens" in (first["info"] or "")
    assert first["id"] in (first["info"] or "") and shown_response_id(page) == first["id"]

    second = send(page, "And where is it sold?")
    assert second["state"] == "done" and second["id"] not in (None, first["id"]), second
    assert client.responses.retrieve(second["id"] or "").previous_response_id == first["id"]
    assert shown_response_id(page) == second["id"]
    assert page.input_value("#pg-prompt") == "", "a sent message leaves the prompt box"
    screenshot("playground-responses")

    # a response the server no longer has cannot be continued: its 404 is shown, and the page keeps the id
    client.responses.delete(second["id"] or "")
    gone = send(page, "Still there?")
    assert gone["state"] == "error" and f"'{second['id']}' not found" in (gone["info"] or ""), gone
    assert shown_response_id(page) == second["id"]

    # "New conversation" forgets previous_response_id: the next message starts one
    page.click("#pg-new")
    assert shown_response_id(page) is None and page.locator("#pg-conversation .turn").count() == 0
    assert page.is_disabled("#pg-new")
    fresh = send(page, "Hello again")
    assert fresh["state"] == "done" and fresh["id"], fresh
    assert client.responses.retrieve(fresh["id"] or "").previous_response_id is None
    assert shown_response_id(page) == fresh["id"]

    page.reload()  # the mode is kept in the URL
    page.wait_for_selector("#pg-mode-responses[aria-pressed=true]")


def sse(*events: dict[str, object]) -> str:
    return "".join(f"event: {e['type']}\r\ndata: {json.dumps(e)}\r\n\r\n" for e in events)


MARKUP = "<img src=x id=pwned onerror=alert(1)>"


def test_responses_mode_shows_server_strings_as_text_and_failures_as_errors(page: Page, server: RunningServer) -> None:
    """The stream's rendering, on the documented event shapes (answered by the test): deltas and error messages
    that look like markup stay text, `response.failed` and `error` events are errors, and a failed response is
    not continued."""
    failed = {"id": "resp_failed", "status": "failed", "error": {"code": "server_error", "message": f"{MARKUP} boom"}}
    bodies = [
        sse(
            {"type": "response.created", "response": {"id": "resp_failed", "status": "in_progress"}},
            {"type": "response.output_text.delta", "delta": MARKUP},
            {"type": "response.output_text.delta", "delta": "<b>bold</b>"},
            {"type": "response.failed", "response": failed},
        ),
        sse({"type": "error", "code": "server_error", "message": "<i>the stream broke</i>"}),
    ]
    sent: list[dict[str, object]] = []

    def answer(route: Route) -> None:
        sent.append(route.request.post_data_json)
        route.fulfill(status=200, content_type="text/event-stream", body=bodies[len(sent) - 1])

    page.route("**/v1/responses", answer)
    open_responses_mode(page, server)
    turn = send(page, "Say something")
    assert turn["state"] == "error" and turn["text"] == f"{MARKUP}<b>bold</b>", turn
    assert f"{MARKUP} boom" in (turn["info"] or "")
    assert page.query_selector("#pwned") is None and page.query_selector("#pg-conversation b") is None
    assert shown_response_id(page) is None
    broken = send(page, "Again")
    assert broken["state"] == "error" and "<i>the stream broke</i>" in (broken["info"] or ""), broken
    assert all(body.get("stream") is True and "previous_response_id" not in body for body in sent), sent
    assert sent[0]["model"] == TINY_MODEL_NAME and sent[0]["input"] == "Say something"
