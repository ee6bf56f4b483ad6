"""Streaming multipart reader: fields, file bytes, limits enforced while streaming, no temp file leaks."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message

from openft.api.multipart import MULTIPART_OVERHEAD, read_multipart_upload
from openft.errors import InvalidRequest, OpenFTError, PayloadTooLarge
from openft.storage import LocalBlobStore, LocalBlobWriter

BOUNDARY = "testboundary1234"
CHUNK = 64 * 1024  # what uvicorn typically hands the app per receive()


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def temp_files(store: LocalBlobStore) -> list[Path]:
    return list((store.root / ".tmp").iterdir())


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class FakeClient:
    """An ASGI `receive` that sends the body in chunks and records how much the server pulled."""

    def __init__(self, chunks: Iterable[bytes], *, disconnect: bool = False):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._disconnect = disconnect
        self.delivered = 0

    async def receive(self) -> Message:
        chunk = next(self._chunks, None)
        if chunk is None:
            if self._disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": False}
        self.delivered += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}


def make_request(client: FakeClient, *, content_type: str | None = None, content_length: int | None = None) -> Request:
    headers = [(b"content-type", (content_type or f"multipart/form-data; boundary={BOUNDARY}").encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/files", "headers": headers, "query_string": b""}
    return Request(scope, client.receive)


def split(body: bytes, size: int = CHUNK) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def parse(request: Request, store: LocalBlobStore, max_bytes: int = 1 << 20):
    return asyncio.run(read_multipart_upload(request, store, max_bytes=max_bytes))


# Through a real HTTP client -----------------------------------------------------------------------


def upload_app(store: LocalBlobStore, max_bytes: int) -> Starlette:
    async def upload(request: Request) -> JSONResponse:
        result = await read_multipart_upload(request, store, max_bytes=max_bytes)
        assert result.writer is not None
        blob = result.writer.commit("file-1")
        return JSONResponse({"fields": result.fields, "filename": result.filename, "sha256": blob.sha256})

    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenFTError)
        status = 413 if isinstance(exc, PayloadTooLarge) else 400
        return JSONResponse({"error": {"message": exc.message, "param": exc.param, "code": exc.code}}, status)

    return Starlette(routes=[Route("/files", upload, methods=["POST"])], exception_handlers={OpenFTError: domain_error})


def test_upload_from_an_http_client(store: LocalBlobStore) -> None:
    content = b'{"messages": []}\n' * 1000
    fields = {
        "purpose": "fine-tune",
        "expires_after[anchor]": "created_at",
        "expires_after[seconds]": "3600",
        "expires_after.seconds": "1209600",
    }
    with TestClient(upload_app(store, max_bytes=1 << 20)) as client:
        response = client.post("/files", files={"file": ("données-日本.jsonl", content)}, data=fields)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "fields": fields,
        "filename": "données-日本.jsonl",
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    assert store.local_path("file-1").read_bytes() == content
    assert temp_files(store) == []


def test_oversized_upload_from_an_http_client_gets_the_domain_error(store: LocalBlobStore) -> None:
    with TestClient(upload_app(store, max_bytes=1000)) as client:
        response = client.post("/files", files={"file": ("a.jsonl", b"x" * 1001)}, data={"purpose": "fine-tune"})
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "file"
    assert response.json()["error"]["code"] == "file_too_large"
    assert temp_files(store) == []


# Parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, CHUNK])
def test_fields_and_file_survive_any_chunking(store: LocalBlobStore, chunk_size: int) -> None:
    content = bytes(range(256)) * 40 + f"\r\n--{BOUNDARY}".encode()[:-1]  # almost a boundary, inside the data
    body = form(part("purpose", b"fine-tune"), part("file", content, "train.jsonl"))
    result = parse(make_request(FakeClient(split(body, chunk_size))), store)
    assert result.fields == {"purpose": "fine-tune"}
    assert result.filename == "train.jsonl"
    assert result.writer is not None
    blob = result.writer.commit("file-1")
    assert blob.size == len(content)
    assert blob.sha256 == hashlib.sha256(content).hexdigest()


def test_file_part_without_filename_is_still_the_file(store: LocalBlobStore) -> None:
    result = parse(make_request(FakeClient([form(part("file", b"data"))])), store)
    assert result.filename is None
    assert result.writer is not None
    assert result.writer.commit("file-1").size == 4


def test_missing_file_part_returns_no_writer(store: LocalBlobStore) -> None:
    result = parse(make_request(FakeClient([form(part("purpose", b"fine-tune"))])), store)
    assert result.fields == {"purpose": "fine-tune"}
    assert result.writer is None
    assert result.filename is None
    assert temp_files(store) == []


def test_empty_file_is_accepted(store: LocalBlobStore) -> None:
    result = parse(make_request(FakeClient([form(part("file", b"", "empty.jsonl"))])), store)
    assert result.writer is not None
    assert result.writer.commit("file-1").size == 0


# Limits -------------------------------------------------------------------------------------------


def test_file_of_exactly_the_limit_is_accepted_and_one_more_byte_is_refused(store: LocalBlobStore) -> None:
    ok = parse(make_request(FakeClient([form(part("file", b"x" * 100, "a"))])), store, max_bytes=100)
    assert ok.writer is not None
    assert ok.writer.commit("file-1").size == 100
    with pytest.raises(PayloadTooLarge):
        parse(make_request(FakeClient([form(part("file", b"x" * 101, "a"))])), store, max_bytes=100)
    assert temp_files(store) == []


def test_limit_is_enforced_mid_stream_without_reading_the_rest(store: LocalBlobStore) -> None:
    limit = 256 * 1024
    body = form(part("purpose", b"fine-tune"), part("file", b"x" * (10 * limit), "big.jsonl"))
    client = FakeClient(split(body, 4096))  # chunked transfer: no Content-Length to check up front
    with pytest.raises(PayloadTooLarge) as info:
        parse(make_request(client), store, max_bytes=limit)
    assert info.value.param == "file"
    assert info.value.code == "file_too_large"
    assert "0.25 MB" in info.value.message
    assert "OPENFT_MAX_UPLOAD_BYTES" in info.value.message
    assert client.delivered <= limit + 8192  # stopped at the chunk that crossed the limit
    assert temp_files(store) == []


def test_content_length_over_the_limit_is_refused_before_reading(store: LocalBlobStore) -> None:
    limit = 1000
    client = FakeClient([form(part("file", b"x" * 10, "a"))])
    request = make_request(client, content_length=limit + MULTIPART_OVERHEAD + 1)
    with pytest.raises(PayloadTooLarge, match="OPENFT_MAX_UPLOAD_BYTES"):
        parse(request, store, max_bytes=limit)
    assert client.delivered == 0
    assert temp_files(store) == []


def test_content_length_within_the_overhead_is_read(store: LocalBlobStore) -> None:
    body = form(part("file", b"x" * 1000, "a"))
    result = parse(make_request(FakeClient([body]), content_length=len(body)), store, max_bytes=1000)
    assert result.writer is not None
    result.writer.abort()


def test_body_over_limit_plus_overhead_is_refused_even_without_file_bytes(store: LocalBlobStore) -> None:
    epilogue = b"x" * (MULTIPART_OVERHEAD + 2000)  # the parser would silently discard this forever
    client = FakeClient(split(form(part("file", b"data", "a")) + epilogue))
    with pytest.raises(PayloadTooLarge):
        parse(make_request(client), store, max_bytes=1000)
    assert temp_files(store) == []


def test_large_field_and_too_many_fields_are_refused(store: LocalBlobStore) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(make_request(FakeClient([form(part("purpose", b"x" * (64 * 1024 + 1)))])), store)
    assert info.value.param == "purpose"
    many = form(*(part(f"f{i}", b"v") for i in range(33)))
    with pytest.raises(InvalidRequest, match="Too many form fields"):
        parse(make_request(FakeClient([many])), store)


# Malformed requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "multipart/form-data", "multipart/form-data; charset=utf-8", None],
)
def test_not_multipart_or_no_boundary(store: LocalBlobStore, content_type: str | None) -> None:
    scope = {"type": "http", "method": "POST", "path": "/files", "query_string": b""}
    scope["headers"] = [] if content_type is None else [(b"content-type", content_type.encode())]
    request = Request(scope, FakeClient([b"{}"]).receive)
    with pytest.raises(InvalidRequest) as info:
        parse(request, store)
    assert info.value.param == "file"
    assert info.value.code == "invalid_request"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (form(part("file", b"a", "a"), part("file", b"b", "b")), "Only one 'file' part"),
        (form(part("file", b"a", "a"), part("other", b"b", "b")), "Unexpected file part 'other'"),
        (form(part("purpose", b"a"), part("purpose", b"b")), "more than once"),
        (form(part("purpose", b"\xff\xfe")), "not valid UTF-8"),
        (form(b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n"), "no name"),
        (part("file", b"cut off in the middle", "a.jsonl"), "ended before its closing boundary"),
        (b"this is not multipart at all", "Malformed multipart body"),
    ],
)
def test_bad_bodies_are_invalid_and_leave_no_temp_file(store: LocalBlobStore, body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse(make_request(FakeClient([body])), store)
    assert temp_files(store) == []


def test_client_disconnect_aborts_the_writer(store: LocalBlobStore) -> None:
    start = part("file", b"x" * 10_000, "a")[:-2]  # no closing boundary: the client vanished mid-file
    with pytest.raises(ClientDisconnect):
        parse(make_request(FakeClient([start], disconnect=True)), store)
    assert temp_files(store) == []


# Memory -------------------------------------------------------------------------------------------


class RecordingStore(LocalBlobStore):
    """Records the size of every write, to show the file arrives in bounded pieces."""

    writes: list[int]

    def writer(self, max_bytes: int | None = None) -> LocalBlobWriter:
        writer = super().writer(max_bytes)
        original = writer.write

        def write(data: bytes) -> None:
            self.writes.append(len(data))
            original(data)

        writer.write = write  # type: ignore[method-assign]
        return writer


def test_20_mb_upload_streams_with_bounded_memory(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "blobs")
    store.writes = []
    size = 20 * 1024 * 1024
    block = bytes(range(256)) * (CHUNK // 256)
    head = part("purpose", b"fine-tune") + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '.encode()
    head += b'filename="big.jsonl"\r\n\r\n'

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // CHUNK):
            yield block  # the same object each time: the client side allocates nothing
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    tracemalloc.start()
    try:
        result = parse(make_request(FakeClient(body())), store, max_bytes=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.writer is not None
    blob = result.writer.commit("file-big")
    expected = hashlib.sha256()
    for _ in range(size // CHUNK):
        expected.update(block)
    assert (blob.size, blob.sha256) == (size, expected.hexdigest())
    assert peak < 4 * 1024 * 1024, f"peak Python allocations {peak / 2**20:.1f} MiB for a 20 MiB upload"
    assert sum(store.writes) == size
    assert max(store.writes) <= (1 << 20) + CHUNK
    assert len(store.writes) <= 25  # batched, not one write per network chunk
