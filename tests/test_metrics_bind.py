"""The metrics server binds the loopback interface unless told otherwise.

The address is read from the kernel's table of listening sockets, so the test sees what
the process really bound, not what it was configured with.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import pgqueue

from .conftest import wait_until

pytest.importorskip("prometheus_client")

PROC_TCP = Path("/proc/net/tcp")
PROC_TCP6 = Path("/proc/net/tcp6")

pytestmark = pytest.mark.skipif(not PROC_TCP.exists(),
                                reason="needs /proc/net/tcp to read listening sockets")


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on TCP ``port`` (IPv4 as dotted quads,
    IPv6 as ``[hex]``), from /proc/net/tcp and /proc/net/tcp6."""
    found = set()
    for path in (PROC_TCP, PROC_TCP6):
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hexport = local.partition(":")
            if state != "0A" or int(hexport, 16) != port:      # 0A: LISTEN
                continue
            if len(addr) == 8:                                  # IPv4, little-endian
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
            else:
                found.add(f"[{addr}]")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_noop(app: pgqueue.App) -> None:
    @app.task(name="t.noop")
    def noop() -> None:
        return None


def test_worker_metrics_default_to_loopback(app, start_worker):
    register_noop(app)
    w = start_worker(app, metrics_port=0).worker
    assert listening_addresses(w.metrics.port) == {"127.0.0.1"}


def test_cli_worker_metrics_default_to_loopback(spawn_worker):
    port = free_port()
    worker = spawn_worker("tests.apps.basic", "--metrics-port", str(port))
    addrs = wait_until(lambda: listening_addresses(port), 30,
                       message=f"a socket listening on port {port}")
    assert addrs == {"127.0.0.1"}, worker.log()


def test_explicit_metrics_host_is_honoured(app, start_worker):
    register_noop(app)
    w = start_worker(app, metrics_port=0, metrics_host="0.0.0.0").worker
    assert listening_addresses(w.metrics.port) == {"0.0.0.0"}
