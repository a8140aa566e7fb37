"""A case's current state and anomalies from its rows in ``case_doc`` (migration 0018).

``case_doc`` keeps every raw row written to ``case_state`` and ``anomaly`` (each version,
each tombstone) rendered as one JSON object of strings, ordered by case number, so that
the case trace reads one column of one key range. It reads the rows without FINAL, which
would read the key, version and tombstone columns too, and applies ReplacingMergeTree's
rule itself: per row identity the highest version wins, and a winning tombstone means no
row. Versions are unique per write (engine.VersionClock), so two rows of one identity with
one version are the same row re-emitted; the larger text wins then, which makes the
choice independent of the order the store returns rows in.

Pure: no I/O (the query is :data:`CASE_DOCS`; tests/test_case_lookup_migration.py checks
the answer against ``case_state FINAL`` and ``anomaly FINAL``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

CASE_DOCS = "SELECT doc FROM case_doc WHERE case_no = {c:String}"

# Values rendered as text that the API reads as numbers (the store's own column types).
_STATE_INTS = ("c_ms", "f_ms", "archive_count", "year")
_ANOMALY_INTS = ("opened", "resolved")


@dataclass(slots=True)
class CaseDocs:
    """One case's current ``case_state`` row (None if it has none) and current anomaly
    rows (opened first), as dicts keyed like the API's reads of the source tables."""

    state: dict[str, Any] | None = None
    anomalies: list[dict[str, Any]] = field(default_factory=list)


def _identity(d: dict[str, Any]) -> tuple[str, ...]:
    if d["k"] == "s":
        return ("s", d["year"], d["qym"], d["dept_code"], d["task_id"])
    return ("a", d["opened"], d["anomaly_id"])


def _typed(d: dict[str, Any], ints: tuple[str, ...]) -> dict[str, Any]:
    for name in ints:
        value = d[name]
        d[name] = None if value is None else int(value)
    return d


def current(docs: Iterable[str | bytes]) -> CaseDocs:
    """The current rows among one case's raw ``case_doc`` docs, whatever their order."""
    best: dict[tuple[str, ...], tuple[int, str | bytes, dict[str, Any]]] = {}
    for text in docs:
        d = orjson.loads(text)
        key = _identity(d)
        version = int(d["v"])
        held = best.get(key)
        if held is None or (version, text) > held[:2]:
            best[key] = (version, text, d)
    out = CaseDocs()
    states = []
    for _version, _text, d in best.values():
        if d["d"] != "0":
            continue
        if d["k"] == "s":
            states.append(_typed(d, _STATE_INTS))
        else:
            out.anomalies.append(_typed(d, _ANOMALY_INTS))
    # One current state row a case (a moved case's old key carries a newer tombstone);
    # should two ever be current, the newest write is the case's (0017's read took any).
    if states:
        out.state = max(states, key=lambda s: int(s["v"]))
    out.anomalies.sort(key=lambda a: (a["opened"], a["code"]))
    return out
