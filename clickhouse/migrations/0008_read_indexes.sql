-- 0008: skip indexes for the API reads that the sorting keys do not serve (issue #10,
-- query latency). Each one lets a read skip the granules (8,192 rows) that cannot hold
-- the value; with FINAL, ClickHouse widens the kept ranges to every row of the same
-- sorting key (use_skip_indexes_if_final_exact_mode, on by default), so a replaced or
-- withdrawn row is never read without its newer version. Parts written before this
-- migration get the index when MATERIALIZE INDEX (a background mutation) or a merge
-- rewrites them; until then they are read in full, as before: slower, never wrong.

-- case_state ORDER BY (year, qym, dept_code, task_id, case_no) serves the region chain.
-- idx_case_no: the case trace (WHERE case_no = ...: the key's last column, otherwise a
-- scan of every case; case numbers are unique, so a low false-positive rate: ≈ 2 bytes
-- a case). idx_task: an item's cases asked through the system chain (WHERE year,
-- system_code, task_id: only the key's first column otherwise). idx_system: a system's
-- daily log (WHERE system_code; a granule holds the cases of a few items, so of a few
-- systems).
ALTER TABLE case_state ADD INDEX IF NOT EXISTS idx_case_no case_no TYPE bloom_filter(0.001) GRANULARITY 1;
ALTER TABLE case_state ADD INDEX IF NOT EXISTS idx_task task_id TYPE bloom_filter GRANULARITY 1;
ALTER TABLE case_state ADD INDEX IF NOT EXISTS idx_system system_code TYPE set(32) GRANULARITY 1;
ALTER TABLE case_state MATERIALIZE INDEX idx_case_no;
ALTER TABLE case_state MATERIALIZE INDEX idx_task;
ALTER TABLE case_state MATERIALIZE INDEX idx_system;

-- kpi_task ORDER BY (year, qym, dept_code, system_code, task_id, system_level, src):
-- sysView and the system chain (WHERE year, system_code) read only the year otherwise.
ALTER TABLE kpi_task ADD INDEX IF NOT EXISTS idx_system system_code TYPE set(32) GRANULARITY 1;
ALTER TABLE kpi_task MATERIALIZE INDEX idx_system;

-- event_log ORDER BY (entity, occurred_at, event_id) serves the case trace; idx_archive
-- serves an archive's four-property check history (WHERE archive_no = ...).
ALTER TABLE event_log ADD INDEX IF NOT EXISTS idx_archive archive_no TYPE bloom_filter GRANULARITY 1;
ALTER TABLE event_log MATERIALIZE INDEX idx_archive;
