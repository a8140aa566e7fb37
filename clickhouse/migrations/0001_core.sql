-- 0001: the engine's tables (contract §6).
-- Every table is a ReplacingMergeTree(version, is_deleted): the dataflow writes whole rows
-- with a version that only grows (also across restarts), so re-applied output is a no-op
-- and `FINAL` returns the newest row of each key; a withdrawn row is a tombstone
-- (is_deleted = 1) that `FINAL` drops. `src` names the dataflow shard that owns the row.

-- One row per completed case (auditors: SELECT ... FROM case_state FINAL).
CREATE TABLE IF NOT EXISTS case_state
(
    case_no           String,
    task_id           String,
    task_code         String,
    task_name         String,
    dept_code         String,
    dept_name         String,
    qym               LowCardinality(String),
    area              String,
    system_code       LowCardinality(String),
    system_name       String,
    system_level      LowCardinality(String),
    completed_at      DateTime64(3, 'UTC'),
    first_received_at Nullable(DateTime64(3, 'UTC')),
    archive_count     UInt32,
    status            LowCardinality(String),
    year              UInt16,
    src               LowCardinality(String),
    version           UInt64,
    is_deleted        UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves the drill-down region -> department -> item -> case (WHERE year, qym, dept_code,
-- task_id) and year/region scans; a case whose key changes (redefined by an earlier
-- case.completed) gets a tombstone under its old key.
ORDER BY (year, qym, dept_code, task_id, case_no);

-- One row per anomaly (auditors: SELECT ... FROM anomaly FINAL).
CREATE TABLE IF NOT EXISTS anomaly
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
    INDEX idx_case case_no TYPE bloom_filter GRANULARITY 4,
    INDEX idx_qym qym TYPE set(64) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves the summary by code and the feed filtered by code/class; the key holds only
-- immutable parts of the id, so updates (case attributes filled in, resolution) replace
-- in place. Case trace lookups use idx_case, region filters idx_qym.
ORDER BY (code, anomaly_id);

-- KPI partial totals per (group, dataflow shard); sum over `src` after FINAL (§6).
CREATE TABLE IF NOT EXISTS kpi_task
(
    year          UInt16,
    qym           LowCardinality(String),
    dept_code     String,
    system_code   LowCardinality(String),
    task_id       String,
    system_level  LowCardinality(String),
    src           LowCardinality(String),
    kpi           Int64,
    archived      Int64,
    archived_succ Int64,
    archived_fail Int64,
    cycle_ms_sum  Int64,
    last_receive  Nullable(DateTime64(3, 'UTC')),
    last_update   DateTime('Asia/Shanghai'),
    version       UInt64,
    is_deleted    UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves taskArchiveList (WHERE year, qym, dept_code GROUP BY task_id) and every rollup by
-- year/region; sysView (WHERE system_code) reads the whole year range, which is small:
-- at most items x shards rows per year.
ORDER BY (year, qym, dept_code, system_code, task_id, system_level, src);

-- Every applied event, for the case trace and the four-property check history.
CREATE TABLE IF NOT EXISTS event_log
(
    entity      String,                 -- caseNo, or receiverId for receiver events
    occurred_at DateTime64(3, 'UTC'),
    event_id    String,
    type        LowCardinality(String),
    archive_no  String,
    source      String,
    payload     String                  -- the original record, as received
)
ENGINE = ReplacingMergeTree
-- Serves the trace of one case or receiver in time order; (entity, occurred_at, event_id)
-- is immutable per eventId, so a redelivered write collapses.
ORDER BY (entity, occurred_at, event_id);

-- Latest heartbeat state of each receiver seen (registered or not).
CREATE TABLE IF NOT EXISTS receiver_status
(
    receiver_id  String,
    qym          LowCardinality(String),
    registered   UInt8,
    last_beat_at Nullable(DateTime64(3, 'UTC')),
    beats        UInt64,
    state        LowCardinality(String),
    src          LowCardinality(String),
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
-- Serves the heartbeat board (all receivers, or WHERE receiver_id).
ORDER BY receiver_id;

-- Registered receivers (from the API, config, or a replay's receivers file).
CREATE TABLE IF NOT EXISTS receiver
(
    receiver_id String,
    qym         LowCardinality(String),
    period_ms   Int64,
    grace_ms    Int64,
    version     UInt64,
    is_deleted  UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY receiver_id;
