"""What every driver shares (standard library only: each driver runs in its own
virtual environment and imports this module from its own directory)."""
from __future__ import annotations

import statistics
import subprocess


def percentiles(lat: list[float]) -> dict[str, float]:
    """p50, p95 and p99 of latency samples in milliseconds."""
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 3), "p95_ms": round(q[94], 3), "p99_ms": round(q[98], 3)}


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker process still running, then wait (SIGKILL after 30 s)."""
    for w in workers:
        if w.poll() is None:
            w.terminate()
    for w in workers:
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
