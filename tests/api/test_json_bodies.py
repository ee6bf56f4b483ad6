"""parse_json_body: the JSON parse and lone-surrogate check that runs in a worker thread for large bodies.

A scan of the raw bytes decides whether the parsed value must be walked at all; these are the ways a lone
surrogate can reach a parsed string, each of which must still be found and named.
"""

from __future__ import annotations

import pytest

from openft.api.bodies import may_hold_surrogates, parse_json_body
from openft.errors import InvalidRequest


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata": {"k": "\\ud800"}}',  # an escape
        b'{"metadata": {"k": "\\uDFFF"}}',  # upper-case hex
        b'{"metadata": {"k": "\xed\xa0\x80"}}',  # the bytes that would encode U+D800 (json.loads: surrogatepass)
        '{"metadata": {"k": "\\ud800"}}'.encode("utf-16"),  # JSON in UTF-16, which json.loads also reads
        '{"metadata": {"k": "\ud800"}}'.encode("utf-16-le", "surrogatepass"),  # a raw one, in UTF-16
    ],
)
def test_every_way_to_a_lone_surrogate_is_found(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        parse_json_body(body)
    assert excinfo.value.param == "metadata.k" and excinfo.value.code == "invalid_value"


def test_ordinary_bodies_skip_the_walk_and_parse_as_json() -> None:
    body = '{"messages": [{"role": "user", "content": "é \\u00e9 \\\\ud800 😀 \\ud83d\\ude00"}]}'.encode()
    assert not may_hold_surrogates(b'{"a": "\\u00e9", "b": [1, 2, {"c": "\xc3\xa9"}]}')
    assert may_hold_surrogates(body)  # a surrogate pair's escapes: walked, and found valid
    assert parse_json_body(body)["messages"][0]["content"] == "é é \\ud800 😀 😀"


@pytest.mark.parametrize("body", [b'{"a": ', b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000])
def test_bodies_that_do_not_parse_are_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        parse_json_body(body)
    assert excinfo.value.code == "invalid_json" and excinfo.value.param is None
