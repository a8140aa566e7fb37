"""Helpers shared by the benchmarks: tables, results JSON, percentiles, RSS, subprocesses.

Every benchmark measures its baseline in the same run and reports ratios beside the
absolute figures; nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PY = sys.executable
TMP = Path(os.environ.get("BENCH_TMP", "/tmp"))


def scratch(name: str) -> Path:
    """A fresh directory /tmp/bench-<name>-<ns> for generated data and stores."""
    path = TMP / f"bench-{name}-{time.time_ns() % 10**10}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "loadavg": list(os.getloadavg()), "when": datetime.now(UTC).isoformat()}


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    print(f"\nresults: {path.relative_to(ROOT)}")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain-text table; numbers right-aligned."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
               for i in range(len(headers))]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w)
                         for i, (v, w) in enumerate(zip(vals, widths, strict=True))).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def ratio(a: float, b: float) -> float | None:
    return None if not b else a / b


def target(met: bool | None) -> str:
    return "n/a" if met is None else "MET" if met else "MISSED"


def rss_bytes() -> int:
    """Resident set size of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[Any], grace: float = 60) -> None:
    """SIGTERM (a clean stop, like Ctrl-C), then SIGKILL after ``grace`` seconds."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_for(check: Callable[[], Any], timeout: float, every: float = 0.1,
             what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what or check}")
        time.sleep(every)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def run_worker(script: str, args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``bench/<script> --worker ...`` in a fresh interpreter; its last stdout line is
    JSON (a fresh process isolates memory and chDB's one-directory-per-process rule)."""
    proc = subprocess.run([PY, str(BENCH / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{script} {' '.join(args)} failed with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(data: dict[str, Any]) -> None:
    """A worker's answer: one JSON line on stdout."""
    print(json.dumps(data), flush=True)


def profile_top(stats_path: Path, prefix: str = str(ROOT), limit: int = 12,
                key: str = "own_s") -> list[dict]:
    """The product's functions (not bench/, not the venv) in a cProfile dump, by ``key``
    (``own_s``: time in the function itself; ``cum_s``: with what it calls)."""
    import pstats

    st = pstats.Stats(str(stats_path))
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if not file.startswith(prefix) or "/bench/" in file or "/.venv/" in file:
            continue
        rows.append({"function": f"{Path(file).relative_to(ROOT)}:{line}({func})",
                     "calls": ncalls, "own_s": round(tottime, 3), "cum_s": round(cumtime, 3)})
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:limit]


def profile_all(stats_path: Path, limit: int = 12) -> list[dict]:
    """Top functions by own time, product or library (what the product spends time in)."""
    import pstats

    st = pstats.Stats(str(stats_path))
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = file
        for marker in ("/site-packages/", "/work/main/"):
            if marker in file:
                where = file.split(marker, 1)[1]
        rows.append({"function": f"{where}:{line}({func})", "calls": ncalls,
                     "own_s": round(tottime, 3), "cum_s": round(cumtime, 3)})
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return rows[:limit]


BENCH_USER = "bench-city"
BENCH_PASSWORD = "bench-password-not-secret"


def ensure_bench_account(store: Any) -> bool:
    """Open a city-wide reader account in ``store`` when the product has accounts (the API
    then wants a bearer token); False when it has none (an API without authentication)."""
    try:
        from archwatch.accounts import AccountError, Accounts, Role
    except ImportError:
        return False
    try:
        Accounts(store).create(BENCH_USER, Role.city, password=BENCH_PASSWORD, actor="bench")
    except AccountError as exc:
        if "exists" not in str(exc):
            raise
    return True


def api_headers(base: str) -> dict[str, str]:
    """Authorization for the benchmark's account, or nothing when the API has no login."""
    import httpx

    r = httpx.post(f"{base}/api/v1/auth/login", timeout=30,
                   json={"username": BENCH_USER, "password": BENCH_PASSWORD})
    if r.status_code == 404:
        return {}
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['accessToken']}"}


# The API's per-caller rate limit (token bucket) would turn a load test into a test of the
# limiter: lifted for the benchmark's server processes (ignored by an API without one).
UNLIMITED_ENV = {"ARCHWATCH_RATE_PER_SECOND": "1000000000", "ARCHWATCH_RATE_BURST": "1000000000"}
