-- 0006: the console's knowledge column (知识专栏): Markdown articles of two categories,
-- 标准解读 (readings of the standards) and 易错点 (common mistakes), written by the system
-- administrator and readable by every logged-in user. Rows are whole and versioned: an
-- edit writes the whole article again with a larger version, a deletion a tombstone
-- (is_deleted = 1); read with FINAL.

CREATE TABLE IF NOT EXISTS article
(
    article_id  String,
    category    LowCardinality(String),  -- 标准解读 or 易错点
    title       String,
    body        String,                  -- Markdown, rendered to escaped HTML on reading
    created_by  String,
    updated_by  String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    version     UInt64,
    is_deleted  UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Serves reading one article by id; the list (newest first, by category) scans this small
-- table.
ORDER BY article_id;
