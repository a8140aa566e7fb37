-- 0011: the KPI numbers per item, summed over the dataflow's shards (issue #10, query
-- latency). kpi_task holds one partial row per (item, shard): 32 rows an item, ≈ 250k a
-- year, which every statistics read had to collapse with FINAL and then sum. kpi_item
-- holds their sum, one row an item (≈ 8k a year in the Hangzhou shape), so the seed
-- endpoints and the drill-down levels read 32 times fewer rows.
--
-- Written by the store sink, not by a materialized view: an MV sees only the inserted
-- block, and a sum over the latest row of each shard needs the other shards' rows too.
-- After each insert into kpi_task the sink recomputes the touched items from kpi_task
-- FINAL in one INSERT ... SELECT, versioned with the statement's start time
-- (archwatch/rollup.py says why that makes the newest version the full sum). kpi_task
-- stays the source of truth and the auditors' table (contract §6).
CREATE TABLE IF NOT EXISTS kpi_item
(
    year          UInt16,
    qym           LowCardinality(String),
    area          String,
    dept_code     String,
    dept_name     String,
    system_code   LowCardinality(String),
    system_name   String,
    task_id       String,
    task_code     String,
    task_name     String,
    system_level  LowCardinality(String),
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
-- Serves taskArchiveList (WHERE year, qym, dept_code GROUP BY task_id), the region chain
-- (drill/regions, its departments, a department's items) and /api/v1/stats by year and
-- region; sysView and the system chain (WHERE year[, system_code]) read the year's range,
-- one granule or two (≈ 8k rows), and the sink's recompute reads its items by full key.
ORDER BY (year, qym, dept_code, system_code, task_id, system_level);

-- Existing stores: the items from what kpi_task holds now.
INSERT INTO kpi_item
SELECT year, qym, any(area), dept_code, any(dept_name), system_code, any(system_name),
       task_id, any(task_code), any(task_name), system_level,
       sum(kpi), sum(archived), sum(archived_succ), sum(archived_fail), sum(cycle_ms_sum),
       max(last_receive), max(last_update),
       toUInt64(toUnixTimestamp64Nano(now64(9))), 0
FROM kpi_task FINAL
GROUP BY year, qym, dept_code, system_code, task_id, system_level
HAVING sum(kpi) != 0;
