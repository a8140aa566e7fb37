"""KPI partial totals (§5): exact, subtractable, so a case can move between groups.

Each shard keeps one :class:`KpiAcc` per group and emits its *absolute* partial totals
(one row per group and shard). Absolute rows make the sink idempotent by construction:
writing the same row twice, or an older one after a crash and then the newer one again,
never double-counts — unlike signed deltas, which need exactly-once delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from archwatch.rules import KpiPart

DAY_MS = 86_400_000


def time_diff_days(cycle_ms_sum: int, archived: int) -> float:
    """Mean archive cycle in days, rounded half away from zero to 2 decimals (四舍五入)."""
    if archived <= 0:
        return 0.0
    value = Decimal(cycle_ms_sum) / Decimal(archived) / Decimal(DAY_MS)
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def rate(numerator: int, denominator: int) -> float:
    """A ratio that is 0 when the divisor is 0 (§5 derived rates)."""
    return numerator / denominator if denominator else 0.0


@dataclass(slots=True)
class KpiAcc:
    kpi: int = 0
    archived: int = 0
    succ: int = 0
    fail: int = 0
    cycle_ms_sum: int = 0
    # multiset of first-receipt times: lastReceive is a max that can move back (created
    # on first use: a group of open cases has none)
    receipts: dict[int, int] | None = None
    _max: int | None = None
    names: tuple[str, str, str, str, str] = ("", "", "", "", "")  # display only, not identity
    # the numbers of the row last written for this group and shard (None: none yet), kept
    # here rather than in a second dict keyed by group
    written: tuple[Any, ...] | None = None

    def apply(self, part: KpiPart, sign: int) -> None:
        self.kpi += sign
        self.archived += sign * part.archived
        self.succ += sign * part.succ
        self.fail += sign * part.fail
        self.cycle_ms_sum += sign * part.cycle_ms
        if sign > 0:
            self.names = part.names
        t = part.first_received_at
        if t is None:
            return
        if self.receipts is None:
            self.receipts = {}
        if sign > 0:
            self.receipts[t] = self.receipts.get(t, 0) + 1
            if self._max is None or t > self._max:
                self._max = t
        else:
            n = self.receipts[t] - 1
            if n:
                self.receipts[t] = n
            else:
                del self.receipts[t]
                if t == self._max:
                    self._max = max(self.receipts) if self.receipts else None

    @property
    def last_receive(self) -> int | None:
        return self._max

    @property
    def empty(self) -> bool:
        return self.kpi == 0
