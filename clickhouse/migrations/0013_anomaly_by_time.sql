-- 0013: `anomaly` laid out by time (issue #10, the anomaly list at 100M cases).
--
-- The list (GET /api/v1/anomalies) is newest first. Under ORDER BY (code, anomaly_id) it
-- read FINAL over every matching anomaly and sorted them: linear in the anomalies (0.5 s
-- for one client at 5M anomalies, 8-11 s p99 under 16). Keyed by opened_at, the route
-- reads FINAL over a window of the newest key range and widens it only when the page is
-- not full (api/routes/anomalies.py), a few granules at any size.
--
-- opened_at can move (a late completion moves a deadline): the engine then writes a
-- tombstone under the old key with the row under the new one, as it does for case_state
-- (archwatch/engine.py diff_anomalies), and the restart reconcile compares rows by
-- (opened_at, anomaly_id) (connectors/store_sink.py).
--
-- A table's ORDER BY cannot change in place: build the new layout beside it, copy the
-- current rows (FINAL: tombstones and replaced versions stay behind), swap, drop. Each
-- step is safe to re-run after a crash: the first DROP removes a half-filled copy, or
-- after the swap the old layout (the data then already lives in `anomaly`, which the copy
-- is made from again).
DROP TABLE IF EXISTS anomaly_next;

CREATE TABLE IF NOT EXISTS anomaly_next
(
    anomaly_id  String,
    code        LowCardinality(String),
    class       LowCardinality(String),
    case_no     String,
    archive_no  String,
    receiver_id String,
    qym         LowCardinality(String),
    dept_code   String,
    system_code LowCardinality(String),
    task_code   String,
    opened_at   DateTime64(3, 'UTC'),
    resolved_at Nullable(DateTime64(3, 'UTC')),
    detail      String,
    src         LowCardinality(String),
    version     UInt64,
    is_deleted  UInt8,
    -- the anomalies of one case (the trace, the list's caseNo filter), as 0012's
    PROJECTION p_case_no (SELECT _part_offset ORDER BY case_no),
    -- a code's anomalies and a receiver's gaps (WHERE code = 'RECEIVER_DOWN' AND
    -- receiver_id = ...): the summary by code reads every row anyway
    PROJECTION p_code (SELECT _part_offset ORDER BY code, receiver_id)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves the list newest first (WHERE opened_at >= {window} ORDER BY opened_at DESC: the
-- newest granules, read in reverse order), the openedFrom/openedTo filters, and FINAL
-- over keys taken from the projections' raw rows (the trace, caseNo, a receiver's gaps).
ORDER BY (opened_at, anomaly_id)
SETTINGS deduplicate_merge_projection_mode = 'rebuild';

INSERT INTO anomaly_next SELECT * FROM anomaly FINAL;

EXCHANGE TABLES anomaly AND anomaly_next;

DROP TABLE anomaly_next;
