-- 0018: a case's state and anomalies as pre-rendered rows, read in one primary-key read of
-- one column (issue #10, the case trace at 100M cases).
--
-- After 0017 the trace read a case's state from case_by_no FINAL (≈ 20 columns) and its
-- anomalies from anomaly_by_case FINAL (≈ 15): 12 + 10 ms of chDB at 100M cases, of which
-- the rows themselves are a few hundred bytes. What a chDB read costs is a few ms plus a
-- share per column it reads (bench/RESULTS.md §4, session 8). Here each row of either
-- source is kept once more, rendered as one JSON object of strings, ordered by case number:
-- the trace reads `doc` where case_no = ..., two columns, and keeps the newest version of
-- each row identity itself (archwatch/casedoc.py), which is what FINAL would do, without
-- reading the key, version and tombstone columns that FINAL reads.
--
-- doc: every value a string (or null), so no output-format setting of the inserting
-- session changes a value (64-bit integers quoted or not, for one). Written out with
-- concat() and a toJSONString() per text value (which escapes it): the same bytes as
-- toJSONString(map(...)) over the same pairs, at a sixth of its CPU (0.6-0.8 against
-- 4.5 µs a row, 1M case_state rows, compared byte for byte). `k` is the kind
-- ('s' a case_state row, 'a' an anomaly row), `v` the row's version, `d` its tombstone
-- flag; then the columns the API reads, under the names it reads them by (timestamps as
-- epoch milliseconds, c_ms/f_ms/opened/resolved). A row's identity is in its doc too:
-- (year, qym, dept_code, task_id) of a state row, (opened, anomaly_id) of an anomaly.
--
-- The table is a ReplacingMergeTree on (case_no, kind, ident) with the sources' versions
-- and tombstones, so merges drop replaced versions as they do in the sources and FINAL over
-- it is FINAL over both sources, reordered (tests/test_case_lookup_migration.py checks
-- both that and the reader's own version rule). ident: the source row's identity past
-- case_no, length-prefixed so that two identities never render alike. Anomalies without
-- a case (a receiver's) are not kept: nothing reads them by case number.
--
-- It also serves the anomaly list's caseNo filter and the distribution queue's case
-- regions, so 0017's copies, which nothing reads any more, go (each view first, so that
-- no insert writes its table meanwhile).
--
-- Filled by a view from every insert into each source; `archwatch replay` empties it with
-- them (archwatch/replay.py ENGINE_TABLES); auditors do not see it (archwatch/sqlguard.py).

CREATE TABLE IF NOT EXISTS case_doc
(
    case_no    String,
    kind       UInt8,   -- 0: a case_state row, 1: an anomaly row
    ident      String,
    version    UInt64,
    is_deleted UInt8,
    doc        String
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves one case's current state and anomalies (WHERE case_no = ...: the case trace).
-- Granules of 256 rows (a doc is ≈ 500 bytes): a read of one case 17% cheaper than with
-- 1,024 at 10M cases, for 9% more bytes there (9.4 against 7.0 GB at 100M: smaller
-- compressed blocks; bench/RESULTS.md §4 session 9).
ORDER BY (case_no, kind, ident)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS case_doc_state_mv TO case_doc AS
SELECT case_no, toUInt8(0) AS kind,
       concat(toString(year), ':', toString(length(qym)), ':', qym,
              toString(length(dept_code)), ':', dept_code, task_id) AS ident,
       version, is_deleted,
       concat('{"k":"s","v":"', toString(version), '","d":"', toString(is_deleted),
              '","case_no":', toJSONString(case_no), ',"task_id":', toJSONString(task_id),
              ',"task_code":', toJSONString(task_code),
              ',"task_name":', toJSONString(task_name),
              ',"dept_code":', toJSONString(dept_code),
              ',"dept_name":', toJSONString(dept_name), ',"qym":', toJSONString(qym),
              ',"area":', toJSONString(area), ',"system_code":', toJSONString(system_code),
              ',"system_name":', toJSONString(system_name),
              ',"system_level":', toJSONString(system_level),
              ',"c_ms":"', toString(toUnixTimestamp64Milli(completed_at)),
              '","f_ms":', ifNull(concat('"', toString(toUnixTimestamp64Milli(
                  first_received_at)), '"'), 'null'),
              ',"archive_count":"', toString(archive_count),
              '","status":', toJSONString(status), ',"year":"', toString(year), '"}') AS doc
FROM case_state;

CREATE MATERIALIZED VIEW IF NOT EXISTS case_doc_anomaly_mv TO case_doc AS
SELECT case_no, toUInt8(1) AS kind,
       concat(toString(toUnixTimestamp64Milli(opened_at)), ':', anomaly_id) AS ident,
       version, is_deleted,
       concat('{"k":"a","v":"', toString(version), '","d":"', toString(is_deleted),
              '","anomaly_id":', toJSONString(anomaly_id), ',"code":', toJSONString(code),
              ',"class":', toJSONString(class), ',"case_no":', toJSONString(case_no),
              ',"archive_no":', toJSONString(archive_no),
              ',"receiver_id":', toJSONString(receiver_id), ',"qym":', toJSONString(qym),
              ',"dept_code":', toJSONString(dept_code),
              ',"system_code":', toJSONString(system_code),
              ',"task_code":', toJSONString(task_code),
              ',"opened":"', toString(toUnixTimestamp64Milli(opened_at)),
              '","resolved":', ifNull(concat('"', toString(toUnixTimestamp64Milli(
                  resolved_at)), '"'), 'null'),
              ',"detail":', toJSONString(detail), '}') AS doc
FROM anomaly
WHERE case_no != '';

-- The rows of a store filled before this migration, every raw row (versions and
-- tombstones), through the views' own SELECTs. Re-run after a crash, a row arrives twice:
-- the same version of the same identity, one row after FINAL or the reader's rule.
INSERT INTO case_doc
SELECT case_no, toUInt8(0) AS kind,
       concat(toString(year), ':', toString(length(qym)), ':', qym,
              toString(length(dept_code)), ':', dept_code, task_id) AS ident,
       version, is_deleted,
       concat('{"k":"s","v":"', toString(version), '","d":"', toString(is_deleted),
              '","case_no":', toJSONString(case_no), ',"task_id":', toJSONString(task_id),
              ',"task_code":', toJSONString(task_code),
              ',"task_name":', toJSONString(task_name),
              ',"dept_code":', toJSONString(dept_code),
              ',"dept_name":', toJSONString(dept_name), ',"qym":', toJSONString(qym),
              ',"area":', toJSONString(area), ',"system_code":', toJSONString(system_code),
              ',"system_name":', toJSONString(system_name),
              ',"system_level":', toJSONString(system_level),
              ',"c_ms":"', toString(toUnixTimestamp64Milli(completed_at)),
              '","f_ms":', ifNull(concat('"', toString(toUnixTimestamp64Milli(
                  first_received_at)), '"'), 'null'),
              ',"archive_count":"', toString(archive_count),
              '","status":', toJSONString(status), ',"year":"', toString(year), '"}') AS doc
FROM case_state;

INSERT INTO case_doc
SELECT case_no, toUInt8(1) AS kind,
       concat(toString(toUnixTimestamp64Milli(opened_at)), ':', anomaly_id) AS ident,
       version, is_deleted,
       concat('{"k":"a","v":"', toString(version), '","d":"', toString(is_deleted),
              '","anomaly_id":', toJSONString(anomaly_id), ',"code":', toJSONString(code),
              ',"class":', toJSONString(class), ',"case_no":', toJSONString(case_no),
              ',"archive_no":', toJSONString(archive_no),
              ',"receiver_id":', toJSONString(receiver_id), ',"qym":', toJSONString(qym),
              ',"dept_code":', toJSONString(dept_code),
              ',"system_code":', toJSONString(system_code),
              ',"task_code":', toJSONString(task_code),
              ',"opened":"', toString(toUnixTimestamp64Milli(opened_at)),
              '","resolved":', ifNull(concat('"', toString(toUnixTimestamp64Milli(
                  resolved_at)), '"'), 'null'),
              ',"detail":', toJSONString(detail), '}') AS doc
FROM anomaly
WHERE case_no != '';

-- What this replaces: a case's state and its anomalies by case number (0017).
DROP VIEW IF EXISTS case_by_no_mv;
DROP TABLE IF EXISTS case_by_no;
DROP VIEW IF EXISTS anomaly_by_case_mv;
DROP TABLE IF EXISTS anomaly_by_case;
