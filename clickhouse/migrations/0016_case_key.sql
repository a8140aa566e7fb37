-- 0016: a case's sorting key by its case number, in a table of its own (issue #10, the
-- case trace at 100M cases).
--
-- case_state is ordered by (year, qym, dept_code, task_id, case_no); a read by case_no
-- alone first needs the case's key. 0012's projection p_case_no gave it by binary search,
-- but ClickHouse still analyses the main key for every such read, and with case_no its
-- last column that is a generic exclusion search over every mark: 20-30 ms a lookup at
-- 100M cases, a third of the trace. Here the keys live in their own table ordered by
-- case_no (small granules: a lookup reads 1,024 rows), 4-5 ms a lookup; LowCardinality
-- keeps it near the projection's size (each of its columns repeats a few thousand
-- values), and the projection goes.
--
-- Filled by case_key_mv from every insert into case_state (rows, versions, tombstones),
-- so it holds every key a case has ever had: a superset of its current keys, which is
-- all a lookup needs, since the read that follows applies FINAL and the caller's filter
-- (archwatch/lookups.py). Repeats collapse in merges. `archwatch replay` empties it with
-- case_state (archwatch/replay.py ENGINE_TABLES).
CREATE TABLE IF NOT EXISTS case_key
(
    case_no   String,
    year      UInt16,
    qym       LowCardinality(String),
    dept_code LowCardinality(String),
    task_id   LowCardinality(String)
)
ENGINE = ReplacingMergeTree
-- Serves case_state's key by case number (WHERE case_no = ... or IN ...): the case
-- trace, a case's region for the distribution queue.
ORDER BY (case_no, year, qym, dept_code, task_id)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS case_key_mv TO case_key AS
SELECT case_no, year, qym, dept_code, task_id FROM case_state;

-- The keys of a store filled before this migration (a key inserted between the view and
-- this statement arrives twice: one row after a merge, and a superset either way).
INSERT INTO case_key SELECT case_no, year, qym, dept_code, task_id FROM case_state;

ALTER TABLE case_state DROP PROJECTION IF EXISTS p_case_no;
