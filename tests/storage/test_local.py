"""LocalBlobStore: nothing is visible before commit, keys cannot escape the root, snapshots are independent."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openft.storage import BlobStore, BlobTooLarge, LocalBlobStore, StoredBlob, local


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def visible_files(store: LocalBlobStore) -> list[str]:
    """Everything under the root, temp folder included: a leak anywhere shows up here."""
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def test_local_store_satisfies_the_protocol(store: LocalBlobStore) -> None:
    as_protocol: BlobStore = store
    assert as_protocol is store


def test_commit_reports_size_and_sha256_and_content_is_readable(store: LocalBlobStore) -> None:
    parts = [b"hello ", b"world", b"\x00" * 1000]
    with store.writer() as writer:
        for part in parts:
            writer.write(part)
        assert writer.size == sum(map(len, parts))
        blob = writer.commit("file-abc")
    data = b"".join(parts)
    assert blob == StoredBlob(key="file-abc", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert store.exists("file-abc")
    assert store.size("file-abc") == len(data)
    assert store.local_path("file-abc").read_bytes() == data
    assert visible_files(store) == ["file-abc"]


def test_blob_is_invisible_until_commit(store: LocalBlobStore) -> None:
    writer = store.writer()
    writer.write(b"partial")
    assert not store.exists("file-x")
    assert [name.split("/")[0] for name in visible_files(store)] == [".tmp"]
    writer.commit("file-x")
    assert visible_files(store) == ["file-x"]


def test_abort_removes_temp_file_and_is_idempotent(store: LocalBlobStore) -> None:
    writer = store.writer()
    writer.write(b"data")
    assert len(visible_files(store)) == 1  # the temp file
    writer.abort()
    writer.abort()
    assert visible_files(store) == []
    with pytest.raises(ValueError, match="already committed or aborted"):
        writer.write(b"more")


def test_exception_inside_context_manager_leaves_nothing(store: LocalBlobStore) -> None:
    with pytest.raises(RuntimeError), store.writer() as writer:
        writer.write(b"data")
        raise RuntimeError("client went away")
    assert visible_files(store) == []


def test_context_manager_without_commit_aborts(store: LocalBlobStore) -> None:
    with store.writer() as writer:
        writer.write(b"data")
    assert visible_files(store) == []


def test_abort_after_commit_keeps_the_blob(store: LocalBlobStore) -> None:
    writer = store.writer()
    writer.write(b"data")
    writer.commit("file-1")
    writer.abort()
    assert store.local_path("file-1").read_bytes() == b"data"
    with pytest.raises(ValueError):
        writer.commit("file-2")


def test_limit_allows_exactly_max_bytes_and_refuses_one_more(store: LocalBlobStore) -> None:
    with store.writer(max_bytes=10) as writer:
        writer.write(b"12345")
        writer.write(b"67890")
        with pytest.raises(BlobTooLarge) as info:
            writer.write(b"x")
        assert info.value.limit == 10
        assert writer.size == 10  # the refused write stored nothing
        blob = writer.commit("file-ten")
    assert blob.size == 10
    assert store.local_path("file-ten").read_bytes() == b"1234567890"


def test_limit_refuses_a_single_oversized_write(store: LocalBlobStore) -> None:
    with store.writer(max_bytes=10) as writer, pytest.raises(BlobTooLarge):
        writer.write(b"x" * 11)
    assert visible_files(store) == []


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/b", "", ".hidden", "..", ".tmp", "a b", "é", "x" * 201])
def test_invalid_keys_are_rejected_everywhere(store: LocalBlobStore, tmp_path: Path, key: str) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"data")
    writer = store.writer()
    writer.write(b"data")
    with pytest.raises(ValueError, match="invalid blob key"):
        writer.commit(key)
    writer.abort()
    for call in (
        lambda: store.put_file(key, source),
        lambda: store.local_path(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.iter_chunks(key),
        lambda: store.snapshot_to(key, tmp_path / "dest"),
    ):
        with pytest.raises(ValueError, match="invalid blob key"):
            call()
    assert visible_files(store) == []


@pytest.mark.parametrize("key", ["file-Ab12_x.jsonl", "a", "x" * 200, "1.2.3"])
def test_valid_keys_are_accepted(store: LocalBlobStore, key: str) -> None:
    with store.writer() as writer:
        writer.commit(key)
    assert store.exists(key)


def test_put_file_copies_atomically(store: LocalBlobStore, tmp_path: Path) -> None:
    source = tmp_path / "results.csv"
    source.write_bytes(b"step,loss\n1,0.5\n")
    blob = store.put_file("file-results", source)
    assert blob.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert store.local_path("file-results").read_bytes() == source.read_bytes()
    assert visible_files(store) == ["file-results"]


def test_iter_chunks_streams_in_chunks(store: LocalBlobStore) -> None:
    data = os.urandom(10_000)
    with store.writer() as writer:
        writer.write(data)
        writer.commit("file-big")
    chunks = list(store.iter_chunks("file-big", chunk_size=4096))
    assert [len(c) for c in chunks] == [4096, 4096, 10_000 - 8192]
    assert b"".join(chunks) == data


def test_iter_chunks_of_missing_blob_fails_before_streaming(store: LocalBlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.iter_chunks("file-missing")


def test_delete_is_idempotent(store: LocalBlobStore) -> None:
    with store.writer() as writer:
        writer.commit("file-1")
    store.delete("file-1")
    store.delete("file-1")
    assert not store.exists("file-1")


@pytest.mark.parametrize("hard_links", [True, False])
def test_snapshot_survives_delete_of_the_original(
    store: LocalBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    if not hard_links:

        def no_links(src: object, dst: object) -> None:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "link", no_links)
    with store.writer() as writer:
        writer.write(b"training data")
        writer.commit("file-train")
    dest = tmp_path / "jobs" / "ftjob-1" / "train.jsonl"
    store.snapshot_to("file-train", dest)
    store.delete("file-train")
    assert dest.read_bytes() == b"training data"
    assert [p.name for p in dest.parent.iterdir()] == ["train.jsonl"]  # no temp left beside it


def test_snapshot_is_not_changed_by_replacing_the_key(store: LocalBlobStore, tmp_path: Path) -> None:
    with store.writer() as writer:
        writer.write(b"old")
        writer.commit("file-1")
    dest = tmp_path / "snap"
    store.snapshot_to("file-1", dest)
    with store.writer() as writer:
        writer.write(b"new")
        writer.commit("file-1")
    assert dest.read_bytes() == b"old"
    assert store.local_path("file-1").read_bytes() == b"new"


def test_snapshot_of_missing_blob_raises(store: LocalBlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.snapshot_to("file-missing", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_init_removes_only_stale_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    LocalBlobStore(root)
    stale, fresh = root / ".tmp" / "old.part", root / ".tmp" / "new.part"
    stale.write_bytes(b"crashed")
    fresh.write_bytes(b"in progress")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    LocalBlobStore(root)
    assert not stale.exists()
    assert fresh.exists()


_WRITER_SCRIPT = """
import sys, time
from pathlib import Path
from openft.storage import LocalBlobStore
writer = LocalBlobStore(Path(sys.argv[1])).writer()
writer.write(b"half of an upload")
print("writing", flush=True)
time.sleep(600)
"""


def _start_writer_process(root: Path) -> subprocess.Popen[str]:
    """Another process (a server or a worker) in the middle of writing a blob."""
    process = subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(root)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    return process


def temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".tmp").iterdir())


def test_start_removes_temp_files_of_a_killed_writer_at_once(tmp_path: Path) -> None:
    """A server killed mid-upload leaves its temp file; the next start removes it, however recent."""
    root = tmp_path / "blobs"
    killed = _start_writer_process(root)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(temp_files(root)) == 1
    LocalBlobStore(root)
    assert temp_files(root) == []


def test_start_keeps_temp_files_of_live_writers(tmp_path: Path) -> None:
    """Worker processes and other servers share the folder: their uploads in progress are not touched."""
    root = tmp_path / "blobs"
    live = _start_writer_process(root)
    try:
        theirs = temp_files(root)
        mine = LocalBlobStore(root).writer()
        mine.write(b"mine")
        LocalBlobStore(root)  # a second store in this process, e.g. another container in tests
        after = temp_files(root)
        assert set(theirs) < set(after) and len(after) == len(theirs) + 1  # theirs, and mine
        assert mine.commit("file-mine").size == 4
    finally:
        live.kill()
        live.wait()


def test_start_removes_files_of_an_earlier_process_with_this_pid(tmp_path: Path) -> None:
    """In a container the restarted server often has the pid its killed predecessor had."""
    root = tmp_path / "blobs"
    LocalBlobStore(root)
    reused = root / ".tmp" / f"{local._HOST}.{os.getpid()}.abcd1234.part"
    reused.write_bytes(b"left by the previous pid 1")
    LocalBlobStore(root)
    assert not reused.exists()


def test_start_judges_other_hosts_temp_files_by_age(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    LocalBlobStore(root)
    fresh = root / ".tmp" / "other-host.4242.abcd1234.part"
    old = root / ".tmp" / "other-host.4243.abcd1234.part"
    fresh.write_bytes(b"x")
    old.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    LocalBlobStore(root)
    assert fresh.exists() and not old.exists()


def _dead_pid() -> int:
    """A pid that no process of this host has now (a child that has exited and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_start_keeps_a_live_upload_of_a_same_named_host_in_another_pid_namespace(tmp_path: Path) -> None:
    """Two containers with the same host name share the data folder: the other's uploader has a pid that is dead
    here (or belongs to an unrelated process). Its temp file is judged by age, never by this host's pids."""
    import socket

    root = tmp_path / "blobs"
    LocalBlobStore(root)
    same_name = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:63] or "host"
    theirs = root / ".tmp" / f"{same_name}.{_dead_pid()}.abcd1234.part"
    theirs.write_bytes(b"an upload in progress in the other container")
    LocalBlobStore(root)  # this server starts and sweeps
    assert theirs.exists()


def test_host_names_that_look_alike_in_file_names_get_different_temp_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`a.b` and `a-b` are two machines; their temp files must not pass for each other's."""
    import socket

    names = []
    for hostname in ("web.1", "web-1", "x" * 70, "x" * 70 + "y"):
        monkeypatch.setattr(socket, "gethostname", lambda hostname=hostname: hostname)
        names.append(local.process_space())
    assert len(set(names)) == 4
    assert all("." not in name and len(name) <= 51 for name in names)  # still `HOST.PID.RANDOM.part`
