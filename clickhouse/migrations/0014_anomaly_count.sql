-- 0014: anomaly counts per group, kept by the dataflow (issue #10, the anomaly list and
-- summary at 100M cases).
--
-- The list's exact `total` and the summary counted every matching anomaly under FINAL:
-- 0.1-0.7 s at 5M anomalies, per request. Each dataflow shard keeps how many anomalies it
-- holds, and how many of them are open, per (code, qym, dept_code, system_code), and
-- writes the groups that changed once a batch: absolute partial rows, one per shard (src),
-- like kpi_task's (archwatch/engine.py AnomalyCounts), so a row written again after a
-- crash changes nothing and the restart reconcile covers them. Readers sum over src after
-- FINAL (api/routes/anomalies.py); a filter on a column that is not here (caseNo,
-- receiverId, the opened time range) still counts `anomaly` itself, by key range.
CREATE TABLE IF NOT EXISTS anomaly_count
(
    code        LowCardinality(String),
    class       LowCardinality(String),
    qym         LowCardinality(String),
    dept_code   String,
    system_code LowCardinality(String),
    src         LowCardinality(String),
    total       Int64,
    open        Int64,
    version     UInt64,
    is_deleted  UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves the summary (GROUP BY code) and the list's total filtered by code/class, region,
-- department, system and status: a few thousand rows, read whole; the restart reconcile
-- reads WHERE src IN (...).
ORDER BY (code, qym, dept_code, system_code, src);

-- The counts of a store filled before this migration: each shard's partial is the count
-- of the anomaly rows it wrote (their src), which is what the shard will write itself.
-- Version 1: any row the dataflow writes supersedes it (its versions follow the clock).
INSERT INTO anomaly_count
SELECT code, any(class), qym, dept_code, system_code, src, count(), countIf(resolved_at IS NULL),
       1, 0
FROM anomaly FINAL
GROUP BY code, qym, dept_code, system_code, src;
