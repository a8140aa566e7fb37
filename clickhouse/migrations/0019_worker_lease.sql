-- 0019: one active instance per store of the workers that send to the outside
-- (archwatch/lease.py): the webhook deliverer (name 'webhooks') and the distributor
-- ('distribution'). Several may run against one ClickHouse (a standby on another host for
-- failover); two active ones would both send. The active one renews its row here; the
-- others read it, stand by, and claim it once it has expired (or was released by a clean
-- stop). ClickHouse has no compare-and-set: a claim is written and read back, and of
-- claims written together the highest version wins for every reader (FINAL).
CREATE TABLE IF NOT EXISTS worker_lease
(
    name       String,
    holder     String,
    expires_at DateTime64(3, 'UTC'),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
-- Serves each worker's read and write of its one lease by name.
ORDER BY name;
