-- 0012: primary-key lookups for the non-KPI read paths that grew with the store (issue #10,
-- query latency at 100M cases). Projections, not derived tables: ClickHouse keeps them in
-- step with every insert, merge and TRUNCATE of their table (nothing for the dataflow,
-- `archwatch replay` or the cluster schema to fill or reset), MATERIALIZE PROJECTION
-- backfills the parts an existing store already holds, and a read that finds a part
-- without the projection (written before this migration, until its mutation or a merge
-- rewrites it) reads that part in full: slower, never wrong.
--
-- Projections are only read without FINAL, so each route takes a row's sorting key from
-- its raw rows first (every version and tombstone: the current row is one of them), then
-- reads FINAL over exactly those keys, a primary-key read (api/routes/cases.py,
-- anomalies.py, stats.py). A ReplacingMergeTree refuses projections unless told what a
-- merge that drops replaced rows does to them: `rebuild` recomputes the projection from the
-- merged part, so it always indexes exactly the part's rows.

ALTER TABLE case_state MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';
ALTER TABLE anomaly MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';

-- case_state ORDER BY (year, qym, dept_code, task_id, case_no) serves the region chain.
-- p_case_no: the case trace and an anomaly's case (WHERE case_no = ..., the key's last
-- column): a projection index (case_no and the row's offset in its part, ≈ 11 bytes a case)
-- read by binary search, where the idx_case_no bloom filter of 0008 read ≈ 2 bytes of
-- every case in the store per lookup (linear: 150-240 ms at 30M cases).
ALTER TABLE case_state ADD PROJECTION IF NOT EXISTS p_case_no (SELECT _part_offset ORDER BY case_no);
ALTER TABLE case_state MATERIALIZE PROJECTION p_case_no;
-- The bloom filter it replaces goes: kept, the planner counted its one surviving granule
-- as cheap as the projection's and read the whole filter (≈ 2 bytes of every case) to
-- find it (measured at 10M cases: 34 ms with both, 9 ms with the projection alone).
ALTER TABLE case_state DROP INDEX IF EXISTS idx_case_no;

-- p_item_keys: the key prefixes (year, qym, dept_code) an item's cases live under, for an
-- item's case list asked through the system chain (WHERE year, system_code, task_id: only
-- the key's first column). Aggregated: one row per item, year, region and department per
-- part, where idx_task (0008) read a bloom filter over every case.
ALTER TABLE case_state ADD PROJECTION IF NOT EXISTS p_item_keys
    (SELECT task_id, year, qym, dept_code, count() GROUP BY task_id, year, qym, dept_code);
ALTER TABLE case_state MATERIALIZE PROJECTION p_item_keys;

-- anomaly ORDER BY (code, anomaly_id) serves the feed by code; p_case_no: the anomalies of
-- one case (the trace, and the feed's caseNo filter), in place of idx_case's bloom filter.
ALTER TABLE anomaly ADD PROJECTION IF NOT EXISTS p_case_no (SELECT _part_offset ORDER BY case_no);
ALTER TABLE anomaly MATERIALIZE PROJECTION p_case_no;
ALTER TABLE anomaly DROP INDEX IF EXISTS idx_case;
