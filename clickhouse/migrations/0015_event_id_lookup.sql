-- 0015: the dedup step's lookups by event id at any size of event log (issue #10, batch
-- baseline: a replay cost 1.9x more per event at 10M events than at 1M).
--
-- An id the dedup step has moved from memory to its Bloom filter is read back here
-- (archwatch/eventlog.py: WHERE event_id IN (...)). 0010's skip index serves that by
-- reading a bloom filter of every granule of every part: measured 13-15 ms a lookup at 1M
-- events and 32-35 ms at 10M, on a replay that makes one every few batches of each dedup
-- shard (27% of a 10M replay's time, against 2% at 1M).
--
-- p_event_id: an index-only projection (event_id and the row's offset in its part), read
-- by binary search as 0012's p_case_no is: one granule of it per part, then the rows'
-- own granules (16 ms a lookup at 10M, the same as at 1M before). ReplacingMergeTree
-- needs to be told what a merge that drops replaced rows does to it: `rebuild`.
-- The lookups read without FINAL (any version of an event's row has its payload).
ALTER TABLE event_log MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';
ALTER TABLE event_log ADD PROJECTION IF NOT EXISTS p_event_id (SELECT _part_offset ORDER BY event_id);
ALTER TABLE event_log MATERIALIZE PROJECTION p_event_id;
-- The skip index it replaces goes: kept, the planner may read it in full to find the one
-- granule the projection finds (0012 measured that for case_no).
ALTER TABLE event_log DROP INDEX IF EXISTS idx_event_id;
