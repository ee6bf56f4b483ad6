"""Hand-written hostile inputs: names that try to leave their folder, absurd paging values, broken Unicode,
binary "training data" and a 100 MB JSON line. Each must end in a clear 4xx (or a cleanly failed job
naming the line), never a 5xx, a crash, a file touched outside the data and models folders, or memory
spent on the whole input.

Requests that need no worker run in-process (TestClient); training-data cases go through a real server
whose worker validates the file.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from openft.api.app import create_app
from openft.api.bodies import MAX_JSON_BODY_BYTES
from openft.datasets.chat import MAX_LINE_BYTES, validate_file
from openft.services.container import Container, build_container
from openft.settings import Settings
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer, start_server
from tests.support.waiting import wait_for

KEY = "sk-bad-input"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def assert_error(response: httpx.Response, status: int | set[int], param: str | None = None) -> dict[str, Any]:
    """The status, the OpenAI envelope, and (when given) the `param` the error names."""
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert set(error) == ENVELOPE_KEYS and error["message"], error
    if param is not None:
        assert error["param"] == param, error
    return error


# In-process app -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Container]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("bad-input-data"), models_dir=models_dir, api_key=KEY)
    built = build_container(settings, with_worker=False)
    yield built
    built.engine.dispose()


@pytest.fixture(scope="module")
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container.settings, container=container), raise_server_exceptions=False) as test:
        test.headers.update(AUTH)
        yield test


@pytest.fixture(scope="module")
def training_file(client: TestClient) -> str:
    response = client.post(
        "/v1/files", files={"file": ("t.jsonl", jsonl_bytes(valid_examples(12)))}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def job_id(client: TestClient, training_file: str) -> str:
    response = client.post("/v1/fine_tuning/jobs", json={"model": TINY_MODEL_NAME, "training_file": training_file})
    assert response.status_code == 200, response.text
    return response.json()["id"]


# File names -----------------------------------------------------------------------------------


def _multipart(filename: bytes, content: bytes, boundary: bytes = b"b0undary") -> bytes:
    """A body written by hand, so the filename bytes reach the server exactly as given (NUL, backslashes)."""
    return (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + boundary + b"--\r\n"
    )


FILENAMES: dict[str, str] = {
    "../../etc/passwd": "passwd",
    "/etc/passwd": "passwd",
    "../../../../../../../../tmp/evil.jsonl": "evil.jsonl",
    "..\\..\\windows\\win.ini": "win.ini",
    "C:\\Users\\me\\train.jsonl": "train.jsonl",
    "\\\\server\\share\\train.jsonl": "train.jsonl",
    "~/.ssh/id_rsa": "id_rsa",
    "a\x00b.jsonl": "ab.jsonl",
    "tab\tand\x7fdel.jsonl": "tabanddel.jsonl",
    "..": "upload.jsonl",
    ".": "upload.jsonl",
    "": "upload.jsonl",
    "folder/": "upload.jsonl",
    "%2e%2e%2fpasswd": "%2e%2e%2fpasswd",  # not decoded: it is a name, not a URL
    "\u202egnp.jsonl": "gnp.jsonl",  # right-to-left override removed (it disguises extensions)
    "zero\u200bwidth.jsonl": "zerowidth.jsonl",
    "emoji😀.jsonl": "emoji😀.jsonl",
    "שלום.jsonl": "שלום.jsonl",
    unicodedata.normalize("NFC", "café.jsonl"): unicodedata.normalize("NFC", "café.jsonl"),
    unicodedata.normalize("NFD", "café.jsonl"): unicodedata.normalize("NFD", "café.jsonl"),  # kept as sent
    "x" * 1_000 + ".jsonl": "x" * 255,  # bounded; a name past the 4 KB part-header line is a 400, below
}


def test_path_like_file_names_are_stored_as_a_safe_display_name_only(client: TestClient, container: Container) -> None:
    store_root = container.settings.files_dir
    outside = container.settings.data_dir.parent
    before_outside = sorted(p.name for p in outside.iterdir())
    for index, (sent, expected) in enumerate(FILENAMES.items()):
        content = f'{{"n": {index}}}\n'.encode()
        response = client.post(
            "/v1/files",
            content=_multipart(sent.encode("utf-8"), content),
            headers={"content-type": "multipart/form-data; boundary=b0undary"},
        )
        assert response.status_code == 200, (sent[:40], response.text)
        created = response.json()
        assert created["filename"] == expected, (sent[:40], created["filename"][:40])
        assert created["id"] == client.get(f"/v1/files/{created['id']}").json()["id"]
        download = client.get(f"/v1/files/{created['id']}/content")
        assert download.status_code == 200 and download.content == content
        disposition = download.headers["content-disposition"]
        assert disposition.isascii() and "\r" not in disposition and "\n" not in disposition
    # only generated keys in the store: no name the client sent became a path
    entries = sorted(p.name for p in store_root.iterdir())
    assert entries[0] == ".tmp" and not any((store_root / ".tmp").iterdir())
    assert all(re.fullmatch(r"file-[A-Za-z0-9]+", name) for name in entries[1:]), entries
    assert sorted(p.name for p in outside.iterdir()) == before_outside


def test_file_name_over_the_part_header_limit_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/files",
        content=_multipart(b"x" * 10_000 + b".jsonl", b"{}\n"),
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert_error(response, 400, "file")


def test_undecodable_file_name_bytes_are_read_as_latin1(client: TestClient) -> None:
    response = client.post(
        "/v1/files",
        content=_multipart(b"\xff\xfe\x00bad.jsonl", b"{}\n"),
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.status_code == 200 and response.json()["filename"] == "ÿþbad.jsonl"


# Model names ----------------------------------------------------------------------------------


class FsLog:
    """Paths the process stats, lists or opens while active (to prove a name never reached the disk)."""

    active: list[str] | None = None
    installed = False

    @classmethod
    def audit(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.active is not None and event in ("open", "os.listdir", "os.scandir") and args:
            path = args[0]
            if isinstance(path, str | bytes | os.PathLike):
                cls.active.append(os.fsdecode(path))


@pytest.fixture
def fs_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    paths: list[str] = []

    def logged(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, str | bytes | os.PathLike):
                paths.append(os.fsdecode(path))
            return real(path, *args, **kwargs)

        return wrapper

    for name in ("stat", "lstat"):
        monkeypatch.setattr(os, name, logged(getattr(os, name)))
    if not FsLog.installed:  # an audit hook cannot be removed; it does nothing while no test is logging
        sys.addaudithook(FsLog.audit)
        FsLog.installed = True
    FsLog.active = paths
    try:
        yield paths
    finally:
        FsLog.active = None


@pytest.fixture(scope="module")
def secret_model(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A real, loadable model outside the models folder: reaching it by a crafted name would be the bug."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret-model").symlink_to(models_dir / TINY_MODEL_NAME, target_is_directory=True)
    return outside / "secret-model"


def _escaping_names(secret: Path, models_dir: Path) -> list[str]:
    relative = os.path.relpath(secret, models_dir)
    return [
        str(secret),
        relative,
        relative.replace("/", "\\"),
        f"{TINY_MODEL_NAME}/../{relative}",
        "ft:" + relative,
        f"ft:{TINY_MODEL_NAME}:openft:{relative}:12345678",
        f"ft:{TINY_MODEL_NAME}:openft:x:12345678:ckpt-step-../../{relative}",
        "../../etc",
        "ft:../..",
        "..",
        "../" * 30 + "etc/passwd",
        "/etc/passwd",
        "/",
        "~",
        "%2e%2e",
        "%2e%2e%2f%2e%2e%2fetc",
        "C:\\Windows\\System32",
        f"{TINY_MODEL_NAME}\x00",
        "a" * 300,
    ]


def _inside(path: str, root: str) -> bool:
    resolved = os.path.normpath(path)
    return resolved == root or resolved.startswith(root + os.sep)


def test_model_names_cannot_leave_the_models_folder(
    client: TestClient,
    container: Container,
    fs_log: list[str],
    secret_model: Path,
    models_dir: Path,
    training_file: str,
) -> None:
    names = _escaping_names(secret_model, models_dir)
    for name in names:
        job = client.post("/v1/fine_tuning/jobs", json={"model": name, "training_file": training_file})
        assert_error(job, {400, 404}, "model")
        messages = [{"role": "user", "content": "hi"}]
        chat = client.post("/v1/chat/completions", json={"model": name, "messages": messages})
        assert assert_error(chat, {400, 404}, "model")["code"] in ("model_not_found", "invalid_value")
        legacy = client.post("/v1/completions", json={"model": name, "prompt": "hi"})
        assert_error(legacy, {400, 404}, "model")
        path = quote(name, safe="").replace(".", "%2E")  # or the client would resolve `..` segments itself
        deployment = client.post(
            f"/openai/deployments/{path}/chat/completions?api-version=2024-10-21", json={"messages": messages}
        )
        assert_error(deployment, {400, 404})
        assert_error(client.get(f"/v1/models/{path}"), {400, 404}, "model")
        assert_error(client.delete(f"/v1/models/{path}"), {400, 403, 404}, "model")
    # percent-encoded dots in the URL decode to `..` path segments, which must stay one model name
    for url in ("/v1/models/%2e%2e/%2e%2e/etc/passwd", "/v1/models/..%2f..%2fetc", "/openai/v1/models/%2E%2E"):
        assert_error(client.get(url), 404)
        assert_error(client.delete(url), {403, 404})
    # a path built from a name under the models or data folder must stay there once `..` is resolved
    roots = [str(models_dir), str(container.settings.data_dir)]
    escaped = {p for p in fs_log for root in roots if p.startswith(root) and not _inside(p, root)}
    reached = {p for p in fs_log if _inside(p, str(secret_model.parent)) or os.path.normpath(p) == "/etc/passwd"}
    assert escaped | reached == set(), sorted(escaped | reached)[:10]
    assert len(fs_log) > 0  # the log works: the catalog looked at the models folder


# Paging parameters ----------------------------------------------------------------------------

LISTS = [
    "/v1/files",
    "/v1/fine_tuning/jobs",
    "/v1/fine_tuning/jobs/{job}/events",
    "/v1/fine_tuning/jobs/{job}/checkpoints",
]
BAD_LIMITS = [str(10**30), "-1", "0", "1.5", "abc", "NaN", "", "1e3", "0x10", "\u0661", "9" * 5000]


@pytest.mark.parametrize("endpoint", LISTS)
def test_absurd_limit_and_after_are_400_naming_the_parameter(client: TestClient, job_id: str, endpoint: str) -> None:
    url = endpoint.format(job=job_id)
    for limit in BAD_LIMITS:
        assert_error(client.get(url, params={"limit": limit}), 400, "limit")
    too_long = "a" * 10_240
    assert_error(client.get(url, params={"after": too_long}), 400, "after")
    for after in ("../../etc/passwd", "ftjob-doesnotexist", "file-doesnotexist", "\u202e😀", "%00"):
        assert_error(client.get(url, params={"after": after, "limit": 5}), 400, "after")  # not in this list
    for dialect in ("/openai/v1", "/openai"):
        azure = client.get(
            dialect + url.removeprefix("/v1"),
            params={"limit": str(10**30), "api-version": "2025-04-01-preview" if dialect == "/openai" else "v1"},
        )
        assert_error(azure, 400, "limit")


def test_other_list_parameters(client: TestClient) -> None:
    assert_error(client.get("/v1/files", params={"order": "sideways"}), 400, "order")
    assert_error(client.get("/v1/fine_tuning/jobs", params={"metadata[" + "k" * 65 + "]": "v"}), 400, "metadata")
    assert client.get("/v1/files", params={"purpose": "../../etc"}).json()["data"] == []


# Unicode --------------------------------------------------------------------------------------

NFC, NFD = unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")
UNICODE_METADATA = {
    "rtl": "\u202eabc\u202c",
    "zero-width": "a\u200b\u200cb\ufeff",
    "emoji": "😀👩‍👩‍👧‍👦🏳️‍🌈",
    "hebrew": "שלום",
    NFC: "nfc key",
    NFD: "nfd key",
    "nfc-value": "caf" + NFC,
    "nfd-value": "caf" + NFD,
}


def test_unicode_metadata_is_kept_exactly_and_filterable(client: TestClient, training_file: str) -> None:
    body = {"model": TINY_MODEL_NAME, "training_file": training_file, "metadata": UNICODE_METADATA}
    created = client.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["metadata"] == UNICODE_METADATA  # no normalization: NFC and NFD stay two keys
    job = created.json()["id"]
    assert client.get(f"/v1/fine_tuning/jobs/{job}").json()["metadata"] == UNICODE_METADATA
    found = client.get("/v1/fine_tuning/jobs", params={f"metadata[{NFD}]": "nfd key", "limit": 100}).json()["data"]
    assert [j["id"] for j in found] == [job]
    assert client.get("/v1/fine_tuning/jobs", params={f"metadata[{NFC}]": "nfd key"}).json()["data"] == []


@pytest.mark.parametrize("suffix", ["zorb😀", "a\u200bb", NFC, "\u202eabc", "a" * 65, "../x", ""])
def test_suffix_outside_its_alphabet_is_400(client: TestClient, training_file: str, suffix: str) -> None:
    body = {"model": TINY_MODEL_NAME, "training_file": training_file, "suffix": suffix}
    assert_error(client.post("/v1/fine_tuning/jobs", json=body), 400, "suffix")


LONE_SURROGATES = {
    "metadata.k": '{"model": "M", "training_file": "F", "metadata": {"k": "\\ud800"}}',
    "metadata.\\udc00": '{"model": "M", "training_file": "F", "metadata": {"\\udc00": "v"}}',
    "suffix": '{"model": "M", "training_file": "F", "suffix": "x\\udfff"}',
    "trainingType": '{"model": "M", "training_file": "F", "trainingType": "\\ud83d"}',
}


@pytest.mark.parametrize("param", sorted(LONE_SURROGATES))
def test_lone_surrogates_in_a_job_are_400_and_create_nothing(
    client: TestClient, training_file: str, param: str
) -> None:
    before = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
    raw = LONE_SURROGATES[param].replace('"M"', f'"{TINY_MODEL_NAME}"').replace('"F"', f'"{training_file}"')
    response = client.post("/v1/fine_tuning/jobs", content=raw, headers={"content-type": "application/json"})
    error = assert_error(response, 400, param)
    assert error["code"] == "invalid_value" and "surrogate" in error["message"]
    assert client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"] == before


def test_lone_surrogates_in_messages_are_400_before_any_model_is_looked_up(client: TestClient) -> None:
    raw = '{"model": "MODEL", "messages": [{"role": "user", "content": "hi \\udc00"}]}'.replace(
        "MODEL", TINY_MODEL_NAME
    )
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "messages.0.content")
    raw = '{"model": "MODEL", "prompt": ["ok", "\\ud800"]}'.replace("MODEL", TINY_MODEL_NAME)
    response = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "prompt.1")
    # a correctly paired escape (😀) and an escaped backslash before "ud800" are fine
    raw = '{"model": "nope", "messages": [{"role": "user", "content": "\\ud83d\\ude00 \\\\ud800"}]}'
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert assert_error(response, 404, "model")["code"] == "model_not_found"


def test_bodies_that_are_not_utf8_or_too_deep_are_invalid_json(client: TestClient) -> None:
    for raw in (b'{"model": "\xff"}', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000):
        response = client.post("/v1/fine_tuning/jobs", content=raw, headers={"content-type": "application/json"})
        assert assert_error(response, 400)["code"] == "invalid_json"


def test_json_bodies_over_16_mib_are_413_in_the_envelope(client: TestClient) -> None:
    """Declared (Content-Length, refused unread) or chunked (counted): both 413 `request_too_large`."""
    oversized = b'{"model": "' + b"a" * MAX_JSON_BODY_BYTES + b'"}'
    for url in ("/v1/fine_tuning/jobs", "/v1/chat/completions", "/openai/v1/completions"):
        response = client.post(url, content=oversized, headers={"content-type": "application/json"})
        assert assert_error(response, 413)["code"] == "request_too_large"
        assert response.headers["x-should-retry"] == "false"

    def chunked() -> Iterator[bytes]:
        yield b'{"model": "'
        for _ in range(MAX_JSON_BODY_BYTES // (1 << 20) + 1):
            yield b"a" * (1 << 20)

    response = client.post("/v1/fine_tuning/jobs", content=chunked(), headers={"content-type": "application/json"})
    assert assert_error(response, 413)["code"] == "request_too_large"
    # uploads are not JSON requests: they stream to disk under OPENFT_MAX_UPLOAD_BYTES
    upload = client.post(
        "/v1/files", files={"file": ("big.jsonl", b"x" * (MAX_JSON_BODY_BYTES + 1))}, data={"purpose": "batch"}
    )
    assert upload.status_code == 200 and upload.json()["bytes"] == MAX_JSON_BODY_BYTES + 1


def test_unicode_training_data_is_valid_and_lone_surrogates_are_not(tmp_path: Path) -> None:
    """RTL, zero-width, emoji, NFD, as UTF-8 or as (paired) escapes, are ordinary text to train on."""
    texts = ["\u202eabc\u202c", "a\u200bb\ufeff", "😀👩‍👩‍👧‍👦", "שלום עולם", "caf" + NFD, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]

    def line(text: str, *, ascii_only: bool) -> str:
        example = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]}
        return json.dumps(example, ensure_ascii=ascii_only)  # ensure_ascii writes astral characters as pairs

    rows = [line(text, ascii_only=flag) for flag in (False, True) for text in texts]
    path = tmp_path / "unicode.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = validate_file(path)
    assert report.ok and report.n_examples == 12, report.summary()
    rows[8] = rows[8].replace("\\ud83d", "", 1)  # line 9 (😀… as escapes) keeps a low half alone
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = validate_file(path)
    assert report.code == "invalid_encoding" and report.summary().startswith("line 9:"), report.summary()


# URL dialects ---------------------------------------------------------------------------------


def test_api_version_must_match_exactly(client: TestClient, training_file: str) -> None:
    """`^…$` once let "2025-04-01\\n" through, and the newline went into the Location header: no response."""
    for version in ("2025-04-01\n", "2025-04-01-preview\n", "\u0662\u0660\u0662\u0665-04-01", "2025-04-01 ", "v1"):
        response = client.get("/openai/models", params={"api-version": version})
        assert_error(response, 400, "api-version")
    body = {"model": TINY_MODEL_NAME, "training_file": training_file}
    created = client.post("/openai/fine_tuning/jobs", params={"api-version": "2025-04-01-preview"}, json=body)
    assert created.status_code == 201
    assert (
        created.headers["location"] == f"/openai/fine_tuning/jobs/{created.json()['id']}?api-version=2025-04-01-preview"
    )


def test_405_lists_every_method_of_the_url(client: TestClient) -> None:
    response = client.request("PUT", "/v1/files/file-x")
    assert_error(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert set(client.request("PATCH", "/v1/files").headers["allow"].split(", ")) == {"GET", "POST"}


def test_openapi_document_describes_errors_auth_and_api_version(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    text = json.dumps(document)
    assert '"422"' not in text and "HTTPValidationError" not in text
    assert set(document["components"]["securitySchemes"]) == {"bearer", "api-key"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/health":
                assert "security" not in operation
                continue
            assert operation["security"], (method, path)
            error = operation["responses"]["400"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}
            versions = [p for p in operation.get("parameters", []) if p["name"] == "api-version"]
            if path.startswith(("/openai/v1/", "/api/projects/")):  # Azure v1, also under a Foundry project
                assert versions and not versions[0]["required"]
            elif path.startswith("/openai/"):
                assert versions and versions[0]["required"]
            else:
                assert versions == []
    assert "201" in document["paths"]["/openai/files"]["post"]["responses"]
    assert "200" in document["paths"]["/v1/files"]["post"]["responses"]
    assert "409" in document["paths"]["/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause"]["post"]["responses"]
    body = document["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == ENVELOPE_KEYS


# Training data through a real worker ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("bad-data-server"), models_dir, api_key=KEY)
    yield running
    running.stop()


def _failed_job(server: RunningServer, content: bytes | Path) -> dict[str, Any]:
    """Upload `content` (bytes, or a file streamed from disk), start a job on it, wait until it fails."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as http:
        if isinstance(content, Path):
            with open(content, "rb") as handle:
                upload = http.post("/v1/files", files={"file": ("big.jsonl", handle)}, data={"purpose": "fine-tune"})
        else:
            upload = http.post("/v1/files", files={"file": ("t.jsonl", content)}, data={"purpose": "fine-tune"})
        assert upload.status_code == 200, upload.text
        job = http.post("/v1/fine_tuning/jobs", json={"model": TINY_MODEL_NAME, "training_file": upload.json()["id"]})
        assert job.status_code == 200, job.text

        def finished() -> dict[str, Any] | None:
            current = http.get(f"/v1/fine_tuning/jobs/{job.json()['id']}").json()
            return current if current["status"] in ("failed", "succeeded", "cancelled") else None

        result = wait_for(finished, timeout=120, interval=0.2, what="the job to end")
    assert result["status"] == "failed", result
    assert result["error"]["param"] == "training_file"
    return result["error"]


GOOD = jsonl_bytes(valid_examples(12))
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
BINARY_FILES: dict[str, tuple[bytes, str, int]] = {
    "random bytes": (random.Random(7).randbytes(64 * 1024), "invalid_encoding", 1),
    "png": (PNG + random.Random(8).randbytes(1024), "invalid_encoding", 1),
    "nul bytes": (b"\x00" * 4096, "invalid_file_format", 1),
    "nul line in good data": (GOOD + b"\x00\x00\x00\n" + GOOD, "invalid_file_format", 13),
    "utf-16": (GOOD.decode().encode("utf-16"), "invalid_encoding", 1),
    "latin-1 line": (GOOD + '{"messages": "caf\xe9"}\n'.encode("latin-1"), "invalid_encoding", 13),
    "lone surrogate": (GOOD.replace(b"Question 3", b"Question \\ud800", 1), "invalid_encoding", 4),
    "gzip": (b"\x1f\x8b\x08\x00" + random.Random(9).randbytes(512), "invalid_encoding", 1),
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(BINARY_FILES))
def test_binary_training_files_fail_the_job_naming_the_line(server: RunningServer, name: str) -> None:
    content, code, line = BINARY_FILES[name]
    error = _failed_job(server, content)
    assert error["code"] == code, error
    assert f"line {line}:" in error["message"], error


def _peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


@pytest.mark.e2e
def test_a_100_mb_json_line_is_refused_by_line_without_reading_it_whole(server: RunningServer, tmp_path: Path) -> None:
    """Uploaded (streamed from disk, under the 512 MB limit), then refused at validation as too long a line,
    with the line's number; the server's peak memory grows by far less than the line (measured: ~70 MiB,
    the 32 MiB bounded read twice over; reading the line whole would take 200 MiB or more)."""
    path = tmp_path / "huge-line.jsonl"
    with open(path, "wb") as out:
        out.write(jsonl_bytes(valid_examples(2)))
        out.write(b'{"messages": [{"role": "user", "content": "')
        block = b"a" * (1 << 20)
        for _ in range(100):
            out.write(block)
        out.write(b'"}, {"role": "assistant", "content": "ok"}]}\n')
        out.write(jsonl_bytes(valid_examples(10)))
    assert path.stat().st_size > 100 * (1 << 20) > MAX_LINE_BYTES
    before = _peak_rss(server.process.pid)
    error = _failed_job(server, path)
    grown = _peak_rss(server.process.pid) - before
    assert error["code"] == "invalid_file_format", error
    assert "line 3:" in error["message"] and str(MAX_LINE_BYTES) in error["message"], error
    assert grown < 128 * (1 << 20), f"the server's peak memory grew by {grown / (1 << 20):.0f} MiB"
    path.unlink()
