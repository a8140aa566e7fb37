-- 0007: alert delivery by webhook (archwatch/notify.py). The deliverer reads anomaly_feed
-- after a persisted cursor, writes one notification per transition (or per regional group
-- of RECEIVER_DOWN transitions) into an outbox, fans each out to the matching webhook
-- subscriptions and POSTs it with retries. Everything it must remember across a restart is
-- here, so a restarted deliverer neither loses a transition nor sends an acknowledged one
-- again. Rows are whole and versioned (ReplacingMergeTree(version)); read with FINAL.

-- Webhook subscriptions, managed by the system administrator. The secret signs each body
-- (HMAC-SHA256), so it is kept as given (it cannot be hashed). Empty filter arrays match
-- everything.
CREATE TABLE IF NOT EXISTS webhook
(
    webhook_id  String,
    url         String,
    secret      String,
    codes       Array(String),
    classes     Array(String),
    qyms        Array(String),
    enabled     UInt8,
    created_by  String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    version     UInt64,
    is_deleted  UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves the lookup of one subscription (admin API) and the deliverer's read of the whole
-- (small) table each cycle.
ORDER BY webhook_id;

-- The outbox: one row per notification. notification_id is the transition id (a hash of
-- the transition's content, so the at-least-once duplicates of anomaly_feed collapse) or
-- a group id; it is also the Idempotency-Key receivers see. state: held (a RECEIVER_DOWN
-- transition waiting for its region's grouping window), ready (to fan out), done (fanned
-- out to the webhooks that match), grouped (folded into the group notification
-- group_id). kind: opened, updated, resolved, withdrawn, group_opened, group_resolved.
-- members: anomaly ids a group notification covers (group_opened: the down receivers'
-- anomalies; group_resolved: those resolved by it).
CREATE TABLE IF NOT EXISTS alert_notification
(
    notification_id String,
    seq             UInt64,
    kind            LowCardinality(String),
    state           LowCardinality(String),
    anomaly_id      String,
    code            LowCardinality(String),
    class           LowCardinality(String),
    receiver_id     String,
    qym             LowCardinality(String),
    dept_code       String,
    system_code     LowCardinality(String),
    at              DateTime64(3, 'UTC'),
    group_id        String,
    members         Array(String),
    payload         String,
    created_at      DateTime64(3, 'UTC'),
    version         UInt64,
    INDEX idx_state state TYPE set(8) GRANULARITY 4,
    INDEX idx_seq seq TYPE minmax GRANULARITY 4
)
ENGINE = ReplacingMergeTree(version)
-- Serves the intake's "already seen?" check (WHERE notification_id IN ...) and the admin
-- lookup of one notification; the deliverer's scans of held/ready rows use idx_state, the
-- live feed's group events (WHERE kind IN ('group_opened', 'group_resolved') AND seq >
-- cursor) idx_seq.
ORDER BY notification_id;

-- One row per (webhook, notification). status: pending, sending (POSTed, answer not yet
-- recorded: sent again after the lease if the deliverer stopped mid-send — the receiver
-- dedupes by Idempotency-Key), delivered (2xx; never sent again), failed (retried at
-- next_attempt_at), dead (gave up after the attempt cap; visible in the admin API).
CREATE TABLE IF NOT EXISTS webhook_delivery
(
    webhook_id      String,
    notification_id String,
    seq             UInt64,
    status          LowCardinality(String),
    attempts        UInt32,
    last_error      String,
    last_status     UInt16,
    next_attempt_at DateTime64(3, 'UTC'),
    created_at      DateTime64(3, 'UTC'),
    updated_at      DateTime64(3, 'UTC'),
    delivered_at    Nullable(DateTime64(3, 'UTC')),
    version         UInt64,
    INDEX idx_status status TYPE set(8) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(version)
-- Serves the admin list of one webhook's deliveries (WHERE webhook_id = ... ORDER BY
-- seq) and the fan-out's existence check by (webhook_id, notification_id); the scan of due
-- rows (WHERE status IN (...) AND next_attempt_at <= now) uses idx_status.
ORDER BY (webhook_id, notification_id);

-- Where the deliverer's reading of anomaly_feed stands (one row per reader name).
CREATE TABLE IF NOT EXISTS notifier_cursor
(
    name    String,
    seq     UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
-- Serves the deliverer's read and write of its own cursor by name.
ORDER BY name;
