"""Shared by the benchmarks that start local servers (`bench_openai_backend.py`, `bench_fleet.py`):
a free port on 127.0.0.1, and a wait until a server listens on it."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 20.0) -> None:
    """Returns once something accepts connections on 127.0.0.1:`port`, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
