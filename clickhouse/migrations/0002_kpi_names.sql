-- 0002: names beside the KPI codes, so statistics and drill-down pages need no join
-- with case_state (taken from the group's cases; codes stay the identity).
ALTER TABLE kpi_task ADD COLUMN IF NOT EXISTS task_code String AFTER task_id;
ALTER TABLE kpi_task ADD COLUMN IF NOT EXISTS task_name String AFTER task_code;
ALTER TABLE kpi_task ADD COLUMN IF NOT EXISTS dept_name String AFTER dept_code;
ALTER TABLE kpi_task ADD COLUMN IF NOT EXISTS system_name String AFTER system_code;
ALTER TABLE kpi_task ADD COLUMN IF NOT EXISTS area String AFTER qym;
