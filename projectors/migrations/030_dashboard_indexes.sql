-- Dashboard reads (rolebus.projectors.dashboard_sql): a time window over every
-- tenant, and rejections by tenant and time. agg_minute_by_time (001) serves a
-- window of one tenant; these serve the rest without a full scan.
CREATE INDEX IF NOT EXISTS agg_minute_by_minute ON agg_minute (minute);
CREATE INDEX IF NOT EXISTS agg_rejections_minute_by_time
    ON agg_rejections_minute (tenant_id, minute);
CREATE INDEX IF NOT EXISTS agg_rejections_minute_by_minute ON agg_rejections_minute (minute);
