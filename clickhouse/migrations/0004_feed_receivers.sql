-- 0004: the anomaly feed (every transition, for the live feed and alert delivery) and
-- the receivers registry's extra fields.

-- One row per transition of an anomaly: opened, updated, resolved, withdrawn. `seq` is
-- the version of the anomaly row written with it, so it only grows. At-least-once: after
-- a crash a transition may appear twice (same anomaly_id, kind and times).
CREATE TABLE IF NOT EXISTS anomaly_feed
(
    seq         UInt64,
    at          DateTime64(3, 'UTC'),
    kind        LowCardinality(String),
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
    detail      String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
-- Serves the live feed and its resumption: WHERE seq > {last} ORDER BY seq.
ORDER BY seq;

ALTER TABLE receiver ADD COLUMN IF NOT EXISTS owner String AFTER qym;
ALTER TABLE receiver ADD COLUMN IF NOT EXISTS key_hash String AFTER grace_ms;
ALTER TABLE receiver ADD COLUMN IF NOT EXISTS paused UInt8 AFTER key_hash;
