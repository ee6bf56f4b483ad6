"""Files API throughput on the local folder store and on S3 (SeaweedFS on loopback), in one run.

    python benchmarks/storage_bench.py                  # 1 GiB each way, both stores
    python benchmarks/storage_bench.py --size-mib 32    # CI's smoke size
    python benchmarks/storage_bench.py --json OUT.json

What one run does: writes a JSONL file of `--size-mib` MiB (random hex lines, so nothing compresses), starts
SeaweedFS (tests/support/seaweedfs.py: every port explicit, all on 127.0.0.1) and then, for each store in
turn, a real `python -m openft serve --no-worker` on loopback (tests/support/server.py): the default data
folder store, then `OPENFT_STORAGE_URL=s3://<bucket>/bench` with `OPENFT_S3_ENDPOINT_URL`. Against each it
uploads the file with `POST /v1/files` (httpx, the multipart body streamed from the file; the clock stops
when the server answers, i.e. once the blob is committed: for S3 that includes completing the multipart
upload and the server-side copy to the file's key) and downloads it with `GET /v1/files/{id}/content`
(streamed, hashed as it arrives; the SHA-256 must match the upload's). Printed per store: MB/s (10^6 bytes)
each way, and the server process's peak resident memory (VmHWM in /proc/PID/status) after start, after
the upload and after the download — the stores stream, so the peak should not grow with the file size.
Then S3 ÷ local for each direction.

Everything runs on this machine: the client, the server and SeaweedFS share its cores and its disk, so the
figures compare the two stores' overheads here, not a remote bucket's network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support

from tests.support.seaweedfs import s3_environment, start_seaweedfs  # noqa: E402
from tests.support.server import RunningServer, start_server  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024


@dataclass
class StoreResult:
    store: str
    bytes: int
    upload_mb_s: float
    download_mb_s: float
    upload_seconds: float
    download_seconds: float
    sha256_matches: bool
    peak_rss_mib_start: float
    peak_rss_mib_after_upload: float
    peak_rss_mib_after_download: float


def write_payload(path: Path, size: int) -> str:
    """A JSONL file of exactly `size` bytes (random hex lines); its SHA-256."""
    digest = hashlib.sha256()
    line_payload = 1000
    with open(path, "wb") as out:
        written = 0
        while written < size:
            pad = os.urandom(line_payload // 2).hex()
            line = f'{{"pad": "{pad}"}}\n'.encode()
            line = line[: size - written] if written + len(line) > size else line
            out.write(line)
            digest.update(line)
            written += len(line)
    return digest.hexdigest()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def measure(server: RunningServer, name: str, payload: Path, sha256: str) -> StoreResult:
    size = payload.stat().st_size
    headers = {"Authorization": f"Bearer {server.api_key}"}
    pid = server.process.pid
    at_start = peak_rss_mib(pid)
    timeout = httpx.Timeout(600, connect=10)
    with httpx.Client(base_url=f"{server.url}/v1", headers=headers, timeout=timeout) as client:
        with open(payload, "rb") as handle:
            started = time.perf_counter()
            response = client.post("/files", files={"file": ("bench.jsonl", handle)}, data={"purpose": "fine-tune"})
            upload_seconds = time.perf_counter() - started
        response.raise_for_status()
        file_id = response.json()["id"]
        after_upload = peak_rss_mib(pid)
        digest, received = hashlib.sha256(), 0
        started = time.perf_counter()
        with client.stream("GET", f"/files/{file_id}/content") as stream:
            stream.raise_for_status()
            for chunk in stream.iter_raw(MiB):
                digest.update(chunk)
                received += len(chunk)
        download_seconds = time.perf_counter() - started
        after_download = peak_rss_mib(pid)
        client.delete(f"/files/{file_id}").raise_for_status()
    return StoreResult(
        store=name,
        bytes=size,
        upload_mb_s=size / MB / upload_seconds,
        download_mb_s=size / MB / download_seconds,
        upload_seconds=upload_seconds,
        download_seconds=download_seconds,
        sha256_matches=received == size and digest.hexdigest() == sha256,
        peak_rss_mib_start=at_start,
        peak_rss_mib_after_upload=after_upload,
        peak_rss_mib_after_download=after_download,
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclass
class Report:
    date: str
    cpu: str
    cpus: int
    size_bytes: int
    results: list[StoreResult]

    def ratio(self, direction: str) -> float:
        """S3's MB/s over the local store's, for `upload` or `download`."""
        by_store = {r.store: getattr(r, f"{direction}_mb_s") for r in self.results}
        return float(by_store["s3"] / by_store["local"])

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "s3_over_local": {d: self.ratio(d) for d in ("upload", "download")}}

    def print(self) -> None:
        print(f"{self.date}  {self.cpu} ({self.cpus} CPUs)  file {self.size_bytes / MiB:.0f} MiB")
        print(
            f"{'store':<6} {'upload MB/s':>12} {'download MB/s':>14} {'server peak RSS MiB start/up/down':>34}  sha256"
        )
        for r in self.results:
            rss = f"{r.peak_rss_mib_start:.0f}/{r.peak_rss_mib_after_upload:.0f}/{r.peak_rss_mib_after_download:.0f}"
            ok = "ok" if r.sha256_matches else "MISMATCH"
            print(f"{r.store:<6} {r.upload_mb_s:>12.1f} {r.download_mb_s:>14.1f} {rss:>34}  {ok}")
        print(f"S3 / local: upload {self.ratio('upload'):.2f}, download {self.ratio('download'):.2f}")


def run(size: int, workdir: Path) -> Report:
    payload = workdir / "payload.jsonl"
    sha256 = write_payload(payload, size)
    models_dir = workdir / "models"
    models_dir.mkdir()
    env = {"OPENFT_MAX_UPLOAD_BYTES": str(size + MiB)}
    results = []
    seaweed = start_seaweedfs(workdir / "s3")
    try:
        stores = {
            "local": env,
            "s3": {
                **env,
                **s3_environment(),
                "OPENFT_STORAGE_URL": f"s3://{seaweed.bucket}/bench",
                "OPENFT_S3_ENDPOINT_URL": seaweed.endpoint_url,
            },
        }
        for name, store_env in stores.items():
            server = start_server(workdir / f"data-{name}", models_dir, extra_env=store_env, extra_args=["--no-worker"])
            try:
                results.append(measure(server, name, payload, sha256))
            finally:
                server.stop()
    finally:
        seaweed.stop()
    return Report(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu_name(), os.cpu_count() or 1, size, results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024 = 1 GiB)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="storage-bench-", dir=args.workdir) as scratch:
        report = run(args.size_mib * MiB, Path(scratch))
    report.print()
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=1) + "\n")
    return 0 if all(r.sha256_matches for r in report.results) else 1


if __name__ == "__main__":
    sys.exit(main())
