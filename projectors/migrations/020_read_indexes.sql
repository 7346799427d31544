-- Indexes of the read side's queries that 001 does not cover.
-- `rolebus rejections` lists a tenant's most recent refusals first.
CREATE INDEX IF NOT EXISTS rejections_recent ON rejections (tenant_id, projected_at DESC);
