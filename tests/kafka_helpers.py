"""Running `archwatch run`/`up` against the real local broker, and watching its metrics."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from archwatch.metrics import scrape

ROOT = Path(__file__).resolve().parent.parent
BROKERS = f"127.0.0.1:{os.environ.get('KAFKA_PORT', '19092')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(check: Callable[[], Any], timeout: float, every: float = 0.2, what: str = "") -> Any:
    """Call ``check`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(every)


@contextlib.contextmanager
def serve_app(app: Any, join: float = 10, **config: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free loopback port; its base URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, 30, what="uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(join)


def metrics(port: int) -> dict[str, float]:
    return scrape(port)


def positions(m: dict[str, float], name: str = "archwatch_input_position") -> int:
    return int(sum(v for k, v in m.items() if k.startswith(name + "{")))


def outcomes(m: dict[str, float]) -> int:
    return int(sum(v for k, v in m.items() if k.startswith("archwatch_events_total{")))


def stages(m: dict[str, float]) -> dict[str, int]:
    pre = 'archwatch_stage_items_total{stage="'
    return {k[len(pre):-2]: int(v) for k, v in m.items() if k.startswith(pre)}


def all_written(ms: list[dict[str, float]], total: int) -> bool:
    """Every record read (``total``), each counted once (applied, duplicate, rejected), and
    every applied event's and receipt fact's rows written by the keyed steps (summed over
    the processes of a cluster)."""
    read = sum(positions(m) for m in ms)
    start = sum(positions(m, "archwatch_input_start") for m in ms)
    if read < total or sum(outcomes(m) for m in ms) != read - start:
        return False
    st: dict[str, int] = {}
    for m in ms:
        for k, v in stages(m).items():
            st[k] = st.get(k, 0) + v
    applied = sum(m.get('archwatch_events_total{outcome="applied"}', 0) for m in ms)
    return (st.get("cases", 0) + st.get("receivers", 0) == applied
            and st.get("archive_nos", 0) == st.get("facts_sent", 0))


class Archwatch:
    """One `archwatch run` (or `up`) subprocess."""

    def __init__(self, tmp: Path, prefix: str, *extra: str, command: str = "run",
                 url: str | None = None, name: str = "") -> None:
        self.tmp = tmp
        self.prefix = prefix
        self.extra = extra
        self.command = command
        self.store = ("--url", url) if url else ("--db", str(tmp / "db"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"{command}-{prefix}{name}.log"

    def start(self) -> Archwatch:
        port_flag = "--metrics-port" if self.command == "run" else "--port"
        args = [sys.executable, "-m", "archwatch.cli", self.command, *self.store,
                "--brokers", BROKERS, "--topic-prefix", self.prefix, port_flag, str(self.port),
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        assert self.alive(), self.log.read_text()[-3000:]
        return metrics(self.port)

    def wait_consumed(self, total: int, timeout: float = 180.0) -> None:
        """Every produced record read and its outcome written (each record read since the
        run's start offsets is counted once: applied, duplicate or rejected), and the rows
        each applied event leads to written too."""
        poll(lambda: all_written([self.metrics()], total), timeout,
             what=f"{total} records read and their rows written")

    def wait_watermark(self, at_ms: int, timeout: float = 60.0) -> None:
        """Every shard holding rows has applied a watermark of at least ``at_ms`` and the
        rows it emitted with it are written: the stored answer describes that moment."""
        poll(lambda: self.metrics().get("archwatch_watermark_written_seconds", 0)
             >= at_ms / 1000, timeout, what=f"the watermark written up to {at_ms}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("no graceful stop on SIGTERM within 60 s") from None
        return self.proc.returncode


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


# The topic prefixes this test session handed out: their topics are deleted at its end
# (tests.test_kafka.broker), and no other session's (two may share the broker).
PREFIXES: set[str] = set()


def prefix_for(name: str) -> str:
    prefix = re.sub(r"[^a-z0-9]", "", name.lower())[:20] + f"{time.time_ns() % 10**9}."
    PREFIXES.add(prefix)
    return prefix


def delete_session_topics() -> int:
    """Delete the topics under the prefixes this session handed out."""
    from archwatch.connectors.kafka import delete_topics
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": BROKERS}).list_topics(timeout=30).topics
    return delete_topics(BROKERS, [t for t in topics if t.startswith(tuple(PREFIXES))])
