"""The Uploads service on a real container (SQLite and PostgreSQL, the local blob store): assembly in the order
given, the checks at completion, cancel and expiry deleting parts, parts sent in parallel, the races between
completion and cancel, and bounded memory."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, update

from openft.db.tables import UploadRow
from openft.errors import InvalidRequest, NotFound, OpenFTError, QuotaExceeded
from openft.protocol.uploads import Upload, UploadComplete, UploadCreate
from openft.services import quotas
from openft.services.auth import ensure_organization
from openft.services.container import Container, build_container
from openft.services.uploads import UPLOAD_LIFETIME_SECONDS, UploadService
from openft.settings import Settings
from openft.storage import LocalBlobStore

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def container(tmp_path: Path, models_dir: Path, database_url: str) -> Iterator[Container]:
    """The shared fixture's container, on SQLite and on PostgreSQL (row locks and compare-and-set on both)."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key="k", database_url=database_url)
    built = build_container(settings, with_worker=False)
    yield built
    built.engine.dispose()


@pytest.fixture
def uploads(container: Container, clock: Clock) -> UploadService:
    """The container's wiring, with a clock the test moves and parts of at most 1 MiB (so limits are cheap)."""
    return UploadService(
        container.sessions, container.store, container.files, max_total_bytes=64 * MiB, max_part_bytes=MiB, clock=clock
    )


def blob_keys(container: Container) -> set[str]:
    store = container.store
    assert isinstance(store, LocalBlobStore)
    return {p.name for p in store.root.iterdir() if p.is_file()}


def new_upload(
    uploads: UploadService, container: Container, size: int, *, purpose: str = "fine-tune", org_id: str | None = None
) -> str:
    request = UploadCreate(bytes=size, filename="big.jsonl", purpose=purpose, mime_type="text/jsonl")
    return uploads.create(org_id or container.default_org_id, request).id


def add(uploads: UploadService, container: Container, upload_id: str, data: bytes, org_id: str | None = None) -> str:
    writer = container.store.writer()
    writer.write(data)
    return uploads.add_part(org_id or container.default_org_id, upload_id, writer).id


def complete(
    uploads: UploadService, container: Container, upload_id: str, part_ids: list[str], md5: str | None = None
) -> Upload:
    return uploads.complete(container.default_org_id, upload_id, UploadComplete(part_ids=part_ids, md5=md5))


def refused(call: Callable[[], object], error: type[OpenFTError], param: str, match: str) -> None:
    with pytest.raises(error, match=match) as caught:
        call()
    assert caught.value.param == param


def test_parts_are_assembled_in_the_order_completion_names_them(uploads: UploadService, container: Container) -> None:
    chunks = [b'{"a": 1}\n', b'{"b": 2}\n' * 3, b'{"c": 3}\n']
    content = b"".join(chunks)
    upload_id = new_upload(uploads, container, len(content))
    # sent out of order (parallel clients may), put in order at completion
    ids = {index: add(uploads, container, upload_id, chunks[index]) for index in (2, 0, 1)}
    assert {ids[0], ids[1], ids[2]} <= blob_keys(container)

    done = complete(uploads, container, upload_id, [ids[0], ids[1], ids[2]], hashlib.md5(content).hexdigest())

    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == len(content) and done.file.filename == "big.jsonl" and done.file.purpose == "fine-tune"
    assert b"".join(container.files.content(container.default_org_id, done.file.id).chunks) == content
    assert blob_keys(container) == {done.file.id}  # the parts are gone, only the file's blob is left
    refused(lambda: add(uploads, container, upload_id, b"x"), InvalidRequest, "upload_id", "it is completed")
    refused(lambda: complete(uploads, container, upload_id, [ids[0]]), InvalidRequest, "upload_id", "completed")
    refused(lambda: uploads.cancel(None, upload_id), InvalidRequest, "upload_id", "completed")


def test_completion_checks_the_parts_and_md5_and_leaves_the_upload_pending(
    uploads: UploadService, container: Container
) -> None:
    upload_id = new_upload(uploads, container, 6)
    first, second = add(uploads, container, upload_id, b"abc"), add(uploads, container, upload_id, b"def")
    other = new_upload(uploads, container, 3)
    foreign = add(uploads, container, other, b"xyz")

    refused(lambda: complete(uploads, container, upload_id, []), InvalidRequest, "part_ids", "at least one")
    refused(lambda: complete(uploads, container, upload_id, [first, first]), InvalidRequest, "part_ids", "more than")
    refused(lambda: complete(uploads, container, upload_id, [first]), InvalidRequest, "part_ids", "add up to 3 bytes")
    refused(
        lambda: complete(uploads, container, upload_id, [first, "part_nope"]), InvalidRequest, "part_ids", "No part"
    )
    refused(lambda: complete(uploads, container, upload_id, [first, foreign]), InvalidRequest, "part_ids", "No part")
    refused(lambda: complete(uploads, container, upload_id, [first, second], "xyz"), InvalidRequest, "md5", "32 hex")
    wrong_order = hashlib.md5(b"defabc").hexdigest()
    refused(
        lambda: complete(uploads, container, upload_id, [first, second], wrong_order), InvalidRequest, "md5", "order"
    )
    assert container.files.list(None, purpose=None, after=None, limit=10, order="desc").data == []
    assert not any(key.startswith("file-") for key in blob_keys(container))  # the aborted assembly left nothing

    done = complete(uploads, container, upload_id, [second, first], wrong_order.upper())  # still pending: retry works
    assert done.file is not None
    assert b"".join(container.files.content(None, done.file.id).chunks) == b"defabc"


def test_the_create_request_is_checked_against_the_limits(uploads: UploadService, container: Container) -> None:
    def create(**fields: object) -> Callable[[], object]:
        values: dict[str, object] = {
            "bytes": 10,
            "filename": "a.jsonl",
            "purpose": "fine-tune",
            "mime_type": "text/jsonl",
        }
        values.update(fields)
        return lambda: uploads.create(container.default_org_id, UploadCreate.model_validate(values))

    refused(create(bytes=64 * MiB + 1), InvalidRequest, "bytes", "OPENFT_MAX_UPLOAD_TOTAL_BYTES")
    refused(create(bytes=0), InvalidRequest, "bytes", "positive")
    refused(create(purpose="fine-tune-results"), InvalidRequest, "purpose", "Invalid purpose")
    refused(create(filename="  "), InvalidRequest, "filename", "empty")
    refused(create(mime_type=""), InvalidRequest, "mime_type", "MIME")
    quotas.set_limits(container.sessions, container.default_org_id, {"max_storage_bytes": 9})
    refused(create(), QuotaExceeded, "bytes", "storage quota")
    assert create(bytes=9)() is not None


def test_parts_are_bounded_by_the_part_limit_and_the_upload_size(uploads: UploadService, container: Container) -> None:
    upload_id = new_upload(uploads, container, MiB + 10)
    slot = uploads.part_slot(container.default_org_id, upload_id)
    assert slot.max_bytes == MiB and slot.by_part_limit
    add(uploads, container, upload_id, b"x" * MiB)
    add(uploads, container, upload_id, b"y" * MiB)  # a retried part fits: room for one more than declared
    slot = uploads.part_slot(container.default_org_id, upload_id)
    assert slot.max_bytes == 10 and not slot.by_part_limit and slot.too_large().param == "data"
    add(uploads, container, upload_id, b"z" * 10)
    refused(lambda: uploads.part_slot(container.default_org_id, upload_id), InvalidRequest, "data", "already fill")
    refused(lambda: add(uploads, container, upload_id, b"!"), InvalidRequest, "data", "already fill")
    refused(lambda: add(uploads, container, upload_id, b""), InvalidRequest, "data", "empty")
    assert len([key for key in blob_keys(container) if key.startswith("part_")]) == 3  # refused parts left nothing


def test_other_organizations_uploads_are_not_found(uploads: UploadService, container: Container) -> None:
    upload_id = new_upload(uploads, container, 3)
    part = add(uploads, container, upload_id, b"abc")
    other = ensure_organization(container.sessions, "other").id
    for call in (
        lambda: uploads.part_slot(other, upload_id),
        lambda: add(uploads, container, upload_id, b"abc", org_id=other),
        lambda: uploads.complete(other, upload_id, UploadComplete(part_ids=[part])),
        lambda: uploads.cancel(other, upload_id),
    ):
        refused(call, NotFound, "upload_id", "No such Upload")
    assert uploads.cancel(None, upload_id).status == "cancelled"  # an admin key (no organization) sees it


def test_cancel_deletes_the_parts_and_ends_the_upload(uploads: UploadService, container: Container) -> None:
    upload_id = new_upload(uploads, container, 6)
    part = add(uploads, container, upload_id, b"abcdef")
    cancelled = uploads.cancel(container.default_org_id, upload_id)
    assert cancelled.status == "cancelled" and cancelled.file is None
    assert blob_keys(container) == set()
    refused(lambda: add(uploads, container, upload_id, b"x"), InvalidRequest, "upload_id", "it is cancelled")
    refused(lambda: complete(uploads, container, upload_id, [part]), InvalidRequest, "upload_id", "cancelled")
    assert uploads.cancel(container.default_org_id, upload_id).status == "cancelled"  # a retried cancel


def test_an_upload_expires_an_hour_after_creation_and_the_sweep_deletes_its_parts(
    uploads: UploadService, container: Container, clock: Clock
) -> None:
    upload_id = new_upload(uploads, container, 6)
    part = add(uploads, container, upload_id, b"abcdef")
    clock.now += 10
    kept = new_upload(uploads, container, 1)
    clock.now += UPLOAD_LIFETIME_SECONDS - 11
    kept_part = add(uploads, container, kept, b"k")
    assert uploads.expire_due() == []
    clock.now += 1

    refused(lambda: add(uploads, container, upload_id, b"x"), InvalidRequest, "upload_id", "it is expired")
    refused(lambda: complete(uploads, container, upload_id, [part]), InvalidRequest, "upload_id", "expired")
    refused(lambda: uploads.cancel(None, upload_id), InvalidRequest, "upload_id", "expired")
    assert part in blob_keys(container)  # refusing does not wait for the sweep; the sweep frees the bytes
    assert uploads.expire_due() == [upload_id]
    assert blob_keys(container) == {kept_part}
    assert uploads.expire_due() == []
    assert complete(uploads, container, kept, [kept_part]).status == "completed"  # created later: still in time


def test_parts_sent_in_parallel_are_all_recorded(uploads: UploadService, container: Container) -> None:
    pieces = [bytes([65 + i]) * (1000 + i) for i in range(8)]
    upload_id = new_upload(uploads, container, sum(len(piece) for piece in pieces))
    with ThreadPoolExecutor(max_workers=8) as pool:
        part_ids = list(pool.map(lambda piece: add(uploads, container, upload_id, piece), pieces))
    done = complete(uploads, container, upload_id, part_ids)
    assert done.file is not None
    assert b"".join(container.files.content(None, done.file.id).chunks) == b"".join(pieces)


def test_a_cancel_while_parts_are_assembled_wins_and_the_new_file_is_deleted(
    uploads: UploadService, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_id = new_upload(uploads, container, 3)
    part = add(uploads, container, upload_id, b"abc")
    assemble = uploads._assemble

    def assemble_then_cancel(*args: object, **kwargs: object) -> object:
        made = assemble(*args, **kwargs)  # type: ignore[arg-type]
        uploads.cancel(None, upload_id)  # another request, between assembly and marking the upload completed
        return made

    monkeypatch.setattr(uploads, "_assemble", assemble_then_cancel)
    refused(lambda: complete(uploads, container, upload_id, [part]), InvalidRequest, "upload_id", "became cancelled")
    assert container.files.list(None, purpose=None, after=None, limit=10, order="desc").data == []
    assert blob_keys(container) == set()


def test_assembly_streams_without_holding_the_file_in_memory(container: Container, tmp_path: Path) -> None:
    uploads = container.uploads
    assert uploads is not None
    part = bytes(range(256)) * (32 * 1024)  # 8 MiB
    upload_id = new_upload(uploads, container, 3 * len(part))
    part_ids = [add(uploads, container, upload_id, part) for _ in range(3)]
    md5 = hashlib.md5(part * 3).hexdigest()
    tracemalloc.start()
    try:
        done = complete(uploads, container, upload_id, part_ids, md5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.file is not None and done.file.bytes == 24 * MiB
    assert peak < 4 * MiB, f"completing a 24 MiB upload held {peak / MiB:.1f} MiB"
    digest = hashlib.sha256()
    for chunk in container.files.content(None, done.file.id).chunks:
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(part * 3).hexdigest()


def test_a_server_sweeps_expired_uploads_from_its_start(container: Container) -> None:
    """`Container.start` (what `openft serve` runs) starts the sweep, which looks at once and then every minute."""
    uploads = container.uploads
    assert uploads is not None
    upload_id = new_upload(uploads, container, 3)
    part = add(uploads, container, upload_id, b"abc")
    with container.sessions.begin() as session:
        session.execute(update(UploadRow).where(UploadRow.id == upload_id).values(expires_at=int(time.time()) - 1))
    container.start()
    try:
        deadline = time.monotonic() + 20
        while part in blob_keys(container) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert part not in blob_keys(container)
        with container.sessions.begin() as session:
            assert session.scalars(select(UploadRow.status).where(UploadRow.id == upload_id)).one() == "expired"
    finally:
        container.close()


def test_parts_of_pending_uploads_count_against_the_storage_quota(uploads: UploadService, container: Container) -> None:
    """Parts take disk as they arrive: unfinished uploads cannot store past the organization's limit, and a
    completion counts its parts once (as the file they become)."""
    org = container.default_org_id
    quotas.set_limits(container.sessions, org, {"max_storage_bytes": 30})
    first = new_upload(uploads, container, 20)
    parts = [add(uploads, container, first, b"a" * 10), add(uploads, container, first, b"b" * 10)]
    second = new_upload(uploads, container, 10)  # 20 stored in parts + 10 declared: at the limit, allowed
    add(uploads, container, second, b"c" * 8)
    with pytest.raises(QuotaExceeded) as excinfo:  # 28 stored: 3 more would pass 30
        add(uploads, container, second, b"d" * 3)
    assert excinfo.value.param == "data"
    with pytest.raises(QuotaExceeded):  # a new upload sees the parts too
        new_upload(uploads, container, 3)
    done = uploads.complete(org, first, UploadComplete(part_ids=parts))  # its 20 bytes counted once, not twice
    assert done.status == "completed" and done.file is not None and done.file.bytes == 20
    uploads.cancel(org, second)  # its parts no longer count
    assert new_upload(uploads, container, 10)
