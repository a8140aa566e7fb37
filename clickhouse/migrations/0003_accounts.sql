-- 0003: accounts (opened by the administrator) and an audit log of privileged actions.

-- One row per account; every change is a new version of the whole row.
CREATE TABLE IF NOT EXISTS account
(
    username      String,
    role          LowCardinality(String),  -- sysadmin, city, district, department, system, auditor
    qym           String,                  -- district (and optional auditor) scope
    dept_code     String,                  -- department / system-client scope
    system_code   String,                  -- system-client scope
    password_hash String,                  -- argon2id; empty for token-only accounts
    token_hash    String,                  -- sha256 of the API token; empty when none
    disabled      UInt8,
    created_at    DateTime64(3, 'UTC'),
    updated_at    DateTime64(3, 'UTC'),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
-- Serves login by username; token lookups scan this small table.
ORDER BY username;

-- Who did what, when: account changes, resets of distributions, SQL by auditors.
CREATE TABLE IF NOT EXISTS audit_log
(
    at       DateTime64(3, 'UTC'),
    actor    String,
    action   LowCardinality(String),
    target   String,
    detail   String
)
ENGINE = MergeTree
-- Serves "what did X do" and "what happened to Y" in time order.
ORDER BY (action, at);
