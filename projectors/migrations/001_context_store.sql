-- rolebus context store, version 1: the tables every projector and query shares.
--
-- Applied by `rolebus db migrate` (and by `rolebus project` at start) inside ONE
-- target schema: the runner sets search_path to it, so these statements never
-- name a schema (a replay rebuilds into a fresh schema with the same files).
-- The embedding column's dimension is not fixed here: the runner adds
-- messages.embedding as vector(D) with D from the configured provider and
-- records it in store_meta ('embedding_dim', 'embedding_model').
--
-- Conventions: times are timestamptz (event time from the log unless named
-- *_projected_at); every row carries tenant_id and every query filters on it;
-- seq ranges are int8multirange (PostgreSQL 14+).

CREATE TABLE IF NOT EXISTS store_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Kafka offsets of each projector, written in the same transaction as the rows
-- they produced (exactly-once effect). next_offset = first offset not applied.
CREATE TABLE IF NOT EXISTS projector_offsets (
    projector   text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition)
);

-- One row per role: its latest folded state as the change/commit records tell it.
CREATE TABLE IF NOT EXISTS roles (
    tenant_id       text   NOT NULL,
    role_id         text   NOT NULL,
    lifecycle       text   NOT NULL,
    name            text   NOT NULL,
    persona         text   NOT NULL,
    traits          jsonb  NOT NULL DEFAULT '{}',
    model           text,
    skills          text[] NOT NULL DEFAULT '{}',
    seq             bigint NOT NULL,
    head_commit_id  text,
    counters        jsonb  NOT NULL DEFAULT '{}',
    live            int8multirange NOT NULL DEFAULT '{}',
    -- A fork: the source role and commit, and the source seqs that were live at
    -- that commit (the fork's inherited history, read from the source's rows).
    forked_from_role   text,
    forked_from_commit text,
    forked_live        int8multirange,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, role_id)
);
CREATE INDEX IF NOT EXISTS roles_by_lifecycle ON roles (tenant_id, lifecycle, role_id);

-- Every accepted event (the change ledger): dedupe key of the projector and the
-- audit trail of a role. seq is the role's seq after the event.
CREATE TABLE IF NOT EXISTS events (
    event_id     uuid   PRIMARY KEY,
    tenant_id    text   NOT NULL,
    role_id      text   NOT NULL,
    seq          bigint NOT NULL,
    event_type   text   NOT NULL,
    occurred_at  timestamptz NOT NULL,
    wal_partition integer NOT NULL,
    wal_offset    bigint  NOT NULL,
    head_commit_id text,
    projected_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_role_seq ON events (tenant_id, role_id, seq);

-- Every message ever appended. superseded: a rollback left it out of the live
-- history (kept for audit; excluded from context and recall).
CREATE TABLE IF NOT EXISTS messages (
    tenant_id    text    NOT NULL,
    role_id      text    NOT NULL,
    seq          bigint  NOT NULL,
    message_id   text    NOT NULL,
    event_id     uuid    NOT NULL,
    author       text    NOT NULL,
    content      text    NOT NULL,
    tokens_in    integer NOT NULL DEFAULT 0,
    tokens_out   integer NOT NULL DEFAULT 0,
    latency_ms   integer,
    model        text,
    flags        text[]  NOT NULL DEFAULT '{}',
    tool_call    jsonb,
    occurred_at  timestamptz NOT NULL,
    superseded   boolean NOT NULL DEFAULT false,
    embedding_error text,
    PRIMARY KEY (tenant_id, role_id, seq)
);
CREATE INDEX IF NOT EXISTS messages_recent ON messages (tenant_id, role_id, seq DESC)
    WHERE NOT superseded;

-- Every commit, with the committed state (the record's snapshot) as JSONB.
-- reason / rollback_to come from the RolledBack event of a rollback commit.
CREATE TABLE IF NOT EXISTS commits (
    commit_id    text   PRIMARY KEY,
    tenant_id    text   NOT NULL,
    role_id      text   NOT NULL,
    parent_id    text,
    seq          bigint NOT NULL,
    kind         text   NOT NULL,
    label        text,
    reason       text,
    rollback_to  text,
    state_digest text   NOT NULL,
    occurred_at  timestamptz NOT NULL,
    event_id     uuid   NOT NULL,
    snapshot     jsonb  NOT NULL
);
CREATE INDEX IF NOT EXISTS commits_by_role ON commits (tenant_id, role_id, seq DESC);

-- Every refused or undecodable WAL record, with its original bytes.
-- tenant_id/role_id are NULL for records that could not be decoded.
CREATE TABLE IF NOT EXISTS rejections (
    wal_topic     text    NOT NULL,
    wal_partition integer NOT NULL,
    wal_offset    bigint  NOT NULL,
    reason        text    NOT NULL,
    message       text    NOT NULL,
    original      bytea   NOT NULL,
    event_id      uuid,
    tenant_id     text,
    role_id       text,
    event_type    text,
    occurred_at   timestamptz,
    projected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wal_topic, wal_partition, wal_offset)
);
CREATE INDEX IF NOT EXISTS rejections_by_role ON rejections (tenant_id, role_id, wal_offset);
CREATE INDEX IF NOT EXISTS rejections_by_reason ON rejections (tenant_id, reason);

-- Dashboard aggregates: one row per tenant, role and minute of EVENT time.
-- latency_hist counts assistant latencies in the fixed buckets of
-- rolebus.projectors.aggregates (bucket upper bounds in ms), so percentiles over
-- any window come from summed histograms, never from scanning messages.
CREATE TABLE IF NOT EXISTS agg_minute (
    tenant_id   text        NOT NULL,
    role_id     text        NOT NULL,
    minute      timestamptz NOT NULL,
    events      bigint NOT NULL DEFAULT 0,
    msg_user      bigint NOT NULL DEFAULT 0,
    msg_assistant bigint NOT NULL DEFAULT 0,
    msg_system    bigint NOT NULL DEFAULT 0,
    msg_tool      bigint NOT NULL DEFAULT 0,
    tokens_in   bigint NOT NULL DEFAULT 0,
    tokens_out  bigint NOT NULL DEFAULT 0,
    flag_hallucination bigint NOT NULL DEFAULT 0,
    flag_refusal       bigint NOT NULL DEFAULT 0,
    flag_error         bigint NOT NULL DEFAULT 0,
    flag_tool_error    bigint NOT NULL DEFAULT 0,
    flag_safety        bigint NOT NULL DEFAULT 0,
    created     bigint NOT NULL DEFAULT 0,
    activated   bigint NOT NULL DEFAULT 0,
    suspended   bigint NOT NULL DEFAULT 0,
    resumed     bigint NOT NULL DEFAULT 0,
    archived    bigint NOT NULL DEFAULT 0,
    deleted     bigint NOT NULL DEFAULT 0,
    forked      bigint NOT NULL DEFAULT 0,
    rollbacks   bigint NOT NULL DEFAULT 0,
    commits_requested bigint NOT NULL DEFAULT 0,
    persona_updates   bigint NOT NULL DEFAULT 0,
    rejections  bigint NOT NULL DEFAULT 0,
    latency_hist bigint[] NOT NULL DEFAULT '{}',
    lag_ms_sum  bigint NOT NULL DEFAULT 0,
    lag_ms_max  bigint NOT NULL DEFAULT 0,
    lag_count   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, role_id, minute)
);
CREATE INDEX IF NOT EXISTS agg_minute_by_time ON agg_minute (tenant_id, minute);

CREATE TABLE IF NOT EXISTS agg_rejections_minute (
    tenant_id text        NOT NULL,
    role_id   text        NOT NULL,
    minute    timestamptz NOT NULL,
    reason    text        NOT NULL,
    count     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, role_id, minute, reason)
);
