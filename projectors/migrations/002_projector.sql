-- rolebus context store, version 2: what the projector (`rolebus project`)
-- needs beyond the shared contract of version 1. Additive only.

-- Content fields of a role come from two topics (changes and commits) that
-- arrive in any order. Each group remembers the seq it was last set at, and a
-- source only overwrites it when its seq is at least that high, so the row ends
-- the same whatever the order (see rolebus.projectors.roles).
ALTER TABLE roles ADD COLUMN IF NOT EXISTS lifecycle_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE roles ADD COLUMN IF NOT EXISTS name_seq      bigint NOT NULL DEFAULT 0;
ALTER TABLE roles ADD COLUMN IF NOT EXISTS persona_seq   bigint NOT NULL DEFAULT 0;
-- Forks whose source commit was not projected yet (filled when it arrives).
CREATE INDEX IF NOT EXISTS roles_pending_forks ON roles (forked_from_commit)
    WHERE forked_live IS NULL AND forked_from_commit IS NOT NULL;

-- The live seq ranges of the committed state (lineage closed ranges plus the
-- current branch): a fork of this commit inherits the source's messages in them.
ALTER TABLE commits ADD COLUMN IF NOT EXISTS live int8multirange;
CREATE INDEX IF NOT EXISTS commits_by_event ON commits (event_id);

-- Every accepted rollback: its target, reason and effect on the role's seqs.
-- A rollback commit takes reason / rollback_to from here (same event_id).
CREATE TABLE IF NOT EXISTS rollbacks (
    event_id     uuid   PRIMARY KEY,
    tenant_id    text   NOT NULL,
    role_id      text   NOT NULL,
    seq          bigint NOT NULL,
    to_commit_id text   NOT NULL,
    reason       text,
    after_seq    bigint NOT NULL,
    superseded   int8multirange NOT NULL,
    restored     int8multirange NOT NULL,
    live         int8multirange NOT NULL,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS rollbacks_by_role ON rollbacks (tenant_id, role_id, seq);

-- Messages whose embedding failed, for `rolebus db reembed`.
CREATE INDEX IF NOT EXISTS messages_embedding_failed ON messages (tenant_id, role_id, seq)
    WHERE embedding_error IS NOT NULL;
