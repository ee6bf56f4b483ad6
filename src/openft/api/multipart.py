"""Streaming `multipart/form-data` reader for `POST /files`.

Uploads may be hundreds of MB, so the `file` part goes straight from the request stream into a
`BlobWriter` (one temp file, written in ~1 MiB batches off the event loop): it is never held whole in
memory and never spooled twice, unlike `request.form()`, which spools to a temp file that would then
have to be copied into the store. The size limit is enforced while streaming, so an oversized body is
refused as soon as it crosses the limit rather than after it has been received.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from openft.errors import InvalidRequest, PayloadTooLarge
from openft.storage import BlobStore, BlobWriter

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined for type checkers only

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes a body may carry on top of the file limit: boundaries, part headers and the text fields, which
take a few hundred bytes in practice (though each may be up to MAX_FIELD_BYTES)."""
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
_WRITE_BATCH = 1 << 20
"""File bytes collected before one write to the blob (fewer thread hops than one per network chunk)."""
_MiB = 1024 * 1024


@dataclass
class MultipartUpload:
    """The parsed form. The caller validates the fields, then commits or aborts `writer`."""

    fields: dict[str, str]
    """The text fields (e.g. `purpose`, `expires_after[seconds]`), by name."""
    filename: str | None
    """The `file` part's filename as the client sent it: for display only, never used as a path."""
    writer: BlobWriter | None
    """The `file` part's bytes, uncommitted; None when the form has no `file` part."""


async def read_multipart_upload(
    request: Request, store: BlobStore, *, max_bytes: int, file_field: str = "file"
) -> MultipartUpload:
    """Parse a multipart upload, streaming the `file_field` part into a new blob writer.

    Raises InvalidRequest (not multipart, no boundary, malformed or truncated body, a second file part,
    too many or too large text fields) or PayloadTooLarge (file over `max_bytes`, or a body over
    `max_bytes` + MULTIPART_OVERHEAD, checked up front from Content-Length and again while streaming).
    On any error the writer is aborted, so no temp file is left behind.
    """
    boundary = _boundary(request.headers.get("content-type"), file_field)
    body_limit = max_bytes + MULTIPART_OVERHEAD
    content_length = request.headers.get("content-length", "")
    if content_length.isdigit() and int(content_length) > body_limit:
        raise _too_large(max_bytes, file_field)

    collector = _PartCollector(store, max_bytes=max_bytes, file_field=file_field)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise _too_large(max_bytes, file_field)
            parser.write(chunk)
            await collector.flush(min_bytes=_WRITE_BATCH)
        if not collector.ended:
            raise InvalidRequest("The multipart body ended before its closing boundary.", param=file_field)
        await collector.flush(min_bytes=0)
    except FormParserError as exc:
        collector.abort()
        raise InvalidRequest(f"Malformed multipart body: {exc}", param=file_field) from exc
    except BaseException:
        collector.abort()
        raise
    return MultipartUpload(fields=collector.fields, filename=collector.filename, writer=collector.writer)


def _boundary(content_type: str | None, param: str) -> bytes:
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise InvalidRequest(
            f"Expected a multipart/form-data body, got Content-Type {content_type!r}.",
            param=param,
            code="invalid_request",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest(
            "The multipart/form-data Content-Type has no boundary.", param=param, code="invalid_request"
        )
    return boundary


def _too_large(max_bytes: int, param: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is larger than this server's limit of {max_bytes / _MiB:g} MB ({max_bytes} bytes); "
        "the limit is configurable with OPENFT_MAX_UPLOAD_BYTES.",
        param=param,
    )


def _decode(raw: bytes) -> str:
    """Header parameters are UTF-8 per RFC 7578; fall back to latin-1 like browsers of old sent."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _PartCollector:
    """The parser's callbacks: text fields into memory (bounded), the file part into a blob writer.

    Callbacks run synchronously inside `parser.write`; file bytes are only buffered there, and `flush`
    (awaited after each network chunk) hands them to the writer in a worker thread.
    """

    def __init__(self, store: BlobStore, *, max_bytes: int, file_field: str):
        self._store = store
        self._max_bytes = max_bytes
        self._file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.writer: BlobWriter | None = None
        self.ended = False
        self._file_bytes = 0
        self._pending = bytearray()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._in_file = False
        self._field_name = ""  # the text field being read, when not in the file part
        self._field_value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": _appender(self._header_name),
            "on_header_value": _appender(self._header_value),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    async def flush(self, *, min_bytes: int) -> None:
        """Write the buffered file bytes once at least `min_bytes` are pending (0: whatever is left)."""
        if self.writer is None or not self._pending or len(self._pending) < min_bytes:
            return
        data = bytes(self._pending)
        self._pending.clear()
        await anyio.to_thread.run_sync(self.writer.write, data)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False
        self._field_value.clear()

    def _on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequest("A multipart part has no name in its Content-Disposition.", param=self._file_field)
        name = _decode(options[b"name"])
        if name == self._file_field:
            if self.writer is not None:
                raise InvalidRequest(f"Only one {name!r} part is allowed.", param=name)
            self.filename = _decode(options[b"filename"]) if b"filename" in options else None
            self.writer = self._store.writer(max_bytes=self._max_bytes)
            self._in_file = True
        elif b"filename" in options:
            raise InvalidRequest(f"Unexpected file part {name!r}; send the file as {self._file_field!r}.", param=name)
        elif name in self.fields:
            raise InvalidRequest(f"The field {name!r} is sent more than once.", param=name)
        elif len(self.fields) >= MAX_FIELDS:
            raise InvalidRequest(f"Too many form fields (at most {MAX_FIELDS}).", param=name)
        else:
            self._field_name = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        piece = memoryview(data)[start:end]
        if self._in_file:
            self._file_bytes += len(piece)
            if self._file_bytes > self._max_bytes:
                raise _too_large(self._max_bytes, self._file_field)
            self._pending += piece
        else:
            if len(self._field_value) + len(piece) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"The field {self._field_name!r} is longer than {MAX_FIELD_BYTES} bytes.", param=self._field_name
                )
            self._field_value += piece

    def _on_part_end(self) -> None:
        if self._in_file:
            return
        try:
            self.fields[self._field_name] = self._field_value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"The field {self._field_name!r} is not valid UTF-8.", param=self._field_name) from exc

    def _on_end(self) -> None:
        self.ended = True


def _appender(buffer: bytearray) -> Callable[[bytes, int, int], None]:
    def append(data: bytes, start: int, end: int) -> None:
        buffer.extend(data[start:end])

    return append
