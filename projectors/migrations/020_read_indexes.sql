-- Indexes of the read side's queries that 001 does not cover.
-- `rolebus rejections` lists a tenant's most recent refusals first.
CREATE INDEX IF NOT EXISTS rejections_recent ON rejections (tenant_id, projected_at DESC);
-- `rolebus show 1a2b3c` / `rolebus diff A B` accept a unique commit id prefix
-- (LIKE 'prefix%' needs text_pattern_ops whatever the database's collation).
CREATE INDEX IF NOT EXISTS commits_by_tenant_prefix
    ON commits (tenant_id, commit_id text_pattern_ops);
