-- 0010: the dedup step's lookups by event id (issue #10, memory). Ids of applied events
-- old enough leave the dedup step's memory for a Bloom filter; an id the filter may hold
-- is read back here (WHERE event_id IN (...)) to tell a redelivery from a reused id.
-- event_log ORDER BY (entity, occurred_at, event_id) cannot serve that (a reused id may
-- name another entity), so a skip index: event ids are unique, so a low false-positive
-- rate (≈ 2 bytes an event). Parts written before this migration are read in full until
-- MATERIALIZE INDEX or a merge rewrites them: slower, never wrong.
ALTER TABLE event_log ADD INDEX IF NOT EXISTS idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 1;
ALTER TABLE event_log MATERIALIZE INDEX idx_event_id;
