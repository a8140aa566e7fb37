-- 0009: receivers on a cron schedule, with maintenance windows and flap suppression
-- (issue #6; rules in archwatch/receivers.py). A receiver with a non-empty `schedule`
-- is due at the next cron tick in `tz` after each heartbeat instead of after `period_ms`.
-- `maintenance` is a JSON list of {cron, duration, tz} windows. `down_after`/`up_after`
-- are the consecutive checks before the state flips; 0 means the engine's global default.

ALTER TABLE receiver ADD COLUMN IF NOT EXISTS schedule String AFTER grace_ms;
ALTER TABLE receiver ADD COLUMN IF NOT EXISTS tz String DEFAULT 'Asia/Shanghai' AFTER schedule;
ALTER TABLE receiver ADD COLUMN IF NOT EXISTS maintenance String AFTER tz;
ALTER TABLE receiver ADD COLUMN IF NOT EXISTS down_after UInt16 AFTER maintenance;
ALTER TABLE receiver ADD COLUMN IF NOT EXISTS up_after UInt16 AFTER down_after;

-- When the receiver goes down if nothing else arrives (null while it is down, or new).
ALTER TABLE receiver_status ADD COLUMN IF NOT EXISTS alert_after Nullable(DateTime64(3, 'UTC'))
    AFTER state;
