-- 0005: the distribution queue (backup centre -> district receiving systems) and the HTTP
-- endpoint of each receiver. The queue lives in the store because the store is the one
-- durable thing every process shares: the distributor, the API (batch reset of push
-- status) and auditors all read and write the same rows, and a distributor that crashes
-- resumes from them. Rows are whole and versioned (ReplacingMergeTree(version)): every
-- change writes the whole row again with a larger version; read with FINAL.

-- One row per distribution (分发号). status: pending (to send), sent (handed to the
-- receiver, no answer yet; re-sent after next_attempt_at if the distributor stopped
-- mid-send), acked, failed (retried at next_attempt_at while attempts < the cap).
-- `reported` is the last transition published as an archive.distributed event
-- (status#resets#attempts): a transition written but not yet published is published on
-- the next cycle, so a crash between the two loses no event (`sent_at`: when the current
-- attempt was sent, for its `sent` event when that is published with the answer).
CREATE TABLE IF NOT EXISTS distribution
(
    distribution_no String,
    archive_no      String,
    case_no         String,
    target_qym      LowCardinality(String),
    receiver_id     String,
    status          LowCardinality(String),
    attempts        UInt32,
    last_error      String,
    next_attempt_at DateTime64(3, 'UTC'),
    created_at      DateTime64(3, 'UTC'),
    updated_at      DateTime64(3, 'UTC'),
    sent_at         Nullable(DateTime64(3, 'UTC')),
    resets          UInt32,
    reset_by        String,
    reset_at        Nullable(DateTime64(3, 'UTC')),
    reported        String,
    version         UInt64,
    INDEX idx_archive archive_no TYPE bloom_filter GRANULARITY 4,
    INDEX idx_status status TYPE set(8) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(version)
-- Serves the distributor's compare-and-set of one distribution and the batch reset's
-- lookup by distributionNo (WHERE distribution_no IN ...); the distributor's scan of due
-- rows (WHERE status IN ... AND next_attempt_at <= now) uses idx_status, the list
-- filtered by archive number idx_archive.
ORDER BY distribution_no;

-- Where each registered receiver accepts packages (POST JSON). Kept beside the registry
-- (table `receiver`, not changed here); url '' means none.
CREATE TABLE IF NOT EXISTS receiver_endpoint
(
    receiver_id String,
    url         String,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
-- Serves the distributor's endpoint lookup (whole table, one row per receiver).
ORDER BY receiver_id;
