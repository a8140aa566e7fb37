"""Serve Prometheus ``/metrics`` (prometheus-client's own HTTP server) for `archwatch run`."""

from __future__ import annotations

import threading

from prometheus_client import start_http_server

from archwatch.metrics import watch_open_anomalies
from archwatch.store import Store


def start_metrics(port: int, store: Store, host: str = "127.0.0.1") -> threading.Event:
    start_http_server(port, addr=host)
    stop = threading.Event()
    threading.Thread(target=watch_open_anomalies, args=(store, stop), daemon=True,
                     name="metrics").start()
    return stop
